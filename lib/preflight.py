"""What a run needs before its first notebook starts: data, FID weights, checkpoints, disk. One list, no work.

    problems = preflight.prerequisites(profile, ["01_training", "06_fid"], data_root, run_dir)

Each problem is one sentence saying what is missing and what to do; the pipeline prints them all at
once instead of stopping at the first, hours into a run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lib import checkpoints, data, fid, imagecache, profiles, zoo
from lib.paths import ROOT

DATA_ERRORS = (FileNotFoundError, ValueError, OSError, RuntimeError, EOFError)


def prerequisites(profile: dict, notebooks: list, data_root: str | Path, run_dir: str | Path | None = None
                  ) -> list[str]:
    """Every missing prerequisite of the notebooks (stems or paths, e.g. "04_representation_inversion") that
    will run on `profile`: the dataset (files and checksums, lib.data), the FID weights where an Inception
    feature space is configured (04, 06), every external checkpoint (lib.zoo), notebook 01's trained models
    when 01 is not among them, and free disk for the Small-ImageNet-150 cache. [] when all is there."""
    numbers = {Path(str(nb)).name[:2] for nb in notebooks}
    if not numbers:
        return []
    root = Path(data_root)
    problems = _dataset(profile, root)
    problems += _fid_weights(profile, numbers)
    problems += _checkpoints(profile)
    if "01" not in numbers and run_dir is not None:
        problems += _trained(profile, Path(run_dir), sorted(numbers))
    return problems


def _dataset(profile: dict, root: Path) -> list[str]:
    if profile["dataset"] == "imagenet150":
        return _imagenet_cache(profile, root)
    try:
        data.load_for(profile, "test", root)  # loads both splits: files present, checksums verified
    except DATA_ERRORS as e:
        return [f"dataset {profile['dataset']}: {e}"]
    return []


def _fid_weights(profile: dict, numbers: set[str]) -> list[str]:
    sec = profile.get("fid") or {}
    spaces = sec.get("feature_spaces") or {}
    used = {"04": [sec.get("inversion_space")], "06": list(spaces)}
    books = [n for n in ("04", "06") if n in numbers and (sec.get("features") == "inception"  # older layout
             or any((spaces.get(s) or {}).get("features") == "inception" for s in used[n]))]
    if not books or fid.weights_available(sec.get("weights")):
        return []
    where = Path(sec["weights"]) if sec.get("weights") else fid.default_weights_path()
    return [f"notebook{'s' if len(books) > 1 else ''} {' and '.join(books)} need{'' if len(books) > 1 else 's'} "
            f"the FID Inception weights at {where}: download {fid.FID_WEIGHTS_FILE} from {fid.fid_weights_url()} "
            "and put it there (or name the file in the profile's fid.weights)."]


def _checkpoints(profile: dict) -> list[str]:
    out = []
    for key in profile["models"]:
        if not zoo.is_external(profile, key):
            continue
        try:
            cfg = zoo.check_entry(profiles.model_config(profile, key), f"model {key!r}")
        except ValueError as e:
            out.append(str(e))
            continue
        for field in ("path", "wnids"):
            if cfg.get(field) and not _resolve(cfg[field]).is_file():
                hint = f"get it from {zoo.SOURCES[cfg['source']]}" if field == "path" else \
                    "it lists the 1000 ImageNet class ids in output order (README, Pretrained models)"
                out.append(f"model {key!r}: {_resolve(cfg[field])} not found: {hint}, and put it there "
                           "(robinterp never downloads).")
    return out


def _resolve(path) -> Path:  # as lib.zoo resolves a profile's paths: relative to the repository
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def _trained(profile: dict, run_dir: Path, numbers: list[str]) -> list[str]:
    missing = [k for k in profile["models"] if not zoo.is_external(profile, k)
               and not checkpoints.is_complete(profiles.model_dir(run_dir, profile, k))]
    if not missing:
        return []
    return [f"notebook{'s' if len(numbers) > 1 else ''} {', '.join(numbers)} use the models notebook 01 trains, "
            f"but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not trained in {run_dir / 'models'}: "
            "run notebook 01 first (add 01 to --only), with the same --set training settings."]


def _imagenet_cache(profile: dict, root: Path) -> list[str]:
    """The class list and folders (checked as lib.data checks them), then the disk the first decode needs."""
    opts = {**data.OPTIONS["imagenet150"], **(profile.get("dataset_options") or {})}
    base = root / "imagenet150"
    class_file = base / "classes.txt"
    if not class_file.is_file():
        return [f"dataset imagenet150: {class_file} not found: put ImageNet's train/ and val/ class folders under "
                f"{base} and the 150 class ids, one per line, in {class_file} (README, Data)."]
    classes = [c.strip() for c in class_file.read_text().splitlines() if c.strip()]
    size, need = opts["image_size"], 0
    for split in data.SPLITS:
        folder = base / ("val" if split == "test" else "train")
        missing = [c for c in classes if not (folder / c).is_dir()]
        if missing:
            return [f"dataset imagenet150: {len(missing)} classes of {class_file} have no folder in {folder} "
                    f"(first: {missing[0]}); check the class list or the extraction."]
        if not any((base / "cache").glob(f"{split}-{size}-*.npy")):
            files, _ = imagecache.class_files(folder, classes, None if split == "test" else split,
                                              opts["train_per_class"], opts["val_per_class"], data.VAL_SEED)
            need += len(files) * 3 * size * size
    probe = next(p for p in (base / "cache", base, root, Path(root).resolve().anchor) if Path(p).exists())
    free = shutil.disk_usage(probe).free
    if need > free:
        return [f"dataset imagenet150: decoding it once into {base / 'cache'} needs {need / 1e9:.1f} GB, but only "
                f"{free / 1e9:.1f} GB are free there: free some space, or link {base / 'cache'} to a larger disk."]
    return []
