"""MNIST-format (IDX) datasets: where Fashion-MNIST's files come from, and reading every IDX file checked.

Sources, in order: root/FashionMNIST/raw, Debian's dataset-fashion-mnist package (gunzipped into root, because
Debian recompressed the files so torchvision's MD5 check would reject them), torchvision's download. A corrupt
file is reported by name with how to replace it, never as "not found".
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
# torchvision's `classes` of its FashionMNIST and MNIST datasets (tests/test_data.py checks they agree), kept
# here so that reading IDX files never imports torchvision (~4 s with torch._dynamo on a 2-core CPU)
CLASSES = {
    "FashionMNIST": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"],
    "MNIST": ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
              "8 - eight", "9 - nine"],
}
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fashion_mnist_raw(root: Path, download: bool) -> Path:
    """Source order: root/FashionMNIST/raw, then Debian's package, then torchvision's download."""
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in MNIST_FILES):
        return raw
    if all((DEBIAN_FMNIST / f"{f}.gz").is_file() for f in MNIST_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for f in MNIST_FILES:  # Debian recompressed the .gz files, so torchvision's MD5 check would fail
            with gzip.open(DEBIAN_FMNIST / f"{f}.gz") as src, open(raw / f"{f}.part", "wb") as dst:
                shutil.copyfileobj(src, dst)
            (raw / f"{f}.part").replace(raw / f)
        return raw
    failed = ""
    if download:
        from torchvision.datasets import FashionMNIST

        print(f"downloading Fashion-MNIST into {root} (torchvision)")
        try:
            FashionMNIST(str(root), train=True, download=True)
            return raw
        except (OSError, RuntimeError, ValueError) as e:  # no network, proxy, corrupt download
            failed = f" (the download failed: {type(e).__name__})"
    raise FileNotFoundError(
        f"Fashion-MNIST not found{failed}: put the four IDX files in {raw}, or install Debian's package "
        f"(apt-get install dataset-fashion-mnist, files in {DEBIAN_FMNIST}), or run "
        f"`python -m lib.data fashion_mnist --download` to fetch it with torchvision.")


def load_arrays(root: Path, cls_name: str, download: bool) -> tuple[list, list[str]]:
    """[(train images (N,28,28) uint8, labels (N,) uint8), (test ...)] and the class names, every file checked.

    cls_name: "FashionMNIST" or "MNIST" (torchvision's folder names under root)."""
    raw = root / cls_name / "raw"
    if cls_name == "FashionMNIST":
        fashion_mnist_raw(root, download)
    elif not all((raw / f).is_file() for f in MNIST_FILES):
        if download:
            import torchvision.datasets as tvd

            getattr(tvd, cls_name)(str(root), train=True, download=True)
        else:
            raise FileNotFoundError(f"{cls_name} not found under {raw}: run `python -m lib.data mnist --download` "
                                    "once with network access, or copy the four IDX files there.")
    images, labels = {}, {}
    for part in ("train", "t10k"):
        images[part] = read_idx(raw / f"{part}-images-idx3-ubyte", cls_name, ndim=3)
        labels[part] = read_idx(raw / f"{part}-labels-idx1-ubyte", cls_name, ndim=1)
        if len(images[part]) != len(labels[part]):
            raise ValueError(f"{raw / f'{part}-labels-idx1-ubyte'} has {len(labels[part])} labels for "
                             f"{len(images[part])} images: a mismatched file; {fix_sentence(cls_name)}.")
    return [(images[p], labels[p]) for p in ("train", "t10k")], list(CLASSES[cls_name])


def fix_sentence(cls_name: str) -> str:
    """How to replace an IDX dataset's files, with the dataset's name as `python -m lib.data` spells it."""
    if cls_name == "FashionMNIST":
        return (f"delete it and run `make data PROFILE=default` (it gunzips Debian's dataset-fashion-mnist from "
                f"{DEBIAN_FMNIST}, installing it with apt-get as root, else downloads with torchvision), or put the "
                f"original uncompressed IDX file there")
    return "delete it and run `python -m lib.data mnist --download` with network access, or put the original file there"


def read_idx(path: Path, cls_name: str, ndim: int) -> np.ndarray:
    """An uncompressed IDX file (uint8 data) as an array, its header and length checked: a corrupt file is a
    sentence naming it and how to replace it, never "not found" or an empty AssertionError."""
    fix = fix_sentence(cls_name)
    if not path.is_file():
        raise FileNotFoundError(f"{cls_name} file {path} is missing: {fix}.")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raise ValueError(f"{path} is still gzip-compressed: gunzip it in place (`gunzip -k {path}.gz` gives the "
                         f"uncompressed file), or {fix}.")
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise ValueError(f"{path} is corrupt (its header is not that of a {ndim}-d uint8 IDX file): {fix}.")
    dims = [int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim)]
    want = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != want:
        raise ValueError(f"{path} is corrupt ({'truncated' if len(raw) < want else 'too long'}: {len(raw)} bytes, "
                         f"its header promises {want}): {fix}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def apt_install_fashion_mnist(root: Path) -> None:
    import os
    import subprocess

    raw = root / "FashionMNIST" / "raw"
    have = all((raw / f).is_file() for f in MNIST_FILES) or all((DEBIAN_FMNIST / f"{f}.gz").is_file()
                                                                for f in MNIST_FILES)
    if have or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    print("installing Debian's dataset-fashion-mnist (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]):
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"warning: `{' '.join(cmd)}` failed; trying the other sources", flush=True)
            return
