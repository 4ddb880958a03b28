"""The inference layer: bootstrap intervals, the permutation trend test and Holm's correction.

    per_unit = {"standard@0": [v per image ...], "robust@0": [...], "robust@1": [...]}   # images aligned
    boot = hierarchical(per_unit)                      # seeds, then images (one image draw for every unit)
    boot.interval("robust")                            # (mean, lo, hi), 95 %
    trend_test({u: v}, {"standard": 0.0, "robust": 1.5}, direction=+1)   # Kendall's τ over units, one-sided p
    holm({"a": 0.01, "b": 0.04})

A *unit* is one trained model ("key@seed", lib.profiles); a *recipe* is its key. Values of different units at the
same index j belong to the same image (the same seeded draw), so bootstrap resamples are paired across models.
Pure numpy/scipy; imports nothing from lib.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 2000
N_PERM = 10_000


def recipe_of(unit: str) -> str:
    """'pgd_0.5@1' -> 'pgd_0.5' (the unit id rule of lib.profiles, repeated here to keep this module standalone)."""
    return unit.rpartition("@")[0] or unit


def bootstrap_ci(values, *, statistic=np.nanmean, n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0) -> tuple[float, float, float]:
    """(estimate, lo, hi): percentile bootstrap of `statistic` over the finite entries of 1-D `values`."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (math.nan, math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))
    if statistic in (np.nanmean, np.mean):  # every entry is finite: one vectorised mean over the replicates
        boots = v[idx].mean(axis=1)
    else:
        boots = np.array([statistic(v[i]) for i in idx])
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return (float(statistic(v)), float(lo), float(hi))


@dataclass
class Hierarchical:
    """Point estimates and bootstrap replicates of each recipe's mean (mean over its seeds of each seed's mean
    over images). `boots[r]` has one value per replicate; replicate b used the same image draw for every recipe."""
    point: dict[str, float]
    boots: dict[str, np.ndarray]
    seeds: dict[str, int]
    n: int
    level: float = LEVEL

    def interval(self, recipe: str) -> tuple[float, float, float]:
        b = self.boots[recipe]
        b = b[np.isfinite(b)]
        if len(b) == 0:
            return (self.point[recipe], math.nan, math.nan)
        lo, hi = np.quantile(b, [(1 - self.level) / 2, (1 + self.level) / 2])
        return (self.point[recipe], float(lo), float(hi))

    def table(self) -> dict[str, dict]:
        """recipe -> {mean, lo, hi, seeds, n}."""
        out = {}
        for r in self.point:
            m, lo, hi = self.interval(r)
            out[r] = {"mean": m, "lo": lo, "hi": hi, "seeds": self.seeds[r], "n": self.n}
        return out

    def contrast(self, weights: dict[str, float]) -> tuple[float, float, float]:
        """Σ w_r·mean_r with its interval from the same (paired) replicates, e.g. {"robust": 1, "standard": -1}."""
        point = sum(w * self.point[r] for r, w in weights.items())
        b = sum(w * self.boots[r] for r, w in weights.items())
        b = b[np.isfinite(b)]
        lo, hi = np.quantile(b, [(1 - self.level) / 2, (1 + self.level) / 2]) if len(b) else (math.nan, math.nan)
        return (float(point), float(lo), float(hi))

    def slope(self, strength: dict[str, float]) -> tuple[float, float, float]:
        """Least-squares slope of recipe mean on training strength, with its interval (paired replicates)."""
        rs = [r for r in strength if r in self.point]
        x = np.array([strength[r] for r in rs], dtype=float)
        if len(rs) < 2 or np.ptp(x) == 0:
            return (math.nan, math.nan, math.nan)
        w = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
        return self.contrast(dict(zip(rs, w)))


def _matrix(per_unit: dict) -> tuple[list[str], np.ndarray]:
    units = [u for u, v in per_unit.items() if v is not None and len(v)]
    n = max((len(per_unit[u]) for u in units), default=0)
    m = np.full((len(units), n), np.nan)
    for i, u in enumerate(units):
        v = np.array([np.nan if x is None else x for x in per_unit[u]], dtype=float)
        m[i, :len(v)] = v
    return units, m


