"""Deletion / insertion curves against closed forms on a linear model, and against Quantus' pixel flipping."""

import numpy as np
import pytest
import torch

from lib import faithfulness as F


def linear_model(w: torch.Tensor) -> torch.nn.Module:
    """Class 0's logit is Σ w ⊙ x; class 1's is 0. w: (C,H,W)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(w.numel(), 2, bias=False))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0] = w.flatten()
    return net


def test_deletion_auc_of_a_linear_model_equals_the_closed_form():
    # contributions c_i = w_i·x_i = i (i = 1..P) from a black baseline, one pixel per step, most evidence first:
    # after j deletions the logit is Σ_{i ≤ P−j} i = (P−j)(P−j+1)/2, so the trapezoid area over [0,1] is
    # (1/P)[Σ_m m(m+1)/2 − f_0/2] = (P+1)(P+2)/6 − (P+1)/4.
    h = w_ = 4
    p = h * w_
    x = torch.rand(1, 1, h, w_, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1
    c = torch.randperm(p, generator=torch.Generator().manual_seed(1)).float().add(1).view(1, h, w_)
    net = linear_model(c / x[0])
    phi = (c / x[0] * x[0])[None]                     # IG of a linear model from black: w ⊙ x = c
    cur = F.curves(net, x, torch.tensor([0]), F.order(phi), baseline=torch.zeros(1, 1, 1, 1), steps=p,
                   output="logit")
    expected = (p + 1) * (p + 2) / 6 - (p + 1) / 4
    assert F.auc(cur["deletion"]).item() == pytest.approx(expected, rel=1e-5)
    # linear: deletion + insertion = F(x) + F(baseline) at every step
    total = c.sum().item()
    assert (cur["deletion"] + cur["insertion"]).numpy() == pytest.approx(np.full((1, p + 1), total), rel=1e-5)
    # the best order beats a random one on a linear model
    rnd = F.curves(net, x, torch.tensor([0]), F.random_order(x, 3), baseline=torch.zeros(1, 1, 1, 1), steps=p,
                   output="logit")
    assert F.auc(rnd["deletion"]).item() > expected


def test_steps_fewer_than_pixels_and_mean_baseline():
    x = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    base = F.baseline_image("mean", x)
    assert base.shape == (1, 2, 1, 1) and base.flatten() == pytest.approx(x.mean((0, 2, 3)))
    w = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(1))
    net = linear_model(w)
    phi = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    cur = F.curves(net, x, torch.zeros(3, dtype=torch.long), F.order(phi), baseline=base, steps=4, output="logit")
    full = net(x)[:, 0].detach()
    at_base = net(base.expand_as(x))[:, 0].detach()
    for start, end, curve in ((full, at_base, cur["deletion"]), (at_base, full, cur["insertion"])):
        assert curve[:, 0] == pytest.approx(start, abs=1e-5) and curve[:, -1] == pytest.approx(end, abs=1e-5)
    with pytest.raises(ValueError, match="baseline"):
        F.baseline_image("grey", x)


def test_deletion_curve_agrees_with_quantus_pixel_flipping():
    quantus = pytest.importorskip("quantus", reason="quantus is not installed (optional cross-check)")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 36, 3)).eval()
    x = torch.rand(5, 1, 6, 6)
    y = torch.tensor([0, 1, 2, 0, 1])
    phi = torch.randn(5, 1, 6, 6)
    steps, value = 4, 0.3
    ours = F.curves(net, x, y, F.order(phi), baseline=torch.full((1, 1, 1, 1), value), steps=steps)["deletion"]
    metric = quantus.PixelFlipping(features_in_step=36 // steps, perturb_baseline=value, abs=False, normalise=False,
                                   disable_warnings=True, display_progressbar=False)
    theirs = np.array(metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=phi.numpy(), softmax=True,
                             device="cpu"))
    assert theirs == pytest.approx(ours[:, 1:].numpy(), abs=1e-5)
    a, b = phi[0].flatten().numpy(), torch.randn(36).numpy()
    from scipy.stats import spearmanr

    assert quantus.similarity_func.correlation_spearman(a, b) == pytest.approx(spearmanr(a, b)[0])
