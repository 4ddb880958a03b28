import random

import numpy as np
import pytest
import torch

from lib import attribution_metrics as M
from lib import attributions as A
from lib import boundary, models


@pytest.fixture(scope="module")
def setup(digits_models, digits_batch):
    """A trained small_cnn, 12 digits and its predictions as targets, a background set."""
    model = digits_models["standard"]
    x, _ = digits_batch
    x, bg = x[:12], x[32:64]
    return model, x, A.logits(model, x).argmax(1), bg


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ---------------------------------------------------------------- integrated gradients

@pytest.mark.parametrize("rule,steps", [("trapezoid", 300), ("gausslegendre", 64)])
def test_ig_completeness_on_small_cnn(setup, rule, steps):
    model, x, t, _ = setup
    phi = A.integrated_gradients(model, x, t, steps=steps, rule=rule, batch_size=256)
    err = A.completeness_error(model, x, t, phi)
    delta = A.target_output(model, x, t) - A.target_output(model, 0 * x, t)
    assert err.abs().max() <= 0.02 * delta.abs().max()
    assert phi.dtype == torch.float32 and phi.shape == x.shape


def test_ig_matches_captum_after_n_over_n_minus_1(setup):
    from captum.attr import IntegratedGradients

    model, x, t, _ = setup
    for n in (8, 50):
        ours = A.integrated_gradients(model, x, t, steps=n)
        theirs = IntegratedGradients(model).attribute(x, target=t, n_steps=n, method="riemann_trapezoid")
        assert _rel(ours, theirs * n / (n - 1)) < 1e-5
    ours = A.integrated_gradients(model, x, t, steps=16, rule="gausslegendre")
    theirs = IntegratedGradients(model).attribute(x, target=t, n_steps=16, method="gausslegendre")
    assert _rel(ours, theirs) < 1e-5


def test_captum_trapezoid_quirk_is_still_there():
    """captum's riemann_trapezoid weights sum to (n−1)/n. If this fails, captum fixed it: drop the n/(n−1) notes."""
    from captum.attr._utils.approximation_methods import Riemann, riemann_builders

    step_sizes, alphas = riemann_builders(Riemann.trapezoid)
    for n in (2, 10, 50):
        assert sum(step_sizes(n)) == pytest.approx((n - 1) / n)
        assert alphas(n) == pytest.approx(np.linspace(0, 1, n).tolist())
    for rule in A.RULES:
        assert A.quadrature(7, rule)[1].sum().item() == pytest.approx(1.0)


def test_ig_batching_and_baselines(setup):
    model, x, t, _ = setup
    full = A.integrated_gradients(model, x, t, steps=10)
    for bs in (7, 30):  # within a step, and whole steps
        assert _rel(A.integrated_gradients(model, x, t, steps=10, batch_size=bs), full) < 1e-5
    sg = A.smoothgrad(model, x, t, samples=6, seed=2)
    assert _rel(A.smoothgrad(model, x, t, samples=6, seed=2, batch_size=5), sg) < 1e-5  # same noise
    x, t = x[:6], t[:6]
    for base in ("uniform", "gaussian", torch.full_like(x[0], 0.5)):
        a = A.integrated_gradients(model, x, t, baseline=base, steps=256, seed=3)
        assert torch.equal(a, A.integrated_gradients(model, x, t, baseline=base, steps=256, seed=3))
        err = A.completeness_error(model, x, t, a, baseline=base, seed=3)
        rel = M.relative_error(err, model, x, t, base, seed=3)
        assert rel.max() < 0.03  # ReLU kinks, not the rule, limit the accuracy (see benchmarks/)
    with pytest.raises(ValueError, match="baseline"):
        A.integrated_gradients(model, x, t, baseline="zeros")


# ---------------------------------------------------------------- expected gradients and shap

def test_expected_gradients_complete_in_expectation(setup):
    model, x, t, bg = setup
    x, t = x[:4], t[:4]
    phi = A.expected_gradients(model, x, t, background=bg, samples=3000, seed=0, batch_size=2000)
    fx = A.logits(model, x).gather(1, t[:, None]).squeeze(1)
    fbg = A.logits(model, bg)[:, t].mean(0)  # E_{x′}[F_t(x′)] over the background
    gap = fx - fbg
    assert (phi.flatten(1).sum(1) - gap).abs().max() < 0.05 * gap.abs().max()


