"""The nearest decision boundary: linearized distance ρ̃ (exact for affine models) and ONE search for the
closest adversarial point, `boundary_search`, which serves both papers:

- by default the accurate search (Etmann et al. 2019's empirical robustness ρ, notebook 03): radii ρ̃(x)·2^k
  bracket the boundary, margin-PGD untargeted and towards the class attaining ρ̃, then bisection over ε to
  within rtol (exact to rtol on affine models);
- Wang et al. 2022's search for boundary attributions (BIG/BSM/BSG/BDT): `eps_list=[...]` with `**WANG`:
  CE-loss L2 PGD over the increasing ε list, absolute step rel_step·ε/steps, the smallest ε that flips the
  label, segment bisection, failures NaN.

x: (N,C,H,W) float in [0,1]; distances are L2 in pixel units.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from lib import attacks
from lib.data import check_images
from lib.models import eval_mode

CHUNK_BYTES = {"cpu": 2 * 2**20, "other": 256 * 2**20}  # one class chunk of the Jacobian; small chunks
# stay in cache on a CPU (2.4x faster than one 100 MiB chunk for 1000 classes), large ones fill a GPU
SHRINK = 0.85  # bisection probes at least SHRINK·radius: PGD's first hit is usually within 15% of ρ


class Linearized(NamedTuple):
    rho: torch.Tensor      # (N,) linearized robustness ρ̃(x)
    pred: torch.Tensor     # (N,) i* = F(x)
    nearest: torch.Tensor  # (N,) the j ≠ i* attaining the minimum


class Boundary(NamedTuple):
    """Closest adversarial points found. Rows where `success` is False are NaN: never usable by mistake."""

    points: torch.Tensor    # (N,C,H,W) in [0,1], NaN where the search failed
    success: torch.Tensor   # (N,) bool: the model's prediction at `points` differs from y (verified)
    distance: torch.Tensor  # (N,) L2 ‖points − x‖ ≤ eps, NaN where failed
    eps: torch.Tensor       # (N,) smallest attack radius that crossed (0: x already not y), NaN where failed
    lower: torch.Tensor | None = None  # (N,) largest radius probed where the attack failed (0 if none)


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


# ---------------------------------------------------------------- the one nearest-boundary search

LOSSES = ("ce", "margin")
WANG = {"loss": "ce", "toward_nearest": False, "bisect_steps": 0, "refine_steps": 10}  # with an eps_list: Wang
# et al.'s search (foolbox's L2 PGD on the CE loss, the first ε of the list that flips), bisected along its segment


def _margin(model, x, y):
    """max_{j≠y} Ψ^j − Ψ^y (untargeted), or Ψ^t − Ψ^y when y is (N,2) = (y, t)."""
    out = model(x)
    if y.ndim == 2:
        return out.gather(1, y[:, 1:]).squeeze(1) - out.gather(1, y[:, :1]).squeeze(1)
    own = out.gather(1, y[:, None]).squeeze(1)
    return out.scatter(1, y[:, None], -math.inf).amax(1) - own


def _line_search(model, x, xa, y, steps: int) -> torch.Tensor:
    """Closest point x + t(xa − x), t in (0,1], still not classified y (xa itself is not y)."""
    lo, hi = torch.zeros(len(x), device=x.device), torch.ones(len(x), device=x.device)
    shape = [-1] + [1] * (x.ndim - 1)
    for _ in range(steps):
        mid = (lo + hi) / 2
        crossed = logits(model, x + mid.view(shape) * (xa - x)).argmax(1) != y
        hi, lo = torch.where(crossed, mid, hi), torch.where(crossed, lo, mid)
    return (x + hi.view(shape) * (xa - x)).clamp(0, 1)


def _attack(model, x, y, eps, toward, *, steps, rel_step, loss, refine_steps, random_start, gen):
    """(distance (n,), points): closest verified crossing from L2 PGD at radius eps (n,); inf where none.

    Untargeted PGD on `loss`, and with `toward` (n,) also margin-PGD towards that class; each hit is
    pulled back along its segment to the boundary (refine_steps bisections).
    """
    best_d = torch.full((len(x),), math.inf, device=x.device)
    best_x = x.clone()
    runs = [(y, None if loss == "ce" else _margin)] + ([(torch.stack([y, toward], 1), _margin)]
                                                        if toward is not None else [])
    for lab, fn in runs:
        xa = attacks.pgd(model, x, lab, eps=eps, step_size=rel_step * eps / steps, steps=steps, norm="l2",
                         random_start=random_start, generator=gen, loss_fn=fn)
        ok = (logits(model, xa).argmax(1) != y).nonzero().flatten()
        if len(ok) == 0:
            continue
        xb = _line_search(model, x[ok], xa[ok], y[ok], refine_steps) if refine_steps > 0 else xa[ok]
        d = norm(xb - x[ok])
        better = d < best_d[ok]
        best_d[ok[better]], best_x[ok[better]] = d[better], xb[better]
    return best_d, best_x


def boundary_search(model, x: torch.Tensor, y: torch.Tensor | None = None, *, eps_list=None, steps: int = 20,
                    rel_step: float = 2.5, refine_steps: int = 12, bisect_steps: int = 8, rtol: float = 0.01,
                    loss: str = "margin", toward_nearest: bool = True, max_eps: float | None = None,
                    random_start: bool = False, seed: int = 0, chunk: int | None = None,
                    lin: Linearized | None = None) -> Boundary:
    """Closest point across the decision boundary of y, per image, by L2 PGD at growing radii, then bisection.

    y: (N,) the class to leave; default F(x). Rows already not classified y get distance 0.
    The defaults are the accurate search of notebook 03 (Etmann's ρ); Wang et al.'s ε-list search is
    `boundary_search(model, x, y, eps_list=[...], **WANG)` (CE loss, no target, no bisection over ε).
    1. Bracket: for each ε of eps_list (increasing; default ρ̃(x)·2^k up to max_eps = √d), images not yet
       crossed get `steps` of PGD with the absolute step rel_step·ε/steps (Madry's 2.5·ε/steps); the first
       ε whose point is not y is kept. `loss`: "margin" (max_{j≠y} Ψ^j − Ψ^y) or "ce" (foolbox's L2PGD,
       Wang's code); toward_nearest also runs margin-PGD towards the class attaining ρ̃.
    2. Every hit is verified and, with refine_steps > 0, bisected back along its segment x → x_adv.
    3. bisect_steps > 0: bisection over ε between the largest failed radius `lower` and the distance found
       (probing at least 0.85·distance), until distance − lower ≤ rtol·distance (Etmann's ρ).
    Guarantees: every successful point is verified adversarial, in [0,1], and within its `eps`; so
    distance ≥ ρ(x). When PGD is exact at every radius (affine models with toward_nearest), lower ≤ ρ,
    so distance ≤ ρ/(1 − rtol) once the bisection has converged (at most bisect_steps probes; tested
    with the defaults on affine models). Failures are flagged: success False and NaN points/distance/eps.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    check_images(x)
    x = x.detach().float()
    n, d = len(x), x[0].numel()
    pred = logits(model, x).argmax(1)
    y = pred if y is None else check_target(x, y)
    if eps_list is None or toward_nearest:
        lin = lin if lin is not None else linearize(model, x, chunk=chunk)
    sched = _schedule(eps_list, lin, n, float(max_eps or math.sqrt(d)), x.device)
    toward = lin.nearest if toward_nearest else None
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    kw = dict(steps=steps, rel_step=rel_step, loss=loss, refine_steps=refine_steps, random_start=random_start, gen=gen)
    nan = torch.full((n,), math.nan, device=x.device)
    dist, eps, lower = nan.clone(), nan.clone(), torch.zeros(n, device=x.device)
    points = torch.full_like(x, math.nan)
    already = pred != y
    points[already], dist[already], eps[already] = x[already], 0.0, 0.0

    def probe(idx, e):
        dd, xb = _attack(model, x[idx], y[idx], e, None if toward is None else toward[idx], **kw)
        hit = torch.isfinite(dd)
        points[idx[hit]], dist[idx[hit]], eps[idx[hit]] = xb[hit], dd[hit], e[hit]
        lower[idx[~hit]] = e[~hit]

    for k in range(sched.shape[1]):
        fresh = sched[:, k] > (sched[:, k - 1] if k else 0)  # a clamped schedule repeats max_eps: done
        idx = (dist.isnan() & fresh).nonzero().flatten()
        if len(idx):
            probe(idx, sched[idx, k])
    for _ in range(bisect_steps):
        lower = torch.minimum(lower, dist.nan_to_num(math.inf))  # PGD may find a point below a failed radius
        idx = (~dist.isnan() & (dist - lower > rtol * dist)).nonzero().flatten()
        if len(idx) == 0:
            break
        probe(idx, torch.maximum((lower[idx] + dist[idx]) / 2, SHRINK * dist[idx]))
    return Boundary(points, ~dist.isnan(), dist, eps, lower)


def _schedule(eps_list, lin, n: int, max_eps: float, device) -> torch.Tensor:
    """(N, K) radii of the bracketing phase: the shared eps_list, or ρ̃(x)·2^k clamped to max_eps."""
    if eps_list is not None:
        eps_list = [float(e) for e in eps_list]
        if not eps_list or any(e <= 0 for e in eps_list) or eps_list != sorted(eps_list):
            raise ValueError(f"eps_list must be positive and increasing, got {eps_list}")
        return torch.tensor(eps_list, device=device).expand(n, -1)
    e0 = torch.nan_to_num(lin.rho, nan=max_eps, posinf=max_eps).clamp(1e-3 * max_eps, max_eps)
    k = int(math.ceil(math.log2(max_eps / float(e0.min())))) + 1
    return (e0[:, None] * 2.0 ** torch.arange(k, device=device)).clamp(max=max_eps)


def boundary_stats(boundary: Boundary) -> dict:
    """Success rate and mean/median L2 distance over the successful rows."""
    d = boundary.distance[boundary.success]
    return {"success_rate": boundary.success.float().mean().item(),
            "mean_distance": d.mean().item() if len(d) else float("nan"),
            "median_distance": d.median().item() if len(d) else float("nan")}
