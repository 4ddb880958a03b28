"""lib.stats against closed forms and brute force: interval coverage, exact permutation p-values, Holm."""

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from lib import stats


def test_bootstrap_interval_of_a_mean_covers_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(400):
        x = rng.normal(3.0, 2.0, 100)
        _, lo, hi = stats.bootstrap_ci(x, n_boot=500, seed=k)
        hits += lo <= 3.0 <= hi
    assert 92 <= hits / 4 <= 98, hits / 4


def test_hierarchical_interval_covers_with_seeds_and_images():
    """Each unit's mean = recipe mean + seed effect; images iid. The two-level interval of the recipe mean covers."""
    rng = np.random.default_rng(1)
    hits = 0
    for k in range(200):
        per_unit = {f"a@{s}": rng.normal(1.0 + rng.normal(0, 0.3), 1.0, 200) for s in range(8)}
        m, lo, hi = stats.hierarchical(per_unit, n_boot=400, seed=k).interval("a")
        hits += lo <= 1.0 <= hi
    assert hits / 2 >= 88, hits / 2   # 8 seeds: the percentile bootstrap undercovers a little


def test_hierarchical_point_is_the_mean_of_seed_means_and_pairing_narrows_contrasts():
    rng = np.random.default_rng(2)
    image = rng.normal(0, 3.0, 300)                       # a per-image effect shared by every model
    per_unit = {f"{r}@{s}": image + mu + rng.normal(0, 0.1, 300) for r, mu in (("std", 0.0), ("rob", 0.5))
                for s in range(3)}
    per_unit["rob@2"][:10] = np.nan                        # missing values are skipped
    h = stats.hierarchical(per_unit, n_boot=500)
    assert h.point["rob"] == pytest.approx(np.mean([np.nanmean(per_unit[f"rob@{s}"]) for s in range(3)]))
    diff, lo, hi = h.contrast({"rob": 1, "std": -1})
    assert lo < 0.5 < hi and hi - lo < 0.2                 # paired: the shared image effect cancels
    _, lo_r, hi_r = h.interval("rob")
    assert hi_r - lo_r > 3 * (hi - lo)                     # a single recipe's interval carries the image spread


def test_slope_recovers_a_linear_trend():
    rng = np.random.default_rng(3)
    strength = {"a": 0.0, "b": 0.5, "c": 1.0, "d": 1.5}
    per_unit = {f"{r}@{s}": 2.0 + 0.8 * e + rng.normal(0, 0.5, 400) for r, e in strength.items() for s in range(3)}
    slope, lo, hi = stats.hierarchical(per_unit, n_boot=500).slope(strength)
    assert lo < 0.8 < hi and slope == pytest.approx(0.8, abs=0.1)


def brute_force_p(x, y, direction):
    obs = sps.kendalltau(x, y).statistic
    taus = [sps.kendalltau(np.array(x)[list(p)], y).statistic for p in itertools.permutations(range(len(x)))]
    return np.mean([direction * t >= direction * obs - 1e-12 for t in taus])


@pytest.mark.parametrize("direction", [1, -1])
def test_permutation_p_equals_exact_enumeration(direction):
    strength = {"s": 0.0, "a": 0.2, "b": 0.5}
    vals = {"s@0": 0.1, "s@1": 0.3, "a@0": 0.25, "a@1": 0.5, "b@0": 0.45, "b@1": 0.4}
    res = stats.trend_test(vals, strength, direction=direction)
    x = [strength[u[0]] for u in vals]
    assert res["exact"] and res["units"] == 6
    assert res["p"] == pytest.approx(brute_force_p(x, list(vals.values()), direction))
    assert res["tau"] == pytest.approx(sps.kendalltau(x, list(vals.values())).statistic)


def test_permutation_monte_carlo_is_close_to_exact_and_min_p():
    strength = {r: float(i) for i, r in enumerate("abcde")}
    rng = np.random.default_rng(4)
    vals = {f"{r}@{s}": i + rng.normal(0, 2.0) for i, r in enumerate("abcde") for s in range(3)}
    res = stats.trend_test(vals, strength, direction=1, n_perm=20000)
    assert not res["exact"] and 0 < res["p"] < 0.05
    assert stats.min_p([1] * 5) == pytest.approx(1 / 120) and stats.min_p([3] * 5) < 1e-5
    perfect = stats.trend_test({f"{r}@0": float(i) for i, r in enumerate("abcde")}, strength, direction=1)
    assert perfect["p"] == pytest.approx(1 / 120) and perfect["p_reverse"] == 1.0


def test_holm_adjusts_as_the_textbook():
    adj = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adj["a"] == pytest.approx(0.03) and adj["c"] == pytest.approx(0.06) and adj["b"] == pytest.approx(0.06)
    assert np.isnan(adj["d"])
