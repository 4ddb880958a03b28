"""How concentrated, coherent, complete and faithful an attribution map is: per-image measures of (N,C,H,W) maps,
and the panel of every measure × method over a sweep.

None of the papers defines a sharpness measure; these are well-defined stand-ins (docs/science.md §4). Which one
decides "more concentrated" is registered in analysis.md (read by lib.registry), with its history: region mass
of IG at an 8×8 grid, chosen after the first runs had been seen (it replaced Gini). The panel (`panel`) shows
every other measure beside it: region mass at grids 4, 8, 14 and per pixel (pixel sparsity rewards isolated
bright pixels anywhere; cells reward one region), Gini, top-5 % pixel mass, the share on the object (dark-background
data only, next to the object's share of the image area) and faithfulness gains (lib.faithfulness).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lib import faithfulness, stats
from lib.attributions import BOUNDARY_METHODS, Explanations, completeness_gap, ig_options
from lib.boundary import check_target
from lib.checkpoints import check_finite

REGION_GRID, REGION_FRAC = 8, 0.10
REGION_GRIDS = (4, 8, 14, "pixel")  # region_mass_<grid>; "pixel": one cell per pixel


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


def object_area(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """The object's share of the image area, max_c x > threshold: (N,) — the on-object share of a uniform map."""
    return (x.amax(1).flatten(1) > threshold).float().mean(1)


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


def decision_key(concentration: dict) -> str:
    """The metric name of a registered decision, e.g. {"measure": "region_mass", "grid": 8} → "region_mass_8"."""
    grid = concentration.get("grid")
    return f"{concentration['measure']}_{grid}" if grid is not None else concentration["measure"]


def per_image_metrics(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, exp: Explanations, cfg: dict,
                      seed: int = 0, baseline: torch.Tensor | None = None) -> dict:
    """method -> {metric: (N,)}: region_mass_<g> for g in REGION_GRIDS (top 10 % of cells), gini, top5, coherence,
    positive, object (if cfg["object_threshold"]), completeness (|relative error|) for ig, deeplift, big and bdt,
    and with `baseline` ((1,C,1,1), lib.faithfulness.baseline_image) deletion, insertion and their gains over a
    random order, at cfg["faithfulness"]["steps"] steps (default 20)."""
    frac, thr = cfg.get("top_frac", 0.05), cfg.get("object_threshold")
    out = {}
    for name, phi in exp.maps.items():
        if name not in BOUNDARY_METHODS:  # only boundary methods have NaN rows (no boundary point found)
            check_finite(phi, f"{name} attributions", model)
        row = {f"region_mass_{g}": region_mass(phi, REGION_FRAC, x.shape[-1] if g == "pixel" else g)
               for g in REGION_GRIDS}
        row.update(gini=gini(phi), top5=top_mass(phi, frac), coherence=coherence(phi), positive=positive_share(phi))
        if thr is not None:
            row["object"] = object_share(phi, x, thr)
        if name in ("ig", "deeplift", "big", "bdt"):
            opts = {"baseline": None, "trials": 1, "output": "logit"}
            if name in ("big", "bdt"):
                ok = exp.boundary.success
                opts["baseline"] = torch.where(ok.view(-1, 1, 1, 1), exp.boundary.points, x.float())
            elif name == "ig":
                opts = ig_options(cfg["ig"])
            gap = check_finite(completeness_gap(model, x, target, seed=seed, **opts), "outputs (completeness)", model)
            rel = (torch.nan_to_num(phi).flatten(1).sum(1) - gap).abs() / gap.abs().clamp_min(1e-12)
            row["completeness"] = torch.where(phi.flatten(1).isnan().any(1), torch.nan, rel)
        out[name] = row
    if baseline is not None:
        steps = (cfg.get("faithfulness") or {}).get("steps", 20)
        for name, row in faithfulness.scores(model, x, target, exp.maps, baseline=baseline, steps=steps,
                                             seed=seed).items():
            out[name].update(row)
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


