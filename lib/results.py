"""Results as data: metrics JSON with the environment that produced them."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from lib.paths import ROOT

PACKAGES = ("torch", "torchvision", "captum", "shap", "pytorch-fid", "numpy", "papermill", "seaborn")


def environment(device: str | torch.device | None = None) -> dict:
    """Versions, device and git commit: enough to say what produced a number."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    dev = torch.device(device) if device is not None else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "device": str(dev) if dev else None,
        "device_name": (torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda"
                        else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def to_jsonable(obj):
    """Tensors, arrays and numpy scalars to plain Python; NaN/inf to None (JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def temp_beside(path: str | Path) -> tuple[int, str]:
    """(fd, name) of a new temporary file in `path`'s folder for an atomic write (os.replace it onto `path`).

    Unlike bare `tempfile.mkstemp` (always 0600), its mode follows the umask, as `open(path, "w")` would."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def write_json(path: str | Path, obj) -> Path:
    """Atomic JSON write: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    with os.fdopen(fd, "w") as f:
        json.dump(to_jsonable(obj), f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- the figures a run wrote

FIGURE_MANIFEST = "figures.json"  # run_dir/figures.json: {notebook number: [{name, notebook, path}, ...]}


def record_figure(run_dir: str | Path, name: str, path: str | Path) -> None:
    """Note in run_dir/figures.json that figure `name` (e.g. "02_ig_grid", saved at `path`) was written by
    notebook name[:2]; the report embeds exactly the recorded figures."""
    book = name[:2] if name[:2].isdigit() else "other"
    manifest = read_figures(run_dir)
    entries = [e for e in manifest.get(book, []) if e["name"] != name]
    manifest[book] = entries + [{"name": name, "notebook": book, "path": str(path)}]
    write_json(Path(run_dir) / FIGURE_MANIFEST, manifest)


def forget_figures(run_dir: str | Path, notebook: str) -> None:
    """Drop the figures of notebook number `notebook` (e.g. "02") before it runs again, so figures it no
    longer draws (after an override) leave the report."""
    manifest = read_figures(run_dir)
    if manifest.pop(notebook, None) is not None:
        write_json(Path(run_dir) / FIGURE_MANIFEST, manifest)


def read_figures(run_dir: str | Path) -> dict:
    """{notebook number: [{name, notebook, path}]} from run_dir/figures.json ({} if none was written)."""
    path = Path(run_dir) / FIGURE_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def save_metrics(run_dir: str | Path, stem: str, metrics: dict, *, device=None) -> Path:
    """Write runs/<profile>/metrics/<stem>.json: the metrics plus the environment."""
    return write_json(Path(run_dir) / "metrics" / f"{stem}.json",
                      {"metrics": metrics, "environment": environment(device)})


def load_metrics(run_dir: str | Path, stem: str) -> dict:
    path = Path(run_dir) / "metrics" / f"{stem}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook {stem} first "
                                f"(python -m lib.pipeline --only {stem[:2]}).")
    return json.loads(path.read_text())["metrics"]
