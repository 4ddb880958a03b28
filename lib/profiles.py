"""Profiles: one YAML parameter set per scale (smoke, default, cifar10, imagenet150, ...)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = ROOT / "profiles"

TRAIN_DEFAULTS = {
    "epochs": 10, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False,
    "schedule": "cosine", "milestones": [], "warmup_epochs": 0, "amp": None, "augment": None,
    "train_subset": None, "ckpt_every": 200, "val_images": 1000, "mode": "standard",
    "norm": "l2", "eps": 0.0, "step_size": 0.0, "steps": 0, "lam": 0.0, "channels_last": False,
    "compile": False, "data_on_device": False,
}
# Speed options that leave the trained weights' meaning unchanged: not part of a model's identity.
RUNTIME_KEYS = ("compile", "data_on_device")


def known() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load(name_or_path: str | Path) -> dict:
    """Load a profile by name (profiles/<name>.yaml) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown profile {str(name_or_path)!r}; known profiles: {', '.join(known())}")
    prof = yaml.safe_load(path.read_text())
    if not isinstance(prof, dict) or "models" not in prof or "dataset" not in prof:
        raise ValueError(f"profile {path} must be a YAML mapping with at least `dataset` and `models`")
    prof.setdefault("name", path.stem)
    for key in ("standard", "robust"):
        if key not in prof["models"]:
            raise ValueError(f"profile {path} must define a `{key}` model")
    return prof


def model_config(profile: dict, key: str) -> dict:
    """The full, self-contained training config of model `key`: everything that changes its weights."""
    if key not in profile["models"]:
        raise ValueError(f"profile {profile['name']!r} has no model {key!r}; its models: "
                         f"{', '.join(profile['models'])}")
    cfg = {**TRAIN_DEFAULTS, **profile.get("train", {}), **(profile["models"][key] or {})}
    unknown = set(cfg) - set(TRAIN_DEFAULTS) - {"arch", "arch_kwargs"}
    if unknown:
        raise ValueError(f"model {key!r} of profile {profile['name']!r} has unknown settings: {sorted(unknown)}")
    cfg.setdefault("arch", profile.get("arch", "small_cnn"))
    cfg.setdefault("arch_kwargs", profile.get("arch_kwargs", {}))
    cfg.update(dataset=profile["dataset"], seed=profile.get("seed", 0), eval=copy.deepcopy(profile["eval"]))
    if cfg["mode"] not in ("standard", "pgd", "gradnorm"):
        raise ValueError(f"model {key!r}: mode must be standard, pgd or gradnorm, got {cfg['mode']!r}")
    if cfg["eps"] < 0 or cfg["lam"] < 0:
        raise ValueError(f"model {key!r}: eps and lam must be >= 0")
    return cfg


def config_hash(cfg: dict) -> str:
    """Short, stable hash of a config; a finished model is reused only under the same hash."""
    ident = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]


def model_dir(run_dir: str | Path, profile: dict, key: str) -> Path:
    """Where model `key` of `profile` lives: a different config never overwrites an older model."""
    return Path(run_dir) / "models" / f"{key}-{config_hash(model_config(profile, key))}"


def run_dirs(name: str, run_dir=None, fig_dir=None) -> tuple[Path, Path]:
    """(run folder, figure folder) of profile `name`: runs/<name> and figures/<name> unless given."""
    return (Path(run_dir) if run_dir else ROOT / "runs" / name, Path(fig_dir) if fig_dir else ROOT / "figures" / name)


class Context:
    """What every notebook derives from its parameters cell: profile, folders, device."""

    def __init__(self, profile: str, device: str = "auto", run_dir: str | None = None, fig_dir: str | None = None,
                 data_root: str | None = None, seed: int = 0):
        from lib.train import resolve_device

        self.profile = load(profile)
        self.name = self.profile["name"]
        self.run_dir, self.fig_dir = run_dirs(self.name, run_dir, fig_dir)
        self.data_root = Path(data_root) if data_root else ROOT / "data"
        self.device = resolve_device(device)
        self.seed = seed
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fig_dir.mkdir(parents=True, exist_ok=True)

    def section(self, name: str) -> dict:
        """The profile's parameters for one notebook, e.g. ctx.section('attributions')."""
        if name not in self.profile:
            raise ValueError(f"profile {self.name!r} has no `{name}` section")
        return self.profile[name]

    def model(self, key: str):
        """A model trained by notebook 01; a clear error if it has not run yet."""
        from lib.train import get_model

        return get_model(self.profile, key, self.run_dir, device=self.device, data_root=self.data_root,
                         train_if_missing=False)

    def dataset(self, split: str):
        from lib.data import load

        return load(self.profile["dataset"], split, self.data_root)

    def __repr__(self) -> str:
        return (f"Context(profile={self.name!r}, device={self.device}, run_dir={self.run_dir}, "
                f"fig_dir={self.fig_dir})")
