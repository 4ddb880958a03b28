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

    Run folder: `run_dir`, else runs/<name>. Figure folder: `fig_dir`, else <run_dir>/figures when a run
    folder is given (so two runs never write into each other's figures), else figures/<name>."""
    if fig_dir:
        figs = Path(fig_dir)
    else:
        figs = Path(run_dir) / "figures" if run_dir else FIGURES_DIR / name
    return (Path(run_dir) if run_dir else RUNS_DIR / name, figs)
