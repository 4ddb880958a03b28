"""The reproduction report: one row per claim of the papers, every number read from the run's JSON.

    python -m lib.report --profile default     # also written at the end of every pipeline run

Writes runs/<profile>/REPORT.md and a self-contained REPORT.html (figures embedded).
Rows and verdicts come from `lib.claims` (one function per claim); this module only renders them.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from lib import claims, profiles
from lib.paths import run_dirs


def write(run_dir: str | Path, fig_dir: str | Path, profile: dict) -> tuple[Path, Path]:
    """Write REPORT.md and the self-contained REPORT.html into run_dir; returns both paths."""
    run_dir, fig_dir = Path(run_dir), Path(fig_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} is missing: run the pipeline first (make reproduce).")
    summary = json.loads(summary_path.read_text())
    rows = claims.evaluate(summary, profile)
    checks = claims.checks(summary, profile)
    figs = figures(summary, fig_dir)
    env = summary.get("_environment", {})
    timings = summary.get("_timings_s", {})
    title = f"robinterp reproduction report: profile {profile['name']}"
    md = _markdown(title, rows, checks, figs, env, timings, run_dir, profile, summary)
    (run_dir / "REPORT.md").write_text(md)
    (run_dir / "REPORT.html").write_text(_html(title, rows, checks, figs, env, timings, profile, summary))
    return run_dir / "REPORT.md", run_dir / "REPORT.html"


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


def _env_lines(env: dict, profile: dict) -> list[str]:
    v = env.get("versions", {})
    return [f"profile `{profile['name']}` (dataset {profile['dataset']}, seed {profile.get('seed', 0)})",
            f"git commit `{env.get('git_commit')}`",
            f"device {env.get('device')} ({env.get('device_name')}), {env.get('threads')} threads",
            "python " + str(env.get("python")) + ", " + ", ".join(f"{k} {x}" for k, x in v.items() if x)]


HEAD = ("source", "claim", "paper", "ours", "tolerance", "verdict", "note")


def _md_table(rows) -> list[str]:
    out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    cells = [[str(getattr(r, k)).replace("|", "\\|") for k in ("source", "claim", "paper", "ours", "tolerance",
                                                               "verdict", "reason")] for r in rows]
    return out + [f"| {' | '.join(c[:5])} | **{c[5]}** | {c[6]} |" for c in cells]


def _markdown(title, rows, checks, figs, env, timings, run_dir, profile, summary) -> str:
    out = [f"# {title}", "",
           "Every number below is read from this run's `summary.json`; paper values come from the profile. "
           "A claim about robustness holds when its direction holds across the sweep ordered by training strength "
           "(Spearman's ρ between strength and the quantity); each model's value is shown in sweep order. "
           "Verdicts: **holds**, **differs** (outside the tolerance, or the opposite sign), **not measured**.", ""]
    out += _md_table(rows)
    n = {v: sum(r.verdict == v for r in rows) for v in claims.VERDICTS}
    out += ["", f"{n['holds']} hold, {n['differs']} differ, {n['not measured']} not measured.", "",
            "## Implementation checks", "",
            "Theorems that hold unless the code is wrong: not evidence for a claim.", ""]
    out += _md_table(checks) + ["", "## Figures", ""]
    out += [f"- [{p.stem}]({os.path.relpath(p, run_dir)})" for p in figs]
    out += ["", "## What ran", ""] + [f"- {line}" for line in run_lines(summary)]
    out += ["", "## Environment", ""] + [f"- {line}" for line in _env_lines(env, profile)]
    out += ["", "## Wall time per notebook", "", "| notebook | seconds |", "|---|---|"]
    out += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.holds{background:#e3f6e3}.differs{background:#fbe3e3}.not{background:#f1f1f1;color:#777}
figure{display:inline-block;margin:8px;vertical-align:top;max-width:520px}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:12px;color:#555}"""

_CHECK = """<script>window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++}
document.body.setAttribute('data-images-loaded',ok+'/'+im.length)});</script>"""


def _html_table(rows) -> str:
    e = html.escape
    head = "".join(f"<th>{h}</th>" for h in HEAD)
    trs = "".join(f"<tr class='{r.verdict.split()[0]}'><td>{e(r.source)}</td><td>{e(r.claim)}</td><td>{e(r.paper)}"
                  f"</td><td>{e(r.ours)}</td><td>{e(r.tolerance)}</td><td><b>{e(r.verdict)}</b></td>"
                  f"<td>{e(r.reason)}</td></tr>" for r in rows)
    return f"<table><tr>{head}</tr>{trs}</table>"


def _html(title, rows, checks, figs, env, timings, profile, summary) -> str:
    e = html.escape
    imgs = "".join(f"<figure><img alt='{e(p.stem)}' src='data:image/png;base64,"
                   f"{base64.b64encode(p.read_bytes()).decode()}'><figcaption>{e(p.stem)}</figcaption></figure>"
                   for p in figs)
    envs = "".join(f"<li>{e(line)}</li>" for line in _env_lines(env, profile))
    ran = "".join(f"<li>{e(line).replace('**not run**', '<b>not run</b>')}</li>" for line in run_lines(summary))
    times = "".join(f"<tr><td>{e(k)}</td><td>{v:.0f}</td></tr>" for k, v in timings.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
            f"{_CHECK}</head><body><h1>{e(title)}</h1><p>Every number is read from this run's summary.json; "
            f"paper values come from the profile; directions are decided over the sweep.</p>{_html_table(rows)}"
            f"<h2>Implementation checks</h2><p>Theorems that hold unless the code is wrong: not evidence.</p>"
            f"{_html_table(checks)}<h2>Figures</h2>{imgs}<h2>What ran</h2><ul>{ran}</ul>"
            f"<h2>Environment</h2><ul>{envs}</ul><h2>Wall time per notebook</h2><table><tr><th>notebook</th>"
            f"<th>seconds</th></tr>{times}</table></body></html>\n")


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Write REPORT.md and REPORT.html from a run's saved metrics.")
    p.add_argument("--profile", default="default")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--fig-dir", default=None)
    a = p.parse_args(argv)
    prof = profiles.load(a.profile)
    for path in write(*run_dirs(prof["name"], a.run_dir, a.fig_dir), prof):
        print(path)


if __name__ == "__main__":
    main()
