"""Every claim of the three papers, decided in one place from a run's summary.json and its profile.

    claims.evaluate(summary, profile) -> [Claim]     # summary: {notebook stem: metrics}, as in summary.json

A claim about robustness holds when its direction holds across the profile's sweep ordered by training
strength (standard → weakest → strongest): Spearman's rank correlation between training ε (or λ) and
the quantity is > 0 in the claimed direction; every model's value is shown. On profiles with a `paper:`
section the paper's numbers are also compared within the tolerances below (README, "Reading the report").
A quantity a notebook did not write gives "not measured" with the missing key, never a guess.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

# Absolute tolerances in accuracy points, relative ones for distances. See README for the reasons.
TOL_CLEAN, TOL_ROBUST, TOL_FID_REL, TOL_INVERSION_REL = 3.0, 5.0, 0.15, 0.20
VERDICTS = ("holds", "differs", "not measured")


@dataclass
class Claim:
    id: str              # stable name, e.g. "etmann.pgd"
    source: str          # paper and table / figure
    claim: str           # what is claimed
    paper: str           # the paper's value or direction
    ours: str            # our value(s), formatted
    tolerance: str
    verdict: str         # holds / differs / not measured
    reason: str = ""     # why not measured, or which parts disagree
    notebook: str = ""   # stem of the notebook whose metrics decide it
    values: dict = field(default_factory=dict)  # model -> value, in sweep order


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


def spearman(x: list, y: list) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for < 2 points or a constant side."""
    if len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def _ranks(v: list) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def over_sweep(id, source, claim, notebook, values: dict, strength: dict, *, direction: int, what: str,
               digits: int = 2, kind: str = "pgd") -> Claim:
    """A claimed direction across a sweep: Spearman(strength, value)·direction > 0 holds."""
    paper = f"{what} {'rises' if direction > 0 else 'falls'} with training strength"
    tol = f"Spearman {'>' if direction > 0 else '<'} 0 over the {kind} sweep"
    vals = {k: _num(values.get(k)) for k in strength}
    shown = " · ".join(f"{k} {'–' if v is None else f'{v:.{digits}f}'}" for k, v in vals.items())
    missing = [k for k, v in vals.items() if v is None]
    base = dict(id=id, source=source, claim=claim, paper=paper, tolerance=tol, notebook=notebook, values=vals)
    if len(strength) < 2:
        return Claim(**base, ours=shown, verdict="not measured", reason=f"the {kind} sweep has fewer than 2 models")
    if missing:
        return Claim(**base, ours=shown, verdict="not measured",
                     reason=f"{notebook} has no value for {', '.join(missing)}")
    rho = spearman([strength[k] for k in vals], [vals[k] for k in vals])
    ours = f"{shown} (Spearman {'–' if rho is None else f'{rho:+.2f}'})"
    if rho is None:
        return Claim(**base, ours=ours, verdict="differs", reason="no trend: all models equal")
    return Claim(**base, ours=ours, verdict="holds" if rho * direction > 0 else "differs")


def against_paper(id, source, claim, notebook, paper, ours, tol: float, *, relative: bool = False,
                  missing: str = "") -> Claim:
    """A number against the paper's, within an absolute or relative tolerance."""
    tol_s = f"±{tol:.0%}" if relative else f"±{tol:g} points"
    base = dict(id=id, source=source, claim=claim, paper=f"{paper:.2f}", tolerance=tol_s, notebook=notebook)
    ours = _num(ours)
    if ours is None:
        return Claim(**base, ours="–", verdict="not measured", reason=missing or f"{notebook} has no value")
    ok = abs(ours - paper) <= (tol * abs(paper) if relative else tol)
    return Claim(**base, ours=f"{ours:.2f}", verdict="holds" if ok else "differs", values={"value": ours})


# ---------------------------------------------------------------- one function per claim

def accuracy(summary: dict, profile: dict) -> list[Claim]:
    """Boychev Tables 1/4: adversarial training buys robustness and costs clean accuracy."""
    nb, models = "01_training", get(summary, "01_training.models") or {}
    pgd = sweeps(profile).get("pgd", {})
    apgd = bool(pgd) and all(_num((models.get(k) or {}).get("apgd_acc")) is not None for k in pgd)
    field_ = "apgd_acc" if apgd else "pgd_acc"
    label = "APGD-CE+T accuracy" if apgd else "PGD accuracy"
    src = "Boychev Tab. 1/4"
    rows = [over_sweep("accuracy.robust", src, f"adversarial training buys robustness ({label})", nb,
                       {k: (models.get(k) or {}).get(field_) for k in pgd}, pgd, direction=1, what=label, digits=1),
            over_sweep("accuracy.clean", src, "robustness costs clean accuracy", nb,
                       {k: (models.get(k) or {}).get("clean_acc") for k in pgd}, pgd, direction=-1,
                       what="clean accuracy", digits=1)]
    for key, vals in (profile.get("paper") or {}).items():
        if key in ("real",) or not isinstance(vals, dict):
            continue
        row = models.get(key) or {}
        if "clean_acc" in vals:
            rows.append(against_paper(f"accuracy.{key}.clean", src, f"{key} clean accuracy (%)", nb,
                                      vals["clean_acc"], row.get("clean_acc"), TOL_CLEAN))
        if "pgd_acc" in vals:
            rows.append(against_paper(f"accuracy.{key}.robust", src, f"{key} {label} (%) vs the paper's PGD", nb,
                                      vals["pgd_acc"], row.get(field_), TOL_ROBUST))
    return rows


