"""lib.claims on synthetic summaries with known structure: a strong trend holds, a reversed one is opposite, pure
noise is inconclusive, Holm changes a borderline case, one seed per recipe cannot decide, paper rows use intervals,
and a missing key is "not measured" with a reason."""

import copy

import numpy as np
import pytest

from lib import claims, profiles
from lib.paths import NOTEBOOK_DIR


def summary_for(profile: dict, trend: float = 1.0, *, noise: float = 0.3, images: int = 48, seed: int = 0,
                seeds: int | None = None) -> dict:
    """A summary.json whose per-unit per-image values rise (trend > 0) or fall (< 0) with each model's rank in its
    sweep, plus image and seed noise. Every claimed direction holds for trend = 1."""
    rng = np.random.default_rng(seed)
    seeds = seeds or int(profile.get("seeds", 1))
    rank = {}
    for members in claims.sweeps(profile).values():
        for i, k in enumerate(members):
            rank[k] = i
    units = [f"{k}@{s}" for k in claims.sweep_models(profile) for s in range(profiles.seed_count(profile, k)
                                                                                 if seeds is None else seeds)]
    image = rng.normal(0, 1, images)

    def q(sign: float, scale: float = 1.0, base: float = 0.0, n: int = images):
        out = {}
        for u in units:
            r = rank.get(u.split("@")[0], 0)
            out[u] = (base + scale * (sign * trend * r + noise * rng.normal() + image[:n]
                                      + noise * rng.normal(0, 1, n))).tolist()
        return out

    fd = q(-1, 10.0, 100.0, n=3)
    per_model = {k: {"bound_holds_frac": 1.0, "rho_emp": 0.5 + rank.get(k, 0)} for k in claims.sweep_models(profile)}
    return {
        "01_training": {"per_unit": {"clean_acc": q(-1, 1.0, 90.0), "pgd_acc": q(1, 5.0, 10.0),
                                     "apgd_acc": q(1, 5.0, 8.0)}},
        "02_attributions": {"per_unit": {"concentration": q(1, 0.01, 0.5)}},
        "03_alignment_theory": {"per_model": per_model,
                                "per_unit": {"alpha": q(1, 1.0, 1.0), "cos_saliency": q(1, 0.1, 0.3),
                                             "cos_margin": q(1, 0.1, 0.4), "saliency_matched": q(1, 0.05, 0.2),
                                             "margin_matched": q(1, 0.05, 0.2)}},
        "04_representation_inversion": {"per_unit": {"feature_distance": q(-1, 1.0, 20.0)},
                                        "feature_distance_extractor": "FD-small_cnn"},
        "06_fid": {"fd_spaces": {"domain": {"label": "FD-small_cnn"}, "robust": {"label": "FD-robust"}},
                   "per_unit": {"fd.domain": fd, "fd.robust": copy.deepcopy(fd)}},
    }


def by_id(rows):
    return {r.id: r for r in rows}


TREND_IDS = {"accuracy.robust", "accuracy.clean", "fd", "inversion", "etmann.pgd", "etmann.gradnorm", "wang",
             "concentration"}


def test_a_strong_trend_holds_and_a_reversed_one_is_opposite():
    prof = profiles.load("default")
    rows = by_id(claims.evaluate(summary_for(prof), prof))
    assert set(rows) == TREND_IDS
    assert all(r.verdict == "holds" for r in rows.values()), [(r.id, r.verdict, r.reason) for r in rows.values()]
    rev = claims.evaluate(summary_for(prof, trend=-1), prof)
    assert all(r.verdict == "opposite" and r.reason.startswith("The reverse") for r in rev)


def test_pure_noise_is_inconclusive_in_at_least_95_percent_of_draws():
    prof = profiles.load("default")
    verdicts = [r.verdict for k in range(15) for r in claims.evaluate(summary_for(prof, trend=0, seed=k), prof)]
    share = np.mean([v == "inconclusive" for v in verdicts])
    assert share >= 0.95, share
    assert set(verdicts) <= {"inconclusive", "holds", "opposite"}


def test_holm_turns_a_borderline_claim_inconclusive():
    def row(name, p):
        return claims.Claim(name, "", "", "", "", "", "inconclusive", trend=True, p=p, p_reverse=1 - p)

    alone = claims.decide([row("a", 0.03)])
    assert alone[0].verdict == "inconclusive"      # family of 2 (both directions): 0.06
    assert claims.decide([row("a", 0.02)])[0].verdict == "holds"
    many = claims.decide([row("a", 0.02)] + [row(f"b{i}", 0.5) for i in range(5)])
    assert many[0].verdict == "inconclusive" and many[0].p_holm == pytest.approx(0.02 * 12)


def test_one_seed_per_recipe_cannot_decide_and_the_note_says_so():
    prof = profiles.load("default", {"seeds": 1})
    rows = by_id(claims.evaluate(summary_for(prof, trend=3.0, seeds=1), prof))
    r = rows["etmann.pgd"]
    assert r.p == pytest.approx(1 / 120) and r.verdict == "inconclusive"
    assert "cannot decide" in r.reason and "seeds" in r.reason