def _recipe(unit: str) -> str:
    return stats.recipe_of(unit)


def summarize(per_image: dict, seconds: dict, sweep: dict, registered: dict) -> dict:
    """The notebook's metrics from per_image {unit: {method: {metric: (N,)}}} and seconds {unit: {method: s}}.

    sweep: {recipe: training ε}, the profile's pgd sweep; registered: lib.registry.read(). Returns
    - "per_method": {method: {unit: {<metric>_mean, <metric>_std, completeness_median, seconds}}};
    - "concentration": the registered decision {"measure", "method", "grid", "frac", "direction", "key" (metric
      name), "registered" (commit, date), "sweep" (recipes by ε), "eps", "per_model": {recipe: mean over its
      seeds of the mean over images}, "by_method": {recipe: {method: same}}, "by_measure": {metric: {recipe:
      {method: same}}}};
    - "per_unit": {"concentration": {unit: [per-image values of the decision]}}, "units": {unit: {model, seed}};
    - "<metric>": {recipe: mean for the deciding method} for every metric (e.g. "gini").
    """
    dec = registered["concentration"]
    key, method = decision_key(dec), dec["method"]
    per_method = {}
    for unit, methods in per_image.items():
        for name, metrics in methods.items():
            row = {f"{m}_{s}": float(getattr(v[~v.isnan()], s)()) if (~v.isnan()).any() else float("nan")
                   for m, v in metrics.items() if m != "completeness" for s in ("mean", "std")}
            if "completeness" in metrics and (~metrics["completeness"].isnan()).any():
                row["completeness_median"] = float(metrics["completeness"].nanmedian())
            row["seconds"] = seconds.get(unit, {}).get(name)
            per_method.setdefault(name, {})[unit] = row
    order = sorted({_recipe(u) for u in per_image} & set(sweep), key=sweep.get)
    names = sorted({m for methods in per_image.values() for row in methods.values() for m in row} - {"completeness"})

    def recipe_mean(metric, name, recipe):
        vals = [_mean(per_image[u][name][metric]) for u in per_image
                if _recipe(u) == recipe and metric in per_image[u].get(name, {})]
        return float(np.nanmean(vals)) if vals and np.isfinite(vals).any() else None

    by_measure = {m: {r: {n: recipe_mean(m, n, r) for n in {n for u in per_image if _recipe(u) == r
                                                           for n in per_image[u] if m in per_image[u][n]}}
                      for r in order} for m in names}
    sweep_units = [u for u in per_image if _recipe(u) in sweep and method in per_image[u]]
    return {
        "per_method": per_method,
        "concentration": {**dec, "key": key, "registered": registered.get("registered"), "sweep": order,
                          "eps": {r: sweep[r] for r in order},
                          "per_model": {r: v.get(method) for r, v in by_measure[key].items()},
                          "by_method": by_measure[key], "by_measure": by_measure},
        "per_unit": {"concentration": {u: _floats(per_image[u][method][key]) for u in sweep_units}},
        "units": {u: {"model": _recipe(u), "seed": int(u.rpartition("@")[2] or 0)} for u in per_image},
        **{m: {r: by_measure[m][r][method] for r in order if method in by_measure[m][r]} for m in names},
    }


def _floats(v: torch.Tensor) -> list:
    return [None if math.isnan(t) else t for t in v.float().tolist()]


