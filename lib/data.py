"""Datasets as `(image float in [0,1] (C,H,W), label)` with fixed train/val/test splits.

Every format (scikit-learn digits, MNIST IDX files, CIFAR-10 pickled batches, ImageNet class folders)
comes back as one `ImageTensorDataset` (interface in ARCHITECTURE.md / notes): `len`, `ds[i]`,
`ds.labels`, `ds.classes`, `ds.shape`, `ds.batch(index)`, `ds.subset(index)`.
`load(name, split)` never touches the network; `prepare(name, download=True)` is the one
place that may, and it says so. `val` is a seeded hold-out carved from train, so model
selection never sees `test`.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lib import imagecache, mnist

NAMES = ("digits", "fashion_mnist", "mnist", "cifar10", "imagenet150")
SPLITS = ("train", "val", "test")
VAL_SEED = 20231  # fixed forever: changing it would move images between train and val
VAL_FRACTION = {"digits": 0.15, "fashion_mnist": 1 / 12, "mnist": 1 / 12, "cifar10": 0.1}

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = {  # torchvision.datasets.CIFAR10's table
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
OPTIONS = {"imagenet150": {"image_size": 128, "train_per_class": 600, "val_per_class": 50},  # Boychev 2023
           "cifar10": {"checksums": None}}  # a profile's `dataset_options`; defaults here


class ImageTensorDataset(Dataset):
    """Images as uint8 rows, in memory or memory-mapped (ImageNet-150's cache); every dataset of `load`.

    images: (M,C,H,W) uint8 store; labels: (N,) int64; index: optional (N,) rows of the store this
    dataset holds (a subset shares its parent's store, so subsetting a memory-mapped cache copies nothing).
    `ds[i]` and `ds.batch(index)` give floats in [0,1]; `ds.labels` never touches the images.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], index=None):
        rows = len(images) if index is None else len(index)
        if images.dtype != torch.uint8 or images.ndim != 4 or rows != len(labels):
            raise ValueError("images must be (N,C,H,W) uint8 with one label each")
        self.store, self.labels, self.classes = images, torch.as_tensor(labels).long(), list(classes)
        self.index = None if index is None else torch.as_tensor(index, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        row = int(i) if self.index is None else int(self.index[i])
        return self.store[row].float() / 255.0, int(self.labels[i])

    def rows(self, index) -> torch.Tensor:
        """Store rows of this dataset's items `index`."""
        index = torch.as_tensor(index, dtype=torch.long)
        return index if self.index is None else self.index[index.cpu()].to(index.device)

    @property
    def images(self) -> torch.Tensor:
        """(N,C,H,W) uint8; for a subset of a memory-mapped store this reads (copies) its rows."""
        return self.store if self.index is None else self.store[self.index]

    def batch(self, index, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of items `index` in one gather: (B,C,H,W) float in [0,1], (B,) int64."""
        index = torch.as_tensor(index, dtype=torch.long)
        rows = self.rows(index)
        if self.store.device.type == "cpu":
            rows, index = rows.cpu(), index.cpu()
        x = self.store[rows].to(device, non_blocking=True).float().div_(255.0)
        return x, self.labels[index.to(self.labels.device)].to(device, non_blocking=True)

    def subset(self, index) -> "ImageTensorDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageTensorDataset(self.store, self.labels[index], self.classes, index=self.rows(index))

    def to(self, device, *, pin: bool = False) -> "ImageTensorDataset":
        """The same items with the store on `device` (only this dataset's rows are copied), or pinned."""
        images = self.images
        images = images.pin_memory() if pin else images.to(device)
        return ImageTensorDataset(images, self.labels.to(images.device), self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.store.shape[1:])


def load(name: str, split: str, root: str | Path = "data", *, download: bool = False, **options) -> ImageTensorDataset:
    """The `split` of dataset `name` as an ImageTensorDataset: images (C,H,W) float in [0,1], labels int.

    options: a profile's `dataset_options` (OPTIONS lists them per dataset, e.g. imagenet150's
    image_size, train_per_class, val_per_class)."""
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    unknown = set(options) - set(OPTIONS.get(name, {}))
    if unknown:
        raise ValueError(f"dataset {name!r} has no options {sorted(unknown)}; its options: "
                         f"{', '.join(OPTIONS.get(name, {})) or 'none'}")
    root = Path(root)
    if name == "imagenet150":
        return _imagenet150(root, split, **{**OPTIONS[name], **options})
    train, test = _LOADERS[name](root, download, **{**OPTIONS.get(name, {}), **options})
    if split == "test":
        return test
    val_index, train_index = _val_split(len(train), VAL_FRACTION[name])
    return train.subset(val_index if split == "val" else train_index)


def load_for(profile: dict, split: str, root: str | Path = "data") -> ImageTensorDataset:
    """`load` with a profile's dataset and its `dataset_options`."""
    return load(profile["dataset"], split, root, **(profile.get("dataset_options") or {}))


def info(name: str, root: str | Path = "data", **options) -> dict:
    """Shape and class count of a dataset, read from its test split."""
    ds = load(name, "test", root, **options)
    return {"in_channels": ds.shape[0], "image_size": ds.shape[-1], "num_classes": len(ds.classes)}


def prepare(name: str, root: str | Path = "data", *, download: bool = True, **options) -> Path:
    """Make `name` loadable offline (gunzip, extract, download once, or build ImageNet-150's cache)."""
    root = Path(root)
    if name in ("fashion_mnist", "mnist"):  # read every file, so a corrupt one is reported here, not as "OK"
        _LOADERS[name](root, download)
        return root / ("FashionMNIST" if name == "fashion_mnist" else "MNIST") / "raw"
    for split in SPLITS if name == "imagenet150" else ("test",):
        load(name, split, root, download=download, **options)
    return root


def loader(ds: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
           drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A seeded, deterministic DataLoader: same seed, same batches, whatever the worker count."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers,
                      worker_init_fn=_seed_worker, drop_last=drop_last, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


def sample_images(ds, n: int, seed: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images drawn from `ds` by `seed`: (x (n,C,H,W) in [0,1], labels (n,), dataset indices (n,))."""
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = ds.batch(idx, device)
    return x, y, idx


def grid_rows(y: torch.Tensor, preds: dict, n_rows: int, n_wrong: int) -> list[int]:
    """Rows for a figure grid: up to n_wrong images some model gets wrong, the rest right, in draw order."""
    wrong = torch.stack([p != y for p in preds.values()]).any(0).cpu()
    bad = wrong.nonzero().flatten()[:n_wrong]
    good = (~wrong).nonzero().flatten()[:n_rows - len(bad)]
    return sorted(torch.cat([good, bad]).tolist())


def _seed_worker(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _val_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))
    n_val = max(1, round(n * fraction))
    return perm[:n_val].sort().values, perm[n_val:].sort().values


# ---------------------------------------------------------------- digits (scikit-learn, 8x8)

def _digits(root: Path, download: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(d.target)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test, train = perm[:360].sort().values, perm[360:].sort().values
    full = ImageTensorDataset(images, labels, [str(i) for i in range(10)])
    return full.subset(train), full.subset(test)


# ---------------------------------------------------------------- MNIST-style IDX data

def _mnist_like(cls_name: str):
    def _load(root: Path, download: bool):
        arrays, classes = mnist.load_arrays(root, cls_name, download)
        return tuple(ImageTensorDataset(torch.from_numpy(im[:, None].copy()), torch.from_numpy(lab.astype(np.int64)),
                                        classes) for im, lab in arrays)

    return _load


# ---------------------------------------------------------------- CIFAR-10 (torchvision layout)

def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks (dataset MD5s, weight and checkpoint SHA-256s)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cifar10(root: Path, download: bool, checksums: dict | None = None):
    """The official batches, each checked against CIFAR10_MD5; `checksums` (a profile's dataset option)
    replaces that table for data in the CIFAR-10 format that is not CIFAR-10 (generated test data)."""
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir():
        if download:
            from torchvision.datasets import CIFAR10

            print(f"downloading CIFAR-10 into {root} (torchvision)")
            try:
                CIFAR10(str(root), train=True, download=True)
            except (OSError, RuntimeError) as e:  # offline: urlopen's URLError is an OSError
                reason = getattr(e, "reason", None) or type(e).__name__
                raise FileNotFoundError(
                    f"CIFAR-10 could not be downloaded ({reason}): on a machine with network access get "
                    f"{CIFAR10_URL} and extract it into {root}, so that {folder / 'data_batch_1'} exists.") from None
        else:
            raise FileNotFoundError(
                f"CIFAR-10 not found: download {CIFAR10_URL} and extract it so that {folder} exists "
                f"(or run `python -m lib.data cifar10 --download`).")
    if checksums is not None and set(checksums) != set(CIFAR10_MD5):
        raise ValueError(f"dataset option checksums must give the MD5 of exactly {', '.join(CIFAR10_MD5)}")
    for fname, md5 in (checksums or CIFAR10_MD5).items():
        path = folder / fname
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-10 file {path} is missing: extract {CIFAR10_URL} into {root} again.")
        if file_digest(path, "md5") != md5:
            raise ValueError(f"CIFAR-10 file {path} fails its MD5 check (corrupt or not the official "
                             f"file): delete {folder} and extract {CIFAR10_URL} again.")
    meta = _unpickle(folder / "batches.meta") if (folder / "batches.meta").is_file() else {}
    classes = [c.decode() if isinstance(c, bytes) else c for c in meta.get(b"label_names", range(10))]

    def read(names):
        batches = [_unpickle(folder / n) for n in names]  # safe: each file passed its MD5 check above
        data = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([b[b"labels"] for b in batches])
        return ImageTensorDataset(torch.from_numpy(data), torch.from_numpy(labels), [str(c) for c in classes])

    return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


# ---------------------------------------------------------------- Small-ImageNet-150 (class folders)

def _imagenet150(root: Path, split: str, *, image_size: int, train_per_class: int, val_per_class: int):
    """root/imagenet150/{train,val}/<wnid>/*.JPEG plus root/imagenet150/classes.txt (150 wnids).

    Boychev's split: per class a seeded choice of `train_per_class` train and `val_per_class` val images
    from ImageNet's train folder (disjoint; a smaller class gives val min(val_per_class, n//2) and the rest
    up to train_per_class to train); test is ImageNet's val folder. Each split is decoded once into
    root/imagenet150/cache/ (lib.imagecache) and memory-mapped from then on.
    """
    base = root / "imagenet150"
    class_file = base / "classes.txt"
    if not class_file.is_file():
        raise FileNotFoundError(
            f"Small-ImageNet-150 not found: put ImageNet's train/ and val/ class folders under {base} "
            f"and the 150 class ids, one per line, in {class_file}.")
    classes = [c.strip() for c in class_file.read_text().splitlines() if c.strip()]
    if len(classes) != 150 or len(set(classes)) != 150:
        raise ValueError(f"{class_file} must list 150 distinct class ids, one per line; it lists "
                         f"{len(set(classes))} distinct of {len(classes)}.")
    folder = base / ("val" if split == "test" else "train")
    missing = [c for c in classes if not (folder / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} classes of {class_file} have no folder in {folder} "
                                f"(first: {missing[0]}); check the class list or the extraction.")
    part = None if split == "test" else split
    files, labels = imagecache.class_files(folder, classes, part, train_per_class, val_per_class, VAL_SEED)
    store = imagecache.build(files, image_size, base / "cache" / f"{split}-{image_size}")
    return ImageTensorDataset(torch.from_numpy(store), torch.tensor(labels), classes)

_LOADERS = {
    "digits": _digits,
    "fashion_mnist": _mnist_like("FashionMNIST"),
    "mnist": _mnist_like("MNIST"),
    "cifar10": _cifar10,
}


def check_images(x: torch.Tensor, name: str = "x") -> None:
    """Raise a clear error for images that are not finite floats in [0,1]."""
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a float tensor in [0,1], got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the data pipeline before attacking "
                         "or attributing.")
    if x.numel() and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"{name} must lie in [0,1] (got [{x.min():.3g}, {x.max():.3g}]); normalisation "
                         "belongs inside the model.")


def main(argv=None) -> int:
    """`python -m lib.data NAME` or `--profile P`: prepare a dataset; a problem is one sentence, exit 1."""
    import argparse
    import sys

    from lib import profiles
    from lib.paths import DATA_DIR

    p = argparse.ArgumentParser(description="Prepare a dataset so that it loads offline.")
    p.add_argument("name", nargs="?", choices=NAMES)
    p.add_argument("--profile", help="prepare this profile's dataset (with its dataset_options)")
    p.add_argument("--root", default=str(DATA_DIR))
    p.add_argument("--download", action="store_true", help="allow torchvision to download it")
    p.add_argument("--apt", action="store_true", help="as root with apt-get: install Debian's "
                   "dataset-fashion-mnist first if Fashion-MNIST is not there (what `make data` does)")
    a = p.parse_args(argv)
    try:
        prof = profiles.load(a.profile) if a.profile else {"dataset": a.name}
        if not prof["dataset"]:
            raise ValueError("name a dataset or a --profile")
        if a.apt and prof["dataset"] == "fashion_mnist":
            mnist.apt_install_fashion_mnist(Path(a.root))
        print(prepare(prof["dataset"], a.root, download=a.download, **(prof.get("dataset_options") or {})))
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"data: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
