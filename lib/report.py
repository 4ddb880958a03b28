"""The reproduction report: one row per claim of the papers, every number read from the run's JSON.

    python -m lib.report --profile default     # also written at the end of every pipeline run

Writes runs/<profile>/REPORT.md and a self-contained REPORT.html (figures embedded).
Paper values come from the profile's `paper:` section; tolerances are the constants below
(README, "Reading the report", says why each is what it is).
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lib import profiles
from lib.paths import run_dirs

# Absolute tolerances in accuracy points, relative ones for distances. See README for the reasons.
TOL_CLEAN, TOL_PGD, TOL_FID_REL, TOL_INVERSION_REL = 3.0, 5.0, 0.15, 0.20


@dataclass
class Claim:
    source: str          # paper and table / figure
    claim: str           # what is claimed
    paper: str           # the paper's value or direction
    ours: str            # our value(s), formatted
    tolerance: str
    verdict: str         # holds / differs / not measured


def _get(summary: dict, path: str):
    node = summary
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _verdict(ok) -> str:
    return "not measured" if ok is None else ("holds" if ok else "differs")


def _direction(source, claim, lo_name, lo, hi_name, hi, *, digits=2) -> Claim:
    """A qualitative claim `lo < hi`."""
    ok = None if lo is None or hi is None else lo < hi
    return Claim(source, claim, f"{lo_name} < {hi_name}",
                 f"{lo_name} {_fmt(lo, digits)}, {hi_name} {_fmt(hi, digits)}", "sign", _verdict(ok))


def _against_paper(source, claim, paper, ours, tol, relative=False) -> Claim:
    if paper is None:
        return None
    ok = None if ours is None else abs(ours - paper) <= (tol * abs(paper) if relative else tol)
    tol_s = f"±{tol:.0%}" if relative else f"±{tol:g} points"
    return Claim(source, claim, _fmt(paper), _fmt(ours), tol_s, _verdict(ok))


def claims(summary: dict, paper: dict | None) -> list[Claim]:
    """Every claim we check, from summary.json (notebook stem -> metrics) and the profile's paper values."""
    paper = paper or {}
    pv = lambda key, field: (paper.get(key) or {}).get(field)
    acc = lambda key, field: _get(summary, f"01_training.models.{key}.{field}")
    rows: list[Claim | None] = []
    tables = "Boychev Tab. 1/4"
    for key in ("standard", "robust"):
        rows.append(_against_paper(tables, f"{key} clean accuracy (%)", pv(key, "clean_acc"), acc(key, "clean_acc"),
                                   TOL_CLEAN))
        rows.append(_against_paper(tables, f"{key} PGD accuracy (%)", pv(key, "pgd_acc"), acc(key, "pgd_acc"), TOL_PGD))
    rows.append(_direction(tables, "adversarial training buys robustness", "standard PGD acc", acc("standard", "pgd_acc"),
                           "robust PGD acc", acc("robust", "pgd_acc"), digits=1))
    rows.append(_direction(tables, "robustness costs clean accuracy", "robust clean acc", acc("robust", "clean_acc"),
                           "standard clean acc", acc("standard", "clean_acc"), digits=1))
    fd_name = _get(summary, "06_fid.fd_name") or "FID"
    fd = lambda key: _get(summary, f"06_fid.fd.{key}")
    for key in ("real", "standard", "robust"):
        if fd_name == "FID":
            rows.append(_against_paper("Boychev Tab. 2/5", f"FID {key}", pv(key, "fid"), fd(key), TOL_FID_REL, True))
    rows.append(_direction("Boychev Tab. 2/5", f"robust generations are closer to the data ({fd_name})",
                           "robust", fd("robust"), "standard", fd("standard")))
    inv = lambda key: _get(summary, f"04_inversion.feature_distance.{key}")
    extractor = _get(summary, "04_inversion.feature_distance_extractor") or "feature"
    if extractor.lower().startswith("inception"):
        for key in ("standard", "robust"):
            rows.append(_against_paper("Boychev Tab. 3/6", f"inversion distance {key}", pv(key, "inversion_distance"),
                                       inv(key), TOL_INVERSION_REL, True))
    rows.append(_direction("Boychev Tab. 3/6", f"robust inversions are closer to their targets ({extractor})",
                           "robust", inv("robust"), "standard", inv("standard")))
    for sweep in ("pgd", "gradnorm"):
        rho = _get(summary, f"03_alignment.spearman.{sweep}")
        rows.append(Claim("Etmann 2019", f"alignment rises with robustness ({sweep} sweep)", "Spearman ρ > 0",
                          f"ρ = {_fmt(rho)}", "sign", _verdict(None if rho is None else rho > 0)))
    rows.append(_direction("Wang 2022", "robust gradients align with the boundary normal", "standard cosine",
                           _get(summary, "03_alignment.boundary_cosine.standard"), "robust cosine",
                           _get(summary, "03_alignment.boundary_cosine.robust"), digits=3))
    rows.append(_direction("Boychev Figs 2, 6", "robust attributions are more concentrated (Gini of abs IG)",
                           "standard Gini", _get(summary, "02_attributions.gini.standard"), "robust Gini",
                           _get(summary, "02_attributions.gini.robust"), digits=3))
    return [r for r in rows if r is not None]


