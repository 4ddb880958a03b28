"""The reproduction report: one row per claim of the papers, every number read from the run's JSON.

    python -m lib.report --profile default     # also written at the end of every pipeline run

Writes runs/<profile>/REPORT.md and a self-contained REPORT.html (figures embedded, grouped under the claim they
support). Rows, verdicts, intervals, p-values and notes come from `lib.claims`; the conditions of the run from
`lib.conditions`; this module only renders them.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path

from lib import claims, conditions, profiles
from lib.paths import run_dirs

RULE = ("Every number is read from this run's `summary.json`; paper values come from the profile. Every trained "
        "model (each training seed of each recipe) is one unit. A claim about robustness is a monotone trend over "
        "the sweep ordered by training strength, tested by a permutation test of Kendall's τ over the units (images "
        "paired), one-sided in each direction, Holm-corrected over all claims at 0.05: **holds** (the claimed "
        "direction is significant), **opposite** (the reverse is), **inconclusive** (neither), **not measured**. "
        "Values are recipe means with 95 % hierarchical-bootstrap intervals (seeds, then images).")

CAPTIONS = {  # figure stem (or its prefix) -> what it shows
    "01_accuracy": "Clean and PGD test accuracy of every trained model (each training seed is one bar).",
    "01_training_curves": "Training and validation curves; validation selected each model's checkpoint.",
    "02_panel": "Concentration panel: every measure × method over the pgd sweep, with intervals.",
    "02_metrics": "Concentration and coherence measures per model and method, over the test images.",
    "02_sanity": "Sanity checks: rank correlation of maps as layers are re-initialised from the top.",
    "02_faithfulness": "Deletion and insertion curves: class probability as the most-attributed pixels go.",
    "02_": "Attribution maps of the standard and the most robust model on the same test images.",
    "03_alignment_vs_robustness": "Etmann: alignment α against robustness, per model of each sweep.",
    "03_alpha_vs_rho": "Etmann: mean α against mean boundary distance ρ, every seed and sweep member.",
    "03_linearization_quality": "Linearised robustness ρ̃ against the boundary distance found by search.",
    "03_homogeneity": "Fraction of positively homogeneous behaviour per model.",
    "03_boundary_cosine": "Wang: cosine between the gradient at x and at its nearest boundary point, per model.",
    "03_cosine_vs_distance": "Wang: cosine against boundary distance, binned; robust boundaries lie farther away.",
    "03_bound_holds": "Implementation check: Etmann's bound holds on every sample.",
    "04_inversion": "Representation inversion: targets, sources and inverted images per model.",
    "04_feature_distance": "Feature distance between each target and its inversion, per model.",
    "04_feature_vis": "Direct feature visualisation of the highest-variance units, per model.",
    "05_generated": "Class-specific generations from the same seeds, per model.",
    "06_fd_budget": "FD of generated images against the number of generation steps, per feature space.",
    "06_fid": "Fréchet distance of generated images to the test set, per class and feature space.",
}


def caption(stem: str) -> str:
    key = max((k for k in CAPTIONS if stem.startswith(k)), key=len, default=None)
    return CAPTIONS[key] if key else stem


def figures(summary: dict, fig_dir: str | Path) -> list[Path]:
    """The PNGs this run's notebooks wrote, in notebook order: summary.json's `_figures` manifest (recorded by
    `lib.plotting.publish`), found in `fig_dir` (where `make figures` redraws them) or where they were written.
    Never a glob of the folder, so figures an earlier run left there are not shown."""
    out = []
    for entry in summary.get("_figures", []):
        for path in (Path(fig_dir) / f"{entry['name']}.png", Path(entry.get("path", ""))):
            if path.suffix == ".png" and path.is_file():
                out.append(path)
                break
    return out


def run_lines(summary: dict) -> list[str]:
    """What this run used and did not do: its overrides per notebook, and each notebook not run, with why."""
    used = summary.get("_overrides", {})
    lines = [f"{k}: overrides {json.dumps(v)}" for k, v in used.items() if v]
    if not lines and used:
        lines = ["no overrides: every notebook ran with the profile as written"]
    return lines + [f"{k}: **not run**: {why}" for k, why in summary.get("_not_run", {}).items()]


def write(run_dir: str | Path, fig_dir: str | Path, profile: dict) -> tuple[Path, Path]:
    """Write REPORT.md and the self-contained REPORT.html into run_dir; returns both paths."""
    run_dir, fig_dir = Path(run_dir), Path(fig_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} is missing: run the pipeline first (make reproduce).")
    summary = json.loads(summary_path.read_text())
    page = Page(profile, summary, claims.evaluate(summary, profile), claims.checks(summary, profile),
                figures(summary, fig_dir), conditions.describe(summary, profile))
    (run_dir / "REPORT.md").write_text(page.markdown(run_dir))
    (run_dir / "REPORT.html").write_text(page.html())
    return run_dir / "REPORT.md", run_dir / "REPORT.html"


def _p(v) -> str:
    return claims._fmt(v, 4)


def _effect(r) -> str:
    e = r.effect
    if not e:
        return ""
    s, d = e.get("slope") or [None] * 3, e.get("diff") or [None] * 3
    return (f"τ {claims._fmt(e.get('tau'))}; slope {claims._fmt(s[0], 3)} [{claims._fmt(s[1], 3)}, "
            f"{claims._fmt(s[2], 3)}]; {e.get('diff_of', 'diff')} {claims._fmt(d[0], 3)} [{claims._fmt(d[1], 3)}, "
            f"{claims._fmt(d[2], 3)}]")


def _n(r) -> str:
    n = r.n
    per = {"images": "img", "draws": "draws"}.get(n.get("per", "images"), n.get("per")) if n else ""
    return f"{n.get('images')} {per} · {n.get('seeds')} seeds · {n.get('models')} models" if n else ""


HEAD = ("claim", "source", "n", "ours: recipe mean [95 % CI]", "effect", "p (Holm)", "verdict", "note")
PAPER_HEAD = ("claim", "source", "paper", "ours [95 % CI]", "tolerance", "verdict", "note")


def _cells(r, part: bool = False) -> list[str]:
    name = ("↳ " if part else "") + r.claim
    return [name, r.source, _n(r), r.ours, _effect(r), f"{_p(r.p)} ({_p(r.p_holm)})", r.verdict, r.reason]


def _paper_cells(r) -> list[str]:
    return [r.claim, r.source, r.paper, r.ours, r.tolerance, r.verdict, r.reason]


class Page:
    def __init__(self, profile, summary, rows, checks, figs, cond):
        self.profile, self.summary, self.checks, self.figs, self.cond = profile, summary, checks, figs, cond
        self.trend = [r for r in rows if r.trend]
        self.paper = [r for r in rows if not r.trend]
        self.title = f"robinterp reproduction report: profile {profile['name']}"

    def counts(self) -> str:
        n = {v: sum(r.verdict == v for r in self.trend) for v in claims.VERDICTS}
        return ", ".join(f"{k} {v}" for k, v in n.items())

    def grouped(self) -> list[tuple[str, list[Path]]]:
        """(claim, its figures) in report order, then the figures no claim names."""
        used, out = set(), []
        for r in self.trend:
            mine = [p for p in self.figs if any(p.stem == f or p.stem.startswith(f + "_") for f in r.figures)]
            mine = [p for p in mine if p not in used]
            used.update(mine)
            if mine:
                out.append((r.claim, mine))
        rest = [p for p in self.figs if p not in used]
        return out + ([("Other figures", rest)] if rest else [])

    # ------------------------------------------------------------ markdown
    def markdown(self, run_dir: Path) -> str:
        esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        table = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        for r in self.trend:
            table.append("| " + " | ".join(esc(c) for c in _cells(r)) + " |")
            table += ["| " + " | ".join(esc(c) for c in _cells(p, True)) + " |" for p in r.parts]
        out = [f"# {self.title}", "", RULE, "", "## Conditions", ""]
        out += [f"- **{k}**: {v}" for k, v in self.cond.items()] + ["", "## Claims", ""] + table
        out += ["", f"Verdicts: {self.counts()}.", ""]
        if self.paper:
            out += ["## Against the paper's numbers", "", "| " + " | ".join(PAPER_HEAD) + " |",
                    "|" + "---|" * len(PAPER_HEAD)]
            out += ["| " + " | ".join(esc(c) for c in _paper_cells(r)) + " |" for r in self.paper] + [""]
        out += ["## Implementation checks", "", "Theorems that hold unless the code is wrong: not evidence for a "
                "claim.", "", "| check | ours | verdict | note |", "|---|---|---|---|"]
        out += [f"| {esc(c.claim)} | {esc(c.ours)} | {c.verdict} | {esc(c.reason)} |" for c in self.checks]
        out += ["", "## Figures", ""]
        for claim, figs in self.grouped():
            out += [f"### {claim}", ""] + [f"- [{p.stem}]({os.path.relpath(p, run_dir)}): {caption(p.stem)}"
                                           for p in figs] + [""]
        out += ["## What ran", ""] + [f"- {line}" for line in run_lines(self.summary)]
        out += ["", "## Environment", ""] + [f"- {line}" for line in conditions.environment_lines(self.summary,
                                                                                               self.profile)]
        out += ["", "## Wall time per notebook", "", "| notebook | seconds |", "|---|---|"]
        out += [f"| {k} | {v:.0f} |" for k, v in (self.summary.get("_timings_s") or {}).items()]
        return "\n".join(out) + "\n"

    # ------------------------------------------------------------ html
    def html(self) -> str:
        e = html.escape

        def tr(cells, cls, part=False):
            tds = "".join(f"<td>{_inline(c)}</td>" if i != 6 else f"<td><b>{_inline(c)}</b></td>"
                          for i, c in enumerate(cells))
            return f"<tr class='{cls}{' part' if part else ''}'>{tds}</tr>"

        rows = "".join(tr(_cells(r), r.verdict.split()[0]) + "".join(tr(_cells(p, True), "part", True)
                                                                      for p in r.parts) for r in self.trend)
        head = "".join(f"<th>{h}</th>" for h in HEAD)
        paper = ""
        if self.paper:
            paper = ("<h2>Against the paper's numbers</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in PAPER_HEAD)
                     + "</tr>" + "".join(tr(_paper_cells(r), r.verdict.split()[0]) for r in self.paper) + "</table>")
        checks = "".join(f"<tr><td>{e(c.claim)}</td><td>{e(c.ours)}</td><td><b>{e(c.verdict)}</b></td>"
                         f"<td>{_inline(c.reason)}</td></tr>" for c in self.checks)
        cond = "".join(f"<li><b>{e(k)}</b>: {_inline(v)}</li>" for k, v in self.cond.items())
        figs = "".join(f"<h3>{e(claim)}</h3>" + "".join(
            f"<figure><img alt='{e(p.stem)}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
            f"<figcaption><b>{e(p.stem)}</b>: {e(caption(p.stem))}</figcaption></figure>" for p in fs)
            for claim, fs in self.grouped())
        envs = "".join(f"<li>{e(line)}</li>" for line in conditions.environment_lines(self.summary, self.profile))
        times = "".join(f"<tr><td>{e(k)}</td><td>{v:.0f}</td></tr>"
                        for k, v in (self.summary.get("_timings_s") or {}).items())
        rule = _inline(RULE)
        ran = "".join(f"<li>{_inline(line)}</li>" for line in run_lines(self.summary))
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title>"
                f"<style>{_CSS}</style>{_CHECK}</head><body><h1>{e(self.title)}</h1><p>{rule}</p>"
                f"<h2>Conditions</h2><ul>{cond}</ul><h2>Claims</h2><div class='wide'><table><tr>{head}</tr>{rows}"
                f"</table></div><p>Verdicts: {e(self.counts())}.</p>{paper}<h2>Implementation checks</h2><p>Theorems "
                f"that hold unless the code is wrong: not evidence.</p><table><tr><th>check</th><th>ours</th>"
                f"<th>verdict</th><th>note</th></tr>{checks}</table><h2>Figures</h2>{figs}<h2>Environment</h2>"
                f"<ul>{envs}</ul><h2>What ran</h2><ul>{ran}</ul><h2>Wall time per notebook</h2><table><tr>"
                f"<th>notebook</th><th>seconds</th></tr>"
                f"{times}</table></body></html>\n")


def _inline(text) -> str:
    """Escaped text with the markdown the rows use: **bold** and `code`."""
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(str(text)))
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1280px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.4}table{border-collapse:collapse;width:100%;font-size:13px}.wide{overflow-x:auto}
td,th{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.holds,.within{background:#e3f6e3}.opposite,.outside{background:#fbe3e3}.inconclusive{background:#fff6dc}
.not{background:#f1f1f1;color:#777}tr.part td{background:#fafafa;font-size:12px;color:#444}
tr.part td:first-child{padding-left:1.5em}
figure{margin:12px 0;max-width:100%}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:13px;color:#444}code{background:#f3f3f3;padding:0 3px;font-size:92%}"""

_CHECK = """<script>window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++}
document.body.setAttribute('data-images-loaded',ok+'/'+im.length)});</script>"""


def main(argv=None) -> int:
    """A user error (unknown profile, no or corrupt summary.json) is one sentence on stderr and exit code 1."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description="Write REPORT.md and REPORT.html from a run's saved metrics.")
    p.add_argument("--profile", default="default")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--fig-dir", default=None)
    a = p.parse_args(argv)
    try:
        prof = profiles.load(a.profile)
        run_dir, fig_dir = run_dirs(prof["name"], a.run_dir, a.fig_dir)
        written = write(run_dir, fig_dir, prof)
    except json.JSONDecodeError as e:
        print(f"report: {run_dir / 'summary.json'} is not valid JSON ({e}); rerun the pipeline (make reproduce) "
              "to rewrite it.", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