def fd(summary: dict, profile: dict) -> list[Claim]:
    """Boychev Tables 2/5: robust models' generations are closer to the data (lower FD), in every feature space."""
    nb, src, pgd = "06_fid", "Boychev Tab. 2/5", sweeps(profile).get("pgd", {})
    spaces = get(summary, "06_fid.fd_spaces")
    if not isinstance(spaces, dict) or not spaces:
        fd0 = get(summary, "06_fid.fd")
        spaces = {} if fd0 is None else {"primary": {"label": get(summary, "06_fid.fd_name") or "FD", "fd": fd0}}
    labels = [str(sp.get("label", name)) for name, sp in spaces.items()]
    rows = [over_sweep(f"fd.{name}", src, f"generations closer to the data ({label})", nb, sp.get("fd") or {}, pgd,
                       direction=-1, what=label) for label, (name, sp) in zip(labels, spaces.items())]
    verdicts = {label: r.verdict for label, r in zip(labels, rows)}
    measured = {v for v in verdicts.values() if v != "not measured"}
    verdict = "not measured" if not measured else (measured.pop() if len(measured) == 1 else "differs")
    reason = "06_fid has no fd_spaces (or fd)" if not rows else (
        "" if len(set(verdicts.values())) == 1 and verdict != "not measured"
        else "; ".join(f"{label}: {v}" for label, v in verdicts.items()))
    names = ", ".join(labels) or "–"
    rows.append(Claim("fd.all", src, "robust generations closer to the data in every feature space",
                      "FD falls with training strength", f"{len(labels)} space(s): {names}",
                      "all feature spaces agree", verdict, reason, nb))
    paper = profile.get("paper") or {}
    inception = [n for n, sp in spaces.items() if str(sp.get("label", "")).upper().startswith("FID")]
    for key in [k for k, v in paper.items() if isinstance(v, dict) and "fid" in v]:
        ours = get(spaces[inception[0]], f"fd.{key}") if inception else None
        rows.append(against_paper(f"fd.{key}.paper", src, f"FID {key}", nb, paper[key]["fid"], ours,
                                  TOL_FID_REL, relative=True, missing="no Inception (FID) feature space in 06_fid"))
    return rows


def inversion(summary: dict, profile: dict) -> list[Claim]:
    """Boychev Tables 3/6: robust models' inversions are closer to their targets."""
    nb, src, pgd = "04_representation_inversion", "Boychev Tab. 3/6", sweeps(profile).get("pgd", {})
    label = get(summary, f"{nb}.feature_distance_extractor") or "feature"
    rows = [over_sweep("inversion.sweep", src, f"robust inversions closer to their targets ({label}, per pair)", nb,
                       get(summary, f"{nb}.feature_distance") or {}, pgd, direction=-1, what="feature distance")]
    boy = get(summary, f"{nb}.feature_distance_boychev") or {}
    for key, vals in (profile.get("paper") or {}).items():
        if isinstance(vals, dict) and "inversion_distance" in vals:
            ok = "inception" in str(label).lower()
            rows.append(against_paper(
                f"inversion.{key}.paper", src, f"inversion distance {key} (Boychev's 3-pair norm; ours per pair: "
                f"{_fmt(get(summary, f'{nb}.feature_distance.{key}'))})", nb, vals["inversion_distance"],
                boy.get(key) if ok else None, TOL_INVERSION_REL, relative=True,
                missing=f"needs Inception features and feature_distance_boychev in {nb} (extractor: {label})"))
    return rows


def etmann(summary: dict, profile: dict) -> list[Claim]:
    """Etmann 2019: alignment α grows with robustness, over both sweeps (PGD ε and gradient-norm λ)."""
    nb, per = "03_alignment_theory", get(summary, "03_alignment_theory.per_model") or {}
    rows = []
    for kind, strength in sweeps(profile).items():
        r = over_sweep(f"etmann.{kind}", "Etmann 2019", f"alignment α rises with robustness ({kind} sweep)", nb,
                       {k: (per.get(k) or {}).get("alpha") for k in strength}, strength, direction=1,
                       what="mean α", kind=kind, digits=3)
        rho = " · ".join(f"{k} {_fmt((per.get(k) or {}).get('rho_emp'), 3)}" for k in strength)
        r.ours += f"; mean ρ: {rho}"
        rows.append(r)
    return rows