def write(run_dir: str | Path, fig_dir: str | Path, profile: dict) -> tuple[Path, Path]:
    """Write REPORT.md and the self-contained REPORT.html into run_dir; returns both paths."""
    run_dir, fig_dir = Path(run_dir), Path(fig_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} is missing: run the pipeline first (make reproduce).")
    summary = json.loads(summary_path.read_text())
    rows = claims(summary, profile.get("paper"))
    figs = sorted(fig_dir.glob("*.png"))
    env = summary.get("_environment", {})
    timings = summary.get("_timings_s", {})
    title = f"robinterp reproduction report: profile {profile['name']}"
    md = _markdown(title, rows, figs, env, timings, run_dir, profile)
    (run_dir / "REPORT.md").write_text(md)
    (run_dir / "REPORT.html").write_text(_html(title, rows, figs, env, timings, profile))
    return run_dir / "REPORT.md", run_dir / "REPORT.html"


def _env_lines(env: dict, profile: dict) -> list[str]:
    v = env.get("versions", {})
    return [f"profile `{profile['name']}` (dataset {profile['dataset']}, seed {profile.get('seed', 0)})",
            f"git commit `{env.get('git_commit')}`",
            f"device {env.get('device')} ({env.get('device_name')}), {env.get('threads')} threads",
            "python " + str(env.get("python")) + ", " + ", ".join(f"{k} {x}" for k, x in v.items() if x)]


def _markdown(title, rows, figs, env, timings, run_dir, profile) -> str:
    out = [f"# {title}", "",
           "Every number below is read from this run's `summary.json`; paper values come from the profile. "
           "Verdicts: **holds**, **differs** (outside the tolerance, or the opposite sign), **not measured**.", "",
           "| source | claim | paper | ours | tolerance | verdict |", "|---|---|---|---|---|---|"]
    out += [f"| {r.source} | {r.claim} | {r.paper} | {r.ours} | {r.tolerance} | **{r.verdict}** |" for r in rows]
    n = {v: sum(r.verdict == v for r in rows) for v in ("holds", "differs", "not measured")}
    out += ["", f"{n['holds']} hold, {n['differs']} differ, {n['not measured']} not measured.", "", "## Figures", ""]
    out += [f"- [{p.stem}]({os.path.relpath(p, run_dir)})" for p in figs]
    out += ["", "## Environment", ""] + [f"- {line}" for line in _env_lines(env, profile)]
    out += ["", "## Wall time per notebook", "", "| notebook | seconds |", "|---|---|"]
    out += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.holds{background:#e3f6e3}.differs{background:#fbe3e3}.not{background:#f1f1f1;color:#777}
figure{display:inline-block;margin:8px;vertical-align:top;max-width:520px}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:12px;color:#555}"""

_CHECK = """<script>window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++}
document.body.setAttribute('data-images-loaded',ok+'/'+im.length)});</script>"""


def _html(title, rows, figs, env, timings, profile) -> str:
    e = html.escape
    trs = "".join(f"<tr class='{r.verdict.split()[0]}'><td>{e(r.source)}</td><td>{e(r.claim)}</td><td>{e(r.paper)}"
                  f"</td><td>{e(r.ours)}</td><td>{e(r.tolerance)}</td><td><b>{e(r.verdict)}</b></td></tr>" for r in rows)
    imgs = "".join(f"<figure><img alt='{e(p.stem)}' src='data:image/png;base64,"
                   f"{base64.b64encode(p.read_bytes()).decode()}'><figcaption>{e(p.stem)}</figcaption></figure>"
                   for p in figs)
    envs = "".join(f"<li>{e(line)}</li>" for line in _env_lines(env, profile))
    times = "".join(f"<tr><td>{e(k)}</td><td>{v:.0f}</td></tr>" for k, v in timings.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
            f"{_CHECK}</head><body><h1>{e(title)}</h1><p>Every number is read from this run's summary.json; "
            f"paper values come from the profile.</p><table><tr><th>source</th><th>claim</th><th>paper</th>"
            f"<th>ours</th><th>tolerance</th><th>verdict</th></tr>{trs}</table><h2>Figures</h2>{imgs}"
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
