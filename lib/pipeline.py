"""Run the numbered notebooks in order with papermill and merge their metrics.

    python -m lib.pipeline --profile default                 # what `make reproduce` runs
    python -m lib.pipeline --profile smoke --only 01,03 --device cpu
    python -m lib.pipeline --profile default --set attributions.ig.steps=100   # any knob of the profile

Before notebook 01, every prerequisite of every selected notebook is checked (lib.preflight) and all
missing ones are listed in one message. One pipeline at a time may use a run folder (a lock, released
by the kernel when the process dies). Executed copies go to runs/<profile>/notebooks/: each notebook
runs into a temporary copy that replaces the last good one only on success (a failed or interrupted
one is kept as NN_name.failed.ipynb). Metrics go to runs/<profile>/metrics/, merged into summary.json
with the figures each notebook wrote (`_figures`), the overrides it ran with (`_overrides`) and the
notebooks that did not run (`_not_run`, with the reason); a failed run still writes both and a report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from lib import paths, preflight, profiles, progress, report, results, runlock
from lib.device import resolve_device
from lib.results import environment, write_json

NOTEBOOK_DIR = paths.NOTEBOOK_DIR
FAILED = "failed.json"  # {stem: reason} of notebooks whose last run failed, until one succeeds
PARAMETER_TAGS = {"parameters", "injected-parameters"}  # literals only: no progress line for them
# Kernels log CRITICAL only: no "Kernel is running over TCP" warning, and no message-handler traceback when Ctrl-C
# ends a run (errors of a cell are in the executed notebook).
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]


class NotebookFailed(RuntimeError):
    pass


class MissingPrerequisites(ValueError):
    pass


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a notebook; str() is the one line to print."""


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks (NN_name.ipynb) in run order, optionally only those whose NN is in `only`."""
    found = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb") if "." not in p.stem)
    if only:
        unknown = set(only) - {p.name[:2] for p in found}
        if unknown:
            raise ValueError(f"no notebook numbered {sorted(unknown)}; known: {[p.stem for p in found]}")
        found = [p for p in found if p.name[:2] in only]
    return found


def run(profile: str, *, only: list[str] | None = None, device: str = "auto", run_dir: str | Path | None = None,
        fig_dir: str | Path | None = None, data_root: str | Path | None = None, seed: int = 0,
        overrides: dict | None = None, log=print) -> dict:
    """Execute the notebooks; return the merged summary.

    Raises MissingPrerequisites (before any work), runlock.RunDirBusy, NotebookFailed on the first failure
    and Interrupted on Ctrl-C; the last two after writing summary.json and a report of what finished.
    `overrides` (nested dict, e.g. from --set) reaches every notebook as its OVERRIDES parameter."""
    prof = profiles.load(profile, overrides)  # fail fast on an unknown profile or knob, before any work
    run_dir, figs = paths.run_dirs(prof["name"], run_dir, fig_dir)
    books = notebooks(only)
    problems = preflight.prerequisites(prof, books, data_root or paths.DATA_DIR, run_dir)
    if problems:
        raise MissingPrerequisites(f"{len(problems)} prerequisite{'s are' if len(problems) > 1 else ' is'} missing, "
                                   "so no notebook was started:\n  - " + "\n  - ".join(problems))
    params = {"PROFILE": profile, "DEVICE": device, "RUN_DIR": str(run_dir), "FIG_DIR": str(figs),
              "DATA_ROOT": str(data_root) if data_root else None, "SEED": seed, "OVERRIDES": overrides or {}}
    with runlock.hold(run_dir, log):
        return _run_locked(books, prof, params, run_dir, figs, device, log)


def _run_locked(books, prof, params, run_dir: Path, figs: Path, device, log) -> dict:
    import papermill as pm

    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(progress.kernel_env())  # kernels inherit it: one summary line per stage, no bar refreshes
    timings, used = _read(run_dir, "timings.json"), _read(run_dir, "overrides.json")
    for i, nb in enumerate(books, 1):
        log(f"[{i}/{len(books)}] {nb.stem} (profile {prof['name']}) ...", flush=True)
        later = {b.stem: f"not run: {nb.stem} stopped the run before it" for b in books[i:]}
        t0, partial = time.time(), out_dir / f"{nb.stem}.partial.ipynb"
        results.forget_figures(run_dir, nb.name[:2])  # figures it no longer draws leave the report
        try:
            _execute(pm, nb, partial, params, log)
        except KeyboardInterrupt:
            with _no_sigint():  # a second Ctrl-C must not break the cleanup
                failed = _keep_failed(partial)
                _partial_report(run_dir, figs, prof, device, {nb.stem: "interrupted (Ctrl-C)", **later}, log)
            raise Interrupted(f"interrupted during {nb.stem} (its partial copy: {failed}); earlier notebooks' "
                              "results are kept: rerun the same command to resume (trained models and training "
                              "checkpoints are reused).") from None
        except Exception as e:  # noqa: BLE001 - a cell's error, or the kernel died: the same one sentence
            failed, good = _keep_failed(partial), out_dir / nb.name
            cell = isinstance(e, pm.PapermillExecutionError)
            what = f"{e.ename}: {e.evalue}" if cell else f"{type(e).__name__}: {e}"
            where = f"failed in cell {e.cell_index} (execution count {e.exec_count})" if cell else "stopped"
            _partial_report(run_dir, figs, prof, device, {nb.stem: f"failed: {what}", **later}, log)
            raise NotebookFailed(f"{nb.name} {where}: {what}. Failed copy: {failed}" + (
                f"; the last good executed copy stays at {good}" if good.is_file() else "")) from None
        partial.replace(out_dir / nb.name)
        (out_dir / f"{nb.stem}.failed.ipynb").unlink(missing_ok=True)
        failures = _read(run_dir, FAILED)
        if failures.pop(nb.stem, None) is not None:
            write_json(run_dir / FAILED, failures)
        timings[nb.stem], used[nb.stem] = round(time.time() - t0, 1), params["OVERRIDES"]
        log(f"[{i}/{len(books)}] {nb.stem} done in {timings[nb.stem]:.0f} s", flush=True)
        write_json(run_dir / "timings.json", timings)
        write_json(run_dir / "overrides.json", used)
    summary = summarize(run_dir, device=device)
    md, page = report.write(run_dir, figs, prof)
    log(f"report: {md} and {page.name}", flush=True)
    return summary


def _execute(pm, nb: Path, out: Path, params: dict, log) -> None:
    """One notebook into `out`, with a line per code cell and every line the kernel prints, indented."""
    def on_cell(cell, number, total):
        first = next((ln for ln in cell.get("source", "").splitlines() if ln.strip()), "")
        log(f"    {nb.name[:2]} cell {number}/{total}: {first[:80]}", flush=True)

    pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3", cwd=str(paths.ROOT),
                        progress_bar=False, log_output=False, engine_name=_engine(),
                        on_cell=on_cell, stdout_file=progress.Relay(log, "      "), extra_arguments=KERNEL_ARGS)


def _engine() -> str:
    """papermill's nbclient engine, calling `on_cell(cell, k, n)` as the k-th of the n code cells (parameter
    cells left out) starts."""
    from papermill.engines import NBClientEngine, papermill_engines

    class CellLines(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, on_cell=None, **kwargs):
            start, code = nb_man.cell_start, [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"
                                              and not PARAMETER_TAGS & set(c.metadata.get("tags", []))]

            def cell_start(cell, cell_index=None, **kw):
                if on_cell is not None and cell_index in code:
                    on_cell(cell, code.index(cell_index) + 1, len(code))
                return start(cell, cell_index, **kw)

            nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("robinterp", CellLines)
    return "robinterp"


@contextmanager
def _no_sigint():
    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _keep_failed(partial: Path) -> Path:
    failed = partial.with_name(partial.name.replace(".partial.", ".failed."))
    if partial.is_file():
        partial.replace(failed)
    return failed


def _partial_report(run_dir, figs, prof, device, not_run: dict, log) -> None:
    """summary.json and the report of what finished, the rest marked not run; never masks the real error."""
    failures = _read(run_dir, FAILED)  # kept until the notebook succeeds: its old metrics are not this state
    write_json(run_dir / FAILED, {**failures, **{k: v for k, v in not_run.items() if not v.startswith("not run")}})
    try:
        summarize(run_dir, device=device, not_run=not_run)
        md, _ = report.write(run_dir, figs, prof)
        log(f"partial report (notebooks that finished): {md}", flush=True)
    except Exception as e:  # noqa: BLE001 - the notebook's failure is the message the user needs
        log(f"(no partial report: {type(e).__name__}: {e})", flush=True)


def summarize(run_dir: str | Path, *, device=None, not_run: dict | None = None) -> dict:
    """Merge runs/<profile>/metrics/*.json into summary.json: {notebook stem: metrics}, plus `_figures`
    (what those notebooks drew: {name, notebook, path}), `_overrides`, `_timings_s`, `_environment` and
    `_not_run` ({stem: reason} for every numbered notebook without results here, whose last run failed
    (failed.json), or in `not_run`)."""
    run_dir = Path(run_dir)
    not_run = {k: f"{v} (its last run)" for k, v in _read(run_dir, FAILED).items()} | dict(not_run or {})
    summary = {p.stem: json.loads(p.read_text())["metrics"] for p in sorted((run_dir / "metrics").glob("*.json"))
               if p.stem not in not_run}
    ran = {k: v for k, v in _read(run_dir, "timings.json").items() if k not in not_run}
    for nb in notebooks():
        if nb.stem not in summary and nb.stem not in ran:
            not_run.setdefault(nb.stem, "not run in this run folder yet (nor selected with --only)")
    done = {s[:2] for s in (*summary, *ran)}
    figures = [e for book, entries in sorted(results.read_figures(run_dir).items()) if book in done for e in entries]
    used = _read(run_dir, "overrides.json")
    write_json(run_dir / "summary.json", {**summary, "_timings_s": ran, "_figures": figures,
                                          "_overrides": {k: v for k, v in used.items() if k in ran},
                                          "_not_run": not_run, "_environment": environment(_device(device))})
    return summary


def _device(device):
    return resolve_device(device) if device else None


def _read(run_dir: Path, name: str) -> dict:
    path = run_dir / name
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run robinterp's numbered notebooks with papermill.")
    p.add_argument("--profile", default="default", help=f"one of {', '.join(profiles.known())}, or a YAML path")
    p.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,03")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    p.add_argument("--fig-dir", default=None, help="default: figures/<profile> for runs/<profile>, else "
                                                   "<run-dir>/figures")
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
    except Interrupted as e:
        print(f"pipeline {e}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        print("pipeline interrupted before any notebook started: nothing was changed.", file=sys.stderr, flush=True)
        return 130
    except (NotebookFailed, runlock.RunDirBusy, ValueError) as e:
        print(f"pipeline stopped: {e}", file=sys.stderr)
        return 1
    print(f"pipeline finished in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
