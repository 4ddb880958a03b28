"""Profiles: one YAML parameter set per scale (smoke, default, cifar10, imagenet150, ...)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

from lib import schema
from lib.paths import PROFILE_DIR

TRAIN_DEFAULTS = {
    "epochs": 10, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False,
    "schedule": "cosine", "milestones": [], "warmup_epochs": 0, "amp": None, "augment": None,
    "train_subset": None, "ckpt_every": 200, "val_images": 1000, "mode": "standard",
    "norm": "l2", "eps": 0.0, "step_size": 0.0, "steps": 0, "lam": 0.0, "channels_last": "auto",
    "compile": False, "data_on_device": False, "tf32": True, "select": "auto", "joint": "auto",
    "labels": "original",
}
UNIT_SEP = "@"  # a unit is one trained model: recipe key and training-seed index, e.g. "pgd_0.5@1"
# A model entry with `source:` names a published checkpoint (lib/zoo.py) instead of a training recipe.
EXTERNAL_KEYS = ("source", "path", "arch", "name", "wnids", "mean", "std")
# Speed options that leave the trained weights' meaning unchanged (float summation order at most): not part of a
# model's identity. joint: lib.joint, models trained together; channels_last: memory order (lib.models.place).
RUNTIME_KEYS = ("compile", "data_on_device", "tf32", "joint", "channels_last")
# Settings added after models were trained: left out of the hash at these values, so those models keep their folder.
HASH_SILENT_DEFAULTS: dict = {"labels": "original"}


def known() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load(name_or_path: str | Path, overrides: dict | str | None = None) -> dict:
    """Load a profile by name (profiles/<name>.yaml) or by path to a YAML file, then deep-merge `overrides`
    (a dict, or its JSON/YAML text as papermill's `-p OVERRIDES '{...}'` passes it) into it."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown profile {str(name_or_path)!r}; known profiles: {', '.join(known())}")
    prof = yaml.safe_load(path.read_text())
    if not isinstance(prof, dict) or "models" not in prof or "dataset" not in prof:
        raise ValueError(f"profile {path} must be a YAML mapping with at least `dataset` and `models`")
    prof.setdefault("name", path.stem)
    prof = merge(prof, parse_overrides(overrides))
    for key in ("standard", "robust"):
        if key not in prof["models"]:
            raise ValueError(f"profile {path} must define a `{key}` model")
    schema.validate(prof, f"profile {prof['name']!r}" + (" with its overrides" if overrides else ""))
    return prof


def seed_count(profile: dict, key: str) -> int:
    """Training seeds of model `key`: the profile's `seeds` (default 1); an external checkpoint has one."""
    entry = profile["models"].get(key) or {}
    return 1 if "source" in entry else int(entry.get("seeds", profile.get("seeds", 1)))


def unit_id(key: str, seed: int = 0) -> str:
    return f"{key}{UNIT_SEP}{seed}"


def split_unit(unit: str) -> tuple[str, int]:
    """'pgd_0.5@1' -> ('pgd_0.5', 1); a bare key is its seed 0."""
    key, sep, seed = unit.rpartition(UNIT_SEP)
    return (key, int(seed)) if sep else (unit, 0)


def units(profile: dict, keys=None) -> list[str]:
    """Every trained model (unit) of `keys` (default: all models of the profile): each seed of each key, in order."""
    keys = list(profile["models"]) if keys is None else list(keys)
    return [unit_id(k, s) for k in keys for s in range(seed_count(profile, k))]


def model_config(profile: dict, key: str, seed: int = 0) -> dict:
    """The full, self-contained training config of model `key` at training-seed index `seed` (its torch seed is
    the profile's `seed` + `seed`): everything that changes its weights."""
    if key not in profile["models"]:
        raise ValueError(f"profile {profile['name']!r} has no model {key!r}; its models: "
                         f"{', '.join(profile['models'])}")
    entry = profile["models"][key] or {}
    if "source" in entry:  # an external checkpoint: its identity is the file and the dataset
        unknown = set(entry) - set(EXTERNAL_KEYS)
        if unknown or not entry.get("path"):
            raise ValueError(f"model {key!r} of profile {profile['name']!r} names an external checkpoint: it "
                             f"needs `path:` and takes only {', '.join(EXTERNAL_KEYS)} (unknown: {sorted(unknown)})")
        ext = {**entry, "dataset": profile["dataset"]}
        if profile.get("dataset_options"):  # zoo.load_external reads them (image size, split sizes)
            ext["dataset_options"] = dict(profile["dataset_options"])
        return ext
    cfg = {**TRAIN_DEFAULTS, **profile.get("train", {}), **{k: v for k, v in entry.items() if k != "seeds"}}
    unknown = set(cfg) - set(TRAIN_DEFAULTS) - {"arch", "arch_kwargs"}
    if unknown:
        raise ValueError(f"model {key!r} of profile {profile['name']!r} has unknown settings: {sorted(unknown)}")
    cfg.setdefault("arch", profile.get("arch", "small_cnn"))
    cfg.setdefault("arch_kwargs", profile.get("arch_kwargs", {}))
    # eval.apgd only sets notebook 01's extra APGD column (lib/robustness.py): not part of a model's identity
    ev = {k: v for k, v in profile["eval"].items() if k != "apgd"}
    n = seed_count(profile, key)
    if not 0 <= seed < n:
        raise ValueError(f"model {key!r} of profile {profile['name']!r} has training seeds 0..{n - 1} "
                         f"(`seeds: {n}`), not {seed}")
    cfg.update(dataset=profile["dataset"], seed=profile.get("seed", 0) + seed, eval=copy.deepcopy(ev))
    if profile.get("dataset_options"):  # absent for most profiles, so their hashes stay as they were
        cfg["dataset_options"] = dict(profile["dataset_options"])
    if cfg["compile"] and cfg["mode"] == "gradnorm":
        raise ValueError(f"model {key!r}: compile cannot be used with mode gradnorm (torch.compile has no "
                         f"double backward); set compile: false for this model.")
    if cfg["mode"] not in ("standard", "pgd", "gradnorm"):
        raise ValueError(f"model {key!r}: mode must be standard, pgd or gradnorm, got {cfg['mode']!r}")
    if cfg["eps"] < 0 or cfg["lam"] < 0:
        raise ValueError(f"model {key!r}: eps and lam must be >= 0")
    return cfg


def config_hash(cfg: dict) -> str:
    """Short, stable hash of a config; a finished model is reused only under the same hash."""
    ident = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS
             and not (k in HASH_SILENT_DEFAULTS and v == HASH_SILENT_DEFAULTS[k])}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]


