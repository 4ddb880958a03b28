"""Feature attributions and boundary attributions, in fp32, for `lib.models.Classifier`s.

Every method takes x: (N,C,H,W) in [0,1] and target: (N,) class indices, explains the target
*logit*, and returns a float32 tensor shaped like x. Models run in eval mode; their modes,
hooks and the global RNGs (torch, numpy, python) are left as found: randomness comes from
an explicit `seed`. Boundary search and AGI run through `lib.attacks.pgd`.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from lib import attacks
from lib.alignment import boundary_normal_cosine
from lib.boundary import Boundary, boundary_search, check_target, logits
from lib.data import check_images
from lib.device import exact_fp32
from lib.models import eval_mode

RULES = ("trapezoid", "gausslegendre")
GAUSSIAN_BASELINE_STD = 0.25  # "gaussian" baseline: clamp(x + N(0, 0.25²), 0, 1)


# ---------------------------------------------------------------- gradients

def _gen(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def _chunks(n: int, steps: int, batch_size: int | None):
    """Blocks (k0, k1, i0, i1) of steps × images with at most batch_size points: whole steps when
    batch_size >= n (as captum batches), else slices of images within one step."""
    bs = n * steps if batch_size is None else max(1, int(batch_size))
    if bs >= n:
        per = bs // n
        for k0 in range(0, steps, per):
            yield k0, min(steps, k0 + per), 0, n
    else:
        for k in range(steps):
            for i0 in range(0, n, bs):
                yield k, k + 1, i0, min(n, i0 + bs)


def _path_sum(model, n: int, steps: int, target: torch.Tensor, batch_size: int | None, points) -> torch.Tensor:
    """Σ_k w_k · m_k ⊙ ∇F_target(z_k) per image, over `steps` points per image, batch by batch.

    points(k0, k1, i0, i1) -> (z (K·I,C,H,W) step-major, w (K·I,) or None, m (K·I,C,H,W) or None).
    The weights ride on the backward pass; the sum over steps is a reshape, not a scatter.
    """
    acc = None
    with eval_mode(model), torch.enable_grad():
        for k0, k1, i0, i1 in _chunks(n, steps, batch_size):
            z, w, mult = points(k0, k1, i0, i1)
            z = z.detach().float().requires_grad_(True)
            tgt = target[i0:i1].repeat(k1 - k0)
            logit = model(z).float().gather(1, tgt[:, None]).squeeze(1)
            (g,) = torch.autograd.grad(logit.sum() if w is None else (logit * w).sum(), z)
            if mult is not None:
                g = g * mult
            if acc is None:
                acc = torch.zeros((n, *g.shape[1:]), dtype=torch.float32, device=g.device)
            acc[i0:i1] += g.view(k1 - k0, i1 - i0, *g.shape[1:]).sum(0)
    return acc


def _grads(model, z: torch.Tensor, target: torch.Tensor, batch_size: int | None = None):
    """Per-point gradients of the target logit and the logits: ((M,C,H,W), (M,K))."""
    bs = len(z) if batch_size is None else max(1, int(batch_size))
    grads, logits = [], []
    with eval_mode(model), torch.enable_grad():
        for lo in range(0, len(z), bs):
            zb = z[lo:lo + bs].detach().float().requires_grad_(True)
            out = model(zb).float()
            (g,) = torch.autograd.grad(out.gather(1, target[lo:lo + bs, None]).sum(), zb)
            grads.append(g)
            logits.append(out.detach())
    return torch.cat(grads), torch.cat(logits)


def _target_logit(model, x, target):
    return logits(model, x).gather(1, target[:, None]).squeeze(1)


# ---------------------------------------------------------------- gradient methods

def saliency(model, x: torch.Tensor, target: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """∇_x F_target(x): (N,C,H,W)."""
    target = check_target(x, target)
    return _path_sum(model, len(x), 1, target, batch_size, lambda k0, k1, i0, i1: (x[i0:i1], None, None))


def smoothgrad(model, x: torch.Tensor, target: torch.Tensor, *, samples: int = 50, sigma: float = 0.15,
               seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
    """Mean gradient over x + N(0, σ²) (σ in pixel units, noise not clipped): (N,C,H,W).

    The noise is drawn sample by sample for all images, so results do not depend on batch_size.
    """
    target = check_target(x, target)
    x, gen, drawn = x.float(), _gen(seed, x.device), {}

    def points(k0, k1, i0, i1):
        if (k0, k1) not in drawn:
            drawn.clear()
            drawn[(k0, k1)] = torch.randn((k1 - k0, *x.shape), generator=gen, device=x.device)
        z = x[None, i0:i1] + sigma * drawn[(k0, k1)][:, i0:i1]
        return z.flatten(0, 1), None, None

    return _path_sum(model, len(x), samples, target, batch_size, points) / samples


def make_baseline(x: torch.Tensor, baseline=None, seed: int = 0) -> torch.Tensor:
    """Baseline x′ like x: None/"black" → 0, "uniform" → U(0,1), "gaussian" → clamp(x + N(0, 0.25²)), or a tensor."""
    if baseline is None or (isinstance(baseline, str) and baseline == "black"):
        return torch.zeros_like(x)
    if isinstance(baseline, str):
        gen = _gen(seed, x.device)
        if baseline == "uniform":
            return torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        if baseline == "gaussian":
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            return (x + GAUSSIAN_BASELINE_STD * noise).clamp(0, 1)
        raise ValueError(f"unknown baseline {baseline!r}; use None, 'black', 'uniform', 'gaussian' or a tensor")
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if b.ndim == x.ndim - 1:
        b = b.unsqueeze(0)
    return b.expand_as(x).clone()


def quadrature(steps: int, rule: str = "trapezoid") -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes α and weights w on [0,1] with Σw = 1; `steps` gradient evaluations.

    trapezoid: α = linspace(0,1,steps), w = 1/(steps−1) with halved ends. (captum's
    riemann_trapezoid uses the same nodes but weights 1/steps, which sum to (steps−1)/steps.)
    """
    if rule == "trapezoid":
        if steps < 2:
            raise ValueError(f"the trapezoid rule needs steps >= 2, got {steps}")
        alphas = torch.linspace(0, 1, steps, dtype=torch.float64)
        w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        w[0] /= 2
        w[-1] /= 2
    elif rule == "gausslegendre":
        if steps < 1:
            raise ValueError(f"Gauss-Legendre needs steps >= 1, got {steps}")
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas, w = torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    else:
        raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    return alphas.float(), w.float()


