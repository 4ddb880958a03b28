"""Adebayo et al.'s sanity checks on constructed models: randomised models' maps decorrelate."""

import pytest
import torch

from lib import attributions as A
from lib import models, sanity


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return models.build("small_cnn", 10, 1, 8, width=4).eval()


def test_layers_top_down_and_reinitialisation_leave_the_original_and_the_rng_alone():
    net = small_cnn()
    assert sanity.layers_top_down(net) == ["head", "body.7", "body.3", "body.0"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.get_rng_state()
    new = sanity.reinitialised(net, ["head", "body.7"], seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    changed = {k for k, v in new.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"head.weight", "head.bias", "body.7.weight", "body.7.bias"}
    again = sanity.reinitialised(net, ["head", "body.7"], seed=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in new.state_dict().items())
    assert sanity.stages(net, 2) == [["head", "body.7"], ["head", "body.7", "body.3", "body.0"]]
    assert sanity.stages(net)[-1] == sanity.layers_top_down(net)


def test_spearman_abs_closed_forms():
    a = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    assert sanity.spearman_abs(a, a).item() == pytest.approx(1.0)
    assert sanity.spearman_abs(a, -a).item() == pytest.approx(1.0)  # |φ|: the sign does not count
    assert sanity.spearman_abs(a, 1 / a).item() == pytest.approx(-1.0)
    assert sanity.spearman_abs(a, torch.ones_like(a)).isnan().item()


def test_saliency_of_a_fully_reinitialised_linear_model_decorrelates():
    # a linear model's saliency is its weight vector: re-drawing the weights gives an independent map,
    # so the rank correlation is ~N(0, 1/sqrt(P)) (P = 256 pixels here), near 0
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 3)).eval()
    x, y = torch.rand(8, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def explain(model):
        return {"saliency": A.saliency(model, x, y)}

    maps = explain(net)
    (layer, rho), = sanity.cascade(net, explain, maps)
    assert layer == "1" and rho["saliency"].abs().max().item() < 0.25


def test_cascade_on_a_cnn_decorrelates_saliency_and_the_rule_flags_a_method_that_ignores_the_model():
    net = small_cnn()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = A.logits(net, x).argmax(1)

    def explain(model):
        return {"saliency": A.saliency(model, x, y), "input": x.clone()}  # "input" ignores the model

    casc = sanity.cascade(net, explain, explain(net), seed=0)
    assert [layer for layer, _ in casc] == ["head", "body.7", "body.3", "body.0"]
    assert casc[-1][1]["saliency"].nanmean().abs().item() < 0.3
    rep = sanity.report(casc, None, {"threshold": 0.5, "bound": "upper"})
    assert rep["saliency"]["passes"] is True and "cascade only" in rep["saliency"]["reason"]
    assert rep["input"]["passes"] is False and rep["input"]["cascade"][-1]["spearman"] == pytest.approx(1.0)
    data = {"saliency": torch.full((16,), 0.9), "input": torch.ones(16)}
    assert sanity.report(casc, data, {"threshold": 0.5, "bound": "upper"})["saliency"]["passes"] is False


def test_shuffled_labels_are_a_seeded_permutation_in_the_config_hash():
    from lib import data, profiles, recipe

    prof = profiles.load("smoke")
    cfg = profiles.model_config(prof, "shuffled")
    ds = data.load("digits", "train")
    a, b = recipe.labels(cfg, ds), recipe.labels(cfg, ds)
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.labels, ds.labels)
    assert torch.equal(a.labels.sort().values, ds.labels.sort().values)  # the same labels, reassigned
    assert torch.equal(a.batch(torch.arange(5))[0], ds.batch(torch.arange(5))[0])  # the same images
    assert recipe.labels(profiles.model_config(prof, "standard"), ds) is ds
    std = profiles.model_config(prof, "standard")
    assert profiles.config_hash(std) != profiles.config_hash({**std, "labels": "shuffled"})
    assert profiles.config_hash(std) == profiles.config_hash({k: v for k, v in std.items() if k != "labels"})
    with pytest.raises(ValueError, match="original or shuffled"):
        recipe.labels({**cfg, "labels": "noisy"}, ds)
