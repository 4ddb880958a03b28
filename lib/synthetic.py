"""Tiny generated datasets in the real on-disk formats (CIFAR-10 pickled batches, ImageNet class folders with
classes.txt) and a tiny profile for them: the format tests and `make gpu-check` run the pipeline on these."""

from __future__ import annotations

import copy
import hashlib
import pickle
from pathlib import Path

import numpy as np

from lib import profiles

CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def cifar(root: Path, n: int = 10, *, learnable: bool = False, seed: int = 0) -> tuple[Path, dict]:
    """root/cifar-10-batches-py with n images per batch file; returns (folder, MD5 table of the files).

    learnable: balanced classes, each a bright square in its own place on dim noise (a tiny model learns it)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    md5 = {}
    for name in CIFAR_FILES:
        labels = rng.permutation(np.arange(n) % 10) if learnable else rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        if learnable:
            data = (data // 4).astype(np.uint8)
            for i, c in enumerate(labels):
                r, col = divmod(int(c), 4)
                data[i, :, 2 + 8 * r:8 + 8 * r, 2 + 8 * col:8 + 8 * col] = 230
        batch = {b"data": data.reshape(n, 3072), b"labels": [int(c) for c in labels]}
        (folder / name).write_bytes(pickle.dumps(batch))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder, md5


def imagenet(root: Path, per_class: int = 1, val_per_class: int | None = None, *, n_classes: int = 150,
             size: tuple[int, int] = (40, 50), learnable: bool = False, seed: int = 0) -> tuple[Path, list[str]]:
    """root/imagenet150/{train,val}/<wnid>/*.JPEG (per_class / val_per_class images) and classes.txt.

    learnable: class c is a uniform colour from a fixed palette plus noise, so a tiny model learns it."""
    from PIL import Image

    base = Path(root) / "imagenet150"
    wnids = [f"n{i:08d}" for i in range(n_classes)]
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(12345).integers(0, 256, (n_classes, 3))
    h, w = size
    for split, k in (("train", per_class), ("val", per_class if val_per_class is None else val_per_class)):
        for c, wnid in enumerate(wnids):
            (base / split / wnid).mkdir(parents=True)
            for j in range(k):
                img = rng.integers(0, 256, (h, w, 3))
                if learnable:
                    img = 0.8 * palette[c] + 0.2 * img
                Image.fromarray(img.astype(np.uint8)).save(base / split / wnid / f"{wnid}_{j}.JPEG", quality=90)
    (base / "classes.txt").write_text("\n".join(wnids) + "\n")
    return base, wnids


def tiny_profile(dataset: str, options: dict) -> dict:
    """The smoke profile on another dataset: two models, small_cnn, the domain feature extractor."""
    prof = copy.deepcopy(profiles.load("smoke"))
    prof.pop("name")
    prof.update(dataset=dataset, dataset_options=options)
    prof["models"] = {k: prof["models"][k] for k in ("standard", "robust")}
    prof["sweeps"] = {"pgd": {"standard": 0.0, "robust": 0.5}}
    prof["train"].update(epochs=3)
    prof["eval"].update(test_images=64)
    a = prof["attributions"]
    _shrink(a, n_images=8, background=8)
    for method, sizes in {"ig": {"steps": 8}, "smoothgrad": {"samples": 4}, "eg": {"samples": 8},
                          "shap": {"samples": 8}, "agi": {"steps": 5, "classes": 2}, "boundary": {"steps": 5}}.items():
        _shrink(a.get(method, {}), **sizes)
    _shrink(prof["alignment"], n_images=16, batch_size=16)
    _shrink(prof["alignment"].get("boundary", {}), steps=3, bisect_steps=3)
    for part, steps in (("inversion", 20), ("feature_vis", 10), ("generation", 5)):
        _shrink(prof["visualize"][part], steps=steps)
    _shrink(prof["fid"], per_class=4, seeds=[0])
    for space in (prof["fid"].get("feature_spaces") or {}).values():
        _shrink(space, epochs=2)
    return prof


def _shrink(section: dict, **values) -> None:
    """Set the keys of `section` that exist (profiles evolve; a missing knob is left alone)."""
    section.update({k: v for k, v in values.items() if k in section})
