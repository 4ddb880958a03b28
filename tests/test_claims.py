"""lib.claims: verdicts over the sweep (Spearman in the claimed direction), against paper values, and
"not measured" with a reason when a notebook did not write a key."""

import copy

import pytest
from scipy.stats import spearmanr

from lib import claims, profiles
from lib.paths import NOTEBOOK_DIR


def summary_for(profile: dict, trend: int = 1) -> dict:
    """A summary.json in which every claimed direction holds (trend=1) or reverses (trend=-1), per sweep model."""
    keys = claims.sweep_models(profile)
    rank = {k: i * trend for i, k in enumerate(keys)}  # sweep order = robustness order here
    for members in claims.sweeps(profile).values():
        for i, k in enumerate(members):
            rank[k] = i * trend
    models = {k: {"clean_acc": 90.0 - rank[k], "pgd_acc": 10.0 + 5 * rank[k], "apgd_acc": None} for k in keys}
    fd = {k: 100.0 - 10 * rank[k] for k in keys}
    return {
        "01_training": {"models": models},
        "02_attributions": {"concentration": {"measure": "mass on object", "method": "ig", "direction": "higher",
                                              "per_model": {k: 0.5 + 0.01 * rank[k] for k in keys}},
                            "gini": {k: 0.4 for k in keys}},
        "03_alignment_theory": {
            "per_model": {k: {"alpha": 1.0 + rank[k], "rho_emp": 0.5 + rank[k], "cos_saliency": 0.3 + 0.1 * rank[k],
                              "cos_margin": 0.4 + 0.1 * rank[k], "bound_holds_frac": 1.0} for k in keys},
            "wang_by_distance": {m: {"matched": {k: 0.2 + 0.05 * rank[k] for k in keys}}
                                 for m in ("saliency", "margin")}},
        "04_representation_inversion": {"feature_distance": {k: 20.0 - rank[k] for k in keys},
                                        "feature_distance_extractor": "FD-small_cnn"},
        "06_fid": {"fd_spaces": {"domain": {"label": "FD-small_cnn", "fd": {"real": 1.0, "seeds": 50.0, **fd}},
                                 "robust": {"label": "FD-robust", "fd": {"real": 1.0, "seeds": 40.0, **fd}}}},
    }


def by_id(rows):
    return {r.id: r for r in rows}


def test_every_claim_holds_when_every_direction_holds_and_differs_when_reversed():
    prof = profiles.load("default")
    rows = claims.evaluate(summary_for(prof), prof)
    assert rows and all(r.verdict == "holds" for r in rows), [(r.id, r.verdict, r.reason) for r in rows]
    assert {"accuracy.robust", "accuracy.clean", "fd.all", "inversion.sweep", "etmann.pgd", "etmann.gradnorm",
            "wang.saliency", "wang.margin", "wang.saliency.matched", "concentration"} <= set(by_id(rows))
    reversed_ = claims.evaluate(summary_for(prof, trend=-1), prof)
    assert all(r.verdict == "differs" for r in reversed_)


def test_values_are_shown_per_model_in_sweep_order():
    prof = profiles.load("default")
    row = by_id(claims.evaluate(summary_for(prof), prof))["etmann.pgd"]
    order = list(claims.sweeps(prof)["pgd"])
    assert list(row.values) == order and order[0] == "standard"
    assert [prof["sweeps"]["pgd"][k] for k in order] == sorted(prof["sweeps"]["pgd"].values())
    positions = [row.ours.index(k + " ") for k in order]
    assert positions == sorted(positions)


def test_missing_model_or_key_is_not_measured_with_a_reason():
    prof = profiles.load("default")
    s = summary_for(prof)
    del s["03_alignment_theory"]["per_model"]["robust"]
    del s["06_fid"]
    rows = by_id(claims.evaluate(s, prof))
    assert rows["etmann.pgd"].verdict == "not measured" and "robust" in rows["etmann.pgd"].reason
    assert rows["fd.all"].verdict == "not measured" and "06_fid" in rows["fd.all"].reason
    assert rows["accuracy.robust"].verdict == "holds"  # other notebooks unaffected