def hierarchical(per_unit: dict, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0,
                 recipe=recipe_of) -> Hierarchical:
    """Two-level bootstrap of each recipe's mean: training seeds of the recipe with replacement, then images with
    replacement — one image draw per replicate, shared by every unit (paired across models).

    per_unit: unit -> 1-D values aligned by image index (None/NaN: missing). A recipe's point estimate is the mean
    over its seeds of each seed's mean over its finite values."""
    units, m = _matrix(per_unit)
    rng = np.random.default_rng(seed)
    n = m.shape[1]
    finite = np.isfinite(m)
    filled = np.where(finite, m, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit_point = filled.sum(1) / finite.sum(1)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) if n else np.zeros((n_boot, 0))
        unit_boot = (filled @ counts.T) / (finite @ counts.T)          # (units, n_boot)
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        groups.setdefault(recipe(u), []).append(i)
    point, boots, seeds = {}, {}, {}
    for r, idx in groups.items():
        idx = np.array(idx)
        point[r] = float(np.nanmean(unit_point[idx])) if np.isfinite(unit_point[idx]).any() else math.nan
        pick = idx[rng.integers(0, len(idx), (n_boot, len(idx)))]     # seeds with replacement, per replicate
        with np.errstate(invalid="ignore"):
            boots[r] = np.nanmean(unit_boot[pick, np.arange(n_boot)[:, None]], axis=1)
        seeds[r] = len(idx)
    return Hierarchical(point, boots, seeds, n, level)


def unit_means(per_unit: dict) -> dict[str, float]:
    """unit -> mean over its finite values (NaN when none)."""
    units, m = _matrix(per_unit)
    with np.errstate(invalid="ignore"):
        return {u: float(np.nanmean(row)) if np.isfinite(row).any() else math.nan for u, row in zip(units, m)}


def trend_test(unit_values: dict[str, float], strength: dict[str, float], *, direction: int = 1,
               n_perm: int = N_PERM, seed: int = 0, recipe=recipe_of) -> dict:
    """Permutation test of a monotone trend of a quantity with training strength, every unit one observation.

    Kendall's τ_b between the units' strengths (the strength of their recipe) and their values; the strength labels
    are permuted across units (exactly, over all arrangements, when there are at most 40320; else `n_perm` seeded
    draws with the +1 correction). Returns {tau, p (one-sided, in `direction`), p_reverse, units, exact}."""
    us = [u for u in unit_values if recipe(u) in strength and np.isfinite(unit_values[u])]
    x = np.array([strength[recipe(u)] for u in us], dtype=float)
    y = np.array([unit_values[u] for u in us], dtype=float)
    out = {"tau": math.nan, "p": math.nan, "p_reverse": math.nan, "units": len(us), "exact": None}
    if len(us) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    i, j = np.triu_indices(len(us), 1)
    sy = np.sign(y[i] - y[j])
    sx = np.sign(x[i] - x[j])
    denom = math.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))   # τ_b: invariant under permuting x
    observed = float(sx @ sy)
    exact = math.factorial(len(us)) <= 40320
    perms = _permutations(len(us), n_perm, seed, exact)
    stat = np.zeros(len(perms))
    for start in range(0, len(perms), 2000):   # bounded memory: (2000, pairs) at a time
        xp = x[perms[start:start + 2000]]
        stat[start:start + 2000] = np.sign(xp[:, i] - xp[:, j]) @ sy
    d = 1 if direction >= 0 else -1
    eps = 1e-9 * max(1.0, abs(observed))
    hi = np.count_nonzero(d * stat >= d * observed - eps)
    lo = np.count_nonzero(-d * stat >= -d * observed - eps)
    total = len(perms)
    p, p_rev = (hi / total, lo / total) if exact else ((hi + 1) / (total + 1), (lo + 1) / (total + 1))
    return {"tau": observed / denom, "p": float(p), "p_reverse": float(p_rev), "units": len(us), "exact": exact}


@functools.lru_cache(maxsize=16)
def _permutations(n: int, n_perm: int, seed: int, exact: bool) -> np.ndarray:
    if exact:
        return np.array(list(itertools.permutations(range(n))))
    return np.argsort(np.random.default_rng(seed).random((n_perm, n)), axis=1)


def min_p(n_units_per_recipe: list[int]) -> float:
    """The smallest one-sided p-value the exact permutation test can reach with these seeds per recipe
    (1 / number of distinct arrangements of the strength labels)."""
    total = math.factorial(sum(n_units_per_recipe))
    for k in n_units_per_recipe:
        total //= math.factorial(k)
    return 1.0 / total


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values (monotone, capped at 1); NaN entries stay NaN and do not count."""
    items = sorted(((p, k) for k, p in pvalues.items() if p is not None and np.isfinite(p)))
    m, out, running = len(items), {k: math.nan for k in pvalues}, 0.0
    for rank, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - rank) * p))
        out[k] = running
    return out
