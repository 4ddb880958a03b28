"""Training: exact resume after SIGKILL, caching, selection on val, DDP equals one process."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, tiny_profile, write_profile
from lib import checkpoints, profiles, recipe, synthetic, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(profile_path, key, run_dir, *extra):
    return [sys.executable, "-m", "lib.train", "--profile", str(profile_path), "--model", key, "--run-dir",
            str(run_dir), "--device", "cpu", "--no-progress", *extra]


def _weights(run_dir, prof, key):
    return load_file(str(profiles.model_dir(run_dir, prof, key) / checkpoints.MODEL_FILE))


@pytest.mark.slow
def test_resume_after_sigkill_gives_bitwise_identical_weights(tmp_path):
    prof = tiny_profile(epochs=3, ckpt_every=3)
    path = write_profile(prof, tmp_path / "tiny.yaml")
    prof = profiles.load(path)
    subprocess.run(_cli(path, "robust", tmp_path / "a"), check=True, env=ENV, cwd=ROOT, timeout=600)

    state = profiles.model_dir(tmp_path / "b", prof, "robust") / checkpoints.STATE_FILE
    proc = subprocess.Popen(_cli(path, "robust", tmp_path / "b"), env=ENV, cwd=ROOT)
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # land the kill somewhere in the middle of an epoch
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    assert state.exists() and not checkpoints.is_complete(state.parent)
    killed_at = checkpoints.load_state(state)["loop"]
    assert (killed_at["epoch"], killed_at["step"]) < (prof["train"]["epochs"], 0)

    subprocess.run(_cli(path, "robust", tmp_path / "b"), check=True, env=ENV, cwd=ROOT, timeout=600)
    a, b = _weights(tmp_path / "a", prof, "robust"), _weights(tmp_path / "b", prof, "robust")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    meta_a = checkpoints.read_meta(profiles.model_dir(tmp_path / "a", prof, "robust"))
    meta_b = checkpoints.read_meta(profiles.model_dir(tmp_path / "b", prof, "robust"))
    assert meta_a["metrics"] == meta_b["metrics"]


def test_finished_model_is_loaded_not_retrained(tmp_path, monkeypatch):
    prof = tiny_profile(epochs=1)
    m1 = train.get_model(prof, "standard", tmp_path, progress=False)
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("retrained a finished model"))
    m2 = train.get_model(prof, "standard", tmp_path, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))
    changed = tiny_profile(epochs=1, lr=0.01)  # another config lives in another folder, the old one stays
    assert profiles.model_dir(tmp_path, changed, "standard") != profiles.model_dir(tmp_path, prof, "standard")


def test_selection_uses_val_and_metrics_are_recorded(digits_models):
    meta = digits_models["robust"].meta
    hist = meta["history"]
    assert len(hist) == meta["config"]["epochs"]
    best = max(range(len(hist)), key=lambda i: (hist[i]["val_pgd_acc"], -i))
    assert meta["metrics"]["best_epoch"] == best + 1
    assert 0 <= meta["metrics"]["pgd_acc"] <= meta["metrics"]["clean_acc"] <= 100
    assert meta["environment"]["versions"]["torch"] == torch.__version__.split("+")[0] or meta["environment"]


def test_robust_training_buys_robustness(digits_models):
    std, rob = (digits_models[k].meta["metrics"] for k in ("standard", "robust"))
    assert rob["pgd_acc"] > std["pgd_acc"] + 5
    assert std["clean_acc"] > 80


def test_gradnorm_training_shrinks_input_gradients(tmp_path, digits_models, digits_batch):
    gn = train.get_model(tiny_profile(), "gradnorm_1", tmp_path, progress=False)
    assert gn.meta["config"]["mode"] == "gradnorm" and gn.meta["metrics"]["clean_acc"] > 50
    x, y = digits_batch

    def grad_norm(model):
        x_ = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x_), y, reduction="sum"), x_)
        return g.flatten(1).norm(dim=1).mean()

    assert grad_norm(gn) < 0.75 * grad_norm(digits_models["standard"])


def test_unknown_profile_and_model_errors():
    with pytest.raises(ValueError, match="known profiles: .*default.*smoke"):
        profiles.load("nope")
    with pytest.raises(ValueError, match="its models: standard, robust"):
        profiles.model_config(profiles.load("smoke"), "nope")
    prof = tiny_profile()
    prof["models"]["bad"] = {"mode": "pgd", "eps": -1.0}
    with pytest.raises(ValueError, match="eps and lam must be >= 0"):
        profiles.model_config(prof, "bad")


def test_lr_schedules():
    cfg = {**profiles.TRAIN_DEFAULTS, "epochs": 10, "schedule": "step", "milestones": [5, 8]}
    f = recipe.lr_lambda(cfg, 10)
    assert f(0) == 1 and f(49) == 1 and f(50) == pytest.approx(0.1) and f(85) == pytest.approx(0.01)
    f = recipe.lr_lambda({**cfg, "schedule": "cosine"}, 10)
    assert f(0) == 1 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0)


def test_augmentation_is_seeded_and_shape_preserving():
    x = torch.rand(8, 3, 32, 32)
    a = recipe.augment(x, "crop_flip", torch.Generator().manual_seed(1))
    b = recipe.augment(x, "crop_flip", torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
@pytest.mark.parametrize("layout", ["two_nodes_on_localhost"])  # one node, two processes: the ResNet test below
def test_ddp_two_processes_match_one_process(tmp_path, layout):
    prof = tiny_profile(epochs=2, ckpt_every=0)
    path = write_profile(prof, tmp_path / "tiny.yaml")
    prof = profiles.load(path)
    subprocess.run(_cli(path, "robust", tmp_path / "single"), check=True, env=ENV, cwd=ROOT, timeout=600)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    port = str(29500 + os.getpid() % 1000 + (1 if layout == "two_nodes_on_localhost" else 0))
    args = _cli(path, "robust", tmp_path / "ddp")[2:]  # drop python -m
    if layout == "one_node_two_procs":
        cmds = [[torchrun, "--nproc-per-node", "2", "--master-port", port, "-m", *args]]
    else:
        cmds = [[torchrun, "--nnodes", "2", "--node-rank", str(r), "--nproc-per-node", "1", "--master-addr",
                 "127.0.0.1", "--master-port", port, "-m", *args] for r in (0, 1)]
    procs = [subprocess.Popen(c, env=ENV, cwd=ROOT) for c in cmds]
    assert all(p.wait(timeout=600) == 0 for p in procs)
    single, ddp = _weights(tmp_path / "single", prof, "robust"), _weights(tmp_path / "ddp", prof, "robust")
    meta = checkpoints.read_meta(profiles.model_dir(tmp_path / "ddp", prof, "robust"))
    assert meta["world_size"] == 2
    for k in single:  # same global batches and PGD starts: equal up to reduction order
        assert torch.allclose(single[k], ddp[k], rtol=1e-4, atol=1e-5), k


TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _resnet_profile(tmp_path):
    """resnet18_cifar (BatchNorm) on generated CIFAR-format files: 2 epochs of 2 steps of 8 images."""
    _, md5 = synthetic.cifar(tmp_path / "data", n=10)
    prof = tiny_profile(epochs=2, batch_size=8, lr=0.002, ckpt_every=1, val_images=5, train_subset=16)
    prof.update(dataset="cifar10", arch="resnet18_cifar", arch_kwargs={}, dataset_options={"checksums": md5})
    prof["eval"].update(steps=1, val_steps=1, test_images=10)
    return write_profile(prof, tmp_path / "resnet.yaml")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="no torchrun")
def test_ddp_batchnorm_resnet_killed_and_resumed_under_torchrun_matches_one_process(tmp_path):
    path = _resnet_profile(tmp_path)
    prof = profiles.load(path)
    data_root = ["--data-root", str(tmp_path / "data")]
    subprocess.run(_cli(path, "standard", tmp_path / "single", *data_root), check=True, env=ENV, cwd=ROOT, timeout=600)
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(29700 + os.getpid() % 500), "-m",
           *_cli(path, "standard", tmp_path / "ddp", *data_root)[2:]]
    state = profiles.model_dir(tmp_path / "ddp", prof, "standard") / checkpoints.STATE_FILE
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, start_new_session=True)
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
    proc.wait()
    assert state.exists() and not checkpoints.is_complete(state.parent), "training finished before the kill"
    killed_at = checkpoints.load_state(state)["loop"]
    assert (killed_at["epoch"], killed_at["step"]) < (2, 0)  # resumed mid-run
    subprocess.run(cmd, check=True, env=ENV, cwd=ROOT, timeout=600)  # resume under torchrun
    single, ddp = _weights(tmp_path / "single", prof, "standard"), _weights(tmp_path / "ddp", prof, "standard")
    assert checkpoints.read_meta(profiles.model_dir(tmp_path / "ddp", prof, "standard"))["world_size"] == 2
    assert list((tmp_path / "ddp").rglob("*.part*")) == []  # rank 0 alone wrote: no stray temporary files
    assert any("bn" in k and k.endswith("running_var") for k in single)
    # Same global batches and BatchNorm over the global batch: equal up to float32 summation order, which a
    # ResNet on 8 noise images amplifies about tenfold per step (measured here: relative L2 distance 5e-9 of
    # the parameters, 5e-8 of the running statistics). Per-rank BatchNorm, what DDP does without
    # global_batchnorm, misses by 3e-4 and 1e-2 (and test_distributed shows its forward is already wrong).
    for running in (False, True):
        keys = [k for k in single if single[k].dtype.is_floating_point and ("running" in k) == running]
        a, b = (torch.cat([w[k].flatten() for k in keys]) for w in (single, ddp))
        assert (a - b).norm() / a.norm() < 1e-5, "running statistics" if running else "parameters"
    meta = [checkpoints.read_meta(profiles.model_dir(tmp_path / d, prof, "standard")) for d in ("single", "ddp")]
    assert [h["val_clean_acc"] for h in meta[0]["history"]] == [h["val_clean_acc"] for h in meta[1]["history"]]
    assert all(torch.equal(single[k], ddp[k]) for k in single if k.endswith("num_batches_tracked"))
