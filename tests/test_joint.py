"""Joint training (lib.joint): a jointly trained model is the model trained alone, resumes bitwise, and is
written in lib.train's format."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, tiny_profile, write_profile
from lib import checkpoints, joint, models, profiles, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
KEYS = {"standard": "standard", "pgd": "robust", "gradnorm": "gradnorm_1"}
# Joint runs every member in one grouped convolution (groups=N) and one batched matmul per layer, which sum
# in another order than each model's own convolution and addmm: equal only up to float32 rounding (~1e-7 per
# op). Two epochs of SGD on digits amplify it to at most 3.3e-7 of a tensor's largest entry (measured); the
# tolerance leaves 30x headroom, far below what a wrong batch, seed, PGD start or lr (>= 1e-2) would give.
RTOL = 1e-5


def _cfgs(mode: str) -> list[dict]:
    base = profiles.model_config(tiny_profile(epochs=2), KEYS[mode])
    cfgs = [dict(base, seed=s, joint=True) for s in (0, 1, 2)]  # auto is one by one on CPU
    cfgs[2]["lr"] = 0.02  # per-member optimiser settings
    if mode == "pgd":
        cfgs[1].update(eps=0.3, step_size=0.15)
    if mode == "gradnorm":
        cfgs[1]["lam"] = 0.3
    return cfgs


def _max_rel(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)


@pytest.mark.parametrize("mode", list(KEYS))
def test_joint_model_equals_the_model_trained_alone(tmp_path, mode, monkeypatch):
    cfgs = _cfgs(mode)
    assert joint.groups(cfgs, torch.device("cpu")) == [[0, 1, 2]]
    alone = [train.train(c, tmp_path / f"alone{i}", progress=False) for i, c in enumerate(cfgs)]
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("a group member was trained alone"))
    together = train.train_many(cfgs, [tmp_path / f"joint{i}" for i in range(3)], progress=False)
    for a, j in zip(alone, together):
        assert _max_rel(a.state_dict(), j.state_dict()) < RTOL
        assert j.meta["config"] == a.meta["config"] and j.meta["arch"] == a.meta["arch"]
        assert j.meta["metrics"]["best_epoch"] == a.meta["metrics"]["best_epoch"]
        assert [sorted(h) for h in j.meta["history"]] == [sorted(h) for h in a.meta["history"]]
        assert set(j.meta) == set(a.meta)
    # the members really differ (own seed, lr, eps/λ): the equality above is not one model three times
    assert _max_rel(together[0].state_dict(), together[1].state_dict()) > 1e-2
    if mode == "pgd":
        assert "val_own_pgd_acc" in together[1].meta["history"][0]  # selected at its own training ε, as alone


def test_on_disk_format_is_lib_trains(tmp_path):
    cfgs = _cfgs("pgd")[:2]
    for c in cfgs:
        c["ckpt_every"] = 0
    train.train(cfgs[0], tmp_path / "alone", progress=False)
    train.train_many(cfgs, [tmp_path / "j0", tmp_path / "j1"], progress=False)
    for d in ("alone", "j0", "j1"):
        assert sorted(p.name for p in (tmp_path / d).iterdir()) == sorted(
            [checkpoints.MODEL_FILE, checkpoints.META_FILE, checkpoints.STATE_FILE])
    a, j = (checkpoints.load_state(tmp_path / d / checkpoints.STATE_FILE) for d in ("alone", "j0"))
    assert a.keys() == j.keys() and a["loop"].keys() == j["loop"].keys()
    assert a["optimizer"]["param_groups"] == j["optimizer"]["param_groups"]
    assert a["scheduler"] == j["scheduler"] and a["scaler"] == j["scaler"]
    assert torch.equal(a["rng"]["torch"], j["rng"]["torch"])  # the global RNG right after the same init
    model = checkpoints.load_model(tmp_path / "j1")
    assert isinstance(model, models.Classifier) and model.meta["config"]["eps"] == cfgs[1]["eps"]


def test_grouping_rules():
    base = dict(profiles.model_config(tiny_profile(), "robust"), joint=True)
    cfgs = [base, dict(base, seed=5, eps=0.1, lr=0.01), dict(base, batch_size=16), dict(base, steps=2),
            dict(base, joint=False), dict(base, arch="resnet18_cifar"), dict(base, mode="standard")]
    assert joint.groups(cfgs, torch.device("cpu")) == [[0, 1], [2], [3], [4], [5], [6]]
    assert "small_cnn only" in joint.unsupported(cfgs[5])
    auto = [dict(base, joint="auto"), dict(base, joint="auto", seed=1)]
    assert joint.groups(auto, torch.device("cpu")) == [[0], [1]]  # the benchmark: no gain on this CPU
    assert joint.groups(auto, torch.device("cuda")) == [[0, 1]]
    assert profiles.config_hash(auto[0]) == profiles.config_hash(base)  # a runtime key: same model folder
    with pytest.raises(ValueError, match="train.joint must be auto, true or false"):
        joint.groups([dict(base, joint="yes")], torch.device("cpu"))


def test_joint_under_torchrun_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfgs = _cfgs("standard")[:2]
    with pytest.raises(RuntimeError, match="cannot run under torchrun .*train.joint: false"):
        train.train_many(cfgs, [tmp_path / "a", tmp_path / "b"], progress=False)


def test_evaluate_many_equals_evaluate(digits_models):
    from lib import data

    ds = data.load("digits", "test")
    ms = [digits_models["standard"], digits_models["robust"]]
    kw = dict(eps=0.5, step_size=0.125, steps=3, max_images=100, batch_size=64)
    many = joint.evaluate_many(ms, ds, seeds=[0, 7], **kw)
    for m, s, got in zip(ms, (0, 7), many):
        want = train.evaluate(m, ds, seed=s, **kw)
        assert got["n"] == want["n"] == 100
        assert got["correct"]["clean"] == want["correct"]["clean"]
        # PGD from the same start on the same model: a flip needs a point within float noise of the boundary
        assert sum(a != b for a, b in zip(got["correct"]["pgd"], want["correct"]["pgd"])) <= 1


def _cli(path, run_dir):
    return [sys.executable, "-m", "lib.train", "--profile", str(path), "--model", "robust", "--seed", "0", "1", "2",
            "--run-dir", str(run_dir), "--device", "cpu", "--no-progress"]


@pytest.mark.slow
def test_joint_resume_after_sigkill_gives_bitwise_identical_weights(tmp_path):
    prof = tiny_profile(epochs=3, ckpt_every=3, joint=True)
    prof["seeds"] = 3
    path = write_profile(prof, tmp_path / "tiny.yaml")
    prof = profiles.load(path)
    dirs = {d: [profiles.model_dir(tmp_path / d, prof, "robust", i) for i in range(3)] for d in "ab"}
    subprocess.run(_cli(path, tmp_path / "a"), check=True, env=ENV, cwd=ROOT, timeout=600)

    proc = subprocess.Popen(_cli(path, tmp_path / "b"), env=ENV, cwd=ROOT)
    states = [d / checkpoints.STATE_FILE for d in dirs["b"]]
    deadline = time.time() + 300
    while not all(s.exists() for s in states) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # land the kill somewhere in the middle of an epoch
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = [checkpoints.load_state(s)["loop"] for s in states]
    assert all((k["epoch"], k["step"]) < (3, 0) for k in killed_at)
    assert not any(checkpoints.is_complete(d) for d in dirs["b"])

    subprocess.run(_cli(path, tmp_path / "b"), check=True, env=ENV, cwd=ROOT, timeout=600)
    for da, db in zip(dirs["a"], dirs["b"]):
        a, b = (load_file(str(d / checkpoints.MODEL_FILE)) for d in (da, db))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), da.name
        assert checkpoints.read_meta(da)["metrics"] == checkpoints.read_meta(db)["metrics"]
