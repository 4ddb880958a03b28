"""Concentration, coherence and completeness measures of attribution maps."""

import pytest
import torch

from lib import attribution_metrics as M


def test_region_mass_rewards_one_region_not_scattered_pixels():
    uniform = torch.ones(1, 1, 16, 16)
    blob = torch.zeros(1, 1, 16, 16)
    blob[..., 4:8, 6:10] = 1.0  # 4 of the 64 cells of the 8×8 grid
    scattered = torch.zeros(1, 1, 16, 16)
    scattered[..., ::2, ::2] = 1.0  # one bright pixel in every 2×2 cell: sparse, but everywhere
    assert M.region_mass(uniform).item() == pytest.approx(6 / 64)
    assert M.region_mass(blob).item() == pytest.approx(1.0)
    assert M.region_mass(scattered).item() == pytest.approx(6 / 64)
    # pixel sparsity calls the scattered map concentrated
    assert M.top_mass(scattered).item() == pytest.approx(4 * M.top_mass(uniform).item())
    assert M.gini(scattered).item() == pytest.approx(0.75, abs=0.01)


def test_summarize_orders_the_sweep_and_names_the_deciding_measure():
    per_image = {k: {"ig": {"region10": torch.tensor([v, v]), "gini": torch.tensor([0.5, 0.5]),
                             "completeness": torch.tensor([0.1, float("nan")])},
                     "saliency": {"region10": torch.tensor([0.2, 0.4]), "gini": torch.tensor([0.1, 0.3])}}
                 for k, v in (("robust", 0.6), ("standard", 0.2), ("pgd_0.5", 0.4))}
    out = M.summarize(per_image, {"standard": {"ig": 1.0}}, {"standard": 0.0, "robust": 1.5, "pgd_0.5": 0.5})
    conc = out["concentration"]
    assert conc["sweep"] == ["standard", "pgd_0.5", "robust"] and conc["measure"] == "region10"
    assert conc["per_model"] == pytest.approx({"standard": 0.2, "pgd_0.5": 0.4, "robust": 0.6})
    assert conc["by_method"]["standard"]["saliency"] == pytest.approx(0.3)
    assert conc["by_measure"]["gini"]["robust"]["ig"] == pytest.approx(0.5)
    assert out["gini"] == {"standard": 0.5, "pgd_0.5": 0.5, "robust": 0.5}
    assert out["per_method"]["ig"]["standard"]["completeness_median"] == pytest.approx(0.1)
    assert out["per_method"]["ig"]["standard"]["seconds"] == 1.0



def test_concentration_metrics_closed_forms():
    uniform = torch.ones(1, 1, 10, 10)
    point = torch.zeros(1, 1, 10, 10)
    point[0, 0, 3, 4] = -2.0
    assert M.gini(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert M.gini(point).item() == pytest.approx(0.99)
    assert M.top_mass(uniform).item() == pytest.approx(0.05)
    assert M.top_mass(point).item() == pytest.approx(1.0)
    two = torch.zeros(1, 2, 10, 10)
    two[0, 0, 0, 0], two[0, 1, 0, 0] = 1.0, -1.0  # channels pool per pixel
    assert M.gini(two).item() == pytest.approx(0.99)
    ramp = torch.linspace(0, 1, 10).view(1, 1, 1, 10).expand(1, 1, 10, 10)
    ramp = ramp + ramp.transpose(2, 3)
    checker = (torch.arange(10).view(-1, 1) + torch.arange(10)).remainder(2).float().view(1, 1, 10, 10) * 2 - 1
    assert M.coherence(ramp).item() > 0.9 and M.coherence(checker).item() == pytest.approx(-1.0)
    assert M.positive_share(uniform).item() == 1.0 and M.positive_share(checker).item() == pytest.approx(0.5)
    x = torch.zeros(1, 1, 10, 10)
    x[..., :5, :] = 1.0  # the object: the top half
    assert M.object_share(uniform, x, 0.1).item() == pytest.approx(0.5)


def test_smoke_notebook_metrics(smoke_run):
    import json

    metrics = json.loads((smoke_run / "metrics" / "02_attributions.json").read_text())["metrics"]
    for key in ("gini", "top5"):
        for model in ("standard", "robust"):
            assert 0 <= metrics[key][model] <= 1
    assert "ig" in metrics["per_method"] and "big" in metrics["per_method"]
    assert 0 <= metrics["boundary"]["standard"]["success_rate"] <= 1
    conc = metrics["concentration"]
    assert conc["measure"] == M.CONCENTRATION["measure"] and conc["sweep"] == ["standard", "robust"]
    for key in conc["sweep"]:
        assert 0 < conc["per_model"][key] <= 1 and conc["by_method"][key]["ig"] == conc["per_model"][key]
