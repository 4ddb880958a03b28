import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from lib import data, imagecache, mnist, synthetic


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
    monkeypatch.setattr(mnist, "DEBIAN_FMNIST", debian)
    root = tmp_path / "data"
    te = data.load("fashion_mnist", "test", root)
    assert len(te) == 20 and te[0][0].shape == (1, 28, 28)
    assert (root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()  # gunzipped into root
    assert len(data.load("fashion_mnist", "train", root)) + len(data.load("fashion_mnist", "val", root)) == 60


def test_fashion_mnist_from_root_first(tmp_path, monkeypatch):
    _fake_mnist_dir(tmp_path / "FashionMNIST" / "raw", n_test=7, gz=False)
    monkeypatch.setattr(mnist, "DEBIAN_FMNIST", tmp_path / "nowhere")
    assert len(data.load("fashion_mnist", "test", tmp_path)) == 7


def test_fashion_mnist_missing_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "DEBIAN_FMNIST", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as e:
        data.load("fashion_mnist", "train", tmp_path)
    msg = str(e.value)
    assert "FashionMNIST/raw" in msg and "apt-get install dataset-fashion-mnist" in msg and "--download" in msg


def _fake_cifar(root, n=10):
    return synthetic.cifar(root, n)


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
    return synthetic.imagenet(root, per_class)


def test_imagenet150_imagefolder_with_class_list(tmp_path):
    base, wnids = _fake_imagenet(tmp_path, per_class=2)
    (base / "train" / "n99999999").mkdir()  # a class outside the list is ignored
    te = data.load("imagenet150", "test", tmp_path)
    x, y = te[5]
    assert len(te) == 300 and x.shape == (3, 128, 128) and 0 <= x.min() and x.max() <= 1 and y == 2
    tr, va = data.load("imagenet150", "train", tmp_path), data.load("imagenet150", "val", tmp_path)
    assert len(tr) == len(va) == 150  # 2 images per class: one to val, one to train


def test_imagenet150_paper_split_cache_and_rebuild(tmp_path, monkeypatch):
    base, wnids = synthetic.imagenet(tmp_path, per_class=7, val_per_class=2, size=(20, 26))
    opts = {"image_size": 16, "train_per_class": 4, "val_per_class": 2}
    tr, va, te = (data.load("imagenet150", s, tmp_path, **opts) for s in ("train", "val", "test"))
    # per class: 2 val and 4 train from the train folder (disjoint, seeded), test = all of the val folder
    assert torch.equal(torch.bincount(tr.labels), torch.full((150,), 4))
    assert torch.equal(torch.bincount(va.labels), torch.full((150,), 2)) and len(te) == 300
    assert tr.shape == (3, 16, 16) and tr.classes == wnids and tr.labels.dtype == torch.int64
    tr_px, va_px = {tr.store[i].numpy().tobytes() for i in range(len(tr))}, {va.store[i].numpy().tobytes()
                                                                            for i in range(len(va))}
    assert not tr_px & va_px
    # rows are exactly imagecache.decode of the right files, in class order
    files = sorted((base / "val" / wnids[3]).iterdir())
    assert torch.equal(te.store[3 * 2 + 1], torch.from_numpy(imagecache.decode(files[1], 16)))
    # second load: the cache is mapped, nothing is decoded; labels, batches and subsets never decode
    monkeypatch.setattr(imagecache, "decode", lambda *a: pytest.fail("decoded again"))
    again = data.load("imagenet150", "train", tmp_path, **opts)
    assert torch.equal(again.store, tr.store) and torch.equal(again.labels, tr.labels)
    sub = again.subset(torch.tensor([5, 0, 9]))
    assert sub.store is again.store and torch.equal(sub.batch(torch.arange(3))[0], again.batch([5, 0, 9])[0])
    monkeypatch.undo()
    # a changed source file rebuilds the cache, and the old cache file goes
    old = set((base / "cache").glob("test-16-*.npy"))
    from PIL import Image

    Image.fromarray(np.full((20, 26, 3), 200, np.uint8)).save(files[1])
    os.utime(files[1], ns=(1, 1))
    te2 = data.load("imagenet150", "test", tmp_path, **opts)
    assert set((base / "cache").glob("test-16-*.npy")).isdisjoint(old)
    assert (te2.store[3 * 2 + 1].float() - 200).abs().max() <= 3  # JPEG of a flat colour


def test_imagenet150_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="has no options .*image_size.*its options: none"):
        data.load("digits", "test", image_size=16)
    with pytest.raises(ValueError, match="imagenet150.* has no options .*imgsize"):
        data.load("imagenet150", "test", tmp_path, imgsize=16)


def _formats(tmp_path, monkeypatch):
    """One loaded test split per on-disk format."""
    _fake_mnist_dir(tmp_path / "FashionMNIST" / "raw", gz=False)
    _, md5 = synthetic.cifar(tmp_path)
    monkeypatch.setattr(data, "CIFAR10_MD5", md5)
    synthetic.imagenet(tmp_path, per_class=2, size=(12, 12))
    return {"digits": data.load("digits", "test"), "fashion_mnist": data.load("fashion_mnist", "test", tmp_path),
            "cifar10": data.load("cifar10", "test", tmp_path),
            "imagenet150": data.load("imagenet150", "test", tmp_path, image_size=8)}


