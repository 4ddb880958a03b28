"""Etmann et al. (2019) alignment theory and Wang et al. (2022) boundary normals, per sample.

x is always the model input: images (N,C,H,W) in [0,1]. Ψ is the logit vector, F(x) = argmax Ψ(x),
i* = F(x). Every public function is batched and returns (N,) tensors (or a NamedTuple of them).
Normalisation is a layer inside our models, so "homogeneous" and "β" refer to Ψ as a function of pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from lib.attacks import pgd
from lib.data import check_images
from lib.device import exact_fp32
from lib.models import eval_mode
from lib.progress import tqdm

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


class BoundTerms(NamedTuple):
    rho_lin: torch.Tensor  # ρ̃(x) = Ψ†(x)/‖g†‖
    alpha: torch.Tensor    # α(x)
    angle: torch.Tensor    # ‖x‖·‖ḡ† − ḡ‖
    beta: torch.Tensor     # |β†|/‖g†‖

    @property
    def rhs(self) -> torch.Tensor:
        return self.alpha + self.angle + self.beta

    def holds(self, rtol: float = 1e-4) -> torch.Tensor:
        """(N,) bool: ρ̃ ≤ α + ‖x‖‖ḡ†−ḡ‖ + |β†|/‖g†‖, up to float rounding."""
        return self.rho_lin <= self.rhs * (1 + rtol) + 1e-6


class BoundaryCosine(NamedTuple):
    normal: torch.Tensor     # (N,) cos(∇Ψ^{i*}(x), n(x_b)), n(x_b) = ∇(Ψ^{i*} − Ψ^j)(x_b)
    direction: torch.Tensor  # (N,) cos(∇Ψ^{i*}(x), x − x_b)
    margin: torch.Tensor     # (N,) cos(∇(Ψ^{i*} − Ψ^j)(x), n(x_b)): the decision gradient, without the
                             # component shared by all logits, which cancels in n


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


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1)


def _norm(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).norm(dim=1)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _dot(a, b) / (_norm(a) * _norm(b)).clamp_min(1e-30)


# ---------------------------------------------------------------- Etmann: alignment, ρ̃, homogeneity

def alignment(model, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """α(x) = |⟨x, g⟩| / ‖g‖ with g = ∇Ψ^target(x), target = F(x) by default. (N,), ≥ 0, pixel units."""
    check_images(x)
    _, _, g = logit_grad(model, x, target)
    return _dot(x, g).abs() / _norm(g).clamp_min(1e-30)


def alignment_cosine(model, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """⟨x, g⟩ / (‖x‖‖g‖) in [-1, 1], the normalised form Etmann's code logged; α = ‖x‖·|cos|."""
    check_images(x)
    _, _, g = logit_grad(model, x, target)
    return _cos(x, g)


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


def homogeneity_fraction(model, x: torch.Tensor) -> torch.Tensor:
    """|⟨x, g⟩| / (|⟨x, g⟩| + |β(x)|) in [0, 1], g = ∇Ψ^{i*}(x), β = Ψ^{i*}(x) − ⟨x, g⟩. 1 = homogeneous."""
    check_images(x)
    logits, cls, g = logit_grad(model, x)
    hom = _dot(x, g)
    beta = logits.gather(1, cls[:, None]).squeeze(1) - hom
    return hom.abs() / (hom.abs() + beta.abs()).clamp_min(1e-30)


def bound_terms(model, x: torch.Tensor, *, chunk: int | None = None, lin: Linearized | None = None) -> BoundTerms:
    """Terms of Etmann's slide-7 theorem for the binarized classifier Ψ† = Ψ^{i*} − Ψ^{j*}.

    j* attains ρ̃, g = ∇Ψ^{i*}(x), g† = ∇Ψ†(x), β† = Ψ†(x) − ⟨x, g†⟩, v̄ = v/‖v‖. Then
    ρ̃(x) ≤ α(x) + ‖x‖·‖ḡ† − ḡ‖ + |β†|/‖g†‖; `BoundTerms.holds()` checks it per sample.
    lin: `linearize(model, x)` when already computed.
    """
    lin = lin if lin is not None else linearize(model, x, chunk=chunk)
    _, _, g = logit_grad(model, x, lin.pred)
    logits, _, gd = logit_grad(model, x, lin.pred, lin.nearest)
    psi = (logits.gather(1, lin.pred[:, None]) - logits.gather(1, lin.nearest[:, None])).squeeze(1)
    gn, gdn = _norm(g).clamp_min(1e-30), _norm(gd).clamp_min(1e-30)
    unit = g.flatten(1) / gn[:, None]
    unit_d = gd.flatten(1) / gdn[:, None]
    return BoundTerms(
        rho_lin=psi / gdn,
        alpha=_dot(x, g).abs() / gn,
        angle=_norm(x) * (unit_d - unit).norm(dim=1),
        beta=(psi - _dot(x, gd)).abs() / gdn,
    )


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
        d = _norm(xb - x[ok])
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


