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


REG = {"concentration": {"measure": "region_mass", "method": "ig", "grid": 8, "frac": 0.1, "direction": "higher",
                         "sweep": "pgd"},
       "panel": {"measures": ["region_mass_8", "gini"], "methods": ["ig", "saliency"]},
       "registered": {"commit": "ab8dc67", "date": "2026-12-01"}}


def _per_image(values: dict) -> dict:
    return {u: {"ig": {"region_mass_8": torch.tensor([v, v + 0.1]), "gini": torch.tensor([0.5, 0.5]),
                       "completeness": torch.tensor([0.1, float("nan")])},
                "saliency": {"region_mass_8": torch.tensor([0.2, 0.4]), "gini": torch.tensor([0.3 - v / 10, 0.1])}}
            for u, v in values.items()}


def test_summarize_reads_the_registered_decision_and_averages_seeds():
    per_image = _per_image({"robust@0": 0.6, "robust@1": 0.8, "standard@0": 0.2, "pgd_0.5@0": 0.4})
    out = M.summarize(per_image, {"standard@0": {"ig": 1.0}}, {"standard": 0.0, "robust": 1.5, "pgd_0.5": 0.5}, REG)
    conc = out["concentration"]
    assert conc["sweep"] == ["standard", "pgd_0.5", "robust"] and conc["key"] == "region_mass_8"
    assert conc["registered"]["commit"] == "ab8dc67"
    assert conc["per_model"] == pytest.approx({"standard": 0.25, "pgd_0.5": 0.45, "robust": 0.75})
    assert conc["by_method"]["standard"]["saliency"] == pytest.approx(0.3)
    assert out["per_unit"]["concentration"]["robust@1"] == pytest.approx([0.8, 0.9])
    assert out["units"]["robust@1"] == {"model": "robust", "seed": 1}
    assert out["gini"] == {"standard": 0.5, "pgd_0.5": 0.5, "robust": 0.5}
    assert out["per_method"]["ig"]["standard@0"]["completeness_median"] == pytest.approx(0.1)
    assert out["per_method"]["ig"]["standard@0"]["seconds"] == 1.0


def test_panel_intervals_trend_and_count():
    sweep = {"standard": 0.0, "pgd_0.5": 0.5, "robust": 1.5}
    per_image = _per_image({f"{r}@{s}": v + 0.01 * s for r, v in (("standard", 0.1), ("pgd_0.5", 0.3), ("robust", 0.5))
                            for s in range(2)})
    out = M.panel(per_image, sweep, REG, ["ig", "saliency"], n_boot=200)
    rows = {(r["measure"], r["method"]): r for r in out["rows"]}
    up = rows[("region_mass_8", "ig")]          # rises with ε in every seed
    assert up["tau"] > 0.8 and up["agrees"] and up["p"] < 0.05 and up["grid"] == "8"
    assert up["per_recipe"]["robust"]["mean"] == pytest.approx(0.555)
    assert up["per_recipe"]["robust"]["lo"] <= 0.555 <= up["per_recipe"]["robust"]["hi"]
    down = rows[("gini", "saliency")]           # falls with ε
    assert down["tau"] < 0 and not down["agrees"] and down["grid"] is None
    assert rows[("gini", "ig")]["sign"] == 0    # constant: no direction, left out of the count
    assert rows[("region_mass_8", "saliency")]["sign"] == 0
    assert out["count"] == {"agree": 1, "total": 2, "significant": 1}
    assert len(M.panel_table(out)) == len(out["rows"])


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
    assert M.object_area(x, 0.1).item() == pytest.approx(0.5)
    # per pixel, region mass is the top-10 % pixel mass; an 8x8 grid on a 16x16 map pools 2x2 cells
    assert M.region_mass(point, grid=10).item() == pytest.approx(1.0)
    assert M.region_mass(uniform, grid=10).item() == pytest.approx(0.1)


def test_smoke_notebook_metrics(smoke_run):
    import json

    metrics = json.loads((smoke_run / "metrics" / "02_attributions.json").read_text())["metrics"]
    for key in ("gini", "top5"):
        for model in ("standard", "robust"):
            assert 0 <= metrics[key][model] <= 1
    assert "ig" in metrics["per_method"] and "big" in metrics["per_method"]
    assert 0 <= metrics["boundary"]["standard"]["success_rate"] <= 1
    conc = metrics["concentration"]
    assert conc["key"] == "region_mass_8" and conc["sweep"] == ["standard", "robust"]
    for key in conc["sweep"]:
        assert 0 < conc["per_model"][key] <= 1 and conc["by_method"][key]["ig"] == conc["per_model"][key]
    from lib import profiles

    prof = profiles.load("smoke")
    assert list(metrics["per_unit"]["concentration"]) == profiles.units(prof, conc["sweep"])
    assert all(len(v) == metrics["n_images"] for v in metrics["per_unit"]["concentration"].values())
    assert {r["measure"] for r in metrics["panel"]["rows"]} >= {"region_mass_4", "object", "deletion_gain"}
    for per_model in metrics["sanity"].values():
        assert set(per_model) == {"standard", "robust"}
        assert per_model["standard"]["passes"] in (True, False, None) and per_model["standard"]["reason"]
        assert per_model["robust"]["data_randomisation"] is not None
