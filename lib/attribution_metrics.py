"""How concentrated, coherent and complete an attribution map is: per-image measures of (N,C,H,W) maps.

None of the papers defines a sharpness measure; these are well-defined stand-ins (papers.md §2): the Gini
index of |φ| and the top-k% mass (sparsity), spatial coherence, positive share and on-object mass (what
Boychev's figures show), and the completeness error of path methods.
"""

from __future__ import annotations

import torch

from lib.attributions import Explanations, _target_logit, completeness_error, make_baseline
from lib.boundary import check_target


def pixel_map(phi: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) → (N,H·W): Σ_c |φ| per pixel."""
    return phi.abs().sum(1).flatten(1)


def gini(phi: torch.Tensor) -> torch.Tensor:
    """Gini index of |φ| per image over pixels: 0 = uniform, → 1 = all mass on one pixel. (N,)"""
    a = pixel_map(phi).sort(1).values
    m = a.shape[1]
    rank = torch.arange(1, m + 1, device=a.device, dtype=a.dtype)
    return ((2 * rank - m - 1) * a).sum(1) / (m * a.sum(1))


def top_mass(phi: torch.Tensor, frac: float = 0.05) -> torch.Tensor:
    """Share of Σ|φ| in the top `frac` of pixels per image (uniform map: `frac`). (N,)"""
    a = pixel_map(phi)
    k = max(1, round(frac * a.shape[1]))
    return a.topk(k, dim=1).values.sum(1) / a.sum(1)


def coherence(phi: torch.Tensor) -> torch.Tensor:
    """Spatial coherence per image: correlation of the signed per-pixel map (Σ_c φ) with itself
    shifted by one pixel, averaged over the two axes. ≈ 0 for scattered noise, → 1 for smooth blobs. (N,)"""
    a = phi.sum(1)

    def corr(u, v):
        u, v = u - u.mean((1, 2), keepdim=True), v - v.mean((1, 2), keepdim=True)
        return (u * v).sum((1, 2)) / (u.pow(2).sum((1, 2)) * v.pow(2).sum((1, 2))).sqrt()

    return 0.5 * (corr(a[:, 1:], a[:, :-1]) + corr(a[:, :, 1:], a[:, :, :-1]))


def positive_share(phi: torch.Tensor) -> torch.Tensor:
    """Σ max(φ,0) / Σ |φ| over pixels of Σ_c φ: 1 = all evidence for the class, 0.5 = mixed signs. (N,)"""
    a = phi.sum(1).flatten(1)
    return a.clamp_min(0).sum(1) / a.abs().sum(1)


def object_share(phi: torch.Tensor, x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Share of Σ|φ| on object pixels, max_c x > threshold (images on a dark background). (N,)"""
    a, mask = pixel_map(phi), (x.amax(1).flatten(1) > threshold).to(phi.dtype)
    return (a * mask).sum(1) / a.sum(1)


def relative_error(err: torch.Tensor, model, x, target, baseline) -> torch.Tensor:
    """|completeness error| / |F(x) − F(x′)| per image."""
    target = check_target(x, target)
    delta = _target_logit(model, x.float(), target) - _target_logit(model, baseline.float(), target)
    return err.abs() / delta.abs().clamp_min(1e-12)


def per_image_metrics(model, x: torch.Tensor, target: torch.Tensor, exp: Explanations, cfg: dict,
                      seed: int = 0) -> dict:
    """method -> {metric: (N,)}: gini, top5, coherence, positive, object (if cfg["object_threshold"]),
    and completeness (|relative error|) for ig, deeplift, big and bdt."""
    frac, thr = cfg.get("top_frac", 0.05), cfg.get("object_threshold")
    out = {}
    for name, phi in exp.maps.items():
        row = {"gini": gini(phi), "top5": top_mass(phi, frac), "coherence": coherence(phi),
               "positive": positive_share(phi)}
        if thr is not None:
            row["object"] = object_share(phi, x, thr)
        if name in ("ig", "deeplift", "big", "bdt"):
            if name in ("big", "bdt"):
                ok = exp.boundary.success
                base = torch.where(ok.view(-1, 1, 1, 1), exp.boundary.points, x.float())
            else:
                base = make_baseline(x.float(), cfg["ig"].get("baseline") if name == "ig" else None, seed)
            err = completeness_error(model, x, target, torch.nan_to_num(phi), base)
            rel = relative_error(err, model, x, target, base)
            row["completeness"] = torch.where(phi.flatten(1).isnan().any(1), torch.nan, rel)
        out[name] = row
    return out


def metric_records(per_image: dict) -> list[dict]:
    """{model: {method: {metric: (N,)}}} → long rows {model, method, image, metric...} for a DataFrame."""
    rows = []
    for model, methods in per_image.items():
        for method, metrics in methods.items():
            n = len(next(iter(metrics.values())))
            for i in range(n):
                rows.append({"model": model, "method": method, "image": i,
                             **{k: float(v[i]) for k, v in metrics.items()}})
    return rows
