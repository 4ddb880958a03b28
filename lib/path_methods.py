"""Gradient machinery and path attributions: IG (black / random / given baselines, averaged over trials),
expected gradients and AGI, for `lib.models.Classifier`s, in fp32.

x: (N,C,H,W) float in [0,1]; target: (N,) class indices; every method returns a float32 tensor shaped
like x. `output` picks the function explained: "logit" Ψ_target(x) or "softmax" p_target(x) (Boychev's
IG figures). `batch_size` bounds the model evaluations per forward pass; None picks a memory-bounded
size (`auto_batch_size`). Randomness comes from an explicit `seed`; global RNGs and modes stay as found.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lib import attacks
from lib.boundary import check_target, logits
from lib.data import check_images
from lib.models import eval_mode, unwrap

RULES = ("trapezoid", "gausslegendre")
OUTPUTS = ("logit", "softmax")
GAUSSIAN_BASELINE_STD = 0.25  # "gaussian" baseline: clamp(x + N(0, 0.25²), 0, 1)
# Activation memory one forward+backward pass may hold: 128 MiB on a CPU (small_cnn 28×28: ~370 points; on the quiet
# 2-core reference machine passes of 80–735 points all cost the same and passes of ≥ 1600 points twice as much, as
# the working set leaves the caches; benchmarks/README.md), a quarter of the free memory on a GPU.
CPU_BUDGET_BYTES, GPU_BUDGET_FRACTION, MAX_POINTS = 2**27, 0.25, 4096


# ---------------------------------------------------------------- batching and gradients

def _gen(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def auto_batch_size(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Points per forward+backward pass whose activations fit the device's budget: int in [1, MAX_POINTS].

    Measured, not guessed: one no-grad forward of x[:1] sums every leaf module's output size; a point
    costs twice that (activation and its gradient).
    """
    net, sizes = unwrap(model), []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()))
             for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad(), eval_mode(net):
            net(x[:1].float())
    finally:
        for h in hooks:
            h.remove()
    per_point = 2 * (sum(sizes) + x[:1].numel() * 4)
    if x.device.type == "cuda":
        budget = GPU_BUDGET_FRACTION * torch.cuda.mem_get_info(x.device)[0]
    else:
        budget = CPU_BUDGET_BYTES
    return int(max(1, min(MAX_POINTS, budget // per_point)))


def _chunks(n: int, steps: int, batch_size: int):
    """Blocks (k0, k1, i0, i1) of steps × images with at most batch_size points: whole steps when
    batch_size >= n (as captum batches), else slices of images within one step."""
    bs = max(1, int(batch_size))
    if bs >= n:
        passes = -(-steps // (bs // n))
        per = -(-steps // passes)  # equal passes: 50 steps at ≤ 22 per pass run as 17+17+16, not 22+22+6
        for k0 in range(0, steps, per):
            yield k0, min(steps, k0 + per), 0, n
    else:
        for k in range(steps):
            for i0 in range(0, n, bs):
                yield k, k + 1, i0, min(n, i0 + bs)


def _explained(out: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    """(M,K) logits → (M,) value explained: the target logit or the target's softmax probability."""
    if output == "softmax":
        out = out.softmax(1)
    elif output != "logit":
        raise ValueError(f"unknown output {output!r}; use one of {', '.join(OUTPUTS)}")
    return out.gather(1, target[:, None]).squeeze(1)


def target_output(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, output: str = "logit"):
    """F_target(x) without gradients: (N,) logit or softmax probability."""
    return _explained(logits(model, x.float()), target, output)


def _path_sum(model, x, steps: int, target, batch_size, points, output: str = "logit") -> torch.Tensor:
    """Σ_k w_k · m_k ⊙ ∇F_target(z_k) per image, over `steps` points per image, batch by batch.

    points(k0, k1, i0, i1) -> (z (K·I,C,H,W) step-major, w (K·I,) or None, m (K·I,C,H,W) or None).
    The weights ride on the backward pass; the sum over steps is a reshape, not a scatter.
    """
    n, acc = len(x), None
    batch_size = auto_batch_size(model, x) if batch_size is None else batch_size
    with eval_mode(model), torch.enable_grad():
        for k0, k1, i0, i1 in _chunks(n, steps, batch_size):
            z, w, mult = points(k0, k1, i0, i1)
            z = z.detach().float().requires_grad_(True)
            f = _explained(model(z).float(), target[i0:i1].repeat(k1 - k0), output)
            (g,) = torch.autograd.grad(f.sum() if w is None else (f * w).sum(), z)
            if mult is not None:
                g = g * mult
            if acc is None:
                acc = torch.zeros((n, *g.shape[1:]), dtype=torch.float32, device=g.device)
            acc[i0:i1] += g.view(k1 - k0, i1 - i0, *g.shape[1:]).sum(0)
    return acc


def _grads(model, z: torch.Tensor, target: torch.Tensor, batch_size: int | None = None):
    """Per-point gradients of the target logit and the logits: ((M,C,H,W), (M,K))."""
    bs = auto_batch_size(model, z) if batch_size is None else max(1, int(batch_size))
    grads, outs = [], []
    with eval_mode(model), torch.enable_grad():
        for lo in range(0, len(z), bs):
            zb = z[lo:lo + bs].detach().float().requires_grad_(True)
            out = model(zb).float()
            (g,) = torch.autograd.grad(out.gather(1, target[lo:lo + bs, None]).sum(), zb)
            grads.append(g)
            outs.append(out.detach())
    return torch.cat(grads), torch.cat(outs)


# ---------------------------------------------------------------- baselines and quadrature

def make_baselines(x: torch.Tensor, baseline=None, trials: int = 1, seed: int = 0) -> torch.Tensor:
    """`trials` baselines per image: (T,N,C,H,W).

    baseline: None/"black" → 0; "uniform" → U(0,1) (Boychev's random baseline, drawn anew per trial);
    "gaussian" → clamp(x + N(0, 0.25²), 0, 1); a tensor shaped like x or x[0] (repeated over trials),
    or a (T,N,C,H,W) stack (its own trials).
    """
    trials = int(trials)
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    shape = (trials, *x.shape)
    if baseline is None or (isinstance(baseline, str) and baseline == "black"):
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    if isinstance(baseline, str):
        gen = _gen(seed, x.device)
        if baseline == "uniform":
            return torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype)
        if baseline == "gaussian":
            noise = torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype)
            return (x + GAUSSIAN_BASELINE_STD * noise).clamp(0, 1)
        raise ValueError(f"unknown baseline {baseline!r}; use None, 'black', 'uniform', 'gaussian' or a tensor")
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if b.ndim == x.ndim + 1:
        return b.clone()
    if b.ndim == x.ndim - 1:
        b = b.unsqueeze(0)
    return b.expand_as(x).unsqueeze(0).expand(shape).clone()


def make_baseline(x: torch.Tensor, baseline=None, seed: int = 0) -> torch.Tensor:
    """One baseline x′ like x (the first trial of `make_baselines`): (N,C,H,W)."""
    return make_baselines(x, baseline, 1, seed)[0]


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


# ---------------------------------------------------------------- path methods

def integrated_gradients(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, baseline=None,
                         steps: int = 50, trials: int = 1, output: str = "logit", rule: str = "trapezoid",
                         seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
    """φ = mean over trials t of (x − x′_t) ⊙ ∫₀¹ ∇F(x′_t + α(x − x′_t)) dα, `steps` gradient evaluations
    per trial by `rule`: (N,C,H,W) float32.

    baseline/trials/seed: see `make_baselines`; Boychev's figures use baseline="uniform", trials=10,
    output="softmax". Completeness: Σφ = F(x) − mean_t F(x′_t) up to the quadrature error.
    All trials × steps points of an image share one batched pass.
    """
    target = check_target(x, target)
    x = x.float()
    base = make_baselines(x, baseline, trials, seed)
    check_images(base.flatten(0, 1), "baseline")
    alphas, w = (t.to(x.device) for t in quadrature(steps, rule))
    trials, diff = len(base), x[None] - base  # (T,N,C,H,W)
    w = w / trials

    def points(k0, k1, i0, i1):  # point s = trial s // steps, node s % steps; step-major as captum
        s = torch.arange(k0, k1, device=x.device)
        tr, a = s // steps, alphas[s % steps].view(-1, 1, *([1] * (x.ndim - 1)))
        d = diff[tr, i0:i1]
        z = base[tr, i0:i1] + a * d
        return z.flatten(0, 1), w[s % steps].repeat_interleave(i1 - i0), (d.flatten(0, 1) if trials > 1 else None)

    phi = _path_sum(model, x, trials * steps, target, batch_size, points, output)
    return phi if trials > 1 else diff[0] * phi


def completeness_gap(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, baseline=None, *,
                     trials: int = 1, seed: int = 0, output: str = "logit") -> torch.Tensor:
    """F(x) − mean_t F(x′_t): what Σφ of IG should equal, (N,). Same baseline/trials/seed as the attribution."""
    target = check_target(x, target)
    base = make_baselines(x.float(), baseline, trials, seed)
    f_base = torch.stack([target_output(model, b, target, output) for b in base]).mean(0)
    return target_output(model, x, target, output) - f_base


def completeness_error(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, phi: torch.Tensor,
                       baseline=None, seed: int = 0, *, trials: int = 1, output: str = "logit") -> torch.Tensor:
    """Σφ − (F(x) − mean_t F(x′_t)) per image: (N,). Pass the attribution's baseline, trials, seed and output."""
    gap = completeness_gap(model, x, target, baseline, trials=trials, seed=seed, output=output)
    return phi.flatten(1).sum(1) - gap


def expected_gradients(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, background: torch.Tensor,
                       samples: int = 50, output: str = "logit", seed: int = 0,
                       batch_size: int | None = None) -> torch.Tensor:
    """E_{x′~background, α~U(0,1)}[(x − x′) ⊙ ∇F(x′ + α(x − x′))], `samples` draws per image: (N,C,H,W)."""
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

    return _path_sum(model, x, samples, target, batch_size, points, output) / samples


def agi(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, steps: int = 20, step_size: float = 0.05,
        norm: str = "linf", classes: int | None = None, seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
    """Adversarial Gradient Integration (Pan et al. 2021): (N,C,H,W).

    For each false class j (`classes` drawn per image with `seed`, None: all), a targeted PGD
    path runs from x toward j and stops once the prediction is j; φ sums −∇F_target ⊙ dγ along
    every path (trapezoid per step), so Σφ = Σ_j F_target(x) − F_target(path end). Pan et al.
    explain the softmax probability; we explain the logit. Images go in groups of
    batch_size // classes paths; memory ∝ (steps + 1) · group · classes images.
    """
    target = check_target(x, target)
    x = x.float()
    n, k_all = len(x), logits(model, x[:1]).shape[1]
    k = k_all - 1 if classes is None else max(1, min(int(classes), k_all - 1))
    score = torch.rand((n, k_all), generator=_gen(seed, "cpu")).to(x.device)
    score[torch.arange(n), target] = 2.0  # never pick the target itself
    j = score.argsort(1)[:, :k]
    batch_size = auto_batch_size(model, x) if batch_size is None else batch_size
    group = max(1, int(batch_size) // k)
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
