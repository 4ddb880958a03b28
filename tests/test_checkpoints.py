"""Checkpoints never unpickle untrusted bytes, and every bad file gets a clear error."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from lib import checkpoints, models


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _saved(tmp_path):
    m = models.build("small_cnn", 10, 1, 8, width=4)
    meta = {"arch": {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8,
                     "kwargs": {"width": 4}}}
    return m, checkpoints.save_model(m, meta, tmp_path / "m")


def test_roundtrip_rebuilds_from_meta(tmp_path):
    m, folder = _saved(tmp_path)
    m2 = checkpoints.load_model(folder)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(m.eval()(x), m2(x)) and not m2.training and m2.meta["arch"]["name"] == "small_cnn"
    assert torch.equal(checkpoints.load_model(folder / "model.safetensors")(x), m2(x))


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


def test_pickle_disguised_as_safetensors_is_refused(tmp_path):
    _, folder = _saved(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "model.safetensors").write_bytes(pickle.dumps(Evil(str(marker))))
    with pytest.raises(checkpoints.CheckpointError, match="not a readable safetensors"):
        checkpoints.load_model(folder)
    assert not marker.exists()


def test_foreign_and_corrupt_files(tmp_path):
    _, folder = _saved(tmp_path)
    save_file({"conv.weight": torch.zeros(3)}, str(folder / "model.safetensors"))
    with pytest.raises(checkpoints.CheckpointError, match="foreign or mismatched"):
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
