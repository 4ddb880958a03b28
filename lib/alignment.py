"""Etmann et al. (2019) alignment theory and Wang et al. (2022) boundary normals, per sample.

x is always the model input: images (N,C,H,W) in [0,1]. Ψ is the logit vector, F(x) = argmax Ψ(x),
i* = F(x). Every public function is batched and returns (N,) tensors (or a NamedTuple of them).
Normalisation is a layer inside our models, so "homogeneous" and "β" refer to Ψ as a function of pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from lib.boundary import Linearized, boundary_search, cosine, dot, linearize, logit_grad, norm
from lib.checkpoints import check_finite
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
    """Wang et al. 2022's measure at x and its closest boundary point x_b, i* = F(x), j = F(x_b). NaN rows: no x_b."""

    saliency: torch.Tensor   # (N,) cos(∇Ψ^{i*}(x), ∇Ψ^{i*}(x_b)): saliency map vs boundary saliency map (SM vs BSM)
    margin: torch.Tensor     # (N,) cos(∇(Ψ^{i*} − Ψ^j)(x), ∇(Ψ^{i*} − Ψ^j)(x_b)): invariant to a shared logit part
    distance: torch.Tensor   # (N,) ‖x − x_b‖
    direction: torch.Tensor  # (N,) cos(∇Ψ^{i*}(x), x − x_b) (docs/science.md §3, a second view; not Wang's SM/BSM)
    across: torch.Tensor     # (N,) j, the class on the other side (−1 where no x_b)


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
    """Wang's boundary-normal alignment: the same function's gradient at x and at x_b, (N,) each in [-1, 1].

    x: (N,C,H,W) in [0,1]; x_b: boundary points (`boundary_search`), NaN rows allowed (results NaN).
    The mixed cos(∇Ψ^{i*}(x), ∇(Ψ^{i*} − Ψ^j)(x_b)) compares two functions and is not computed.
    """
    check_images(x)
    ok = torch.isfinite(x_b.flatten(1)).all(1).nonzero().flatten()
    out = [torch.full((len(x),), math.nan, device=x.device) for _ in range(4)]
    across = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    if len(ok):
        xa, xb = x[ok], x_b[ok].float()
        check_images(xb, "x_b")
        _, pred, g = logit_grad(model, xa)
        with torch.no_grad(), eval_mode(model):
            j = model(xb).scatter(1, pred[:, None], -math.inf).argmax(1)  # = F(x_b) for a verified crossing
        _, _, gb = logit_grad(model, xb, pred)
        _, _, m = logit_grad(model, xa, pred, j)
        _, _, mb = logit_grad(model, xb, pred, j)
        for t, v in zip(out, (cosine(g, gb), cosine(m, mb), norm(xa - xb), cosine(g, xa - xb))):
            t[ok] = v.float()
        across[ok] = j
    return BoundaryCosine(*out, across)


def cosine_by_distance(distance: dict, cosines: dict, bins: int = 4, min_count: int = 3) -> dict:
    """Wang's cosines against boundary distance: shared quantile bins over all models' distances.

    distance, cosines: {model: (N,) tensor} (NaN rows ignored). Returns edges (bins+1), per model the
    mean cosine and count per bin, and `matched`: per model the mean over the bins where every model
    has ≥ min_count samples (None when no bin is shared): a comparison at matched distance.
    """
    pooled = torch.cat([d[torch.isfinite(d)].double() for d in distance.values()])
    if len(pooled) == 0:
        return {"edges": [], "mean": {}, "count": {}, "matched": dict.fromkeys(distance), "shared_bins": []}
    edges = torch.quantile(pooled, torch.linspace(0, 1, bins + 1, dtype=torch.double))
    mean, count = {}, {}
    for key, d in distance.items():
        c, ok = cosines[key].double(), torch.isfinite(d) & torch.isfinite(cosines[key])
        b = torch.bucketize(d[ok].double(), edges[1:-1])
        count[key] = [int((b == i).sum()) for i in range(bins)]
        mean[key] = [float(c[ok][b == i].mean()) if count[key][i] else math.nan for i in range(bins)]
    shared = [i for i in range(bins) if all(count[k][i] >= min_count for k in distance)]
    matched = {k: (sum(mean[k][i] for i in shared) / len(shared) if shared else None) for k in distance}
    return {"edges": edges.tolist(), "mean": mean, "count": count, "matched": matched, "shared_bins": shared}


# ---------------------------------------------------------------- everything, for a notebook