def test_every_format_has_the_same_interface(tmp_path, monkeypatch):
    for name, ds in _formats(tmp_path, monkeypatch).items():
        assert isinstance(ds, data.ImageTensorDataset), name
        n, (c, h, w) = len(ds), ds.shape
        assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64 and ds.labels.max() < len(ds.classes)
        assert all(isinstance(k, str) for k in ds.classes)
        x, y = ds.batch(torch.tensor([n - 1, 0]))
        assert x.shape == (2, c, h, w) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert torch.equal(x[1], ds[0][0]) and int(y[0]) == ds[n - 1][1] == int(ds.labels[n - 1])
        sub = ds.subset([n - 1, 0])
        assert isinstance(sub, data.ImageTensorDataset) and torch.equal(sub.batch([0, 1])[0], x)
        assert torch.equal(sub.labels, y) and sub.classes == ds.classes and sub.shape == ds.shape


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


def test_cifar10_format_data_with_its_own_checksums(tmp_path):
    folder, md5 = _fake_cifar(tmp_path)
    assert len(data.load("cifar10", "test", tmp_path, checksums=md5)) == 10  # a profile's dataset_options
    with pytest.raises(ValueError, match="exactly data_batch_1"):
        data.load("cifar10", "test", tmp_path, checksums={"test_batch": md5["test_batch"]})
    with open(folder / "test_batch", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="test_batch fails its MD5 check"):
        data.load("cifar10", "test", tmp_path, checksums=md5)


def test_fresh_machine_without_data_is_one_sentence_not_a_traceback(tmp_path, monkeypatch, capsys):
    import urllib.error

    import torchvision.datasets

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(mnist, "DEBIAN_FMNIST", tmp_path / "nowhere")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: no apt-get
    assert data.main(["fashion_mnist", "--root", str(tmp_path), "--download", "--apt"]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and "the download failed: URLError" in err
    assert "FashionMNIST/raw" in err and "apt-get install dataset-fashion-mnist" in err and "--download" in err


@pytest.mark.parametrize("damage,says", [
    (lambda raw: raw[:-100], r"is corrupt \(truncated: \d+ bytes, its header promises \d+\)"),
    (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], r"is corrupt \(its header is not that of a 3-d uint8 IDX file\)"),
    (lambda raw: gzip.compress(raw), r"is still gzip-compressed: gunzip it"),
])
def test_a_corrupt_idx_file_is_named_with_how_to_replace_it(tmp_path, monkeypatch, capsys, damage, says):
    raw_dir = tmp_path / "FashionMNIST" / "raw"
    _fake_mnist_dir(raw_dir, gz=False)
    monkeypatch.setattr(mnist, "DEBIAN_FMNIST", tmp_path / "nowhere")
    bad = raw_dir / "t10k-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    damaged, others = bad.read_bytes(), {p: p.read_bytes() for p in raw_dir.iterdir() if p != bad}
    with pytest.raises(ValueError, match=rf"t10k-images-idx3-ubyte {says}.*`make data PROFILE=default`"):
        data.load("fashion_mnist", "test", tmp_path)
    assert data.main(["fashion_mnist", "--root", str(tmp_path)]) == 1  # prepare reads every file: not "OK"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "fashionmnist" not in err.replace("FashionMNIST", "")
    assert bad.read_bytes() == damaged and all(p.read_bytes() == b for p, b in others.items())  # nothing deleted


def test_prepare_reads_the_files_and_reports_where_they_are(tmp_path, monkeypatch):
    _fake_mnist_dir(tmp_path / "FashionMNIST" / "raw", gz=False)
    monkeypatch.setattr(mnist, "DEBIAN_FMNIST", tmp_path / "nowhere")
    assert data.prepare("fashion_mnist", tmp_path, download=False) == tmp_path / "FashionMNIST" / "raw"
    labels = tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte is corrupt"):
        data.prepare("fashion_mnist", tmp_path, download=False)


def test_cifar10_offline_download_is_one_sentence_saying_where_to_get_and_put_it(tmp_path, monkeypatch, capsys):
    import urllib.error

    import torchvision.datasets

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    assert data.main(["cifar10", "--root", str(tmp_path), "--download"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "urlopen" not in err and "Traceback" not in err
    assert data.CIFAR10_URL in err and f"extract it into {tmp_path}" in err and "data_batch_1 exists" in err


def test_idx_class_names_are_torchvisions():
    """lib.mnist keeps the class names so that reading data never imports torchvision: they must be its own."""
    import torchvision.datasets as tvd

    from lib.mnist import CLASSES

    assert CLASSES == {name: list(getattr(tvd, name).classes) for name in ("FashionMNIST", "MNIST")}
