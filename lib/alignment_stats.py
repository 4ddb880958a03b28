"""Notebook 03 over units (every training seed of every sweep member): per-image values for the claims layer,
Wang's cosine as a regression on log boundary distance with a term per model, Etmann's α–ρ shape and the
homogeneity fraction's trend (intervals from `lib.stats`). Inputs are `lib.alignment.measure` outputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lib import stats

PER_UNIT = {"alpha": "alpha", "rho": "rho_emp", "homogeneity": "homogeneity", "cos_saliency": "cos_saliency",
            "cos_margin": "cos_margin"}  # metrics["per_unit"] name -> measure() field


def wang_regression(cos: dict, distance: dict, recipe: dict, *, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> dict:
    """OLS cos ~ model + log(distance): one intercept per model (recipe) and a common slope on log distance.

    cos, distance: {unit: (N,) array}, images aligned across units (NaN / distance ≤ 0: left out); recipe:
    {unit: model}. The first model is the reference. Returns slope (per unit log distance) with its interval,
    per_model {model: {effect, lo, hi, level, level_lo, level_hi}}: `level` is the model's cosine at the
    pooled mean log distance L̄ (matched distance) and `effect` its shift from the reference model's; intervals
    from a percentile bootstrap over images (one image draw shared by every unit: paired); and `adjusted`
    {unit: cos − slope·(log d − L̄)} per image, whose mean per model equals `level` (OLS residuals sum to 0 in
    each dummy's group), so a test over units of these values is a test of the model terms."""
    units = list(cos)
    models = list(dict.fromkeys(recipe[u] for u in units))
    c = np.stack([np.asarray(cos[u], float) for u in units])
    with np.errstate(divide="ignore", invalid="ignore"):
        logd = np.log(np.stack([np.asarray(distance[u], float) for u in units]))
    ok = np.isfinite(c) & np.isfinite(logd)
    if ok.sum() < len(models) + 2:
        raise ValueError(f"wang_regression needs more than {len(models) + 1} finite (cosine, distance) pairs")
    ref_logd = float(logd[ok].mean())
    member = np.array([models.index(recipe[u]) for u in units])

    def fit(weights):  # weights (units, N): image multiplicities of one bootstrap draw (1 = the data)
        w = (weights * ok).ravel()
        xm = np.zeros((len(units), c.shape[1], len(models)))
        xm[np.arange(len(units)), :, member] = 1.0
        design = np.concatenate([xm.reshape(-1, len(models)), np.where(ok, logd - ref_logd, 0).reshape(-1, 1)], 1)
        sw = np.sqrt(w)[:, None]
        beta, *_ = np.linalg.lstsq(design * sw, np.where(ok, c, 0).reshape(-1) * sw[:, 0], rcond=None)
        return beta

    point = fit(np.ones_like(c))
    rng = np.random.default_rng(seed)
    n = c.shape[1]
    boots = np.array([fit(np.broadcast_to(np.bincount(rng.integers(0, n, n), minlength=n), c.shape))
                      for _ in range(n_boot)])
    q = [(1 - level) / 2, (1 + level) / 2]
    per_model = {}
    for i, m in enumerate(models):
        eff, lv = boots[:, i] - boots[:, 0], boots[:, i]
        per_model[m] = {"effect": float(point[i] - point[0]), **dict(zip(("lo", "hi"), np.quantile(eff, q).tolist())),
                        "level": float(point[i]),
                        **dict(zip(("level_lo", "level_hi"), np.quantile(lv, q).tolist()))}
    slope_lo, slope_hi = np.quantile(boots[:, -1], q).tolist()
    adjusted = {u: np.where(ok[k], c[k] - point[-1] * (logd[k] - ref_logd), np.nan) for k, u in enumerate(units)}
    return {"slope": float(point[-1]), "slope_lo": slope_lo, "slope_hi": slope_hi, "ref_log_distance": ref_logd,
            "reference": models[0], "per_model": per_model, "adjusted": adjusted, "n": int(ok.sum())}


def etmann_shape(alpha: dict, rho: dict, strength: dict, recipe: dict) -> dict:
    """Shape of mean α against mean ρ over one sweep (Etmann's slide: α rises with ρ, and how).

    alpha, rho: {unit: mean over images}; strength: {model: training strength}, weakest first; recipe:
    {unit: model}. ratio: per model the mean over its units of α/ρ; loglog_slope k of log α on log ρ over
    units (OLS): k > 1 superlinear growth, k < 1 saturation (sublinear), with `shape` read from the ratio's
    change from the weakest to the strongest model (ratio rising: superlinear; falling: saturating)."""
    units = [u for u in alpha if recipe[u] in strength and np.isfinite(rho.get(u, np.nan)) and rho[u] > 0
             and alpha[u] > 0]
    ratio = {m: float(np.mean([alpha[u] / rho[u] for u in units if recipe[u] == m]))
             for m in strength if any(recipe[u] == m for u in units)}
    x, y = np.log([rho[u] for u in units]), np.log([alpha[u] for u in units])
    k = float(np.polyfit(x, y, 1)[0]) if len(units) > 1 and np.ptp(x) > 0 else math.nan
    first, last = (ratio[m] for m in (next(iter(ratio)), list(ratio)[-1])) if ratio else (math.nan, math.nan)
    shape = "superlinear" if last > first else "saturating" if last < first else "linear"
    return {"ratio": ratio, "loglog_slope": k, "ratio_change": float(last - first) if ratio else math.nan,
            "shape": shape if ratio else None, "units": units}


def pooled(per_sample: dict) -> dict:
    """{unit: measure output} -> {model: every unit's samples of that model concatenated} (figures, per_model)."""
    out: dict = {}
    for u, d in per_sample.items():
        out.setdefault(stats.recipe_of(u), []).append(d)
    return {m: {k: torch.cat([d[k] for d in ds]) for k in ds[0]} for m, ds in out.items()}


def _values(t) -> list:
    return [None if not math.isfinite(v) else v for v in torch.as_tensor(t).double().tolist()]


def unit_metrics(per_sample: dict, sweeps: dict, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Notebook 03's unit-level metrics from {unit: `measure` output} (images aligned across units) and
    {kind: {model: strength}}: per_unit {quantity: {unit: [per image]}} (alpha, rho, homogeneity, cos_saliency,
    cos_margin, and saliency_matched / margin_matched: Wang's cosines adjusted to the pooled mean log distance by
    `wang_regression`'s common slope), units, wang_regression {saliency|margin} over the pgd sweep's units,
    etmann_shape {kind: `etmann_shape`} and homogeneity_trend {kind: slope with its hierarchical-bootstrap
    interval, Kendall's τ and the one-sided permutation p over units (rising)}."""
    units = list(per_sample)
    recipe = {u: stats.recipe_of(u) for u in units}
    per_unit = {q: {u: _values(per_sample[u][f]) for u in units} for q, f in PER_UNIT.items()}
    pgd = [u for u in units if recipe[u] in sweeps.get("pgd", dict.fromkeys(recipe.values()))]
    reg = {}
    for name in ("saliency", "margin"):
        r = wang_regression({u: per_sample[u][f"cos_{name}"].double().numpy() for u in pgd},
                            {u: per_sample[u]["rho_emp"].double().numpy() for u in pgd}, recipe,
                            n_boot=n_boot, seed=seed)
        per_unit[f"{name}_matched"] = {u: _values(torch.from_numpy(v)) for u, v in r.pop("adjusted").items()}
        reg[name] = r
    means = {q: stats.unit_means(per_unit[q]) for q in ("rho", "homogeneity")}
    # α over the images whose boundary search succeeded, the images ρ is averaged over
    means["alpha"] = stats.unit_means({u: [a if r is not None else None for a, r in zip(per_unit["alpha"][u],
                                                                                         per_unit["rho"][u])]
                                       for u in units})
    shape, trend = {}, {}
    for kind, strength in sweeps.items():
        members = [u for u in units if recipe[u] in strength]
        shape[kind] = etmann_shape(means["alpha"], means["rho"], strength, recipe)
        h = stats.hierarchical({u: per_unit["homogeneity"][u] for u in members}, n_boot=n_boot, seed=seed)
        slope, lo, hi = h.slope(strength)
        t = stats.trend_test({u: means["homogeneity"][u] for u in members}, strength, direction=1, seed=seed)
        trend[kind] = {"slope": slope, "lo": lo, "hi": hi, "tau": t["tau"], "p": t["p"],
                       "per_model": h.table()}
    return {"per_unit": per_unit, "units": {u: {"model": recipe[u], "seed": int(u.rpartition("@")[2] or 0)}
                                            for u in units},
            "wang_regression": reg, "etmann_shape": shape, "homogeneity_trend": trend,
            "unit_means": {q: means[q] for q in ("alpha", "rho")}}


def alpha_rho_figure(metrics: dict, sweeps: dict) -> dict:
    """`plotting.alpha_vs_rho` data: unit means of α and ρ (over the images with a boundary point), each sweep's
    models in order of strength."""
    m = metrics["unit_means"]
    return dict(alpha=m["alpha"], rho=m["rho"], sweep_of={k: list(s) for k, s in sweeps.items()},
                recipe={u: metrics["units"][u]["model"] for u in m["alpha"]})
