"""The nearest decision boundary: linearized distance ρ̃ (exact for affine models), PGD searches over an ε
list (Wang et al. 2022's boundary points) and the minimum-norm attack ρ (Etmann et al. 2019).

Attributions (BIG, BSM, BSG, BDT) and alignment (ρ, boundary-normal cosines) both take their boundary
points from here. x: (N,C,H,W) float in [0,1]; distances are L2 in pixel units.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from lib.attacks import pgd
from lib.data import check_images
from lib.models import eval_mode

CHUNK_BYTES = {"cpu": 2 * 2**20, "other": 256 * 2**20}  # one class chunk of the Jacobian; small chunks
# stay in cache on a CPU (2.4x faster than one 100 MiB chunk for 1000 classes), large ones fill a GPU
SHRINK = 0.85  # bisection probes at least SHRINK·radius: PGD's first hit is usually within 15% of ρ


class Linearized(NamedTuple):
    rho: torch.Tensor      # (N,) linearized robustness ρ̃(x)
    pred: torch.Tensor     # (N,) i* = F(x)
    nearest: torch.Tensor  # (N,) the j ≠ i* attaining the minimum


class MinNorm(NamedTuple):
    radius: torch.Tensor   # (N,) ‖x_b − x‖ of the closest adversarial point found; inf where none
    success: torch.Tensor  # (N,) bool: an adversarial point was found (and verified)
    points: torch.Tensor   # (N,C,H,W) x_b, just across the decision boundary; x where no success



def check_target(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Validates images x and returns target as (N,) long on x's device; a clear error otherwise."""
    check_images(x)
    target = torch.as_tensor(target, device=x.device).long().flatten()
    if target.shape != (len(x),):
        raise ValueError(f"target must hold one class index per image ({len(x)}), got shape {tuple(target.shape)}")
    return target


