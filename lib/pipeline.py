"""Run the numbered notebooks in order with papermill and merge their metrics.

    python -m lib.pipeline --profile default                 # what `make reproduce` runs
    python -m lib.pipeline --profile smoke --only 01,03 --device cpu
    python -m lib.pipeline --profile default --set attributions.ig.steps=100   # any knob of the profile

Executed copies go to runs/<profile>/notebooks/, metrics to runs/<profile>/metrics/ and the
merged runs/<profile>/summary.json. The first failing notebook stops the run with its name
and cell; everything that finished before it stays on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lib import paths, profiles, progress, report
from lib.device import resolve_device
from lib.results import environment, write_json

NOTEBOOK_DIR = paths.NOTEBOOK_DIR


class NotebookFailed(RuntimeError):
    pass


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks (NN_name.ipynb) in run order, optionally only those whose NN is in `only`."""
    found = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = set(only) - {p.name[:2] for p in found}
        if unknown:
            raise ValueError(f"no notebook numbered {sorted(unknown)}; known: {[p.stem for p in found]}")
        found = [p for p in found if p.name[:2] in only]
    return found


def run(profile: str, *, only: list[str] | None = None, device: str = "auto", run_dir: str | Path | None = None,
        fig_dir: str | Path | None = None, data_root: str | Path | None = None, seed: int = 0,
        overrides: dict | None = None, log=print) -> dict:
    """Execute the notebooks; return the merged summary. Raises NotebookFailed on the first failure.

    `overrides` (nested dict, e.g. from --set) reaches every notebook as its OVERRIDES parameter."""
    import papermill as pm

    prof = profiles.load(profile, overrides)  # fail fast on an unknown profile or knob, before any work
    run_dir, figs = paths.run_dirs(prof["name"], run_dir, fig_dir)
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"PROFILE": profile, "DEVICE": device, "RUN_DIR": str(run_dir),
              "FIG_DIR": str(fig_dir) if fig_dir else None, "DATA_ROOT": str(data_root) if data_root else None,
              "SEED": seed, "OVERRIDES": overrides or {}}
    books = notebooks(only)
    os.environ.update(progress.kernel_env())  # kernels inherit it: one summary line per stage, no bar refreshes
    timings = _read_timings(run_dir)
    for i, nb in enumerate(books, 1):
        log(f"[{i}/{len(books)}] {nb.stem} (profile {prof['name']}) ...", flush=True)
        t0 = time.time()
        try:
            pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params, kernel_name="python3",
                                cwd=str(paths.ROOT), progress_bar=False, log_output=False)
        except pm.PapermillExecutionError as e:
            raise NotebookFailed(f"{nb.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                                 f"{e.ename}: {e.evalue}. Executed copy: {out_dir / nb.name}") from None
        timings[nb.stem] = round(time.time() - t0, 1)
        log(f"[{i}/{len(books)}] {nb.stem} done in {timings[nb.stem]:.0f} s", flush=True)
        write_json(run_dir / "timings.json", timings)
    summary = summarize(run_dir, device=device)
    md, page = report.write(run_dir, figs, prof)
    log(f"report: {md} and {page.name}", flush=True)
    return summary


def summarize(run_dir: str | Path, *, device=None) -> dict:
    """Merge runs/<profile>/metrics/*.json into summary.json: {notebook stem: metrics}."""
    run_dir = Path(run_dir)
    summary = {p.stem: json.loads(p.read_text())["metrics"] for p in sorted((run_dir / "metrics").glob("*.json"))}
    write_json(run_dir / "summary.json", {**summary, "_timings_s": _read_timings(run_dir),
                                          "_environment": environment(_device(device))})
    return summary


def _device(device):
    return resolve_device(device) if device else None


def _read_timings(run_dir: Path) -> dict:
    path = run_dir / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run robinterp's numbered notebooks with papermill.")
    p.add_argument("--profile", default="default", help=f"one of {', '.join(profiles.known())}, or a YAML path")
    p.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,03")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    p.add_argument("--fig-dir", default=None, help="default: figures/<profile>")
    p.add_argument("--data-root", default=None, help="default: data/")
    p.add_argument("--seed", type=int, default=0, help="SEED of notebooks 02-05: their seeded image draws and "
                   "random starts (attribution images and noise, alignment images, inversion and generation seeds); "
                   "training uses the profile's seed, 06 its fid.seeds")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one profile setting for every notebook, e.g. attributions.ig.steps=100 "
                        "(repeatable; the value is read as YAML)")
    a = p.parse_args(argv)
    only = [s.strip().zfill(2) for s in a.only.split(",")] if a.only else None
    t0 = time.time()
    try:
        run(a.profile, only=only, device=a.device, run_dir=a.run_dir, fig_dir=a.fig_dir,
            data_root=a.data_root, seed=a.seed, overrides=profiles.parse_set(a.set))
    except (NotebookFailed, ValueError) as e:
        print(f"pipeline stopped: {e}", file=sys.stderr)
        return 1
    print(f"pipeline finished in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
