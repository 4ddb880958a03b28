"""How concentrated, coherent and complete an attribution map is: per-image measures of (N,C,H,W) maps.

None of the papers defines a sharpness measure; these are well-defined stand-ins (docs/science.md §4).

Which measure decides "more concentrated" (fixed before any of our numbers were looked at): Boychev
describes robust maps as concentrated *on the object* and standard maps as *scattered*, a statement about
where in the image the mass lies, not about how few pixels carry it. So the deciding measure is
`region_mass`: the share of Σ|φ| in the 10 % of the image area (cells of an 8×8 grid) that holds the most.
A map on one object region scores high; scattered maps score near 0.1, including sparse salt-and-pepper
maps, which pixel measures reward. Why not the others:
- Gini of |φ| and top-5 % pixel mass measure pixel sparsity: a few isolated bright pixels anywhere score
  high. Kept as columns.
- Mass on the object needs an object mask (only dark-background data such as Fashion-MNIST has one) and
  is trivial for IG/DeepLift from a black baseline there: (x − 0) is zero on the background, so both
  models put all mass on the object by construction. Reported where a mask exists, as a check that the
  concentrated region is the object.
The claim is read from IG (Boychev's figures), with the profile's IG setting, over the pgd sweep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lib.attributions import Explanations, completeness_gap, ig_options
from lib.boundary import check_target

CONCENTRATION = {"measure": "region10", "method": "ig"}  # the deciding measure and method (see above)
REGION_GRID, REGION_FRAC = 8, 0.10


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


def region_mass(phi: torch.Tensor, frac: float = REGION_FRAC, grid: int = REGION_GRID) -> torch.Tensor:
    """Share of Σ|φ| in the top `frac` of cells of a grid×grid partition of the image (uniform map ≈ frac;
    one blob → 1). Cells are adaptive-average-pooled Σ_c |φ|, so the measure is the same at any image size. (N,)"""
    a = F.adaptive_avg_pool2d(phi.abs().sum(1, keepdim=True).float(), grid).flatten(1)
    k = max(1, round(frac * a.shape[1]))
    return a.topk(k, dim=1).values.sum(1) / a.sum(1)


def relative_error(err: torch.Tensor, model: torch.nn.Module, x, target, baseline, *, trials: int = 1,
                   seed: int = 0, output: str = "logit") -> torch.Tensor:
    """|completeness error| / |F(x) − mean_t F(x′_t)| per image (baseline as in `make_baselines`)."""
    target = check_target(x, target)
    gap = completeness_gap(model, x, target, baseline, trials=trials, seed=seed, output=output)
    return err.abs() / gap.abs().clamp_min(1e-12)


def per_image_metrics(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, exp: Explanations, cfg: dict,
                      seed: int = 0) -> dict:
    """method -> {metric: (N,)}: region10 (deciding), gini, top5, coherence, positive, object (if
    cfg["object_threshold"]), and completeness (|relative error|) for ig, deeplift, big and bdt."""
    frac, thr = cfg.get("top_frac", 0.05), cfg.get("object_threshold")
    out = {}
    for name, phi in exp.maps.items():
        row = {"region10": region_mass(phi), "gini": gini(phi), "top5": top_mass(phi, frac),
               "coherence": coherence(phi), "positive": positive_share(phi)}
        if thr is not None:
            row["object"] = object_share(phi, x, thr)
        if name in ("ig", "deeplift", "big", "bdt"):
            opts = {"baseline": None, "trials": 1, "output": "logit"}
            if name in ("big", "bdt"):
                ok = exp.boundary.success
                opts["baseline"] = torch.where(ok.view(-1, 1, 1, 1), exp.boundary.points, x.float())
            elif name == "ig":
                opts = ig_options(cfg["ig"])
            gap = completeness_gap(model, x, target, seed=seed, **opts)
            rel = (torch.nan_to_num(phi).flatten(1).sum(1) - gap).abs() / gap.abs().clamp_min(1e-12)
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


def _mean(v: torch.Tensor) -> float:
    return float(v.float().nanmean())


def summarize(per_image: dict, seconds: dict, sweep: dict) -> dict:
    """The notebook's metrics from per_image {model: {method: {metric: (N,)}}} and seconds {model: {method: s}}.

    sweep: {model: training ε}, the profile's pgd sweep. Returns
    - "per_method": {method: {model: {<metric>_mean, <metric>_std, completeness_median, seconds}}};
    - "concentration": {"measure", "method", "direction": "higher", "sweep" (models by ε), "eps",
      "per_model": {model: mean deciding measure of the deciding method} (what lib/claims reads),
      "by_method": {model: {method: mean deciding measure}}, "by_measure": {metric: {model: {method: mean}}}};
    - "<metric>": {model: mean over images for the deciding method} for every metric (e.g. "gini").
    """
    per_method = {}
    for key, methods in per_image.items():
        for method, metrics in methods.items():
            row = {f"{m}_{s}": float(getattr(v[~v.isnan()], s)()) if (~v.isnan()).any() else float("nan")
                   for m, v in metrics.items() if m != "completeness" for s in ("mean", "std")}
            if "completeness" in metrics and (~metrics["completeness"].isnan()).any():
                row["completeness_median"] = float(metrics["completeness"].nanmedian())
            row["seconds"] = seconds.get(key, {}).get(method)
            per_method.setdefault(method, {})[key] = row
    order = sorted((k for k in sweep if k in per_image), key=sweep.get)
    names = sorted({m for methods in per_image.values() for row in methods.values() for m in row} - {"completeness"})
    by_measure = {m: {key: {method: _mean(row[m]) for method, row in per_image[key].items() if m in row}
                      for key in order} for m in names}
    method, deciding = CONCENTRATION["method"], by_measure[CONCENTRATION["measure"]]
    return {
        "per_method": per_method,
        "concentration": {**CONCENTRATION, "direction": "higher", "sweep": order, "eps": {k: sweep[k] for k in order},
                          "per_model": {k: v.get(method) for k, v in deciding.items()}, "by_method": deciding,
                          "by_measure": by_measure},
        **{m: {key: by_measure[m][key][method] for key in order if method in by_measure[m][key]} for m in names},
    }