def integrated_gradients(model, x: torch.Tensor, target: torch.Tensor, *, baseline=None, steps: int = 50,
                         batch_size: int | None = None, rule: str = "trapezoid", seed: int = 0) -> torch.Tensor:
    """φ = (x − x′) ⊙ ∫₀¹ ∇F(x′ + α(x − x′)) dα by `rule` with `steps` gradient evaluations.

    baseline: see `make_baseline` (random ones drawn with `seed`). batch_size bounds the points
    per forward pass (None: all N·steps at once). Returns (N,C,H,W) float32.
    """
    target = check_target(x, target)
    x = x.float()
    base = make_baseline(x, baseline, seed)
    check_images(base, "baseline")
    alphas, w = (t.to(x.device) for t in quadrature(steps, rule))
    n, diff = len(x), x - base

    def points(k0, k1, i0, i1):  # step-major, as captum orders its expansion
        a = alphas[k0:k1].view(-1, *([1] * x.ndim))
        z = base[None, i0:i1] + a * diff[None, i0:i1]
        return z.flatten(0, 1), w[k0:k1].repeat_interleave(i1 - i0), None

    return diff * _path_sum(model, n, steps, target, batch_size, points)


def completeness_error(model, x: torch.Tensor, target: torch.Tensor, phi: torch.Tensor, baseline=None,
                       seed: int = 0) -> torch.Tensor:
    """Σφ − (F(x) − F(x′)) per image: (N,). Pass the same baseline and seed as to the attribution."""
    target = check_target(x, target)
    base = make_baseline(x.float(), baseline, seed)
    delta = _target_logit(model, x.float(), target) - _target_logit(model, base, target)
    return phi.flatten(1).sum(1) - delta


