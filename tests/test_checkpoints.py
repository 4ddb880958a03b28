"""Checkpoints never unpickle untrusted bytes, and every bad file gets a clear error."""

import hashlib
import json
import os
import pickle
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file

from lib import alignment, attribution_metrics, attributions, checkpoints, generation, models, profiles, train


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _saved(tmp_path):
    # placed as load_model places it (channels-last on CPU), so that outputs compare bitwise
    m = models.place(models.build("small_cnn", 10, 1, 8, width=4), "cpu")
    meta = {"arch": {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8,
                     "kwargs": {"width": 4}}}
    return m, checkpoints.save_model(m, meta, tmp_path / "m")


def test_roundtrip_rebuilds_from_meta(tmp_path):
    m, folder = _saved(tmp_path)
    m2 = checkpoints.load_model(folder)
    x = torch.rand(3, 1, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True))
    assert torch.equal(m.eval()(x), m2(x)) and not m2.training
    assert m2.meta["arch"]["name"] == "small_cnn"
    assert torch.equal(checkpoints.load_model(folder / "model.safetensors")(x), m2(x))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_weights_and_states_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        _, folder = _saved(tmp_path)
        checkpoints.save_state({"step": 1}, folder / checkpoints.STATE_FILE)
    finally:
        os.umask(old)
    for name in (checkpoints.MODEL_FILE, checkpoints.META_FILE, checkpoints.STATE_FILE):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, suffix):
    marker = tmp_path / "pwned"
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(pickle.dumps({"state_dict": Evil(str(marker))}))
    with pytest.raises(checkpoints.CheckpointError, match="pickle"):
        checkpoints.load_model(bad)
    assert not marker.exists()


def test_pickle_disguised_as_training_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    state = tmp_path / "state.pt"
    torch.save({"model": Evil(str(marker))}, state)
    with pytest.raises(checkpoints.CheckpointError, match="cannot be read safely"):
        checkpoints.load_state(state)
    assert not marker.exists()