def test_expected_gradients_deterministic_and_agrees_with_shap(setup):
    model, x, t, bg = setup
    a = A.expected_gradients(model, x, t, background=bg, samples=200, seed=1)
    assert torch.equal(a, A.expected_gradients(model, x, t, background=bg, samples=200, seed=1))
    assert _rel(A.expected_gradients(model, x, t, background=bg, samples=200, seed=1, batch_size=100), a) < 1e-5
    assert not torch.equal(a, A.expected_gradients(model, x, t, background=bg, samples=200, seed=2))
    s = A.shap_values(model, x[:4], t[:4], background=bg, samples=200, seed=1)
    assert s.shape == x[:4].shape and s.dtype == torch.float32
    assert np.corrcoef(a[:4].flatten(), s.flatten())[0, 1] > 0.9  # same estimator, different draws


def test_shap_wrapper_leaves_mode_and_numpy_rng_alone(setup):
    model, x, t, bg = setup
    model.train()
    model.body[0].eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    np.random.seed(123)
    state = np.random.get_state()
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    try:
        A.shap_values(model, x[:3], t[:3], background=bg, samples=20, seed=0)
        assert [m.training for m in model.modules()] == modes
        after = np.random.get_state()
        assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
        assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    finally:
        model.eval()


def test_all_methods_leave_model_and_rngs_as_found(setup):
    model, x, t, bg = setup
    cfg = {"methods": list(A.METHODS), "batch_size": 64, "ig": {"steps": 4}, "smoothgrad": {"samples": 3, "sigma": 0.1},
           "eg": {"samples": 4}, "shap": {"samples": 4}, "agi": {"steps": 3, "step_size": 0.05, "classes": 2},
           "boundary": {"eps": [0.5, 2.0], "steps": 5, "refine_steps": 3}}
    model.train()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    try:
        exp = A.explain(model, x[:4], t[:4], cfg, background=bg)
        assert model.training and all(m.training for m in model.modules())
        assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())
        assert all(p.grad is None for p in model.parameters())
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert np.array_equal(np.random.get_state()[1], np_state)
    finally:
        model.eval()
    assert set(exp.maps) == set(A.METHODS)
    for name, phi in exp.maps.items():
        assert phi.shape == x[:4].shape and phi.dtype == torch.float32, name


@pytest.mark.parametrize("arch", models.ARCHS)
def test_deeplift_runs_on_every_model(arch):
    torch.manual_seed(0)
    size = 8 if arch == "small_cnn" else 32
    model = models.build(arch, 5, 3, size, width=4).eval()
    x = torch.rand(2, 3, size, size)
    t = torch.tensor([0, 3])
    phi = A.deeplift(model, x, t)
    assert phi.shape == x.shape and torch.isfinite(phi).all() and phi.abs().sum() > 0
    bdt = A.deeplift(model, x, t, baseline=torch.rand(2, 3, size, size))
    assert torch.isfinite(bdt).all()


# ------------------------------------------------- boundary attributions (the search itself: test_boundary.py)

def test_boundary_failures_are_marked_and_never_used(setup):
    model, x, t, _ = setup
    b = boundary.boundary_search(model, x, t, eps_list=[1e-4], steps=3)
    fail = ~b.success
    assert fail.sum() > 0
    assert b.points[fail].isnan().all() and b.distance[fail].isnan().all() and b.eps[fail].isnan().all()
    for fn in (A.big, A.bsm, A.bdt):
        phi = fn(model, x, t, b)
        assert phi[fail].isnan().all() and not phi[~fail].isnan().any()
    assert boundary.boundary_stats(b)["success_rate"] == pytest.approx(b.success.float().mean().item())


def test_big_is_complete_relative_to_boundary(setup):
    model, x, t, _ = setup
    b = boundary.boundary_search(model, x, t, eps_list=[0.3, 1.0, 3.0], steps=10)
    ok = b.success
    phi = A.big(model, x, t, b, steps=64, rule="gausslegendre")
    err = A.completeness_error(model, x[ok], t[ok], phi[ok], baseline=b.points[ok])
    assert err.abs().max() < 0.05
    assert (phi[ok].flatten(1).sum(1) > 0).all()  # F_t falls from x to the boundary point
    align = A.boundary_alignment(model, x, t, b)
    assert (align["cos_grad_boundary_grad"][ok].abs() <= 1 + 1e-5).all()


