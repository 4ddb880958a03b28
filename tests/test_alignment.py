"""Closed forms of Etmann's alignment theory and Wang's boundary normals on models where the truth is known."""

import math

import pytest
import torch
from test_boundary import ETMANN, Affine, affine, exact_affine_distance, interior_images
from torch import nn

from lib import alignment as al
from lib import alignment_stats, boundary
from lib.models import build


def binary_linear(seed=0, bias=0.0):
    """F = sign(⟨x, z⟩ + b) as two logits ±(⟨x, z⟩ + b)/2; z has zero mean so the boundary crosses the box."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(64, generator=g)
    z -= z.mean()
    w = torch.stack([z / 2, -z / 2])
    return Affine(w, torch.tensor([bias / 2, -bias / 2])), z


def slow_linearized(model, x):
    """Reference ρ̃: one sample and one class at a time."""
    out = []
    for xi in x:
        xi = xi[None].clone().requires_grad_(True)
        logits = model(xi)[0]
        i = int(logits.argmax())
        best = math.inf
        for j in range(len(logits)):
            if j == i:
                continue
            (gd,) = torch.autograd.grad(logits[i] - logits[j], xi, retain_graph=True)
            best = min(best, float((logits[i] - logits[j]).detach() / gd.norm()))
        out.append(best)
    return torch.tensor(out)


# ---------------------------------------------------------------- closed forms

def test_binary_linear_alignment_equals_robustness():
    model, z = binary_linear()
    x = interior_images(16)
    rho = (x.flatten(1) @ z).abs() / z.norm()
    assert torch.allclose(al.alignment(model, x), rho, rtol=1e-5, atol=1e-6)
    assert torch.allclose(boundary.linearized_robustness(model, x), rho, rtol=1e-5, atol=1e-6)


def test_affine_alignment_differs_from_robustness():
    model, z = binary_linear(bias=0.3)
    x = interior_images(16)
    rho = (x.flatten(1) @ z + 0.3).abs() / z.norm()
    alpha = al.alignment(model, x)
    assert torch.allclose(alpha, (x.flatten(1) @ z).abs() / z.norm(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(boundary.linearized_robustness(model, x), rho, rtol=1e-5, atol=1e-6)
    assert ((alpha - rho).abs() > 1e-3).all()


def test_bias_free_relu_net_is_homogeneous():
    torch.manual_seed(0)
    model = build("small_cnn", 10, 1, 8, bias=False, normalize=False, width=4)
    x = torch.rand(16, 1, 8, 8)
    logits, cls, g = boundary.logit_grad(model, x)
    psi = logits.gather(1, cls[:, None]).squeeze(1)
    beta = psi - (x * g).flatten(1).sum(1)
    assert (beta.abs() <= 1e-4 * psi.abs() + 1e-6).all()
    assert (al.homogeneity_fraction(model, x) > 0.999).all()
    biased = build("small_cnn", 10, 1, 8, width=4)  # the check can fail: biases + normalisation
    assert (al.homogeneity_fraction(biased, x) < 0.99).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bound_holds_on_random_networks(seed):
    torch.manual_seed(seed)
    model = build("small_cnn", 10, 1, 8, width=4)
    x = torch.rand(32, 1, 8, 8)
    bt = al.bound_terms(model, x)
    assert bt.holds().all()
    assert torch.allclose(bt.rho_lin, boundary.linearized_robustness(model, x), rtol=1e-4)
    assert torch.allclose(bt.alpha, al.alignment(model, x), rtol=1e-4)
    assert (bt.angle >= 0).all() and (bt.beta >= 0).all()


def test_linearized_robustness_equals_slow_loop_and_chunking(monkeypatch):
    torch.manual_seed(0)
    model = build("small_cnn", 10, 1, 8, width=4)
    x = torch.rand(8, 1, 8, 8)
    ref = slow_linearized(model, x)
    for chunk in (None, 1, 3):
        assert torch.allclose(boundary.linearized_robustness(model, x, chunk=chunk), ref, rtol=1e-4)
    monkeypatch.setattr(boundary, "CHUNK_BYTES", {"cpu": 4 * 8 * 64 * 2, "other": 1})  # auto chunk of 2 classes
    assert torch.allclose(boundary.linearized_robustness(model, x), ref, rtol=1e-4)


def test_linearized_robustness_1000_classes():
    g = torch.Generator().manual_seed(3)
    model = Affine(torch.randn(1000, 64, generator=g), torch.randn(1000, generator=g))
    x = interior_images(6, seed=4)
    lin = boundary.linearize(model, x, chunk=64)
    assert torch.allclose(lin.rho, exact_affine_distance(model, x), rtol=1e-4)
    torch.manual_seed(0)
    net = build("small_cnn", 1000, 1, 8, width=4)
    assert torch.allclose(boundary.linearized_robustness(net, x[:2], chunk=97), slow_linearized(net, x[:2]), rtol=1e-4)


# ---------------------------------------------------------------- cosines and conventions

def test_alignment_cosine_is_normalised_alignment():
    torch.manual_seed(0)
    model = build("small_cnn", 10, 1, 8, width=4)
    x = torch.rand(8, 1, 8, 8)
    cos = al.alignment_cosine(model, x)
    assert (cos.abs() <= 1 + 1e-6).all()
    assert torch.allclose(x.flatten(1).norm(dim=1) * cos.abs(), al.alignment(model, x), rtol=1e-5)


@pytest.mark.parametrize("shared", [0.0, 5.0])
def test_wang_cosines_are_one_on_affine_models_with_or_without_a_shared_component(shared):
    model = affine(shared=shared)
    x = interior_images(16, seed=2)
    found = boundary.boundary_search(model, x, **ETMANN)
    cos = al.boundary_normal_cosine(model, x, found.points)
    assert torch.allclose(cos.saliency, torch.ones(16), atol=1e-4)  # same function, flat: same gradient
    assert torch.allclose(cos.margin, torch.ones(16), atol=1e-4)
    w = model.w.detach()
    i, j = model(x).argmax(1), model(found.points).argmax(1)
    assert torch.equal(cos.across, j)
    assert torch.allclose(cos.distance, exact_affine_distance(model, x), rtol=0.02)
    facet = nn.functional.cosine_similarity(w[i], w[i] - w[j], dim=1)  # x − x_b is the facet's normal
    assert torch.allclose(cos.direction, facet, atol=1e-2)
    if shared:  # the mixed cosine cos(∇Ψ^i(x), ∇(Ψ^i−Ψ^j)(x_b)) = `facet` moves with a shared part: never reported
        plain = affine(shared=0.0).w.detach()
        assert (facet - nn.functional.cosine_similarity(plain[i], plain[i] - plain[j], dim=1)).abs().max() > 0.05


def test_boundary_normal_cosine_failed_rows_are_nan():
    model = affine()
    x = interior_images(4)
    found = boundary.boundary_search(model, x, **ETMANN)
    x_b = found.points.clone()
    x_b[1:3] = float("nan")
    cos = al.boundary_normal_cosine(model, x, x_b)
    assert cos.saliency[1:3].isnan().all() and cos.margin[1:3].isnan().all() and (cos.across[1:3] == -1).all()
    assert torch.isfinite(cos.saliency[[0, 3]]).all()


def test_cosine_by_distance_bins_and_matched_mean():
    d = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([0.35, 0.45, 0.5, math.nan])}
    c = {"a": torch.tensor([0.0, 0.2, 0.4, 0.6]), "b": torch.tensor([1.0, 0.8, 0.6, 0.1])}
    out = al.cosine_by_distance(d, c, bins=2, min_count=1)
    assert out["count"]["a"] == [3, 1] and out["count"]["b"] == [1, 2]  # median of the 7 distances: 0.35
    assert out["mean"]["a"] == pytest.approx([0.2, 0.6]) and out["mean"]["b"] == pytest.approx([1.0, 0.7])
    assert out["matched"]["a"] == pytest.approx(0.4) and out["matched"]["b"] == pytest.approx(0.85)
    assert al.cosine_by_distance(d, c, bins=2, min_count=3)["matched"] == {"a": None, "b": None}


def test_modes_rng_and_bad_input_untouched():
    torch.manual_seed(0)
    model = build("small_cnn", 10, 1, 8, width=4).train()
    x = torch.rand(4, 1, 8, 8)
    state = torch.get_rng_state()
    out = al.measure(model, x, progress=False, **{**ETMANN, "steps": 5, "bisect_steps": 2})
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(state, torch.get_rng_state())
    assert set(out) >= {"alpha", "rho_lin", "rho_emp", "homogeneity", "bound_holds", "cos_saliency", "cos_margin"}
    summary = al.summarize(out)
    assert summary["bound_holds_frac"] == 1.0 and summary["rho_emp_success"] == 1.0
    assert all(v.shape == (4,) for v in out.values())
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        al.alignment(model, x * 2)


# ---------------------------------------------------------------- notebook 03 at smoke (shared pipeline run)

@pytest.mark.slow
def test_notebook_03_smoke_metrics(smoke_run):
    from lib import claims, profiles
    from lib.results import load_metrics

    m = load_metrics(smoke_run, "03_alignment_theory")
    assert set(m["per_model"]) == set(claims.sweep_models(profiles.load("smoke")))  # every sweep model measured
    for key, row in m["per_model"].items():
        assert {"alpha", "rho_lin", "rho_emp", "homogeneity", "cos_saliency", "cos_margin"} <= set(row), key
        assert row["bound_holds_frac"] == 1.0  # implementation check: a theorem holds on every sample
        assert row["rho_emp_success"] == 1.0
        assert 0 <= row["homogeneity"] <= 1 and -1 <= row["cos_saliency"] <= 1 and -1 <= row["cos_margin"] <= 1
        assert 0.5 < row["rho_lin_over_emp_median"] < 2
    for name in ("saliency", "margin"):
        by = m["wang_by_distance"][name]
        assert set(by["matched"]) == set(m["wang_models"]) and len(by["edges"]) == 3


def test_attributions_boundary_alignment_is_the_same_measure():
    from lib import attributions

    model = affine(shared=5.0)
    x = interior_images(8, seed=3)
    pred = model(x).argmax(1)
    found = boundary.boundary_search(model, x, pred, eps_list=[0.05, 0.1, 0.2, 0.4], steps=10)
    cos = al.boundary_normal_cosine(model, x, found.points)
    target = pred.clone()
    target[0] = (pred[0] + 1) % 10  # not F(x): no Wang measure for that row
    out = attributions.boundary_alignment(model, x, target, found)
    assert torch.allclose(out["cos_saliency"][1:], cos.saliency[1:], equal_nan=True)
    assert torch.allclose(out["cos_margin"][1:], cos.margin[1:], equal_nan=True)
    assert out["cos_saliency"][0].isnan() and out["cos_grad_boundary_grad"] is out["cos_saliency"]
    assert torch.allclose(out["cos_saliency"][1:][found.success[1:]], torch.ones(int(found.success[1:].sum())),
                          atol=1e-4)


def test_wang_regression_recovers_a_planted_effect():
    import numpy as np

    rng = np.random.default_rng(0)
    levels, slope, n = {"standard": 0.2, "mid": 0.35, "robust": 0.5}, -0.3, 300
    cos, dist, recipe = {}, {}, {}
    for i, (m, a) in enumerate(levels.items()):
        for s in range(2):
            u = f"{m}@{s}"
            logd = rng.normal(i * 0.8, 0.5, n)  # robust boundaries farther: raw cosines confounded with distance
            cos[u], dist[u], recipe[u] = a + slope * (logd - 0.8) + rng.normal(0, 0.05, n), np.exp(logd), m
    cos["mid@1"][:10] = np.nan  # missing values are left out
    r = alignment_stats.wang_regression(cos, dist, recipe, n_boot=300)
    assert r["slope_lo"] < slope < r["slope_hi"] and r["slope"] == pytest.approx(slope, abs=0.02)
    assert r["reference"] == "standard" and r["per_model"]["standard"]["effect"] == 0
    for m, a in levels.items():
        pm = r["per_model"][m]
        if m != "standard":
            assert pm["lo"] < a - 0.2 < pm["hi"] and pm["lo"] > 0  # the shift at matched distance, found
        level = a + slope * (r["ref_log_distance"] - 0.8)
        assert pm["level_lo"] < level < pm["level_hi"]
        adj = np.concatenate([r["adjusted"][f"{m}@{s}"] for s in range(2)])
        assert np.nanmean(adj) == pytest.approx(pm["level"], abs=1e-9)  # model means of adjusted = model terms
    # raw means run the other way (distance confounds them); the regression undoes it
    raw = {m: np.nanmean(np.concatenate([cos[f"{m}@{s}"] for s in range(2)])) for m in levels}
    assert raw["robust"] < raw["standard"]


def test_etmann_shape_reads_superlinear_and_saturating():
    rho = {"a@0": 0.5, "a@1": 0.6, "b@0": 1.0, "b@1": 1.1, "c@0": 2.0, "c@1": 2.2}
    recipe = {u: u[0] for u in rho}
    strength = {"a": 0.0, "b": 0.5, "c": 1.5}
    sup = alignment_stats.etmann_shape({u: r ** 2 for u, r in rho.items()}, rho, strength, recipe)
    assert sup["shape"] == "superlinear" and sup["loglog_slope"] == pytest.approx(2.0)
    sat = alignment_stats.etmann_shape({u: r ** 0.5 for u, r in rho.items()}, rho, strength, recipe)
    assert sat["shape"] == "saturating" and sat["loglog_slope"] == pytest.approx(0.5)
    assert sat["ratio"]["a"] == pytest.approx((0.5 ** -0.5 + 0.6 ** -0.5) / 2)


def test_unit_metrics_over_seeds_and_sweeps():
    gen = torch.Generator().manual_seed(0)
    sweeps = {"pgd": {"standard": 0.0, "robust": 1.5}, "gradnorm": {"standard": 0.0, "gn": 1.0}}
    per_sample = {}
    for m, level in (("standard", 0.1), ("robust", 0.4), ("gn", 0.2)):
        for s in range(2):
            rho = torch.rand(40, generator=gen) + 0.5 + level
            per_sample[f"{m}@{s}"] = {"alpha": 2 * rho, "rho_emp": rho, "homogeneity": torch.full((40,), level),
                                      "cos_saliency": level + 0.1 * torch.log(rho), "cos_margin": torch.log(rho)}
    per_sample["robust@1"]["rho_emp"][3] = math.nan  # a failed boundary search: None in per_unit
    m = alignment_stats.unit_metrics(per_sample, sweeps, n_boot=200)
    assert set(m["units"]) == set(per_sample) and m["units"]["gn@1"] == {"model": "gn", "seed": 1}
    assert m["per_unit"]["rho"]["robust@1"][3] is None and len(m["per_unit"]["alpha"]["gn@0"]) == 40
    assert set(m["per_unit"]["saliency_matched"]) == {"standard@0", "standard@1", "robust@0", "robust@1"}  # pgd
    reg = m["wang_regression"]["saliency"]
    assert reg["slope"] == pytest.approx(0.1, abs=1e-6)  # noise-free: the planted slope and shift exactly
    assert reg["per_model"]["robust"]["effect"] == pytest.approx(0.3, abs=1e-6)
    assert m["etmann_shape"]["pgd"]["loglog_slope"] == pytest.approx(1.0) and \
        m["etmann_shape"]["pgd"]["ratio"]["robust"] == pytest.approx(2.0)
    t = m["homogeneity_trend"]["pgd"]
    assert t["slope"] == pytest.approx(0.2) and t["lo"] == pytest.approx(0.2) and t["tau"] == pytest.approx(1.0)
    pooled = alignment_stats.pooled(per_sample)
    assert list(pooled) == ["standard", "robust", "gn"] and len(pooled["robust"]["alpha"]) == 80
