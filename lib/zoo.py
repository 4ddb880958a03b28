"""Published checkpoints as robinterp models: MadryLab `robustness`, RobustBench, Boychev 2023, torchvision.

A profile model entry names a file instead of a training recipe, e.g.

    robust: {source: madrylab, path: data/models/cifar_l2_0_5.pt, arch: resnet50_cifar}

`load_external` reads it with `torch.load(weights_only=True)` (or safetensors), so no pickled object
is ever executed; renames its keys onto our architecture (our `Classifier` with the input
normalisation the authors used as its first layer); and loads it strictly: every tensor must be
used and have the right shape. Nothing is downloaded: a missing file says where to get it.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lib import data, models, profiles, train
from lib.checkpoints import CheckpointError
from lib.paths import ROOT

CIFAR_MADRY = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # robustness' CIFAR stats (Boychev too)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SMALL_IMAGENET_BOYCHEV = ((0.4808, 0.4512, 0.4072), (0.2687, 0.2610, 0.2742))  # his smallimagenet notebook
_AUGUSTIN = ((0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
             (0.24703225141799082, 0.24348516474564, 0.26158783926049628))
# RobustBench CIFAR-10 L2 entries our architectures express: name -> (arch, (mean, std) or None = raw input).
ROBUSTBENCH_CIFAR10_L2 = {
    "Standard": ("wrn28_10", None),
    "Engstrom2019Robustness": ("resnet50_cifar", CIFAR_MADRY),
    "Augustin2020Adversarial": ("resnet50_cifar", _AUGUSTIN),
    "Augustin2020Adversarial_34_10": ("wrn34_10", _AUGUSTIN),
    "Augustin2020Adversarial_34_10_extra": ("wrn34_10", _AUGUSTIN),
    "Rice2020Overfitting": ("preact_resnet18", ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))),
    "Rony2019Decoupling": ("wrn28_10", ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))),
    "Wu2020Adversarial": ("wrn34_10", None),
    "Sehwag2021Proxy": ("wrn34_10", None),
    "Sehwag2021Proxy_R18": ("resnet18_cifar", None),
}
SOURCES = {  # where a file comes from, and the state-dict layout it has
    "madrylab": "MadryLab robustness (https://github.com/MadryLab/robustness#pretrained-models): "
                "{'model': {'module.model.*', 'module.normalizer.new_mean', ...}}",
    "robustbench": "RobustBench model zoo (robustbench.load_model(name, dataset='cifar10', "
                   "threat_model='L2') saves it as models/cifar10/L2/<name>.pt): a state dict, "
                   "optionally under 'state_dict' with 'module.' prefixes",
    "boychev": "Boychev 2023 (https://github.com/delyan-boychev/pytorch_trainers_interpretability, "
               "examples/*_interpretability.ipynb gdrive links): {'model_state_dict': ResNet state dict}",
    "torchvision": "torchvision ImageNet weights (e.g. https://download.pytorch.org/models/"
                   "resnet50-0676ba61.pth): a plain torchvision ResNet state dict",
}
ARCHS = {"madrylab": ("resnet18_cifar", "resnet50_cifar", "resnet18", "resnet50"),
         "robustbench": tuple(sorted({a for a, _ in ROBUSTBENCH_CIFAR10_L2.values()})),
         "boychev": ("resnet18_cifar", "resnet50_cifar", "resnet50"),
         "torchvision": ("resnet18", "resnet50")}
_IGNORED = {  # tensors a layout carries that the network does not use
    "madrylab": re.compile(r"^attacker\."),  # the attacker's copy of the same model and normaliser
    "robustbench": re.compile(r"^sub_block1\."),  # TRADES' WideResNet defines it but never calls it
}

def _numpy_globals() -> list:
    """numpy scalars and dtypes, which MadryLab checkpoints hold in `optimizer`/`schedule` (float64 learning rates of
    `--custom-lr-multiplier cyclic` or `lr_interpolation linear`). Both module names: numpy < 2 pickles the scalar
    as numpy.core.multiarray.scalar, numpy >= 2 as numpy._core.multiarray.scalar. Rebuilding a number or a dtype
    from its bytes runs no code of the file."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtypes = {type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                          np.uint32, np.uint64, np.float16, np.float32, np.float64)}
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *sorted(dtypes, key=lambda t: t.__name__)]