def test_agi_shape_determinism_and_sign(setup):
    model, x, t, _ = setup
    a = A.agi(model, x, t, steps=10, step_size=0.05, classes=3, seed=0)
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert _rel(A.agi(model, x, t, steps=10, step_size=0.05, classes=3, seed=0, batch_size=50), a) < 1e-5
    assert (a.flatten(1).sum(1) > 0).float().mean() > 0.9  # the target logit drops along paths to other classes


def test_explain_models_runs_all_methods_on_the_pair_and_sweep_methods_on_the_rest(digits_models, digits_batch):
    x = digits_batch[0][:3]
    nets = {"standard": digits_models["standard"], "pgd_mid": digits_models["robust"]}
    preds = {k: A.logits(m, x).argmax(1) for k, m in nets.items()}
    cfg = {"methods": ["saliency", "ig"], "sweep_methods": ["saliency"], "batch_size": None,
           "ig": {"steps": 4, "baseline": "uniform", "trials": 2, "output": "softmax"},
           "smoothgrad": {"samples": 2, "sigma": 0.1}}
    exps = A.explain_models(nets, x, preds, cfg, background=x, seed=5)
    assert set(exps["standard"].maps) == {"saliency", "ig"} and set(exps["pgd_mid"].maps) == {"saliency"}
    ig = A.integrated_gradients(nets["standard"], x, preds["standard"], steps=4, baseline="uniform", trials=2,
                                output="softmax", seed=5)
    assert torch.allclose(exps["standard"].maps["ig"], ig)
    assert A.method_title("ig", cfg) == "Integrated Gradients (uniform baseline ×2, softmax, 4 steps)"


# ---------------------------------------------------------------- explain: a partial cfg takes the defaults

def _direct(model, x, t, bg, method):
    """`method` called directly with each function's own defaults (boundary methods: Wang's search of DEFAULTS)."""
    b = boundary.boundary_search(model, x, t, eps_list=[0.141, 0.251, 0.3, 0.5, 0.7, 0.9, 1.1], steps=40,
                                 **boundary.WANG) if method in A.BOUNDARY_METHODS else None
    return {"saliency": lambda: A.saliency(model, x, t), "smoothgrad": lambda: A.smoothgrad(model, x, t),
            "ig": lambda: A.integrated_gradients(model, x, t), "eg": lambda: A.expected_gradients(
                model, x, t, background=bg), "shap": lambda: A.shap_values(model, x, t, background=bg),
            "deeplift": lambda: A.deeplift(model, x, t), "agi": lambda: A.agi(model, x, t),
            "big": lambda: A.big(model, x, t, b), "bsm": lambda: A.bsm(model, x, t, b),
            "bsg": lambda: A.bsg(model, x, t, b), "bdt": lambda: A.bdt(model, x, t, b)}[method]()


@pytest.mark.parametrize("method", A.METHODS)
def test_each_method_alone_with_a_minimal_cfg_uses_the_functions_defaults(setup, method):
    model, x, t, bg = setup
    x, t, bg = x[:3], t[:3], bg[:8]
    exp = A.explain(model, x, t, {"methods": [method]}, background=bg)
    assert set(exp.maps) == {method}
    assert not exp.maps[method].isnan().all()  # Wang's ε list finds boundary points on these digits
    assert torch.allclose(exp.maps[method], _direct(model, x, t, bg, method), atol=1e-6, equal_nan=True)
    assert (exp.boundary is not None) == (method in A.BOUNDARY_METHODS)


def test_explain_without_background_or_cfg_sections(setup):
    model, x, t, _ = setup
    exp = A.explain(model, x[:2], t[:2], {"methods": ["saliency"]})  # the call of issue 17: no KeyError
    assert torch.equal(exp.maps["saliency"], A.saliency(model, x[:2], t[:2]))
    partial = A.explain(model, x[:2], t[:2], {"methods": ["ig"], "ig": {"steps": 8}})  # a section in part
    assert torch.equal(partial.maps["ig"], A.integrated_gradients(model, x[:2], t[:2], steps=8))
    with pytest.raises(ValueError, match="background"):
        A.explain(model, x[:2], t[:2], {"methods": ["eg"]})
    assert A.DEFAULTS["ig"]["steps"] == 50 and A.with_defaults(None) == A.DEFAULTS  # a copy, never a mutation
    A.with_defaults({"ig": {"steps": 3}})
    assert A.DEFAULTS["ig"]["steps"] == 50