def test_feature_spaces_must_agree():
    prof = profiles.load("default")
    s = summary_for(prof)
    space = s["06_fid"]["fd_spaces"]["robust"]["fd"]
    space.update({k: -v for k, v in space.items()})  # FD rises with ε in the second space
    rows = by_id(claims.evaluate(s, prof))
    assert rows["fd.domain"].verdict == "holds" and rows["fd.robust"].verdict == "differs"
    assert rows["fd.all"].verdict == "differs" and "FD-robust: differs" in rows["fd.all"].reason


def test_apgd_decides_robustness_when_every_sweep_model_has_it():
    prof = profiles.load("default")
    s = summary_for(prof)
    for k, m in s["01_training"]["models"].items():
        m["apgd_acc"] = 50.0 - len(k)  # a different order than pgd_acc
    row = by_id(claims.evaluate(s, prof))["accuracy.robust"]
    assert "APGD" in row.claim and row.values["robust"] == 50.0 - len("robust")


def test_concentration_reads_the_deciding_measure_and_its_direction():
    prof = profiles.load("default")
    s = summary_for(prof)
    s["02_attributions"]["concentration"]["direction"] = "lower"
    assert by_id(claims.evaluate(s, prof))["concentration"].verdict == "differs"
    del s["02_attributions"]["concentration"]
    row = by_id(claims.evaluate(s, prof))["concentration"]
    assert "Gini" in row.claim and row.verdict == "differs"  # constant Gini: no trend


def test_paper_profiles_compare_numbers_within_tolerances():
    prof = copy.deepcopy(profiles.load("cifar10"))
    s = summary_for(prof)
    s["01_training"]["models"]["standard"].update(clean_acc=93.0)      # 93.2 ± 3
    s["01_training"]["models"]["robust"].update(pgd_acc=50.0)          # 64.6 ± 5
    s["06_fid"]["fd_spaces"]["inception"] = {"label": "FID", "fd": {"real": 5.3, "standard": 150.0, "robust": 120.0}}
    s["04_representation_inversion"].update(feature_distance_extractor="Inception block 1",
                                            feature_distance_boychev={"standard": 31.0, "robust": 30.0})
    rows = by_id(claims.evaluate(s, prof))
    assert rows["accuracy.standard.clean"].verdict == "holds"
    assert rows["accuracy.robust.robust"].verdict == "differs"
    assert rows["fd.real.paper"].verdict == "holds" and rows["fd.robust.paper"].verdict == "differs"  # 120 vs 88 ±15%
    assert rows["inversion.standard.paper"].verdict == "holds" and rows["inversion.robust.paper"].verdict == "differs"


def test_spearman_matches_scipy_with_ties():
    x, y = [0, 0.5, 1.5, 0.2, 0.2], [3.0, 1.0, 2.0, 2.0, 5.0]
    assert claims.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert claims.spearman([1, 2], [3, 3]) is None and claims.spearman([1], [2]) is None


def test_etmann_bound_is_a_check_not_a_claim():
    prof = profiles.load("default")
    s = summary_for(prof)
    assert not any(r.id.startswith("check") or "ρ̃ ≤" in r.claim for r in claims.evaluate(s, prof))
    (check,) = claims.checks(s, prof)
    assert check.verdict == "holds"
    s["03_alignment_theory"]["per_model"]["robust"]["bound_holds_frac"] = 0.99
    assert claims.checks(s, prof)[0].verdict == "differs"


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
def test_every_profile_evaluates_and_its_sweep_rows_hold(name):
    prof = profiles.load(name)
    rows = claims.evaluate(summary_for(prof), prof)
    sweep_rows = [r for r in rows if r.tolerance.startswith("Spearman")]
    assert sweep_rows and all(r.verdict == "holds" for r in sweep_rows if len(r.values) > 1)
    assert {r.id for r in rows if r.id.startswith("etmann.")} == {f"etmann.{k}" for k in claims.sweeps(prof)}