# MultiStepLR milestones in saved schedulers (a plain dict), and numpy numbers in optimizer/schedule entries
_SAFE_GLOBALS = [collections.Counter, *_numpy_globals()]
# what to do with a trusted file that holds other objects: keep only its weight entry, under the same key
RESAVE = ("torch.save({k: v for k, v in torch.load(src, weights_only=False).items() if k in ('model', "
          "'state_dict', 'model_state_dict')}, dst)")


def is_external(profile: dict, key: str) -> bool:
    return isinstance(profile["models"].get(key), dict) and "source" in profile["models"][key]


def get_model(profile: dict, key: str, run_dir, *, seed: int = 0, device="cpu", data_root="data",
              train_if_missing=True, progress=True) -> models.Classifier:
    """Model `key` (training-seed index `seed`) of `profile`: an external checkpoint when its entry has `source:`,
    else trained/loaded."""
    if is_external(profile, key):
        return load_external(profiles.model_config(profile, key, seed), device=device, data_root=data_root)
    return train.get_model(profile, key, run_dir, seed=seed, device=device, data_root=data_root,
                           train_if_missing=train_if_missing, progress=progress)


def get_models(profile: dict, units: list[str], run_dir, **kw) -> dict[str, models.Classifier]:
    """{unit: model} for unit ids such as 'robust@1' (lib.profiles.units), in their order: published checkpoints
    loaded, trained models through `train.get_models` (the missing ones trained, jointly where `train.joint` says)."""
    external = {u for u in units if is_external(profile, profiles.split_unit(u)[0])}
    trained = train.get_models(profile, [u for u in units if u not in external], run_dir, **kw)
    return {u: get_model(profile, profiles.split_unit(u)[0], run_dir, **kw) if u in external else trained[u]
            for u in units}


def load_external(cfg: dict, *, device="cpu", data_root="data") -> models.Classifier:
    """Build the model a `profiles.model_config` of an external entry describes; eval mode, on `device`.

    model.meta has the config, the file's SHA-256 and `arch` like a trained model's meta.
    """
    cfg = check_entry(cfg)
    source, path, arch = cfg["source"], _resolve(cfg["path"]), cfg["arch"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: get it from {SOURCES[source]}, and put it at {path} "
                                "(robinterp never downloads).")
    state, norm = _layout(_read(path), source, path)
    num_classes, in_channels = _head_size(state, arch, path)
    ds = data.load(cfg["dataset"], "test", data_root, **(cfg.get("dataset_options") or {}))
    size = ds[0][0].shape[-1]
    model = models.build(arch, num_classes, in_channels, size)
    _load_strict(model, state, external_names(model, arch, _style(source, arch)), path, f"a {source} {arch}")
    stats = _stats(cfg, norm)
    model.normalize = models.Normalize(*stats) if stats else torch.nn.Identity()
    if cfg.get("wnids"):
        _restrict_head(model, _resolve(cfg["wnids"]), ds.classes)
    elif num_classes != len(ds.classes):
        raise CheckpointError(f"{path} has {num_classes} outputs but dataset {cfg['dataset']!r} has "
                              f"{len(ds.classes)} classes; for a 1000-class ImageNet model give `wnids:` (a file "
                              "listing the 1000 ImageNet class ids in output order, e.g. LOC_synset_mapping.txt).")
    model.meta = {"config": cfg, "config_hash": profiles.config_hash(cfg), "sha256": data.file_digest(path),
                  "arch": {"name": arch, "num_classes": model.head.out_features, "in_channels": in_channels,
                           "image_size": size, "kwargs": {}}, "external": True}
    return models.place(model, device).eval()


