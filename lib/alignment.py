"""Etmann et al. (2019) alignment theory and Wang et al. (2022) boundary normals, per sample.

x is always the model input: images (N,C,H,W) in [0,1]. Ψ is the logit vector, F(x) = argmax Ψ(x),
i* = F(x). Every public function is batched and returns (N,) tensors (or a NamedTuple of them).
Normalisation is a layer inside our models, so "homogeneous" and "β" refer to Ψ as a function of pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from lib.boundary import Linearized, cosine, dot, linearize, logit_grad, min_norm_attack, norm
from lib.data import check_images
from lib.device import exact_fp32
from lib.models import eval_mode
from lib.progress import tqdm


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


# ---------------------------------------------------------------- Etmann: alignment, ρ̃, homogeneity

def alignment(model, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """α(x) = |⟨x, g⟩| / ‖g‖ with g = ∇Ψ^target(x), target = F(x) by default. (N,), ≥ 0, pixel units."""
    check_images(x)
    _, _, g = logit_grad(model, x, target)
    return dot(x, g).abs() / norm(g).clamp_min(1e-30)


def alignment_cosine(model, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """⟨x, g⟩ / (‖x‖‖g‖) in [-1, 1], the normalised form Etmann's code logged; α = ‖x‖·|cos|."""
    check_images(x)
    _, _, g = logit_grad(model, x, target)
    return cosine(x, g)


def homogeneity_fraction(model, x: torch.Tensor) -> torch.Tensor:
    """|⟨x, g⟩| / (|⟨x, g⟩| + |β(x)|) in [0, 1], g = ∇Ψ^{i*}(x), β = Ψ^{i*}(x) − ⟨x, g⟩. 1 = homogeneous."""
    check_images(x)
    logits, cls, g = logit_grad(model, x)
    hom = dot(x, g)
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
    gn, gdn = norm(g).clamp_min(1e-30), norm(gd).clamp_min(1e-30)
    unit = g.flatten(1) / gn[:, None]
    unit_d = gd.flatten(1) / gdn[:, None]
    return BoundTerms(
        rho_lin=psi / gdn,
        alpha=dot(x, g).abs() / gn,
        angle=norm(x) * (unit_d - unit).norm(dim=1),
        beta=(psi - dot(x, gd)).abs() / gdn,
    )


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
    return BoundaryCosine(cosine(g, n), cosine(g, x - x_b), cosine(gm, n))


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
            "pred": lin.pred, "nearest": lin.nearest, "x_norm": norm(xb),
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
