"""The one- or two-sentence note of each claim, written from its measured numbers (never typed by hand).

    notes.annotate(claim, summary, profile)   # sets claim.reason for every row that does not hold

lib/claims.py decides; this module only explains: the test's numbers, what the test could reach with the seeds it
had, and the measured context that explains a verdict (boundary distances, sanity checks, the panel, the budget).
"""

from __future__ import annotations

import math


def _f(v, digits: int = 2) -> str:
    return "–" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.{digits}g}"


def _get(d: dict, path: str):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


_PER = {"images": "images", "draws": "draws of generated images"}


def test_sentence(c) -> str:
    """τ, the raw and Holm p-values and the paired difference, as one sentence."""
    e, n = c.effect, c.n
    diff = e.get("diff") or [None, None, None]
    per = _PER.get(n.get("per", "images"), "images")
    return (f"τ = {_f(e.get('tau'))} over {n.get('models')} models ({n.get('seeds')} seed(s) per recipe, "
            f"{n.get('images')} {per} each); one-sided p = {_f(c.p)} (Holm {_f(c.p_holm)}), reverse p = "
            f"{_f(c.p_reverse)} (Holm {_f(c.p_reverse_holm)}); {e.get('diff_of', 'difference')} = {_f(diff[0], 3)} "
            f"[{_f(diff[1], 3)}, {_f(diff[2], 3)}].")


def power_sentence(c, alpha: float = 0.05) -> str:
    """Whether the exact test could reach the corrected level at all with the seeds it had."""
    if c.p is None and c.n.get("models") is not None and c.n["models"] < 3:
        return (f" A trend test needs at least 3 models; this claim has {c.n['models']} (one seed of each compared "
                "model): it can describe, not decide.")
    min_p, family = c.n.get("min_p"), c.n.get("family") or 1
    if min_p is None or min_p <= alpha / family:
        return ""
    fix = ("notebooks 04–06 compare only the seed-0 model of each recipe, whatever `seeds:` says (CPU time)"
           if str(c.notebook).startswith(("04", "05", "06")) else "train more seeds (`seeds:`)")
    return (f" With {c.n.get('seeds')} seed(s) per recipe the smallest reachable p is {_f(min_p, 3)}, above the "
            f"corrected level {_f(alpha / family, 3)}: this test cannot decide; {fix}.")


def context(c, summary: dict) -> str:
    """Claim-specific measured context."""
    if c.id == "wang":
        per = _get(summary, "03_alignment_theory.per_model") or {}
        dist = {k: (v or {}).get("rho_emp") for k, v in per.items()}
        lo, hi = dist.get("standard"), dist.get("robust")
        slope = _get(summary, "03_alignment_theory.wang_regression.saliency.slope")
        out = []
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > 0:
            out.append(f"robust boundaries are {hi / lo:.1f}× farther away than standard ones")
        if isinstance(slope, (int, float)):
            out.append(f"within a model the saliency cosine changes by {_f(slope)} per unit of log distance")
        return (" Raw cosines are confounded by distance: " + "; ".join(out) + ".") if out else ""
    if c.id == "concentration":
        out = []
        sanity = _get(summary, "02_attributions.sanity") or {}
        failed = [f"{m} on {k}" for m, per in sanity.items() if isinstance(per, dict)
                  for k, s in per.items() if isinstance(s, dict) and s.get("passes") is False]
        if failed:
            out.append(f"sanity checks fail for {', '.join(failed)}")
        count = _get(summary, "02_attributions.panel.count") or {}
        if count.get("total"):
            out.append(f"{count.get('agree')} of {count.get('total')} panel variants point the claimed way")
        return (" " + "; ".join(out) + ".") if out else ""
    if c.id == "fd":
        flips = _get(summary, "06_fid.fd_flip_steps") or {}
        shown = [f"{s}: {v}" for s, v in flips.items() if v]
        return f" The standard-vs-robust order flips over the generation budget at steps {'; '.join(shown)}." \
            if shown else ""
    return ""


def annotate(c, summary: dict, profile: dict) -> None:
    """Write c.reason (and the parts' reasons) from the numbers; a not-measured reason is kept as it is."""
    for part in c.parts:
        if part.verdict != "not measured":
            part.verdict = "part"
            part.reason = test_sentence(part).replace("(Holm –)", "(not corrected: a part)")
    if c.verdict == "not measured" or not c.trend:
        return
    if c.verdict == "holds":
        c.reason = test_sentence(c) if c.parts == [] else ""
        return
    lead = ("The reverse direction is significant. " if c.verdict == "opposite"
            else "Neither direction is significant after correction. ")
    body = test_sentence(c) if not c.parts else (
        f"Decided by the weakest part: p = {_f(c.p)} (Holm {_f(c.p_holm)}), reverse p = {_f(c.p_reverse)} "
        f"(Holm {_f(c.p_reverse_holm)}).")
    c.reason = lead + body + power_sentence(c) + context(c, summary)