def external_names(model: models.Classifier, arch: str, style: str) -> dict[str, str]:
    """Our state-dict key -> the key the external layout uses (normaliser buffers excluded).

    style "cifar": conv1/bn1/layerN.j.{conv,bn,shortcut}/linear (MadryLab CIFAR, Boychev, RobustBench);
    "torchvision": the same with `downsample` and `fc`. WideResNet/PreActResNet bodies already carry
    RobustBench's names; only their heads are renamed.
    """
    keys = [k for k in model.state_dict() if not k.startswith("normalize.")]
    if arch in models.WIDE or arch == "preact_resnet18":
        head = "fc" if arch in models.WIDE else "linear"
        return {k: re.sub(r"^body\.", "", re.sub(r"^head\.", f"{head}.", k)) for k in keys}
    if not arch.startswith("resnet"):
        raise ValueError(f"architecture {arch!r} has no external layout; use one of "
                         f"{', '.join(sorted({a for v in ARCHS.values() for a in v}))}")
    layers = (2, 2, 2, 2) if arch.startswith("resnet18") else (3, 4, 6, 3)
    blocks = [f"layer{i + 1}.{j}" for i, n in enumerate(layers) for j in range(n)]
    stem = 3 if arch.endswith("_cifar") else 4  # conv, bn, relu (+ max-pool)
    head = "fc" if style == "torchvision" else "linear"
    out = {}
    for k in keys:
        first, _, rest = k.partition(".")
        if first == "head":
            out[k] = f"{head}.{rest}"
            continue
        index, _, rest = rest.partition(".")
        index = int(index)
        if index < stem:
            out[k] = f"{('conv1', 'bn1')[index]}.{rest}"
        else:
            if style == "torchvision":
                rest = re.sub(r"^shortcut\.", "downsample.", rest)
            out[k] = f"{blocks[index - stem]}.{rest}"
    return out


# ---------------------------------------------------------------- reading and layouts

def _read(path: Path) -> dict:
    """The file's top-level dict of tensors, read without executing any pickled object."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}).") from e
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        raise CheckpointError(
            f"{path} cannot be read safely ({type(e).__name__}: {_cause(e)}): robinterp reads only tensors, numbers "
            f"and plain containers (weights_only=True); if you trust the file, re-save its weights once with "
            f"{RESAVE}.") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a dict of tensors: not a checkpoint.")
    return raw


def _cause(err: Exception) -> str:
    """torch's reason, not its boilerplate: the `WeightsUnpickler error:` line (the unsupported global) if any."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    cause = next((ln for ln in lines if ln.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    return cause.removeprefix("WeightsUnpickler error: ").split(". Please use")[0][:300]


def _layout(raw: dict, source: str, path: Path) -> tuple[dict, tuple | None]:
    """(weights keyed as in the source's network, normaliser (mean, std) found in the file or None)."""
    wanted = {"madrylab": ("model", "state_dict"), "boychev": ("model_state_dict",),
              "robustbench": ("state_dict",), "torchvision": ()}[source]
    key = next((k for k in wanted if k in raw), None)
    if key is None and source in ("madrylab", "boychev"):
        raise CheckpointError(f"{path} is not a {source} checkpoint: expected {SOURCES[source]}; "
                              f"its top-level keys are {sorted(map(str, raw))[:5]}.")
    state = raw[key] if key else raw
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: the {key or 'top-level'} entry is not a state dict of tensors; "
                              f"expected {SOURCES[source]}.")
    state = _strip(state, "module.")
    norm = None
    if source == "madrylab":
        if "normalizer.new_mean" not in state:
            raise CheckpointError(f"{path} has no normalizer.new_mean: not a robustness AttackerModel "
                                  f"checkpoint; expected {SOURCES[source]}.")
        norm = tuple(state[f"normalizer.new_{s}"].flatten().tolist() for s in ("mean", "std"))
        state = {k: v for k, v in state.items() if not k.startswith("normalizer.")}
        state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    if source == "robustbench":
        state = _strip(state, "model.")
        if "mu" in state and "sigma" in state:
            norm = (state.pop("mu").flatten().tolist(), state.pop("sigma").flatten().tolist())
    if source in _IGNORED:
        state = {k: v for k, v in state.items() if not _IGNORED[source].match(k)}
    return state, norm


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _style(source: str, arch: str) -> str:
    if source == "torchvision" or (source == "madrylab" and not arch.endswith("_cifar")):
        return "torchvision"
    return "cifar"


def _stats(cfg: dict, norm: tuple | None):
    """Input normalisation: the profile entry's mean/std, else the file's own buffers, else the source's."""
    if cfg.get("mean") is not None:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    if norm is not None:
        return norm
    if cfg["source"] == "robustbench":
        return ROBUSTBENCH_CIFAR10_L2[cfg["name"]][1]
    if cfg["source"] == "boychev":
        return CIFAR_MADRY if cfg["arch"].endswith("_cifar") else SMALL_IMAGENET_BOYCHEV
    return IMAGENET  # torchvision


