"""Where things live: the repository root and the conventional folders under it. Imports nothing from lib."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = ROOT / "profiles"
NOTEBOOK_DIR = ROOT / "notebooks"
DATA_DIR = ROOT / "data"
RUNS_DIR = ROOT / "runs"
FIGURES_DIR = ROOT / "figures"


def run_dirs(name: str, run_dir=None, fig_dir=None) -> tuple[Path, Path]:
    """(run folder, figure folder) of profile `name`.

    Run folder: `run_dir`, else runs/<name>. Figure folder: `fig_dir`, else figures/<name> for the run folder
    runs/<name>, and <run_dir>/figures for any other (so two runs never write into each other's figures)."""
    runs = Path(run_dir) if run_dir else RUNS_DIR / name
    if fig_dir:
        return runs, Path(fig_dir)
    default = runs.resolve() == (RUNS_DIR / name).resolve()
    return runs, FIGURES_DIR / name if default else runs / "figures"