@exact_fp32
def measure(model, x: torch.Tensor, *, labels: torch.Tensor | None = None, batch_size: int = 128,
            chunk: int | None = None, progress: bool = True, **search) -> dict[str, torch.Tensor]:
    """All per-sample quantities of notebook 03 for images x (N,C,H,W) in [0,1]; dict of (N,) CPU tensors.

    `search` goes to `lib.boundary.boundary_search` (y = F(x)); its points x_b give ρ and Wang's cosines
    (NaN where it failed). labels (N,): adds `correct`.
    """
    rows = []
    for start in tqdm(range(0, len(x), batch_size), desc="alignment", disable=not progress):
        xb = x[start:start + batch_size]
        with torch.no_grad(), eval_mode(model):  # a NaN from the model is an error naming it, not a null metric
            check_finite(model(xb), "logits in alignment.measure", model)
        lin = linearize(model, xb, chunk=chunk)
        bt = bound_terms(model, xb, lin=lin)
        found = boundary_search(model, xb, lin.pred, lin=lin, chunk=chunk, **search)
        cos = boundary_normal_cosine(model, xb, found.points)
        rows.append({
            "pred": lin.pred, "nearest": lin.nearest, "x_norm": norm(xb),
            "alpha": bt.alpha, "alpha_cos": alignment_cosine(model, xb),
            "rho_lin": lin.rho, "rho_emp": found.distance, "rho_lower": found.lower, "success": found.success,
            "homogeneity": homogeneity_fraction(model, xb),
            "bound_angle": bt.angle, "bound_beta": bt.beta, "bound_holds": bt.holds(),
            "cos_saliency": cos.saliency, "cos_margin": cos.margin, "cos_direction": cos.direction,
        })
    out = {k: torch.cat([r[k].detach().cpu() for r in rows]) for k in rows[0]}
    if labels is not None:
        out["correct"] = out["pred"] == labels.cpu()
    return out


def summarize(per_sample: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means and standard errors over samples of `measure`'s output (non-finite values left out).

    The empirical ρ is averaged over samples where the search succeeded; `correct` (N,) bool, when
    present, gives the clean accuracy on these images.
    """
    out = {}
    for k in ("alpha", "alpha_cos", "rho_lin", "rho_emp", "homogeneity", "bound_angle", "bound_beta",
              "cos_saliency", "cos_margin", "cos_direction", "x_norm"):
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


TABLE = ("accuracy", "alpha", "alpha_cos", "rho_lin", "rho_emp", "rho_emp_success", "rho_lin_over_emp_median",
         "homogeneity", "cos_saliency", "cos_margin", "cos_direction", "bound_holds_frac")


def sweep_metrics(per_sample: dict, sweeps: dict, *, bins: int = 4, min_per_bin: int = 5) -> dict:
    """Notebook 03's metrics from {model: `measure` output} and {kind: {model: strength}} (weakest first).

    per_model: `summarize` per model; sweep_table: one row per (sweep, model); wang_by_distance: Wang's
    cosines against boundary distance (`cosine_by_distance`) over the pgd sweep's models (all models if none).
    """
    per_model = {k: summarize(v) for k, v in per_sample.items()}
    table = [{"sweep": kind, "model": k, "strength": s, **{c: per_model[k][c] for c in ("alpha", "rho_lin", "rho_emp")}}
             for kind, members in sweeps.items() for k, s in members.items() if k in per_model]
    wang_models = [k for k in sweeps.get("pgd", per_sample) if k in per_sample]
    dist = {k: per_sample[k]["rho_emp"] for k in wang_models}
    by_distance = {m: cosine_by_distance(dist, {k: per_sample[k][f"cos_{m}"] for k in wang_models}, bins, min_per_bin)
                   for m in ("saliency", "margin")}
    return {"per_model": per_model, "sweep_table": table, "wang_by_distance": by_distance,
            "wang_models": wang_models}


def figure_data(per_sample: dict, metrics: dict) -> dict[str, dict]:
    """Data of notebook 03's figures (name -> keyword arguments of the `lib.plotting` function)."""
    keys, wang = list(per_sample), metrics["wang_models"]
    per, table = metrics["per_model"], metrics["sweep_table"]

    def stacked(names, fields):
        out = {f: torch.cat([per_sample[k][f].float() for k in names]).numpy() for f in fields}
        out["group"] = torch.cat([torch.full((len(per_sample[k]["alpha"]),), i) for i, k in enumerate(names)]).numpy()
        return {**out, "groups": list(names)}

    return {
        "vs_robustness": {"sweep": [r["sweep"] for r in table], "model": [r["model"] for r in table],
                          **{f"{c}{e}": [per[r["model"]][f"{c}{s}"] for r in table]
                             for c in ("alpha", "rho_lin", "rho_emp") for e, s in (("", ""), ("_err", "_sem"))}},
        "linearization": stacked(keys, ("rho_lin", "rho_emp")),
        "homogeneity": {"fraction": stacked(keys, ("homogeneity",))["homogeneity"],
                        "group": stacked(keys, ())["group"], "groups": keys},
        "bound": {"model": keys, **{f: [per[k][c] for k in keys] for f, c in
                                    (("holds", "bound_holds_frac"), ("rho_lin", "rho_lin"), ("alpha", "alpha"),
                                     ("angle", "bound_angle"), ("beta", "bound_beta"))}},
        "cosines": stacked(wang, ("cos_saliency", "cos_margin", "cos_direction")),
        "by_distance": {**stacked(wang, ("rho_emp", "cos_saliency", "cos_margin")),
                        "edges": metrics["wang_by_distance"]["saliency"]["edges"],
                        "saliency_mean": metrics["wang_by_distance"]["saliency"]["mean"],
                        "margin_mean": metrics["wang_by_distance"]["margin"]["mean"]},
    }

