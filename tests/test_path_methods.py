"""IG with random baselines averaged over trials, softmax outputs, automatic batch sizes, SmoothGrad's σ units."""

import numpy as np
import pytest
import torch
from torch import nn

from lib import attributions as A
from lib import models, path_methods


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _linear(seed=0, classes=5, size=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(size * size, classes)).eval()


def _smooth(seed=0, classes=5, size=6):
    """A tanh MLP: smooth, so IG's quadrature (not ReLU kinks) is the only error."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(size * size, 16), nn.Tanh(), nn.Linear(16, classes)).eval()


@pytest.fixture(scope="module")
def xt():
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([0, 1, 2, 3])


def test_ig_with_uniform_trials_closed_form_on_linear_model(xt):
    """Ψ = Wx + b: IG from baseline x′ is (x − x′) ⊙ W_t exactly, so the trial mean is (x − mean_t x′_t) ⊙ W_t."""
    model, (x, t) = _linear(), xt
    base = A.make_baselines(x, "uniform", trials=4, seed=7)
    assert base.shape == (4, *x.shape) and not torch.equal(base[0], base[1])
    phi = A.integrated_gradients(model, x, t, baseline="uniform", trials=4, seed=7, steps=3)
    w = model[1].weight[t].view_as(x)
    assert torch.allclose(phi, (x - base.mean(0)) * w, atol=1e-6)
    assert torch.equal(A.make_baseline(x, "uniform", seed=7), base[0])  # trial 0 is the one-trial baseline


def test_ig_softmax_is_complete_against_softmax_differences(xt):
    model, (x, t) = _smooth(), xt
    base = A.make_baselines(x, "uniform", trials=3, seed=2)
    prob = lambda z: model(z).softmax(1).gather(1, t[:, None]).squeeze(1)  # noqa: E731
    logit = lambda z: model(z).gather(1, t[:, None]).squeeze(1)  # noqa: E731
    with torch.no_grad():
        for b in (torch.zeros_like(x), *base):  # black, then each trial on its own
            phi = A.integrated_gradients(model, x, t, baseline=b, steps=32, rule="gausslegendre", output="softmax")
            gap = prob(x) - prob(b)
            assert (phi.flatten(1).sum(1) - gap).abs().max() < 1e-4 * gap.abs().max()
            assert (phi.flatten(1).sum(1) - (logit(x) - logit(b))).abs().max() > 1e-2  # not the logit's IG
        avg = A.integrated_gradients(model, x, t, baseline="uniform", trials=3, seed=2, steps=32,
                                     rule="gausslegendre", output="softmax")
        gap = prob(x) - torch.stack([prob(b) for b in base]).mean(0)
        assert (avg.flatten(1).sum(1) - gap).abs().max() < 1e-4 * gap.abs().max()
        err = A.completeness_error(model, x, t, avg, "uniform", 2, trials=3, output="softmax")
        assert err.abs().max() < 1e-4 * gap.abs().max()
    with pytest.raises(ValueError, match="output"):
        A.integrated_gradients(model, x, t, output="probability")


def test_ig_trials_equal_the_mean_of_single_trials_at_any_batch(digits_models, digits_batch):
    model = digits_models["standard"]
    x = digits_batch[0][:5]
    t = A.logits(model, x).argmax(1)
    base = A.make_baselines(x, "uniform", trials=3, seed=4)
    single = torch.stack([A.integrated_gradients(model, x, t, baseline=b, steps=8, output="softmax")
                          for b in base]).mean(0)
    for bs in (None, 3, 7, 1000):  # within a step, across steps and trials, everything at once
        avg = A.integrated_gradients(model, x, t, baseline="uniform", trials=3, seed=4, steps=8, output="softmax",
                                     batch_size=bs)
        assert _rel(avg, single) < 1e-5
    with pytest.raises(ValueError, match="trials"):
        A.make_baselines(x, "uniform", trials=0)


def test_auto_batch_size_is_memory_bounded_and_leaves_no_hooks():
    small = models.build("small_cnn", 10, 1, 28, width=16).eval()
    x = torch.rand(2, 1, 28, 28)
    bs = A.auto_batch_size(small, x)
    assert 1 <= bs <= path_methods.MAX_POINTS and isinstance(bs, int)
    big = models.build("small_cnn", 10, 1, 56, width=16).eval()
    ratio = bs / A.auto_batch_size(big, torch.rand(2, 1, 56, 56))
    assert 3.5 < ratio < 4.5  # 4× the pixels: 4× the activations per point
    assert not any(m._forward_hooks for m in small.modules())


def test_smoothgrad_sigma_units_convert_to_pixels(digits_models, digits_batch):
    model = digits_models["standard"]
    x = digits_batch[0][:4] * 0.5 + 0.2  # each image's range is half its original one
    t = A.logits(model, x).argmax(1)
    std = model.normalize.std.flatten()
    assert torch.allclose(A.noise_scale(model, x, 0.15, "std").flatten(), 0.15 * std.expand(4))
    rng = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    assert torch.allclose(A.noise_scale(model, x, 0.15, "range").flatten(), 0.15 * rng)
    assert torch.all(A.noise_scale(model, x, 0.15, "pixel") == 0.15)
    in_std = A.smoothgrad(model, x, t, samples=4, sigma=0.15, sigma_unit="std", seed=3)
    in_px = A.smoothgrad(model, x, t, samples=4, sigma=0.15 * float(std[0]), sigma_unit="pixel", seed=3)
    assert _rel(in_std, in_px) < 1e-5  # same noise draws, same pixel σ
    assert _rel(in_std, A.smoothgrad(model, x, t, samples=4, sigma=0.15, seed=3)) > 1e-2
    bare = models.build("small_cnn", 10, 1, 8, width=4, normalize=False)
    with pytest.raises(ValueError, match="Normalize"):
        A.noise_scale(bare, x, 0.15, "std")
    with pytest.raises(ValueError, match="sigma_unit"):
        A.noise_scale(model, x, 0.15, "percent")


def test_shap_and_eg_explain_the_softmax_when_asked(digits_models, digits_batch):
    model = digits_models["robust"]
    x, bg = digits_batch[0][:3], digits_batch[0][32:64]
    t = A.logits(model, x).argmax(1)
    eg = A.expected_gradients(model, x, t, background=bg, samples=300, seed=0, output="softmax")
    sv = A.shap_values(model, x, t, background=bg, samples=300, seed=0, output="softmax")
    assert np.corrcoef(eg.flatten(), sv.flatten())[0, 1] > 0.9
    prob = A.target_output(model, x, t, "softmax")
    gap = prob - A.logits(model, bg).softmax(1)[:, t].mean(0)
    assert (eg.flatten(1).sum(1) - gap).abs().max() < 0.1 * gap.abs().max() + 0.02  # complete in expectation
