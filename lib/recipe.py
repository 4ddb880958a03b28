"""What one model's training draws and decides, shared by one-model (lib.train) and joint (lib.joint) training.

Randomness is a pure function of (seed, epoch, step): `step_seed` seeds the batch order of an epoch and the
augmentation and PGD start of a step, so a run killed at any step and started again ends with bitwise the same
weights, whether the model was trained alone or beside others.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

from lib import data

PIN_BYTES = 4 << 30


def step_seed(cfg: dict, epoch: int, step: int = -1) -> int:
    """The seed of (cfg['seed'], epoch, step); step -1 is the epoch's batch order."""
    return (cfg["seed"] * 1_000_003 + epoch * 100_003 + step + 1) % 2**63


def batch_order(cfg: dict, epoch: int, n: int) -> torch.Tensor:
    """(n,) permutation: the order in which epoch `epoch` visits the n training images."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(cfg, epoch)))


def augment(x: torch.Tensor, kind: str | None, gen: torch.Generator, n_global: int | None = None,
            share: slice = slice(None)) -> torch.Tensor:
    """crop_flip: random 4-pixel-padded crop and horizontal flip, drawn from `gen`.

    The draws are made for the `n_global` images of the global batch and their `share` applied to x,
    so a rank that holds only its rows augments them exactly as one process would."""
    if kind is None:
        return x
    if kind != "crop_flip":
        raise ValueError(f"unknown augmentation {kind!r}; use null or crop_flip")
    n, _, h, w = x.shape
    total = n_global or n
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx, dy = (torch.randint(0, 9, (total,), generator=gen, device=x.device)[share] for _ in range(2))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = pad[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)
              [None, :, None, None], rows, cols]
    flip = torch.rand(total, generator=gen, device=x.device)[share] < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def lr_lambda(cfg: dict, steps_per_epoch: int):
    """The lr multiplier of global step t (LambdaLR): warm-up, then cosine, step, onecycle or constant."""
    total = max(1, cfg["epochs"] * steps_per_epoch)
    warm = cfg["warmup_epochs"] * steps_per_epoch

    def f(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        if cfg["schedule"] == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, total - warm)))
        if cfg["schedule"] == "step":
            return 0.1 ** sum(t >= m * steps_per_epoch for m in cfg["milestones"])
        if cfg["schedule"] == "onecycle":  # linear up to the peak at 40 %, then linearly to 0
            peak = 0.4 * total
            return t / peak if t < peak else max(0.0, (total - t) / (total - peak))
        if cfg["schedule"] == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {cfg['schedule']!r}; use cosine, step, onecycle or constant")

    return f


def train_data(cfg: dict, data_root, device: torch.device) -> tuple[data.ImageTensorDataset, data.ImageTensorDataset]:
    """(train, val) datasets of a config: train cut to `train_subset` and placed for `device`."""
    opts = cfg.get("dataset_options") or {}
    train_ds = data.load(cfg["dataset"], "train", data_root, **opts)
    val_ds = data.load(cfg["dataset"], "val", data_root, **opts)
    if cfg["train_subset"]:
        train_ds = train_ds.subset(torch.arange(min(cfg["train_subset"], len(train_ds))))
    return place(labels(cfg, train_ds), device, cfg["data_on_device"]), val_ds


def labels(cfg: dict, ds: data.ImageTensorDataset) -> data.ImageTensorDataset:
    """`labels: shuffled`: the training labels permuted by a generator seeded with cfg["seed"] (Adebayo et
    al.'s data-randomisation test: a model that can only memorise); `original` (default): unchanged."""
    kind = cfg.get("labels", "original")
    if kind == "original":
        return ds
    if kind != "shuffled":
        raise ValueError(f"unknown labels {kind!r}; use original or shuffled")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg["seed"]))
    return data.ImageTensorDataset(ds.store, ds.labels[perm.to(ds.labels.device)], ds.classes, index=ds.index)


def place(ds: data.ImageTensorDataset, device: torch.device, on_device: bool) -> data.ImageTensorDataset:
    """On a GPU: the whole dataset on it (small datasets), or in pinned memory for non-blocking copies
    (up to PIN_BYTES; a larger store, such as ImageNet-150's memory-mapped cache, stays mapped)."""
    if device.type != "cuda":
        return ds
    if on_device:
        return ds.to(device)
    return ds.to(device, pin=True) if len(ds) * ds.store[0].numel() <= PIN_BYTES else ds


def arch_of(cfg: dict, ds: data.ImageTensorDataset) -> dict:
    """The `arch` entry of meta.json: what checkpoints.load_model rebuilds."""
    c, _, size = ds.shape
    return {"name": cfg["arch"], "num_classes": len(ds.classes), "in_channels": c,
            "image_size": size, "kwargs": dict(cfg["arch_kwargs"])}


def selection_metric(cfg: dict, val: dict) -> float:
    """Checkpoint selection on val (`select`): auto — a PGD-trained model by PGD accuracy at its own training ε
    (not at the evaluation ε, which would pick an early, less accurate checkpoint of a weakly trained model),
    every other model by clean accuracy; mean — the mean of clean and PGD accuracy (Boychev's code; PGD at the
    model's own ε when it is PGD-trained, else at the evaluation ε); pgd — PGD accuracy at the evaluation ε;
    clean. `val`: train.validate's dict (clean_acc, pgd_acc and, for PGD models, own_pgd_acc)."""
    robust = val.get("own_pgd_acc", val["pgd_acc"])
    kind = cfg["select"]
    if kind == "auto":
        return robust if "own_pgd_acc" in val else val["clean_acc"]
    if kind == "mean":
        return 0.5 * (val["clean_acc"] + robust)
    if kind in ("pgd", "clean"):
        return val[f"{kind}_acc"]
    raise ValueError(f"unknown checkpoint selection {cfg['select']!r}; use auto, pgd, clean or mean")


def get_rng() -> dict:
    """The global torch / python / numpy RNG states as tensors and numbers (state.pt loads weights_only)."""
    np_state = np.random.get_state()
    py = random.getstate()
    rng = {"torch": torch.get_rng_state(), "python": list(py[1]), "python_gauss": py[2],
           "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
           "numpy_gauss": [int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate((3, tuple(rng["python"]), rng["python_gauss"]))
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"],
                         *rng["numpy_gauss"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def cost(cfg: dict) -> float:
    """Relative training cost of a recipe, for ordering jobs (not a time): epochs × images × gradient passes per
    step (PGD: one per attack step plus the update; gradient-norm: a double backward, about 3)."""
    passes = {"pgd": 1 + cfg.get("steps", 0), "gradnorm": 3}.get(cfg["mode"], 1)
    return cfg["epochs"] * (cfg.get("train_subset") or 60000) * passes
