"""Decode a list of image files once into a uint8 memory-mapped array; later runs map it for free.

    images = imagecache.build(files, size=128, path=cache_dir / "train")   # (N,3,size,size) uint8

The cache is named by a key over (file names, sizes, mtimes, size, recipe), so a changed,
added or removed source file rebuilds it; a build goes to a temporary file renamed at the end,
so an interrupted build never leaves a cache that looks finished. Decoding runs in worker
processes (no torch in them). Imports only numpy, PIL and lib.progress.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from lib.progress import tqdm

RECIPE = "pil-draft-resize-shorter-bilinear-centercrop-v1"  # bump when the decode changes
CHUNK = 256  # files per worker task
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")


def key(files: list[Path], size: int) -> str:
    """Hash of every file's name, size and mtime plus the output size and the decode recipe."""
    h = hashlib.sha256(json.dumps([RECIPE, size]).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build(files: list[Path], size: int, path: Path, *, workers: int | None = None,
          progress: bool = True) -> np.ndarray:
    """(len(files), 3, size, size) uint8 array memory-mapped from `path`-<key>.npy, built if missing."""
    path = Path(path)
    target = path.parent / f"{path.name}-{key(files, size)}.npy"
    if not target.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".part{os.getpid()}")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), 3, size, size))
        del arr  # workers write through their own maps
        if progress:
            print(f"building the image cache {target} (decoded once; later runs map it)", flush=True)
        _fill(files, size, tmp, workers, progress, desc=f"decoding {path.name} ({len(files)} images, once)")
        tmp.replace(target)
        for old in path.parent.glob(f"{path.name}-*.npy"):  # stale caches of the same split
            if old != target:
                old.unlink(missing_ok=True)
    # copy-on-write map: writable for torch.from_numpy, never written back
    return np.load(target, mmap_mode="c")


def class_files(folder: Path, classes: list[str], part: str | None, train_per_class: int, val_per_class: int,
                seed: int) -> tuple[list[Path], list[int]]:
    """Image files of folder/<class>/ in class order, with their class indices. part None: all of them;
    "val" / "train": per class a seeded, disjoint choice of min(val_per_class, n//2) and up to train_per_class."""
    files, labels = [], []
    for c, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if part is not None:
            if len(found) < 2:
                raise ValueError(f"class {name} has {len(found)} images in {folder / name}; train and val "
                                 "need at least 2.")
            perm = np.random.default_rng([seed, c]).permutation(len(found))
            n_val = min(val_per_class, len(found) // 2)
            pick = perm[:n_val] if part == "val" else perm[n_val:n_val + train_per_class]
            found = [found[i] for i in np.sort(pick)]
        files += found
        labels += [c] * len(found)
    return files, labels


def decode(file: Path, size: int) -> np.ndarray:
    """One image as (3, size, size) uint8: RGB, shorter side resized to `size` (bilinear, antialiased),
    centre crop. PIL's JPEG draft mode first lets libjpeg downscale by a power of two, keeping both sides
    >= size, which is what makes decoding full-size ImageNet JPEGs cheap."""
    from PIL import Image

    with Image.open(file) as im:
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.array(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def _decode_into(args) -> int:
    files, size, path, start = args
    arr = np.load(path, mmap_mode="r+")
    for i, f in enumerate(files):
        arr[start + i] = decode(f, size)
    arr.flush()
    return len(files)


def _fill(files, size, path, workers, progress, desc) -> None:
    tasks = [(files[s:s + CHUNK], size, path, s) for s in range(0, len(files), CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    bar = tqdm(total=len(files), desc=f"{desc}, {workers} processes", disable=not progress, unit="images")
    if workers <= 1:
        done = map(_decode_into, tasks)
    else:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        done = pool.map(_decode_into, tasks)
    try:
        for n in done:
            bar.update(n)
    finally:
        bar.close()
        if workers > 1:
            pool.shutdown()
