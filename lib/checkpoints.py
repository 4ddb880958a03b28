"""Model files and training state, written atomically and read without unpickling.

A finished model is `model.safetensors` + `meta.json`; `load_model` rebuilds it from the
meta alone. The resumable training state is `state.pt`, read with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lib import models
from lib.results import write_json

MODEL_FILE, META_FILE, STATE_FILE = "model.safetensors", "meta.json", "state.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign or unsafe to load."""


def save_model(model: torch.nn.Module, meta: dict, out_dir: str | Path) -> Path:
    """Write model.safetensors, then meta.json last: a meta file means a complete model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in models.unwrap(model).state_dict().items()}
    _atomic(out_dir / MODEL_FILE, lambda p: save_file(state, str(p)))
    write_json(out_dir / META_FILE, meta)
    return out_dir


def is_complete(out_dir: str | Path) -> bool:
    return (Path(out_dir) / META_FILE).is_file() and (Path(out_dir) / MODEL_FILE).is_file()


def read_meta(path: str | Path) -> dict:
    out_dir = _model_dir(path)
    try:
        return json.loads((out_dir / META_FILE).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{out_dir} has no {META_FILE}: it is not a finished robinterp model; "
                              "train it with `python -m lib.train` or notebook 01.") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{out_dir / META_FILE} is corrupt ({e}); delete the folder and retrain.") from e


def load_model(path: str | Path, device: str | torch.device = "cpu") -> models.Classifier:
    """Rebuild a model from meta.json and load its safetensors weights; returns it in eval mode.

    Never unpickles: a .pt/.pth/.pkl file is refused before a byte of it is interpreted.
    The meta dict is attached as `model.meta`.
    """
    path = Path(path)
    if path.is_file() and path.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
        raise CheckpointError(f"{path} is a pickle-based file; robinterp loads only model.safetensors + "
                              "meta.json folders written by lib.train, because unpickling can run code.")
    out_dir = _model_dir(path)
    meta = read_meta(out_dir)
    arch = meta.get("arch")
    if not isinstance(arch, dict) or "name" not in arch:
        raise CheckpointError(f"{out_dir / META_FILE} has no `arch` entry: not a robinterp model.")
    model = models.build(arch["name"], arch["num_classes"], arch["in_channels"], arch["image_size"],
                         **arch.get("kwargs", {}))
    weights = out_dir / MODEL_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; retrain the model (its meta.json is there).")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e}); delete the folder "
                              "and retrain.") from e
    missing, unexpected = _key_diff(model.state_dict(), state)
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not fit architecture {arch['name']!r} (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}): a foreign or mismatched file.")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights} has the wrong tensor shapes for {arch['name']!r}: {e}") from e
    model.meta = meta
    return model.to(device).eval()


def save_state(state: dict, path: str | Path) -> None:
    """Atomic torch.save of a training state (tensors, numbers, strings only)."""
    _atomic(Path(path), lambda p: torch.save(state, p))


def load_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"training state {path} cannot be read safely ({type(e).__name__}: "
                              f"{str(e)[:200]}); move it aside to restart this model from scratch.") from e


def _atomic(path: Path, write) -> None:
    """Write via a temp file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _model_dir(path: Path) -> Path:
    path = Path(path)
    return path.parent if path.name in (MODEL_FILE, META_FILE) else path


def _key_diff(expected: dict, got: dict) -> tuple[list, list]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
