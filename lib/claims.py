"""Every claim of the three papers, decided in one place from a run's summary.json and its profile.

    claims.evaluate(summary, profile) -> [Claim]     # summary: {notebook stem: metrics}, as in summary.json

The decision rule is fixed here, before any numbers (README, "Reading the report"):
- Every trained model (each seed of each recipe, a *unit*) is one observation. A claim about robustness is a
  monotone trend of a quantity with training strength over the profile's sweep. Its test is a permutation test of
  Kendall's τ between strength and the units' values (strength labels permuted across units; images stay paired,
  since every unit is measured on the same seeded images), one-sided in the claimed direction and in the reverse.
- Both one-sided p-values of every trend claim form one family, Holm-corrected at ALPHA: **holds** when the
  claimed direction is significant, **opposite** when the reverse is, **inconclusive** otherwise. A claim read in
  several feature spaces or variants is an intersection–union test: its p is the largest of its parts' p.
- Each recipe's value carries a 95 % hierarchical-bootstrap interval (seeds, then images, paired across models);
  the effect sizes are τ, the slope over strength and the paired difference standard → strongest, with intervals.
- Numbers against a paper (profiles with `paper:`) are within tolerance when their interval overlaps the band.
- A quantity a notebook did not write gives "not measured" with the missing key, never a guess.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lib import notes, registry, stats

# Absolute tolerances in accuracy points, relative ones for distances. See README for the reasons.
TOL_CLEAN, TOL_ROBUST, TOL_FID_REL, TOL_INVERSION_REL = 3.0, 5.0, 0.15, 0.20
ALPHA = 0.05
VERDICTS = ("holds", "opposite", "inconclusive", "not measured")
PAPER_VERDICTS = ("within tolerance", "outside tolerance", "not measured")


@dataclass
class Claim:
    id: str              # stable name, e.g. "etmann.pgd"
    source: str          # paper and table / figure
    claim: str           # what is claimed
    paper: str           # the paper's value or direction
    ours: str            # our values, formatted: recipe mean [95 % interval] in sweep order
    tolerance: str       # the test
    verdict: str         # holds / opposite / inconclusive / not measured (paper rows: within/outside tolerance)
    reason: str = ""     # the note: why not measured, or why not "holds", from the numbers
    notebook: str = ""   # stem of the notebook whose metrics decide it
    values: dict = field(default_factory=dict)   # recipe -> {mean, lo, hi, seeds, n}, in sweep order
    n: dict = field(default_factory=dict)        # {"images": .., "seeds": .., "models": ..}
    effect: dict = field(default_factory=dict)   # {"tau", "slope": [e, lo, hi], "diff": [e, lo, hi]}
    p: float | None = None                       # one-sided permutation p (claimed direction), raw
    p_reverse: float | None = None
    p_holm: float | None = None                  # Holm-adjusted, claimed direction
    p_reverse_holm: float | None = None
    parts: list = field(default_factory=list)    # sub-rows (Claim) shown under this verdict
    figures: list = field(default_factory=list)  # figure stems that support it
    trend: bool = False                          # a trend claim (in the Holm family)


def load_summary(run_dir: str | Path) -> dict:
    """{notebook stem: metrics} from run_dir/metrics/*.json (what summary.json holds), for a notebook mid-run."""
    return {p.stem: json.loads(p.read_text())["metrics"] for p in sorted((Path(run_dir) / "metrics").glob("*.json"))}


def sweeps(profile: dict) -> dict[str, dict[str, float]]:
    """{kind: {model: training strength}} ordered by strength, from the profile's `sweeps`."""
    return {kind: dict(sorted(m.items(), key=lambda kv: kv[1])) for kind, m in (profile.get("sweeps") or {}).items()}


def sweep_models(profile: dict) -> list[str]:
    """Every model of every sweep, plus standard and robust, in sweep order."""
    keys = [k for m in sweeps(profile).values() for k in m] + ["standard", "robust"]
    return [k for k in dict.fromkeys(keys) if k in profile.get("models", {})]


def get(summary: dict, path: str):
    """summary["a"]["b"]... for path "a.b..."; None where any part is missing."""
    node = summary
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _fmt(v, digits: int = 2) -> str:
    v = _num(v)
    return "–" if v is None else f"{v:.{digits}f}"


def interval_text(row: dict, digits: int) -> str:
    m, lo, hi = (_fmt(row.get(k), digits) for k in ("mean", "lo", "hi"))
    return m if lo == "–" else f"{m} [{lo}, {hi}]"


def units_of(summary: dict, nb: str, quantity: str, keys) -> dict:
    """unit -> per-image values of `quantity` from notebook `nb`'s `per_unit`, for the units of `keys`."""
    per = (get(summary, f"{nb}.per_unit") or {}).get(quantity)  # not get(): quantity names may hold dots
    keys = set(keys)
    return {u: v for u, v in (per or {}).items() if stats.recipe_of(u) in keys and v is not None}


def over_sweep(id, source, claim, notebook, per_unit: dict, strength: dict, *, direction: int, what: str,
               digits: int = 2, kind: str = "pgd", seed: int = 0, per: str = "images") -> Claim:
    """A claimed monotone trend of `what` with training strength over a sweep, from per-unit values per image
    (or per `per`: FD has one value per draw of generated images)."""
    paper = f"{what} {'rises' if direction > 0 else 'falls'} with training strength"
    tol = f"permutation test of Kendall's τ over the {kind} sweep's models, one-sided, Holm at {ALPHA:g}"
    base = dict(id=id, source=source, claim=claim, paper=paper, tolerance=tol, notebook=notebook, trend=True)
    missing = [k for k in strength if not any(stats.recipe_of(u) == k for u in per_unit)]
    if len(strength) < 2:
        return Claim(**base, ours="–", verdict="not measured", reason=f"the {kind} sweep has fewer than 2 models")
    if missing:
        return Claim(**base, ours="–", verdict="not measured",
                     reason=f"{notebook} has no {what} for {', '.join(missing)}")
    h = stats.hierarchical(per_unit, seed=seed)
    full = h.table()
    table = {k: full[k] for k in strength}
    means = stats.unit_means(per_unit)
    test = stats.trend_test(means, strength, direction=direction, seed=seed)
    lo_key, hi_key = min(strength, key=strength.get), max(strength, key=strength.get)
    effect = {"tau": test["tau"], "slope": list(h.slope(strength)),
              "diff": list(h.contrast({hi_key: 1, lo_key: -1})), "diff_of": f"{hi_key} − {lo_key}"}
    ours = " · ".join(f"{k} {interval_text(v, digits)}" for k, v in table.items())
    n = {"images": h.n, "per": per, "seeds": max(h.seeds.values()), "models": test["units"],
         "min_p": stats.min_p(list(h.seeds.values()))}
    return Claim(**base, ours=ours, verdict="inconclusive", values=table, n=n, effect=effect,
                 p=_num(test["p"]), p_reverse=_num(test["p_reverse"]))


def combine(id, source, claim, notebook, parts: list[Claim], what: str) -> Claim:
    """One verdict over several parts (feature spaces, variants): an intersection–union test, p = max of parts."""
    measured = [r for r in parts if r.verdict != "not measured"]
    base = dict(id=id, source=source, claim=claim, notebook=notebook, parts=parts, trend=True,
                paper=parts[0].paper if parts else "", tolerance=f"every part significant ({what}; p = largest)")
    if not parts or len(measured) < len(parts):
        reason = "; ".join(f"{r.claim}: {r.reason}" for r in parts if r.verdict == "not measured") or \
            f"{notebook} wrote none of the parts"
        return Claim(**base, ours="–", verdict="not measured", reason=reason)
    p = max(r.p if r.p is not None else 1.0 for r in parts)
    p_rev = max(r.p_reverse if r.p_reverse is not None else 1.0 for r in parts)
    ours = f"{len(parts)} parts, below"
    return Claim(**base, ours=ours, verdict="inconclusive", values=parts[0].values, n=parts[0].n,
                 effect=parts[0].effect, p=p, p_reverse=p_rev)


def against_paper(id, source, claim, notebook, paper, ours: dict | None, tol: float, *, relative: bool = False,
                  missing: str = "") -> Claim:
    """A number against the paper's: within tolerance when our interval [lo, hi] overlaps paper ± tolerance."""
    band = tol * abs(paper) if relative else tol
    tol_s = f"interval overlaps {paper:.2f} ± {'%.0f%%' % (100 * tol) if relative else f'{tol:g} points'}"
    base = dict(id=id, source=source, claim=claim, paper=f"{paper:.2f}", tolerance=tol_s, notebook=notebook)
    ours = ours or {}
    m = _num(ours.get("mean"))
    if m is None:
        return Claim(**base, ours="–", verdict="not measured", reason=missing or f"{notebook} has no value")
    lo, hi = _num(ours.get("lo")), _num(ours.get("hi"))
    lo, hi = (m, m) if lo is None or hi is None else (lo, hi)
    ok = lo <= paper + band and hi >= paper - band
    return Claim(**base, ours=interval_text(ours, 2), verdict="within tolerance" if ok else "outside tolerance",
                 values={"value": ours})


def _paper_value(summary, nb, quantity, key, seed: int = 0) -> dict | None:
    per = units_of(summary, nb, quantity, [key])
    return stats.hierarchical(per, seed=seed).table().get(key) if per else None


# ---------------------------------------------------------------- one function per claim

def accuracy(summary: dict, profile: dict) -> list[Claim]:
    """Boychev Tables 1/4: adversarial training buys robustness and costs clean accuracy."""
    nb, pgd, src = "01_training", sweeps(profile).get("pgd", {}), "Boychev Tab. 1/4"
    apgd = units_of(summary, nb, "apgd_acc", pgd)
    robust_q, label = ("apgd_acc", "APGD-CE+T accuracy") if apgd else ("pgd_acc", "PGD accuracy")
    rows = [over_sweep("accuracy.robust", src, f"adversarial training buys robustness ({label}, %)", nb,
                       units_of(summary, nb, robust_q, pgd), pgd, direction=1, what=label, digits=1),
            over_sweep("accuracy.clean", src, "robustness costs clean accuracy (%)", nb,
                       units_of(summary, nb, "clean_acc", pgd), pgd, direction=-1, what="clean accuracy", digits=1)]
    rows[0].figures, rows[1].figures = ["01_accuracy"], ["01_accuracy", "01_training_curves"]
    for key, vals in (profile.get("paper") or {}).items():
        if not isinstance(vals, dict):
            continue
        if "clean_acc" in vals:
            rows.append(against_paper(f"accuracy.{key}.clean", src, f"{key} clean accuracy (%)", nb,
                                      vals["clean_acc"], _paper_value(summary, nb, "clean_acc", key), TOL_CLEAN))
        if "pgd_acc" in vals:
            rows.append(against_paper(f"accuracy.{key}.robust", src, f"{key} {label} (%) vs the paper's PGD", nb,
                                      vals["pgd_acc"], _paper_value(summary, nb, robust_q, key), TOL_ROBUST))
    return rows


def fd(summary: dict, profile: dict) -> list[Claim]:
    """Boychev Tables 2/5: robust models' generations are closer to the data (lower FD), in every feature space."""
    nb, src, pgd = "06_fid", "Boychev Tab. 2/5", visualize_sweep(profile)
    spaces = get(summary, f"{nb}.fd_spaces") or {}
    parts = [over_sweep(f"fd.{name}", src, f"FD in {sp.get('label', name)}", nb,
                        units_of(summary, nb, f"fd.{name}", pgd), pgd, direction=-1, what=str(sp.get("label", name)),
                        per="draws")
             for name, sp in spaces.items()]
    row = combine("fd", src, "robust generations are closer to the data, in every feature space", nb, parts,
                  "FD falls in each feature space")
    row.figures = ["06_fid", "06_fd_budget", "05_generated"]
    rows = [row]
    inception = [n for n, sp in spaces.items() if str(sp.get("label", "")).upper().startswith("FID")]
    for key, vals in (profile.get("paper") or {}).items():
        if isinstance(vals, dict) and "fid" in vals:
            ours = _paper_value(summary, nb, f"fd.{inception[0]}", key) if inception else None
            rows.append(against_paper(f"fd.{key}.paper", src, f"FID {key}", nb, vals["fid"], ours, TOL_FID_REL,
                                      relative=True, missing="no Inception (FID) feature space in 06_fid"))
    return rows


def inversion(summary: dict, profile: dict) -> list[Claim]:
    """Boychev Tables 3/6: robust models' inversions are closer to their targets."""
    nb, src, pgd = "04_representation_inversion", "Boychev Tab. 3/6", visualize_sweep(profile)
    label = get(summary, f"{nb}.feature_distance_extractor") or "feature"
    row = over_sweep("inversion", src, f"robust inversions are closer to their targets ({label}, per pair)", nb,
                     units_of(summary, nb, "feature_distance", pgd), pgd, direction=-1, what="feature distance")
    row.figures = ["04_inversion", "04_feature_distance"]
    rows = [row]
    for key, vals in (profile.get("paper") or {}).items():
        if isinstance(vals, dict) and "inversion_distance" in vals:
            ok = "inception" in str(label).lower()
            ours = _paper_value(summary, nb, "feature_distance_boychev", key) if ok else None
            rows.append(against_paper(f"inversion.{key}.paper", src, f"inversion distance {key} (Boychev's 3-pair "
                                      "norm)", nb, vals["inversion_distance"], ours, TOL_INVERSION_REL, relative=True,
                                      missing=f"needs Inception features in {nb} (extractor: {label})"))
    return rows


def etmann(summary: dict, profile: dict) -> list[Claim]:
    """Etmann 2019: alignment α grows with robustness, over both sweeps (PGD ε and gradient-norm λ)."""
    nb, rows = "03_alignment_theory", []
    for kind, strength in sweeps(profile).items():
        r = over_sweep(f"etmann.{kind}", "Etmann 2019", f"alignment α rises with robustness ({kind} sweep)", nb,
                       units_of(summary, nb, "alpha", strength), strength, direction=1, what="mean α", kind=kind,
                       digits=3)
        r.figures = ["03_alignment_vs_robustness", "03_alpha_vs_rho"]
        rows.append(r)
    return rows


def wang(summary: dict, profile: dict) -> list[Claim]:
    """Wang 2022: robust models' gradients align with the boundary normal, decided at matched boundary distance
    (robust boundaries are farther away, and the cosine falls with distance); raw cosines are shown as parts."""
    nb, pgd = "03_alignment_theory", sweeps(profile).get("pgd", {})
    parts, raw = [], []
    for name, what in (("saliency", "cos(∇Ψ(x), ∇Ψ(x_b))"), ("margin", "cos(∇(Ψⁱ−Ψʲ)(x), ∇(Ψⁱ−Ψʲ)(x_b))")):
        parts.append(over_sweep(f"wang.{name}.matched", "Wang 2022", f"{what} at matched boundary distance", nb,
                                units_of(summary, nb, f"{name}_matched", pgd), pgd, direction=1,
                                what="cosine at matched distance", digits=3))
        raw.append(over_sweep(f"wang.{name}.raw", "Wang 2022", f"{what}, raw (not in the verdict)", nb,
                              units_of(summary, nb, f"cos_{name}", pgd), pgd, direction=1, what="mean cosine",
                              digits=3))
    row = combine("wang", "Wang 2022", "gradients align with the boundary normal (at matched distance)", nb,
                  parts, "saliency and margin cosines both rise")
    row.parts = parts + raw
    row.figures = ["03_boundary_cosine", "03_cosine_vs_distance"]
    return [row]


def concentration(summary: dict, profile: dict) -> list[Claim]:
    """Boychev Figs 2/6: robust attributions are more concentrated, by the measure registered in analysis.md."""
    nb, pgd = "02_attributions", sweeps(profile).get("pgd", {})
    reg = registry.decision("concentration")
    what = f"{reg['measure']} of {reg['method']}"
    row = over_sweep("concentration", "Boychev Figs 2, 6", f"robust attributions are more concentrated ({what}, "
                     "registered in analysis.md)", nb, units_of(summary, nb, "concentration", pgd), pgd,
                     direction=-1 if reg.get("direction") == "lower" else 1, what=what, digits=3)
    row.figures = [f"02_{reg['method']}_grid", "02_panel", "02_metrics"]
    return [row]


def checks(summary: dict, profile: dict) -> list[Claim]:
    """Implementation checks, never evidence: Etmann's slide-7 bound follows from the triangle and
    Cauchy–Schwarz inequalities, so it holds on every sample unless the code is wrong."""
    nb, per = "03_alignment_theory", get(summary, "03_alignment_theory.per_model") or {}
    frac = {k: _num((per.get(k) or {}).get("bound_holds_frac")) for k in per} or \
        {k: None for k in sweep_models(profile)}
    missing = [k for k, v in frac.items() if v is None]
    ok = not missing and all(v == 1.0 for v in frac.values())
    return [Claim("check.etmann_bound", "Etmann 2019, slide 7", "implementation check: ρ̃ ≤ α + ‖x‖‖ḡ†−ḡ‖ + |β†|/‖g†‖",
                  "on every sample (a theorem)", " · ".join(f"{k} {_fmt(v, 3)}" for k, v in frac.items()),
                  "fraction = 1", "not measured" if missing else ("holds" if ok else "opposite"),
                  f"no value for {', '.join(missing)}" if missing else "", nb, frac)]


def visualize_sweep(profile: dict) -> dict[str, float]:
    """The pgd sweep restricted to the models notebooks 04-06 compare (`visualize.models`, default: all)."""
    pgd = sweeps(profile).get("pgd", {})
    chosen = (profile.get("visualize") or {}).get("models")
    return {k: v for k, v in pgd.items() if not chosen or k in chosen}


CLAIMS = (accuracy, fd, inversion, etmann, wang, concentration)


def decide(rows: list[Claim], alpha: float = ALPHA) -> list[Claim]:
    """Holm over both one-sided p-values of every trend claim; verdicts from the adjusted values; notes."""
    family = {}
    for r in rows:
        if r.trend and r.verdict != "not measured":
            family[f"{r.id}:claimed"], family[f"{r.id}:reverse"] = r.p, r.p_reverse
    adj = stats.holm(family)
    for r in rows:
        if not r.trend or r.verdict == "not measured":
            continue
        r.p_holm, r.p_reverse_holm = adj[f"{r.id}:claimed"], adj[f"{r.id}:reverse"]
        r.verdict = "holds" if r.p_holm < alpha else "opposite" if r.p_reverse_holm < alpha else "inconclusive"
        r.n["family"] = len(family)
    return rows


def evaluate(summary: dict, profile: dict) -> list[Claim]:
    """Every claim, in report order, decided (Holm over the trend claims) and annotated with its note."""
    rows = decide([row for fn in CLAIMS for row in fn(summary, profile)])
    for r in rows:
        notes.annotate(r, summary, profile)
    return rows


def for_notebook(run_dir: str | Path, profile: dict, notebook: str) -> list[dict]:
    """Rows (dicts) of the claims and checks decided by one notebook's metrics, for display in that notebook."""
    summary = load_summary(run_dir)
    rows = [r for r in evaluate(summary, profile) + checks(summary, profile) if r.notebook == notebook]
    return [{"claim": r.claim, "ours": r.ours, "τ": _fmt(r.effect.get("tau")), "p": _fmt(r.p, 4),
             "p (Holm)": _fmt(r.p_holm, 4), "verdict": r.verdict, "note": r.reason} for r in rows]