def expected_gradients(model, x: torch.Tensor, target: torch.Tensor, *, background: torch.Tensor,
                       samples: int = 50, seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
    """E_{x′~background, α~U(0,1)}[(x − x′) ⊙ ∇F(x′ + α(x − x′))], `samples` draws per image."""
    target = check_target(x, target)
    check_images(background, "background")
    x, bg = x.float(), background.float().to(x.device)
    n, gen = len(x), _gen(seed, "cpu")
    idx = torch.randint(len(bg), (samples, n), generator=gen).to(x.device)
    alpha = torch.rand((samples, n), generator=gen).to(x.device)

    def points(k0, k1, i0, i1):  # (x − x′) differs per sample, so it multiplies each gradient
        b = bg[idx[k0:k1, i0:i1]]  # (K, I, C, H, W)
        a = alpha[k0:k1, i0:i1].view(k1 - k0, i1 - i0, *([1] * (x.ndim - 1)))
        d = x[None, i0:i1] - b
        return (b + a * d).flatten(0, 1), None, d.flatten(0, 1)

    return _path_sum(model, n, samples, target, batch_size, points) / samples


def shap_values(model, x: torch.Tensor, target: torch.Tensor, *, background: torch.Tensor, samples: int = 200,
                seed: int = 0, batch_size: int = 50) -> torch.Tensor:
    """shap.GradientExplainer's expected gradients of the target logit: (N,C,H,W) float32.

    One explainer per distinct target explains only that output (shap's single-output path).
    Restores the model's modes and the numpy/torch/python RNG states, which shap changes.
    """
    import shap

    target = check_target(x, target)
    check_images(background, "background")
    states = (np.random.get_state(), torch.get_rng_state(), random.getstate())
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    try:
        with eval_mode(model):
            for c in target.unique().tolist():
                rows = (target == c).nonzero().flatten()
                explainer = shap.GradientExplainer(_Select(model, c), background.float().to(x.device),
                                                   batch_size=batch_size)
                sv = np.asarray(explainer.shap_values(x[rows].float(), nsamples=samples, rseed=seed))
                if sv.ndim == x.ndim + 1:  # shap >= 0.45: outputs on the last axis
                    sv = sv[..., 0]
                out[rows] = torch.from_numpy(sv).float().to(x.device)
    finally:
        np.random.set_state(states[0])
        torch.set_rng_state(states[1])
        random.setstate(states[2])
    return out


class _Select(torch.nn.Module):
    """model restricted to one logit: (N, 1)."""

    def __init__(self, model, c: int):
        super().__init__()
        self.model, self.c = model, c

    def forward(self, x):
        return self.model(x)[:, self.c:self.c + 1]


def deeplift(model, x: torch.Tensor, target: torch.Tensor, *, baseline=None, seed: int = 0) -> torch.Tensor:
    """captum's DeepLift (Rescale rule) relative to `baseline` (see `make_baseline`): (N,C,H,W).

    captum's MaxPool rule is not conservative (multipliers are undefined where the pool input
    equals its reference), so on max-pooling nets Σφ ≠ F(x) − F(x′); `completeness_error` shows it.
    """
    import warnings

    from captum.attr import DeepLift

    target = check_target(x, target)
    x = x.float()
    base = make_baseline(x, baseline, seed)
    with eval_mode(model), torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(hooks|require gradients).*")  # captum's routine notices
        phi = DeepLift(model).attribute(x.clone(), baselines=base, target=target)
    return phi.detach().float()


def _on_boundary(x, boundary: Boundary, fn) -> torch.Tensor:
    out = torch.full(x.shape, float("nan"), dtype=torch.float32, device=x.device)
    ok = boundary.success.nonzero().flatten()
    if len(ok):
        out[ok] = fn(ok)
    return out


def big(model, x, target, boundary: Boundary, **ig_kwargs) -> torch.Tensor:
    """Boundary IG: IG of x relative to its boundary point. NaN rows where the search failed."""
    target = check_target(x, target)
    return _on_boundary(x, boundary, lambda ok: integrated_gradients(
        model, x[ok], target[ok], baseline=boundary.points[ok], **ig_kwargs))


def bsm(model, x, target, boundary: Boundary) -> torch.Tensor:
    """Boundary saliency: ∇F_target at the boundary point. NaN rows where the search failed."""
    target = check_target(x, target)
    return _on_boundary(x, boundary, lambda ok: saliency(model, boundary.points[ok], target[ok]))


def bsg(model, x, target, boundary: Boundary, **sg_kwargs) -> torch.Tensor:
    """Boundary SmoothGrad: SmoothGrad at the boundary point. NaN rows where the search failed."""
    target = check_target(x, target)
    return _on_boundary(x, boundary, lambda ok: smoothgrad(model, boundary.points[ok], target[ok], **sg_kwargs))


def bdt(model, x, target, boundary: Boundary) -> torch.Tensor:
    """Boundary DeepLift: DeepLift of x relative to its boundary point. NaN rows where the search failed."""
    target = check_target(x, target)
    return _on_boundary(x, boundary, lambda ok: deeplift(model, x[ok], target[ok], baseline=boundary.points[ok]))


def agi(model, x: torch.Tensor, target: torch.Tensor, *, steps: int = 20, step_size: float = 0.05,
        norm: str = "linf", classes: int | None = None, seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
    """Adversarial Gradient Integration (Pan et al. 2021): (N,C,H,W).

    For each false class j (`classes` drawn per image with `seed`, None: all), a targeted PGD
    path runs from x toward j and stops once the prediction is j; φ sums −∇F_target ⊙ dγ along
    every path (trapezoid per step), so Σφ = Σ_j F_target(x) − F_target(path end). Pan et al.
    explain the softmax probability; we explain the logit, like every method here. Images go
    in groups of batch_size // classes paths; memory ∝ (steps + 1) · group · classes images.
    """
    target = check_target(x, target)
    x = x.float()
    n, k_all = len(x), logits(model, x[:1]).shape[1]
    k = k_all - 1 if classes is None else max(1, min(int(classes), k_all - 1))
    score = torch.rand((n, k_all), generator=_gen(seed, "cpu")).to(x.device)
    score[torch.arange(n), target] = 2.0  # never pick the target itself
    j = score.argsort(1)[:, :k]
    group = n if batch_size is None else max(1, int(batch_size) // k)
    return torch.cat([_agi_paths(model, x[i:i + group], target[i:i + group], j[i:i + group], steps, step_size,
                                 norm, batch_size) for i in range(0, n, group)])


def _agi_paths(model, x, target, j, steps, step_size, norm, batch_size) -> torch.Tensor:
    n, k = j.shape
    xr, tr, j = x.repeat_interleave(k, 0), target.repeat_interleave(k), j.flatten()
    path = []

    def toward_j(m, z, cls):  # records the path that pgd walks; pgd remains the only loop
        path.append(z.detach())
        return -F.cross_entropy(m(z), cls, reduction="none")

    end = attacks.pgd(model, xr, j, eps=steps * step_size, step_size=step_size, steps=steps, norm=norm,
                      random_start=False, loss_fn=toward_j)
    pts = torch.stack(path + [end])  # (T+1, n·k, C,H,W)
    g, out = _grads(model, pts.flatten(0, 1), tr.repeat(len(pts)), batch_size)
    g, pred = g.view(pts.shape), out.argmax(1).view(len(pts), -1)
    active = ((pred == j).cumsum(0) == 0)[:-1].float()  # segment t counts until the path reaches j
    seg = 0.5 * (g[:-1] + g[1:]) * (pts[:-1] - pts[1:])
    phi = (active.view(*active.shape, *([1] * (x.ndim - 1))) * seg).sum(0)
    return phi.view(n, k, *x.shape[1:]).sum(1)


def boundary_alignment(model, x: torch.Tensor, target: torch.Tensor, boundary: Boundary) -> dict:
    """`lib.alignment.boundary_normal_cosine` as a dict: cos_saliency, cos_margin, distance, cos_direction (N,)
    (aliases cos_grad_boundary_grad, cos_grad_normal); NaN where the search failed or target ≠ F(x)."""
    cos = boundary_normal_cosine(model, x, boundary.points)
    own = logits(model, x).argmax(1) == check_target(x, target)
    out = {k if k == "distance" else f"cos_{k}": torch.where(own, getattr(cos, k), torch.nan)
           for k in ("saliency", "margin", "distance", "direction")}
    return {**out, "cos_grad_boundary_grad": out["cos_saliency"], "cos_grad_normal": out["cos_direction"]}


# ---------------------------------------------------------------- a profile's whole comparison

METHODS = ("saliency", "smoothgrad", "ig", "eg", "shap", "deeplift", "agi", "big", "bsm", "bsg", "bdt")
BOUNDARY_METHODS = ("big", "bsm", "bsg", "bdt")


class Explanations(NamedTuple):
    maps: dict              # method -> (N,C,H,W) float32 (NaN rows: no boundary point found)
    boundary: Boundary | None
    seconds: dict           # method -> wall seconds (boundary search under "boundary_search")


@exact_fp32
def explain(model, x: torch.Tensor, target: torch.Tensor, cfg: dict, *, background: torch.Tensor,
            seed: int = 0) -> Explanations:
    """Run every method of cfg["methods"] with the parameters of a profile's `attributions` section."""
    import time

    unknown = set(cfg["methods"]) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown attribution methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    bs, seconds = cfg.get("batch_size"), {}
    ig = dict(steps=cfg["ig"]["steps"], rule=cfg["ig"].get("rule", "trapezoid"), batch_size=bs)
    sg = dict(samples=cfg["smoothgrad"]["samples"], sigma=cfg["smoothgrad"]["sigma"], seed=seed, batch_size=bs)
    boundary = None
    if set(cfg["methods"]) & set(BOUNDARY_METHODS):
        b, t0 = {k: v for k, v in cfg["boundary"].items() if k != "eps"}, time.perf_counter()
        boundary = boundary_search(model, x, target, eps_list=cfg["boundary"]["eps"], seed=seed, **b)
        seconds["boundary_search"] = time.perf_counter() - t0
    run = {
        "saliency": lambda: saliency(model, x, target),
        "smoothgrad": lambda: smoothgrad(model, x, target, **sg),
        "ig": lambda: integrated_gradients(model, x, target, baseline=cfg["ig"].get("baseline"), seed=seed, **ig),
        "eg": lambda: expected_gradients(model, x, target, background=background, samples=cfg["eg"]["samples"],
                                         seed=seed, batch_size=bs),
        "shap": lambda: shap_values(model, x, target, background=background, samples=cfg["shap"]["samples"],
                                    seed=seed),
        "deeplift": lambda: deeplift(model, x, target),
        "agi": lambda: agi(model, x, target, steps=cfg["agi"]["steps"], step_size=cfg["agi"]["step_size"],
                           classes=cfg["agi"].get("classes"), seed=seed, batch_size=bs),
        "big": lambda: big(model, x, target, boundary, **ig),
        "bsm": lambda: bsm(model, x, target, boundary),
        "bsg": lambda: bsg(model, x, target, boundary, **sg),
        "bdt": lambda: bdt(model, x, target, boundary),
    }
    maps = {}
    for name in cfg["methods"]:
        t0 = time.perf_counter()
        maps[name] = run[name]().detach().float()
        seconds[name] = time.perf_counter() - t0
    return Explanations(maps, boundary, seconds)