# ---------------------------------------------------------------- Wang: boundary normals

def boundary_normal_cosine(model, x: torch.Tensor, x_b: torch.Tensor) -> BoundaryCosine:
    """cos(∇Ψ^{i*}(x), n(x_b)) and cos(∇Ψ^{i*}(x), x − x_b), i* = F(x), (N,) each in [-1, 1].

    n(x_b) = ∇(Ψ^{i*} − Ψ^j)(x_b), j the highest other class at x_b: the normal of the boundary between
    the two classes meeting there, pointing into class i*. x_b: boundary points, e.g. `min_norm_attack`.
    Also cos(∇(Ψ^{i*} − Ψ^j)(x), n(x_b)), the same normal's direction at x.
    """
    check_images(x)
    check_images(x_b, "x_b")
    _, pred, g = logit_grad(model, x)
    with torch.no_grad(), eval_mode(model):
        logits_b = model(x_b.float())
    j = logits_b.scatter(1, pred[:, None], -math.inf).argmax(1)
    _, _, n = logit_grad(model, x_b, pred, j)
    _, _, gm = logit_grad(model, x, pred, j)
    return BoundaryCosine(_cos(g, n), _cos(g, x - x_b), _cos(gm, n))


# ---------------------------------------------------------------- everything, for a notebook

@exact_fp32
def measure(model, x: torch.Tensor, *, batch_size: int = 128, chunk: int | None = None, progress: bool = True,
            **attack) -> dict[str, torch.Tensor]:
    """All per-sample quantities of notebook 03 for images x (N,C,H,W) in [0,1]; dict of (N,) CPU tensors.

    `attack` goes to `min_norm_attack`; its points x_b give the boundary cosines (NaN where it failed).
    """
    rows = []
    for start in tqdm(range(0, len(x), batch_size), desc="alignment", disable=not progress):
        xb = x[start:start + batch_size]
        lin = linearize(model, xb, chunk=chunk)
        bt = bound_terms(model, xb, lin=lin)
        mn = min_norm_attack(model, xb, lin=lin, **attack)
        cos = boundary_normal_cosine(model, xb, mn.points)
        nan = torch.full_like(cos.normal, math.nan)
        rows.append({
            "pred": lin.pred, "nearest": lin.nearest, "x_norm": _norm(xb),
            "alpha": bt.alpha, "alpha_cos": alignment_cosine(model, xb),
            "rho_lin": lin.rho, "rho_emp": mn.radius, "success": mn.success,
            "homogeneity": homogeneity_fraction(model, xb),
            "bound_angle": bt.angle, "bound_beta": bt.beta, "bound_holds": bt.holds(),
            "cos_normal": torch.where(mn.success, cos.normal, nan),
            "cos_direction": torch.where(mn.success, cos.direction, nan),
            "cos_margin": torch.where(mn.success, cos.margin, nan),
        })
    return {k: torch.cat([r[k].detach().cpu() for r in rows]) for k in rows[0]}


def summarize(per_sample: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means and standard errors over samples of `measure`'s output (non-finite values left out).

    The empirical ρ is averaged over samples where the attack succeeded; `correct` (N,) bool, when
    present, gives the clean accuracy on these images.
    """
    out = {}
    for k in ("alpha", "alpha_cos", "rho_lin", "rho_emp", "homogeneity", "bound_angle", "bound_beta",
              "cos_normal", "cos_direction", "cos_margin", "x_norm"):
        v = per_sample[k].double()
        v = v[torch.isfinite(v)]
        out[k] = float(v.mean()) if len(v) else math.nan
        out[f"{k}_sem"] = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan
    ok = per_sample["success"] & (per_sample["rho_emp"] > 0) & torch.isfinite(per_sample["rho_lin"])
    ratio = per_sample["rho_lin"][ok] / per_sample["rho_emp"][ok]
    out["rho_lin_over_emp_median"] = float(ratio.median()) if len(ratio) else math.nan
    out["rho_emp_success"] = float(per_sample["success"].float().mean())
    out["bound_holds_frac"] = float(per_sample["bound_holds"].float().mean())
    if "correct" in per_sample:
        out["accuracy"] = float(per_sample["correct"].float().mean())
    return out