def model_dir(run_dir: str | Path, profile: dict, key: str, seed: int = 0) -> Path:
    """Where model `key` (training-seed index `seed`) of `profile` lives: models/<key>-s<seed>-<config hash>.
    A different config never overwrites an older model."""
    return Path(run_dir) / "models" / f"{key}-s{seed}-{config_hash(model_config(profile, key, seed))}"


def parse_overrides(overrides: dict | str | None) -> dict:
    """OVERRIDES as a dict: papermill's `-p` hands over text, so JSON or YAML text is parsed."""
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, str):
        try:
            overrides = yaml.safe_load(overrides)
        except yaml.YAMLError as e:
            raise ValueError(f"OVERRIDES is not valid JSON or YAML ({_first_line(e)}): write it as "
                             f"'{{\"attributions\": {{\"ig\": {{\"steps\": 100}}}}}}'") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"OVERRIDES must be a mapping such as {{'attributions': {{'ig': {{'steps': 100}}}}}}, "
                         f"got {overrides!r}")
    return overrides


def parse_set(assignments: list[str]) -> dict:
    """['attributions.ig.steps=100', ...] (the pipeline's --set) as one nested overrides dict."""
    out: dict = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY.PATH=VALUE, e.g. attributions.ig.steps=100; got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({_first_line(e)}); quote it, e.g. "
                             f"--set 'models.robust={{mode: pgd, eps: 0.5}}'") from None
    return out


def _first_line(err: Exception) -> str:
    """A YAML error in a few words: what is wrong and where (line, column of the text)."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem or str(err).splitlines()[0]}{where}"


def merge(base: dict, overrides: dict, where: str = "") -> dict:
    """A copy of `base` with `overrides` deep-merged in. Every key must exist in `base` (a typo is an error
    naming the known keys), except in `train` and under `models` (new sweep members and any training
    setting), where `model_config` checks each name against TRAIN_DEFAULTS instead."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        path = f"{where}.{key}" if where else str(key)
        free = where == "train" or where == "models" or where.startswith("models.")
        if key not in out and not free:
            known_keys = ", ".join(map(str, out)) or "(none)"
            raise ValueError(f"unknown profile setting {path!r}; known at this level: {known_keys}")
        replace = where == "models" and isinstance(value, dict) and "source" in value  # a checkpoint, not a recipe
        if isinstance(value, dict) and isinstance(out.get(key), dict) and out[key] and not replace:
            out[key] = merge(out[key], value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out
