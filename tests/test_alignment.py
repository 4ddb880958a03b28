"""Closed forms of Etmann's alignment theory and Wang's boundary normals on models where the truth is known."""

import math

import pytest
import torch
from torch import nn

from lib import alignment as al
from lib import boundary
from lib.models import build


class Affine(nn.Module):
    """Ψ(x) = W·vec(x) + b."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.w, self.b = nn.Parameter(w.float()), nn.Parameter(b.float())

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def interior_images(n, seed=0, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    return (0.5 + spread * torch.randn(n, 1, 8, 8, generator=g)).clamp(0.05, 0.95)


def binary_linear(seed=0, bias=0.0):
    """F = sign(⟨x, z⟩ + b) as two logits ±(⟨x, z⟩ + b)/2; z has zero mean so the boundary crosses the box."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(64, generator=g)
    z -= z.mean()
    w = torch.stack([z / 2, -z / 2])
    return Affine(w, torch.tensor([bias / 2, -bias / 2])), z


def exact_affine_distance(model, x):
    """Distance to the nearest decision boundary of an affine model, in float64 from W and b alone."""
    w, b = model.w.detach().double(), model.b.detach().double()
    logits = x.flatten(1).double() @ w.T + b
    i = logits.argmax(1)
    gaps = logits.gather(1, i[:, None]) - logits
    norms = (w[i][:, None, :] - w[None]).norm(dim=2)
    ratio = gaps / norms
    ratio[torch.arange(len(x)), i] = math.inf
    return ratio.min(1).values.float()


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
    radius, success = boundary.robustness_radius(model, x)
    assert success.all()
    assert torch.allclose(radius, rho, rtol=0.01)
    assert (radius >= rho * (1 - 1e-4)).all()  # a verified adversarial point is never closer than ρ


def test_affine_alignment_differs_from_robustness():
    model, z = binary_linear(bias=0.3)
    x = interior_images(16)
    rho = (x.flatten(1) @ z + 0.3).abs() / z.norm()
    alpha = al.alignment(model, x)
    assert torch.allclose(alpha, (x.flatten(1) @ z).abs() / z.norm(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(boundary.linearized_robustness(model, x), rho, rtol=1e-5, atol=1e-6)
    assert ((alpha - rho).abs() > 1e-3).all()


def test_multiclass_affine_linearized_is_exact_and_attack_within_2_percent():
    g = torch.Generator().manual_seed(1)
    model = Affine(torch.randn(10, 64, generator=g), torch.randn(10, generator=g))
    x = interior_images(32, seed=2)
    exact = exact_affine_distance(model, x)
    assert (exact > 1e-3).all() and (exact < 0.5).all()  # boundaries well inside the [0,1] box
    assert torch.allclose(boundary.linearized_robustness(model, x), exact, rtol=1e-4)
    radius, success = boundary.robustness_radius(model, x)
    assert success.all()
    assert ((radius - exact) / exact).abs().max() < 0.02
    res = boundary.min_norm_attack(model, x, linear_target=False)  # untargeted alone: an upper bound, not always tight
    assert (res.radius >= exact * (1 - 1e-4)).all()
    res = boundary.min_norm_attack(model, x)
    assert ((res.radius - exact) / exact).abs().max() < 0.02
    assert (res.radius >= exact * (1 - 1e-4)).all()
    assert (model(res.points).argmax(1) != model(x).argmax(1)).all()
    assert torch.allclose((res.points - x).flatten(1).norm(dim=1), res.radius, rtol=1e-5)


def test_radius_zero_for_misclassified_label():
    model, _ = binary_linear()
    x = interior_images(4)
    wrong = 1 - model(x).argmax(1)
    radius, success = boundary.robustness_radius(model, x, wrong)
    assert success.all() and (radius == 0).all()


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


def test_boundary_normal_cosine_affine_closed_form():
    g = torch.Generator().manual_seed(1)
    model = Affine(torch.randn(10, 64, generator=g), torch.randn(10, generator=g))
    x = interior_images(16, seed=2)
    res = boundary.min_norm_attack(model, x)
    cos = al.boundary_normal_cosine(model, x, res.points)
    w = model.w.detach()
    i, j = model(x).argmax(1), model(res.points).argmax(1)
    expect = nn.functional.cosine_similarity(w[i], w[i] - w[j], dim=1)
    assert torch.allclose(cos.normal, expect, atol=1e-5)
    assert torch.allclose(cos.direction, expect, atol=1e-2)  # x − x_b is the normal of the nearest facet
    assert torch.allclose(cos.margin, torch.ones(16), atol=1e-5)  # an affine model's normal is the same everywhere


def test_modes_rng_and_bad_input_untouched():
    torch.manual_seed(0)
    model = build("small_cnn", 10, 1, 8, width=4).train()
    x = torch.rand(4, 1, 8, 8)
    state = torch.get_rng_state()
    out = al.measure(model, x, progress=False, steps=5, bisect_steps=2)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(state, torch.get_rng_state())
    assert set(out) >= {"alpha", "rho_lin", "rho_emp", "homogeneity", "bound_holds", "cos_normal", "cos_margin"}
    summary = al.summarize(out)
    assert summary["bound_holds_frac"] == 1.0 and summary["rho_emp_success"] == 1.0
    assert all(v.shape == (4,) for v in out.values())
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        al.alignment(model, x * 2)


# ---------------------------------------------------------------- notebook 03 at smoke (shared pipeline run)

@pytest.mark.slow
def test_notebook_03_smoke_metrics(smoke_run):
    from lib.results import load_metrics

    m = load_metrics(smoke_run, "03_alignment")
    for kind in ("pgd", "gradnorm"):
        assert -1 <= m["spearman"][kind] <= 1
    for key in ("standard", "robust"):
        assert -1 <= m["boundary_cosine"][key] <= 1
    for key, row in m["per_model"].items():
        assert {"alpha", "rho_lin", "rho_emp", "homogeneity", "bound_holds_frac"} <= set(row), key
        assert row["bound_holds_frac"] == 1.0  # a theorem: it must hold on every sample
        assert row["rho_emp_success"] == 1.0
        assert 0 <= row["homogeneity"] <= 1
        assert 0.5 < row["rho_lin_over_emp_median"] < 2