def _head_size(state: dict, arch: str, path: Path) -> tuple[int, int]:
    head = "fc.weight" if ("fc.weight" in state) else "linear.weight"
    first = next((state[k] for k in ("conv1.weight",) if k in state), None)
    if head not in state or first is None or first.ndim != 4:
        raise CheckpointError(f"{path} has no conv1.weight/{head}: not a {arch} state dict (first keys: "
                              f"{list(state)[:4]}).")
    return state[head].shape[0], first.shape[1]


def _load_strict(model: models.Classifier, state: dict, names: dict, path: Path, what: str) -> None:
    """Load `state` through the name map; every tensor used, every parameter filled, shapes equal."""
    ours = model.state_dict()
    expected = set(names.values())
    # BatchNorm's step counter is absent from files older than PyTorch 0.4.1; it never changes outputs.
    optional = {n for n in expected if n.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state) - optional), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit {what} (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                              f"{len(missing)}/{len(unexpected)} in all): a different architecture or layout.")
    new = {}
    for k, ext in names.items():
        v = state.get(ext, ours[k])
        if v.shape != ours[k].shape:
            raise CheckpointError(f"{path}: {ext} has shape {tuple(v.shape)}, {what} needs "
                                  f"{tuple(ours[k].shape)}: a different width or class count.")
        new[k] = v
    new.update({k: v for k, v in ours.items() if k.startswith("normalize.")})
    model.load_state_dict(new, strict=True)


def _restrict_head(model: models.Classifier, wnid_file: Path, classes: list[str]) -> None:
    """Keep the logits of the dataset's classes, in its order (exact: the other logits are dropped)."""
    if not wnid_file.is_file():
        raise FileNotFoundError(f"{wnid_file} not found: it lists the 1000 ImageNet class ids in the model's "
                                "output order (e.g. LOC_synset_mapping.txt from the ImageNet devkit).")
    wnids = [line.split()[0] for line in wnid_file.read_text().splitlines() if line.strip()]
    if len(wnids) != model.head.out_features:
        raise CheckpointError(f"{wnid_file} lists {len(wnids)} ids, the model has {model.head.out_features} outputs.")
    lost = [c for c in classes if c not in wnids]
    if lost:
        raise CheckpointError(f"{len(lost)} dataset classes (first {lost[0]!r}) are not in {wnid_file}.")
    index = torch.tensor([wnids.index(c) for c in classes])
    head = torch.nn.Linear(model.head.in_features, len(classes), bias=model.head.bias is not None)
    with torch.no_grad():
        head.weight.copy_(model.head.weight[index])
        if head.bias is not None:
            head.bias.copy_(model.head.bias[index])
    model.head = head


def _resolve(path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def check_entry(entry: dict, where: str = "this model") -> dict:
    """Validate an external model entry (profiles.model_config checked its keys); returns a copy with
    `arch` filled in from RobustBench's name."""
    source = entry["source"]
    if source not in SOURCES:
        raise ValueError(f"{where}: unknown source {source!r}; use one of {', '.join(SOURCES)}")
    entry = dict(entry)
    if source == "robustbench":
        if entry.get("name") not in ROBUSTBENCH_CIFAR10_L2:
            raise ValueError(f"{where}: `name:` must be a RobustBench CIFAR-10 L2 model robinterp can express: "
                             f"{', '.join(ROBUSTBENCH_CIFAR10_L2)}")
        arch = ROBUSTBENCH_CIFAR10_L2[entry["name"]][0]
        if entry.get("arch", arch) != arch:
            raise ValueError(f"{where}: RobustBench's {entry['name']} is a {arch}, not {entry['arch']}")
        entry["arch"] = arch
    if entry.get("arch") not in ARCHS[source]:
        raise ValueError(f"{where}: `arch:` must be one of {', '.join(ARCHS[source])} for source {source}")
    if (entry.get("mean") is None) != (entry.get("std") is None):
        raise ValueError(f"{where}: give both `mean:` and `std:` or neither")
    return entry