def logits(model, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits (N, K) in eval mode, without gradients."""
    with torch.no_grad(), eval_mode(model):
        return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


# ---------------------------------------------------------------- gradients

def logit_grad(model, x: torch.Tensor, cls: torch.Tensor | None = None, other: torch.Tensor | None = None):
    """(logits (N,K), cls (N,), ∇(Ψ^cls − Ψ^other)(x) (N,C,H,W)); cls defaults to F(x), `other` to none.

    Per-sample gradients from one backward pass: the model runs in eval mode, so samples are independent.
    """
    with eval_mode(model), torch.enable_grad():
        xg = x.detach().float().requires_grad_(True)
        logits = model(xg)
        if cls is None:
            cls = logits.argmax(1)
        out = logits.gather(1, cls[:, None])
        if other is not None:
            out = out - logits.gather(1, other[:, None])
        (g,) = torch.autograd.grad(out.sum(), xg)
    return logits.detach(), cls, g


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1)


def norm(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).norm(dim=1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return dot(a, b) / (norm(a) * norm(b)).clamp_min(1e-30)


# ---------------------------------------------------------------- linearized robustness ρ̃ (Etmann)

def linearize(model, x: torch.Tensor, *, chunk: int | None = None) -> Linearized:
    """ρ̃(x) = min over all j ≠ i* of (Ψ^{i*} − Ψ^j) / ‖∇Ψ^{i*} − ∇Ψ^j‖, and the minimising j.

    One forward pass; the Jacobian rows ∇(Ψ^j − Ψ^{i*}) are taken `chunk` classes at a time with a
    batched (vmapped) backward, keeping a running minimum, so memory is O(chunk·N·d) for any number
    of classes. chunk=None picks the largest chunk within CHUNK_BYTES for x's device type.
    """
    check_images(x)
    n, d = len(x), x[0].numel()
    with eval_mode(model), torch.enable_grad():
        xg = x.detach().float().requires_grad_(True)
        logits = model(xg)
        k = logits.shape[1]
        if k < 2:
            raise ValueError("linearized robustness needs a model with at least two classes")
        pred = logits.argmax(1)
        gap = (logits.gather(1, pred[:, None]) - logits).detach()  # (N,K) ≥ 0
        budget = CHUNK_BYTES["cpu" if x.device.type == "cpu" else "other"]
        c = chunk or max(1, min(k, budget // max(1, 4 * n * d)))
        best = torch.full((n,), math.inf, device=x.device)
        nearest = torch.zeros(n, dtype=torch.long, device=x.device)
        rows = torch.arange(n, device=x.device)
        for start in range(0, k, c):
            cls = torch.arange(start, min(start + c, k), device=x.device)
            v = torch.zeros(len(cls), n, k, device=x.device)
            v[torch.arange(len(cls)), :, cls] = 1.0
            v[:, rows, pred] -= 1.0  # row j: ∇(Ψ^j − Ψ^{i*}); zero for j = i*
            (jac,) = torch.autograd.grad(logits, xg, v, retain_graph=True, is_grads_batched=True)
            norms = jac.reshape(len(cls), n, d).norm(dim=2).T  # (N, c)
            ratio = (gap[:, cls] / norms).nan_to_num(nan=math.inf, posinf=math.inf)  # 0/0: a tie that never separates
            ratio[cls[None, :] == pred[:, None]] = math.inf
            val, arg = ratio.min(1)
            better = val < best
            best = torch.where(better, val, best)
            nearest = torch.where(better, cls[arg], nearest)
    return Linearized(best, pred, nearest)


def linearized_robustness(model, x: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """ρ̃(x), (N,) in pixel units; see `linearize`."""
    return linearize(model, x, chunk=chunk).rho


# ---------------------------------------------------------------- boundary search (Wang et al. 2022)

class Boundary(NamedTuple):
    """Closest adversarial points found. Rows where `success` is False are NaN: never usable by mistake."""

    points: torch.Tensor    # (N,C,H,W) in [0,1], NaN where the search failed
    success: torch.Tensor   # (N,) bool: the model's prediction at `points` differs from y
    distance: torch.Tensor  # (N,) L2 ‖points − x‖, NaN where failed
    eps: torch.Tensor       # (N,) the smallest ε of the list that crossed (0: x already not y), NaN where failed


def boundary_search(model, x: torch.Tensor, y: torch.Tensor, *, eps_list, steps: int = 20, rel_step: float = 2.5,
                    refine_steps: int = 10, random_start: bool = False, seed: int = 0) -> Boundary:
    """Nearest decision-boundary point per image by L2 PGD over an increasing ε list.

    y: (N,) the class to leave, normally the model's prediction. For each ε in turn, images not
    yet crossed get `steps` of L2 PGD with the absolute step rel_step·ε/steps (2.5·ε/steps is
    Madry's rule); the first ε whose final point is not classified y is kept. refine_steps > 0
    then bisects along the segment x → x_adv for the closest point that is still not y, so
    each successful point is verified adversarial and within its ε. Images never crossed are
    marked failed and their points are NaN.
    """
    y = check_target(x, y)
    eps_list = [float(e) for e in eps_list]
    if not eps_list or any(e <= 0 for e in eps_list) or eps_list != sorted(eps_list):
        raise ValueError(f"eps_list must be positive and increasing, got {eps_list}")
    x = x.float()
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    adv = torch.full_like(x, float("nan"))
    found = torch.full((len(x),), float("nan"), device=x.device)
    already = logits(model, x).argmax(1) != y
    adv[already], found[already] = x[already], 0.0
    for eps in eps_list:
        todo = found.isnan().nonzero().flatten()
        if len(todo) == 0:
            break
        xa = pgd(model, x[todo], y[todo], eps=eps, step_size=rel_step * eps / steps, steps=steps,
                         norm="l2", random_start=random_start, generator=gen)
        hit = logits(model, xa).argmax(1) != y[todo]
        adv[todo[hit]], found[todo[hit]] = xa[hit], eps
    success = ~found.isnan()
    if refine_steps > 0 and success.any():
        ok = success.nonzero().flatten()
        adv[ok] = _bisect(model, x[ok], adv[ok], y[ok], refine_steps)
    distance = torch.where(success, (adv - x).flatten(1).norm(dim=1), torch.full_like(found, float("nan")))
    return Boundary(adv, success, distance, found)


def _bisect(model, x, xa, y, iters: int) -> torch.Tensor:
    """Closest point x + t(xa − x), t in (0,1], still not classified y (xa itself is not y)."""
    lo, hi = torch.zeros(len(x), device=x.device), torch.ones(len(x), device=x.device)
    shape = [-1] + [1] * (x.ndim - 1)
    for _ in range(iters):
        mid = (lo + hi) / 2
        crossed = logits(model, x + mid.view(shape) * (xa - x)).argmax(1) != y
        hi, lo = torch.where(crossed, mid, hi), torch.where(crossed, lo, mid)
    return x + hi.view(shape) * (xa - x)


def boundary_stats(boundary: Boundary) -> dict:
    """Success rate and mean/median L2 distance over the successful rows."""
    d = boundary.distance[boundary.success]
    return {"success_rate": boundary.success.float().mean().item(),
            "mean_distance": d.mean().item() if len(d) else float("nan"),
            "median_distance": d.median().item() if len(d) else float("nan")}


# ---------------------------------------------------------------- empirical robustness ρ(x)

def _margin(model, x, y):
    """max_{j≠y} Ψ^j − Ψ^y (untargeted), or Ψ^t − Ψ^y when y is (N,2) = (y, t)."""
    logits = model(x)
    if y.ndim == 2:
        return logits.gather(1, y[:, 1:]).squeeze(1) - logits.gather(1, y[:, :1]).squeeze(1)
    own = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    return other - own


@torch.no_grad()
def _is_adv(model, x, y) -> torch.Tensor:
    return model(x).argmax(1) != y


@torch.no_grad()
def _line_search(model, x, x_adv, y, steps: int) -> torch.Tensor:
    """The point x + t(x_adv − x) with the smallest t found by bisection that is still adversarial."""
    delta = x_adv - x
    lo = torch.zeros(len(x), 1, 1, 1, device=x.device)
    hi = torch.ones_like(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        adv = _is_adv(model, x + mid * delta, y).view(-1, 1, 1, 1)
        hi = torch.where(adv, mid, hi)
        lo = torch.where(adv, lo, mid)
    return (x + hi * delta).clamp(0, 1)


def _attack_at(model, x, y, target, eps, steps, line_steps):
    """Closest verified adversarial point from margin-PGD at radius eps (untargeted, and towards `target`)."""
    best_d = torch.full((len(x),), math.inf, device=x.device)
    best_x = x.clone()
    labels = [y] + ([torch.stack([y, target], 1)] if target is not None else [])
    for lab in labels:
        x_adv = pgd(model, x, lab, eps=eps, step_size=2.5 * eps / steps, steps=steps, random_start=False,
                    loss_fn=_margin)
        ok = _is_adv(model, x_adv, y)
        if not ok.any():
            continue
        xb = _line_search(model, x[ok], x_adv[ok], y[ok], line_steps)
        d = norm(xb - x[ok])
        idx = ok.nonzero().squeeze(1)
        better = d < best_d[idx]
        best_d[idx[better]] = d[better]
        best_x[idx[better]] = xb[better]
    return best_d, best_x


def min_norm_attack(model, x: torch.Tensor, y: torch.Tensor | None = None, *, steps: int = 20,
                    bisect_steps: int = 10, rtol: float = 0.01, line_steps: int = 12, max_eps: float | None = None,
                    linear_target: bool = True, chunk: int | None = None, lin: Linearized | None = None) -> MinNorm:
    """Smallest L2 perturbation that changes the label: bisection over ε of margin-PGD (`lib.attacks.pgd`).

    y: the label to leave, (N,); default F(x) (Etmann's ρ). Samples with F(x) ≠ y get radius 0.
    At each ε, PGD maximises the margin max_{j≠y} Ψ^j − Ψ^y and, with `linear_target`, also Ψ^t − Ψ^y
    towards the class t that attains ρ̃(x); a found point is verified and pulled back along its segment
    to the boundary. ε starts at ρ̃(x), doubles until a point is found (up to max_eps, default √d),
    then bisects (probing no lower than SHRINK·hi) until (hi − lo) ≤ rtol·hi, lo being the largest ε at
    which the attack failed.
    Tolerance: radius ≥ ρ always (a verified point); radius ≤ ρ·(1 + rtol) whenever PGD is exact at
    each ε, e.g. for affine models (tested within 2%). lin: `linearize(model, x)` when already computed.
    """
    check_images(x)
    x = x.detach().float()
    n, d = len(x), x[0].numel()
    max_eps = float(max_eps or math.sqrt(d))
    with eval_mode(model):
        lin = lin if lin is not None else linearize(model, x, chunk=chunk)
        y = lin.pred if y is None else y.to(x.device)
        target = lin.nearest if linear_target else None
        radius = torch.full((n,), math.inf, device=x.device)
        points = x.clone()
        done = lin.pred != y
        radius[done] = 0.0
        lo = torch.zeros(n, device=x.device)
        eps = torch.nan_to_num(lin.rho, nan=max_eps, posinf=max_eps).clamp(1e-3 * max_eps, max_eps)

        def attack(idx, e):
            t = None if target is None else target[idx]
            dist, xb = _attack_at(model, x[idx], y[idx], t, e, steps, line_steps)
            ok = dist < radius[idx]
            radius[idx[ok]] = dist[ok]
            points[idx[ok]] = xb[ok]
            return torch.isfinite(dist)

        for _ in range(int(math.log2(max_eps / eps.min())) + 2):  # grow until found or past max_eps
            idx = (~done & ~torch.isfinite(radius) & (lo < max_eps)).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            found = attack(idx, eps[idx])
            lo[idx[~found]] = eps[idx[~found]]
            eps[idx] = torch.where(found, eps[idx], (2 * eps[idx]).clamp(max=max_eps))
        for _ in range(bisect_steps):
            lo = torch.minimum(lo, radius)
            idx = (~done & torch.isfinite(radius) & (radius - lo > rtol * radius)).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            mid = torch.maximum((lo[idx] + radius[idx]) / 2, SHRINK * radius[idx])
            found = attack(idx, mid)
            lo[idx[~found]] = mid[~found]
    return MinNorm(radius, torch.isfinite(radius), points)


def robustness_radius(model, x: torch.Tensor, y: torch.Tensor | None = None, **kwargs):
    """(radius (N,), success (N,) bool): empirical ρ(x) from `min_norm_attack`; radius inf where it failed."""
    res = min_norm_attack(model, x, y, **kwargs)
    return res.radius, res.success
