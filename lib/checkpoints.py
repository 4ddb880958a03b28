"""Model files and training state, written atomically and read without unpickling.

A finished model is `model.safetensors` + `meta.json`; `load_model` rebuilds it from the
meta alone. The resumable training state is `state.pt`, read with `weights_only=True`.

Verified, not trusted: meta.json records the SHA-256 of model.safetensors (`weights_sha256`), and every load
checks it, checks meta's `config_hash` against the folder name (`<key>-...-<hash>`: its last dash-separated part)
and, where the caller knows the config it expects (train.get_model), against that config's hash. A folder written
before the SHA was recorded loads with a one-time warning rather than a refusal: refusing would throw away every
model trained so far (hours of GPU on the paper profiles) for a file nobody has shown to be wrong, while the
config-hash checks and `check_finite` on the analyses' outputs still apply; retraining makes it verifiable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lib import models, profiles
from lib.results import temp_beside, write_json

MODEL_FILE, META_FILE, STATE_FILE = "model.safetensors", "meta.json", "state.pt"
SHA_KEY = "weights_sha256"
RETRAIN = "delete the folder and retrain the model (notebook 01, or `python -m lib.train`)"
_warned_unverified: set[str] = set()


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign or unsafe to load."""


def save_model(model: torch.nn.Module, meta: dict, out_dir: str | Path) -> Path:
    """Write model.safetensors, then meta.json last: a meta file means a complete model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in models.unwrap(model).state_dict().items()}
    _atomic(out_dir / MODEL_FILE, lambda p: save_file(state, str(p)))
    write_json(out_dir / META_FILE, {**meta, SHA_KEY: file_sha256(out_dir / MODEL_FILE)})
    return out_dir


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def load_model(path: str | Path, device: str | torch.device = "cpu", *, config: dict | None = None
               ) -> models.Classifier:
    """Rebuild a model from meta.json and load its safetensors weights; returns it in eval mode.

    Never unpickles: a .pt/.pth/.pkl file is refused before a byte of it is interpreted. The weights must
    match meta's SHA-256, meta's config hash the folder name and, when given, `config` (the
    `profiles.model_config` the caller expects). The meta dict is attached as `model.meta`, the folder as
    `model.checkpoint_dir`.
    """
    path = Path(path)
    if path.is_file() and path.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
        raise CheckpointError(f"{path} is a pickle-based file; robinterp loads only model.safetensors + "
                              "meta.json folders written by lib.train, because unpickling can run code.")
    out_dir = _model_dir(path)
    meta = read_meta(out_dir)
    arch = meta.get("arch")
    if not isinstance(arch, dict) or "name" not in arch:
        raise CheckpointError(f"{out_dir / META_FILE} has no `arch` entry: not a robinterp model; {RETRAIN}.")
    model = models.build(arch["name"], arch["num_classes"], arch["in_channels"], arch["image_size"],
                         **arch.get("kwargs", {}))
    weights = out_dir / MODEL_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; retrain the model (its meta.json is there).")
    verify(out_dir, meta, config)
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
    model.checkpoint_dir = out_dir
    return models.place(model, device).eval()


def verify(out_dir: Path, meta: dict, config: dict | None = None) -> None:
    """Refuse (CheckpointError, one sentence) weights that are not the ones meta.json recorded, a meta.json that
    belongs to another folder, or a model trained with another config than `config`."""
    weights, meta_file = out_dir / MODEL_FILE, out_dir / META_FILE
    recorded = meta.get("config_hash")
    tail = out_dir.name.rsplit("-", 1)[-1] if "-" in out_dir.name else None
    if recorded and tail and re.fullmatch(r"[0-9a-f]{8,64}", tail) and tail != recorded:
        raise CheckpointError(f"{meta_file} belongs to another model (config hash {recorded}, but the folder name "
                              f"says {tail}): the folder was copied or swapped; {RETRAIN}.")
    if config is not None and recorded != profiles.config_hash(config):
        raise CheckpointError(f"{meta_file} records config hash {recorded}, but the profile asks for "
                              f"{profiles.config_hash(config)}: this folder holds another model; {RETRAIN}.")
    if SHA_KEY not in meta:
        if str(out_dir) not in _warned_unverified:
            _warned_unverified.add(str(out_dir))
            warnings.warn(f"{meta_file} has no {SHA_KEY} (written before robinterp recorded it), so {weights} is "
                          f"loaded unverified; {RETRAIN} to make it verifiable.", stacklevel=3)
        return
    if file_sha256(weights) != meta[SHA_KEY]:
        raise CheckpointError(f"{weights} does not match the SHA-256 in its meta.json (corrupt or replaced "
                              f"weights); {RETRAIN}.")


def describe(model: torch.nn.Module) -> str:
    """A model's name for error messages: its profile key and folder, its checkpoint file, or its class."""
    meta = getattr(model, "meta", None) or {}
    if meta.get("external"):
        return f"{meta['config'].get('source')} checkpoint {meta['config'].get('path')}"
    where = getattr(model, "checkpoint_dir", None)
    if meta.get("key") or where:
        return f"model {meta.get('key', '?')!r} ({where})" if where else f"model {meta['key']!r}"
    return f"model {type(models.unwrap(model)).__name__}"


def check_finite(t: torch.Tensor, what: str, model: torch.nn.Module | None = None) -> torch.Tensor:
    """Raise FloatingPointError naming the model if `t` (model outputs that feed a metric) holds NaN or inf;
    returns t. A NaN from a model is an error, never a silently null metric."""
    bad = ~torch.isfinite(t.detach())
    if bool(bad.any()):
        name = describe(model) if model is not None else "a model"
        raise FloatingPointError(f"{name} produced NaN or infinite {what} ({int(bad.sum())} of {t.numel()} values): "
                                 f"its weights are corrupt or it diverged; {RETRAIN}.")
    return t


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
    fd, tmp = temp_beside(path)
    mode = os.fstat(fd).st_mode & 0o777  # the umask's mode; a writer that recreates the file (safetensors) loses it
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
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