def panel(per_image: dict, sweep: dict, registered: dict, methods, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Every registered panel measure × method over the sweep's units: {"rows": [{"measure", "method", "grid",
    "direction_claimed", "per_recipe": {recipe: {"mean", "lo", "hi"}}, "tau", "p", "sign", "agrees"}...],
    "count": {"agree", "total", "significant"}}. Intervals: lib.stats.hierarchical (seeds, then images);
    τ and its one-sided p in the claimed direction: lib.stats.trend_test over units. The concentration measures claim
    the registered direction ("higher": more concentrated, more on the object), the faithfulness gains "higher"."""
    direction = registered["concentration"]["direction"]
    units = [u for u in per_image if _recipe(u) in sweep]
    rows = []
    for measure in registered["panel"]["measures"]:
        for method in methods:
            have = [u for u in units if measure in per_image[u].get(method, {})]
            if not have:
                continue
            per_unit = {u: per_image[u][method][measure].float().numpy() for u in have}
            table = stats.hierarchical(per_unit, n_boot=n_boot, seed=seed).table()
            d = 1 if measure.endswith("_gain") or direction == "higher" else -1  # gains: always "more faithful"
            tr = stats.trend_test(stats.unit_means(per_unit), sweep, direction=d, seed=seed)
            sign = 0 if not math.isfinite(tr["tau"]) else int(np.sign(tr["tau"]))
            grid = measure.rpartition("_")[2] if measure.startswith("region_mass") else None
            rows.append({"measure": measure, "method": method, "grid": grid,
                         "direction_claimed": "higher" if d > 0 else "lower",
                         "per_recipe": {r: {k: table[r][k] for k in ("mean", "lo", "hi")}
                                        for r in sorted(table, key=sweep.get)},
                         "tau": tr["tau"], "p": tr["p"], "sign": sign, "agrees": sign == d})
    finite = [r for r in rows if r["sign"] != 0]
    return {"rows": rows, "count": {"agree": sum(r["agrees"] for r in finite), "total": len(finite),
                                    "significant": sum(r["agrees"] and r["p"] < 0.05 for r in finite)}}


def panel_table(panel_metrics: dict, sanity: dict | None = None) -> list[dict]:
    """The panel's rows flattened for a DataFrame: measure, method, one "recipe" column "mean [lo, hi]", τ, p,
    and with `sanity` (metrics["sanity"]) the method's sanity flag: "pass", "FAILS on <models>" or "not run"."""
    out = []
    for r in panel_metrics["rows"]:
        cells = {k: f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for k, v in r["per_recipe"].items()}
        row = {"measure": r["measure"], "method": r["method"], **cells, "tau": round(r["tau"], 2),
               "p": round(r["p"], 4), "agrees": r["agrees"]}
        if sanity is not None:
            row["sanity"] = sanity_flag(sanity, r["method"])
        out.append(row)
    return out


def sanity_flag(sanity: dict, method: str) -> str:
    """"pass" when the method passed the registered sanity rule on every model checked, else which failed."""
    per_model = sanity.get(method)
    if not per_model:
        return "not run"
    failed = [m for m, v in per_model.items() if v["passes"] is not True]
    return "pass" if not failed else "FAILS on " + ", ".join(failed)


def panel_figure(panel_metrics: dict, sweep: dict, decision: str) -> dict:
    """Long-format data of plotting.concentration_panel from `panel`'s result, the rows with a trend (methods run
    on the whole sweep); decision: "measure · method"."""
    keys = ("measure", "method", "eps", "mean", "lo", "hi", "points")
    out = {k: [] for k in keys}
    for r in panel_metrics["rows"]:
        if r["tau"] is None or not math.isfinite(r["tau"]):
            continue
        points = 0 if r["sign"] == 0 else (1 if r["agrees"] else -1)  # the claimed way, the other, neither
        for recipe, v in r["per_recipe"].items():
            for k, val in zip(keys, (r["measure"], r["method"], sweep[recipe], v["mean"], v["lo"], v["hi"], points)):
                out[k].append(val)
    return {**out, "decision": decision}


def on_object(per_image: dict, x: torch.Tensor, threshold: float | None) -> dict | None:
    """{"object_area": mean share of the image area, "share": {method: {unit: mean on-object share}}}."""
    if threshold is None:
        return None
    share: dict = {}
    for unit, methods in per_image.items():
        for name, row in methods.items():
            share.setdefault(name, {})[unit] = _mean(row["object"])
    return {"object_area": _mean(object_area(x, threshold)), "share": share}