def wang(summary: dict, profile: dict) -> list[Claim]:
    """Wang 2022: robust models' gradients align with the boundary normal (SM vs BSM, and margin gradients),
    over the pgd sweep; also at matched boundary distance, since robust boundaries are farther away."""
    nb, pgd = "03_alignment_theory", sweeps(profile).get("pgd", {})
    per = get(summary, f"{nb}.per_model") or {}
    rows = []
    for name, key, what in (("saliency", "cos_saliency", "cos(∇Ψ(x), ∇Ψ(x_b))"),
                            ("margin", "cos_margin", "cos(∇(Ψⁱ−Ψʲ)(x), ∇(Ψⁱ−Ψʲ)(x_b))")):
        rows.append(over_sweep(f"wang.{name}", "Wang 2022", f"gradient aligns with the boundary normal: {what}", nb,
                               {k: (per.get(k) or {}).get(key) for k in pgd}, pgd, direction=1, what="mean cosine",
                               digits=3))
        matched = get(summary, f"{nb}.wang_by_distance.{name}.matched") or {}
        r = over_sweep(f"wang.{name}.matched", "Wang 2022", f"… at matched boundary distance: {what}", nb,
                       matched, pgd, direction=1, what="distance-binned mean cosine", digits=3)
        if r.verdict == "not measured" and isinstance(matched, dict) and matched:
            r.reason = "the models' boundary distances share no bin with enough samples"
        rows.append(r)
    return rows


def concentration(summary: dict, profile: dict) -> list[Claim]:
    """Boychev Figs 2/6: robust attributions are more concentrated (the deciding measure is notebook 02's)."""
    nb, pgd = "02_attributions", sweeps(profile).get("pgd", {})
    dec = get(summary, f"{nb}.concentration")
    if isinstance(dec, dict) and isinstance(dec.get("per_model"), dict):
        values, what = dec["per_model"], f"{dec.get('measure', 'concentration')} of {dec.get('method', 'IG')}"
        direction = -1 if dec.get("direction") == "lower" else 1
    else:
        values, what, direction = get(summary, f"{nb}.gini") or {}, "Gini of |IG| (02 wrote no `concentration`)", 1
    return [over_sweep("concentration", "Boychev Figs 2, 6", f"robust attributions are more concentrated ({what})",
                       nb, values, pgd, direction=direction, what=what, digits=3)]


def checks(summary: dict, profile: dict) -> list[Claim]:
    """Implementation checks, never evidence: Etmann's slide-7 bound follows from the triangle and
    Cauchy–Schwarz inequalities, so it holds on every sample unless the code is wrong."""
    nb, per = "03_alignment_theory", get(summary, "03_alignment_theory.per_model") or {}
    frac = {k: _num((per.get(k) or {}).get("bound_holds_frac")) for k in sweep_models(profile)}
    missing = [k for k, v in frac.items() if v is None]
    ok = not missing and all(v == 1.0 for v in frac.values())
    return [Claim("check.etmann_bound", "Etmann 2019, slide 7", "implementation check: ρ̃ ≤ α + ‖x‖‖ḡ†−ḡ‖ + |β†|/‖g†‖",
                  "on every sample (a theorem)", " · ".join(f"{k} {_fmt(v, 3)}" for k, v in frac.items()),
                  "fraction = 1", "not measured" if missing else ("holds" if ok else "differs"),
                  f"no value for {', '.join(missing)}" if missing else "", nb, frac)]


CLAIMS = (accuracy, fd, inversion, etmann, wang, concentration)


def evaluate(summary: dict, profile: dict) -> list[Claim]:
    """Every claim, in report order, from summary.json (notebook stem -> metrics) and the profile."""
    return [row for fn in CLAIMS for row in fn(summary, profile)]


def for_notebook(run_dir: str | Path, profile: dict, notebook: str) -> list[dict]:
    """Rows (dicts) of the claims and checks decided by one notebook's metrics, for display in that notebook."""
    summary = load_summary(run_dir)
    rows = [r for r in evaluate(summary, profile) + checks(summary, profile) if r.notebook == notebook]
    return [{k: getattr(r, k) for k in ("source", "claim", "paper", "ours", "tolerance", "verdict", "reason")}
            for r in rows]


def _fmt(v, digits: int = 2) -> str:
    v = _num(v)
    return "–" if v is None else f"{v:.{digits}f}"
