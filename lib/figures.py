"""Redraw every figure of a run from its saved artefacts, without recomputing anything.

    python -m lib.figures --profile default        # what `make figures` runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt

from lib import plotting, profiles, report
from lib.paths import run_dirs


def redraw(run_dir: str | Path, fig_dir: str | Path) -> list[Path]:
    """Redraw runs/<profile>/artefacts/*.npz into fig_dir (PNG + PDF). Returns the PNG paths."""
    run_dir, out = Path(run_dir), []
    arts = sorted((run_dir / "artefacts").glob("*.json"))
    if not arts:
        raise FileNotFoundError(f"no saved figure data in {run_dir / 'artefacts'}: run the pipeline first "
                                "(make reproduce).")
    for spec in arts:
        name, data = plotting.load_artefact(spec)
        draw = getattr(plotting, name, None)
        if draw is None:
            raise ValueError(f"{spec} names drawing function {name!r}, which lib/plotting.py no longer has.")
        fig = draw(**data)
        out.append(plotting.savefig(fig, fig_dir, spec.stem)[0])
        plt.close(fig)
    return out


def main(argv=None) -> int:
    """A user error (unknown profile, no saved data, a corrupt file) is one sentence on stderr and exit code 1."""
    p = argparse.ArgumentParser(description="Redraw a run's figures and report from saved data.")
    p.add_argument("--profile", default="default")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--fig-dir", default=None)
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        prof = profiles.load(a.profile)
        run_dir, fig_dir = run_dirs(prof["name"], a.run_dir, a.fig_dir)
        paths = redraw(run_dir, fig_dir)
        md, _ = report.write(run_dir, fig_dir, prof)
    except (ValueError, OSError) as e:  # OSError: missing or unreadable files; ValueError: bad values, bad JSON
        print(f"figures: {e}", file=sys.stderr)
        return 1
    print(f"redrew {len(paths)} figures into {fig_dir} and wrote {md} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
