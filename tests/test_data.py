import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch

from lib import data


def test_digits_splits_are_disjoint_fixed_and_in_range():
    tr, va, te = (data.load("digits", s) for s in ("train", "val", "test"))
    assert len(tr) + len(va) + len(te) == 1797
    x, y = tr[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    key = lambda ds: {ds.images[i].numpy().tobytes() + bytes([int(ds.labels[i])]) for i in range(len(ds))}
    assert not key(va) & key(te)  # val never overlaps test
    assert torch.equal(data.load("digits", "val").images, va.images)  # seeded and fixed


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="known datasets: digits"):
        data.load("svhn", "train")
    with pytest.raises(ValueError, match="train, val, test"):
        data.load("digits", "holdout")


def test_loader_is_seeded_and_deterministic():
    ds = data.load("digits", "train")
    order = lambda seed, workers: torch.cat([y for _, y in data.loader(ds, 64, shuffle=True, seed=seed,
                                                                          num_workers=workers)])
    assert torch.equal(order(1, 0), order(1, 0))
    assert not torch.equal(order(1, 0), order(2, 0))
    assert torch.equal(order(3, 0), order(3, 2))


def _idx(path, arr: np.ndarray, gz=True):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_mnist_dir(folder, n_train=60, n_test=20, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        _idx(folder / f"{split}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), gz)
        _idx(folder / f"{split}-labels-idx1-ubyte{sfx}", rng.integers(0, 10, (n,)), gz)


def test_fashion_mnist_from_debian_package_files(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    _fake_mnist_dir(debian)
    monkeypatch.setattr(data, "DEBIAN_FMNIST", debian)
    root = tmp_path / "data"
    te = data.load("fashion_mnist", "test", root)
    assert len(te) == 20 and te[0][0].shape == (1, 28, 28)
    assert (root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()  # gunzipped into root
    assert len(data.load("fashion_mnist", "train", root)) + len(data.load("fashion_mnist", "val", root)) == 60


def test_fashion_mnist_from_root_first(tmp_path, monkeypatch):
    _fake_mnist_dir(tmp_path / "FashionMNIST" / "raw", n_test=7, gz=False)
    monkeypatch.setattr(data, "DEBIAN_FMNIST", tmp_path / "nowhere")
    assert len(data.load("fashion_mnist", "test", tmp_path)) == 7


def test_fashion_mnist_missing_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FMNIST", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as e:
        data.load("fashion_mnist", "train", tmp_path)
    msg = str(e.value)
    assert "FashionMNIST/raw" in msg and "apt-get install dataset-fashion-mnist" in msg and "--download" in msg


def _fake_cifar(root, n=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for name in list(data.CIFAR10_MD5):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder, md5


def test_cifar10_loads_checked_files(tmp_path, monkeypatch):
    folder, md5 = _fake_cifar(tmp_path)
    monkeypatch.setattr(data, "CIFAR10_MD5", md5)
    te = data.load("cifar10", "test", tmp_path)
    x, y = te[3]
    assert len(te) == 10 and x.shape == (3, 32, 32) and te.classes[0] == "c0"
    raw = pickle.loads((folder / "test_batch").read_bytes())[b"data"][3].reshape(3, 32, 32)
    assert torch.equal((x * 255).round().byte(), torch.from_numpy(raw))
    assert len(data.load("cifar10", "train", tmp_path)) + len(data.load("cifar10", "val", tmp_path)) == 50


def test_cifar10_rejects_files_that_fail_md5(tmp_path, monkeypatch):
    folder, md5 = _fake_cifar(tmp_path)
    monkeypatch.setattr(data, "CIFAR10_MD5", md5)
    with open(folder / "data_batch_3", "ab") as f:
        f.write(b"corruption")
    with pytest.raises(ValueError, match="data_batch_3 fails its MD5 check"):
        data.load("cifar10", "train", tmp_path)


def test_cifar10_real_table_rejects_fake_files_and_missing_says_where(tmp_path):
    _fake_cifar(tmp_path)
    with pytest.raises(ValueError, match="MD5"):
        data.load("cifar10", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        data.load("cifar10", "test", tmp_path / "empty")


def _fake_imagenet(root, n_classes=150, per_class=1):
    from PIL import Image

    base = root / "imagenet150"
    wnids = [f"n{i:08d}" for i in range(n_classes)]
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for w in wnids:
            (base / split / w).mkdir(parents=True)
            for j in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(base / split / w / f"{j}.JPEG")
    (base / "classes.txt").write_text("\n".join(wnids) + "\n")
    return base, wnids


def test_imagenet150_imagefolder_with_class_list(tmp_path):
    base, wnids = _fake_imagenet(tmp_path, per_class=2)
    (base / "train" / "n99999999").mkdir()  # a class outside the list is ignored
    te = data.load("imagenet150", "test", tmp_path)
    x, y = te[5]
    assert len(te) == 300 and x.shape == (3, 128, 128) and 0 <= x.min() and x.max() <= 1 and y == 2
    tr, va = data.load("imagenet150", "train", tmp_path), data.load("imagenet150", "val", tmp_path)
    assert len(tr) + len(va) == 300 and len(va) > 0


def test_imagenet150_wrong_class_list(tmp_path):
    base, wnids = _fake_imagenet(tmp_path)
    (base / "classes.txt").write_text("\n".join(wnids[:149]))
    with pytest.raises(ValueError, match="150 distinct class ids"):
        data.load("imagenet150", "test", tmp_path)
    (base / "classes.txt").write_text("\n".join(wnids[:149] + ["n12345678"]))
    with pytest.raises(FileNotFoundError, match="no folder"):
        data.load("imagenet150", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        data.load("imagenet150", "test", tmp_path / "elsewhere")


def test_check_images():
    data.check_images(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        data.check_images(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(TypeError):
        data.check_images(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