def _unverified(folder):
    """The folder as robinterp wrote it before meta.json recorded the weights' SHA-256."""
    meta = json.loads((folder / "meta.json").read_text())
    del meta["weights_sha256"]
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("old", [False, True])
def test_pickle_disguised_as_safetensors_is_refused(tmp_path, old):
    _, folder = _saved(tmp_path)
    if old:
        _unverified(folder)
    marker = tmp_path / "pwned"
    (folder / "model.safetensors").write_bytes(pickle.dumps(Evil(str(marker))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(checkpoints.CheckpointError, match="not a readable safetensors" if old else "SHA-256"):
            checkpoints.load_model(folder)
    assert not marker.exists()


def test_foreign_and_corrupt_files(tmp_path):
    _, folder = _saved(tmp_path)
    _unverified(folder)
    save_file({"conv.weight": torch.zeros(3)}, str(folder / "model.safetensors"))
    with pytest.warns(UserWarning, match="loaded unverified"), \
            pytest.raises(checkpoints.CheckpointError, match="foreign or mismatched"):
        checkpoints.load_model(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="corrupt"):
        checkpoints.load_model(folder)
    with pytest.raises(checkpoints.CheckpointError, match="not a finished robinterp model"):
        checkpoints.load_model(tmp_path / "empty")


def test_truncated_training_state_gives_clear_error_and_is_kept(tmp_path):
    state = tmp_path / "state.pt"
    checkpoints.save_state({"x": torch.arange(10)}, state)
    state.write_bytes(state.read_bytes()[:40])
    with pytest.raises(checkpoints.CheckpointError, match="move it aside"):
        checkpoints.load_state(state)
    assert state.exists()  # nothing computed is deleted behind the user's back


def _saved_as(run_dir, prof, key, seed=0):
    """A model folder exactly where train.get_model looks for `key` of `prof`, meta as lib.train writes it."""
    torch.manual_seed(seed)
    m = models.build("small_cnn", 10, 1, 8, width=4)
    cfg = profiles.model_config(prof, key)
    meta = {"profile": prof["name"], "key": key, "config": cfg, "config_hash": profiles.config_hash(cfg),
            "arch": {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8,
                     "kwargs": {"width": 4}}, "metrics": {"clean_acc": 50.0}}
    return m, checkpoints.save_model(m, meta, profiles.model_dir(run_dir, prof, key))


def test_meta_records_the_weights_sha256_and_a_verified_load_warns_nothing(tmp_path):
    _, folder = _saved(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoints.load_model(folder)


def test_corrupt_payload_with_intact_header_is_refused_and_kept(tmp_path):
    prof = profiles.load("smoke")
    m, folder = _saved_as(tmp_path, prof, "standard")
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-64:] = bytes(64)  # the last tensor's bytes: the header still parses, the shapes still fit
    weights.write_bytes(bytes(raw))
    with pytest.raises(checkpoints.CheckpointError, match=r"model\.safetensors does not match the SHA-256 in its "
                                                           r"meta\.json .*delete the folder and retrain.*notebook 01"):
        train.get_model(prof, "standard", tmp_path, train_if_missing=False)
    assert weights.read_bytes() == bytes(raw) and (folder / "meta.json").is_file()  # nothing deleted


def test_swapped_folder_is_refused(tmp_path):
    prof = profiles.load("smoke")
    _, std = _saved_as(tmp_path, prof, "standard", seed=0)
    _, rob = _saved_as(tmp_path, prof, "robust", seed=1)
    for name in ("model.safetensors", "meta.json"):  # the case: robust's files in standard's folder
        shutil.copy(rob / name, std / name)
    with pytest.raises(checkpoints.CheckpointError, match=r"meta\.json belongs to another model \(config hash "
                                                           r"\w+, but the folder name says \w+\)"):
        train.get_model(prof, "standard", tmp_path, train_if_missing=False)
    assert train.get_model(prof, "robust", tmp_path, train_if_missing=False).meta["key"] == "robust"


def test_a_model_of_another_config_is_refused_even_in_a_plain_folder(tmp_path):
    prof = profiles.load("smoke")
    _, folder = _saved_as(tmp_path, prof, "robust")
    plain = tmp_path / "copied"
    shutil.copytree(folder, plain)
    checkpoints.load_model(plain)  # no expectation: loads
    with pytest.raises(checkpoints.CheckpointError, match="the profile asks for .*another model"):
        checkpoints.load_model(plain, config=profiles.model_config(prof, "standard"))


def test_an_unverified_old_folder_warns_once_and_loads(tmp_path):
    m, folder = _saved(tmp_path)
    _unverified(folder)
    with pytest.warns(UserWarning, match="has no weights_sha256 .*loaded unverified; delete the folder and retrain"):
        checkpoints.load_model(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per folder, not on every load
        m2 = checkpoints.load_model(folder)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(m.eval()(x), m2(x))


def _nan_model(tmp_path, prof):
    m, folder = _saved_as(tmp_path, prof, "robust")
    with torch.no_grad():
        m.head.weight[0, 0] = float("nan")
    meta = json.loads((folder / "meta.json").read_text())
    checkpoints.save_model(m, meta, folder)  # a consistent folder whose model computes NaN
    return train.get_model(prof, "robust", tmp_path, train_if_missing=False)


def test_a_nan_from_a_model_is_an_error_naming_it_in_every_metric(tmp_path):
    prof = profiles.load("smoke")
    net = _nan_model(tmp_path, prof)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    named = r"model 'robust' \(.*robust-[\w-]+\) produced NaN or infinite "
    with pytest.raises(FloatingPointError, match=named + "logits in alignment.measure"):
        alignment.measure(net, x, progress=False, steps=2)
    exp = attributions.Explanations({"saliency": attributions.saliency(net, x, y)}, None, {})
    with pytest.raises(FloatingPointError, match=named + "saliency attributions"):
        attribution_metrics.per_image_metrics(net, x, y, exp, {"object_threshold": None})
    with pytest.raises(FloatingPointError, match=named + "target logits"):
        generation.generation_table({"robust": net}, x, {"robust": x}, y)