def test_rows_carry_n_intervals_effects_and_sweep_order():
    prof = profiles.load("default")
    r = by_id(claims.evaluate(summary_for(prof), prof))["etmann.pgd"]
    order = list(claims.sweeps(prof)["pgd"])
    assert list(r.values) == order and order[0] == "standard"
    assert r.n == {"images": 48, "per": "images", "seeds": 3, "models": 15, "min_p": pytest.approx(1 / 168168000),
                   "family": 16}
    for v in r.values.values():
        assert v["lo"] <= v["mean"] <= v["hi"] and v["seeds"] == 3
    slope, lo, hi = r.effect["slope"]
    assert lo < slope < hi and lo > 0 and r.effect["diff"][1] > 0
    positions = [r.ours.index(k + " ") for k in order]
    assert positions == sorted(positions)


def test_missing_model_or_key_is_not_measured_with_a_reason():
    prof = profiles.load("default")
    s = summary_for(prof)
    for u in [u for u in s["03_alignment_theory"]["per_unit"]["alpha"] if u.startswith("robust@")]:
        del s["03_alignment_theory"]["per_unit"]["alpha"][u]
    del s["06_fid"]
    rows = by_id(claims.evaluate(s, prof))
    assert rows["etmann.pgd"].verdict == "not measured" and "robust" in rows["etmann.pgd"].reason
    assert rows["fd"].verdict == "not measured" and "06_fid" in rows["fd"].reason
    assert rows["accuracy.robust"].verdict == "holds"  # other notebooks unaffected


def test_feature_spaces_must_agree_one_verdict_with_parts():
    prof = profiles.load("default")
    s = summary_for(prof)
    space = s["06_fid"]["per_unit"]["fd.robust"]
    for u, v in space.items():
        space[u] = [-x for x in v]                    # FD rises with ε in the second space
    row = by_id(claims.evaluate(s, prof))["fd"]
    assert row.verdict == "inconclusive" and len(row.parts) == 2
    assert row.p == max(p.p for p in row.parts) and all(p.verdict == "part" for p in row.parts)
    assert row.n["per"] == "draws" and all(p.n["per"] == "draws" for p in row.parts)  # FD: per draw, not image


def test_apgd_decides_robustness_when_every_sweep_model_has_it():
    prof = profiles.load("default")
    s = summary_for(prof)
    assert "APGD" in by_id(claims.evaluate(s, prof))["accuracy.robust"].claim
    del s["01_training"]["per_unit"]["apgd_acc"]
    assert "PGD accuracy" in by_id(claims.evaluate(s, prof))["accuracy.robust"].claim


def test_paper_profiles_compare_intervals_with_tolerance_bands():
    prof = copy.deepcopy(profiles.load("cifar10"))
    s = summary_for(prof, images=200, noise=0.01)
    s["01_training"]["per_unit"]["clean_acc"]["standard@0"] = [100.0] * 186 + [0.0] * 14   # 93.0 ± ~3.6
    s["01_training"]["per_unit"]["apgd_acc"]["robust@0"] = [100.0] * 100 + [0.0] * 100     # 50 ± 7 vs 64.6 ± 5
    rows = by_id(claims.evaluate(s, prof))
    assert rows["accuracy.standard.clean"].verdict == "within tolerance"
    assert rows["accuracy.robust.robust"].verdict == "outside tolerance"
    assert "[" in rows["accuracy.standard.clean"].ours
    assert rows["fd.robust.paper"].verdict == "not measured"          # no Inception space in this summary


def test_etmann_bound_is_a_check_not_a_claim():
    prof = profiles.load("default")
    s = summary_for(prof)
    assert not any(r.id.startswith("check") or "ρ̃ ≤" in r.claim for r in claims.evaluate(s, prof))
    (check,) = claims.checks(s, prof)
    assert check.verdict == "holds"
    s["03_alignment_theory"]["per_model"]["robust"]["bound_holds_frac"] = 0.99
    assert claims.checks(s, prof)[0].verdict == "opposite"


@pytest.mark.slow
def test_smoke_run_measures_every_claim(smoke_run):
    prof = profiles.load("smoke")
    summary = claims.load_summary(smoke_run)
    stems = {p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")}
    assert set(summary) <= stems, f"metric stems that are not notebook stems: {set(summary) - stems}"
    rows = claims.evaluate(summary, prof) + claims.checks(summary, prof)
    missing = [(r.id, r.reason) for r in rows if r.verdict == "not measured"]
    assert not missing, missing
    assert all(r.notebook in summary for r in rows)


@pytest.mark.parametrize("name", profiles.known())
def test_every_profile_evaluates(name):
    prof = profiles.load(name)
    rows = claims.evaluate(summary_for(prof), prof)
    assert {r.id for r in rows if r.id.startswith("etmann.")} == {f"etmann.{k}" for k in claims.sweeps(prof)}
    assert all(r.verdict in claims.VERDICTS + claims.PAPER_VERDICTS for r in rows)
