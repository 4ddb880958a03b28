"""Device choice under torchrun and the TF32 policy: off in every measurement path, on in training if asked."""

import pytest
import torch

from conftest import tiny_profile
from lib import alignment, attributions, device, fid, models, profiles, train, visualize


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cuda_under_torchrun_is_the_local_rank_gpu(monkeypatch, two_gpus):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device.resolve_device("cuda") == torch.device("cuda:1")
    assert device.resolve_device("cuda:0") == torch.device("cuda:1")  # was: every rank on GPU 0
    assert device.resolve_device("auto") == torch.device("cuda:1")
    with pytest.raises(RuntimeError, match="needs GPU 2 .*only 2 are visible"):
        device.resolve_device("cuda:1")
    monkeypatch.delenv("LOCAL_RANK")
    assert device.resolve_device("cuda:1") == torch.device("cuda:1")
    assert device.resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_gpu_is_one_sentence(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible; use --device cpu"):
        device.resolve_device("cuda:0")


@pytest.fixture
def tf32_on():
    before = device.tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as on an Ampere GPU
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_exact_fp32_turns_tf32_off_and_restores(tf32_on):
    with device.exact_fp32():
        assert device.tf32_state() == (False, False)
        with device.allow_tf32(True):
            assert device.tf32_state() == (True, True)
        assert device.tf32_state() == (False, False)
    assert device.tf32_state() == (True, True)
    f = device.exact_fp32(lambda: device.tf32_state())
    assert f() == (False, False) and device.tf32_state() == (True, True)


def _recording_model(seen):
    torch.manual_seed(0)
    model = models.build("small_cnn", 10, 1, 8, width=4).eval()
    model.body.register_forward_pre_hook(lambda *a: seen.append(device.tf32_state()))
    return model


def test_every_measurement_path_runs_without_tf32(tf32_on):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    cfg = {"methods": ["saliency", "ig", "bsm"], "ig": {"steps": 4}, "smoothgrad": {"samples": 2, "sigma": 0.1},
           "boundary": {"eps": [1.0, 4.0], "steps": 3}, "batch_size": 64}
    paths = {
        "attributions.explain": lambda m: attributions.explain(m, x, y, cfg, background=x),
        "alignment.measure": lambda m: alignment.measure(m, x, progress=False, steps=2, bisect_steps=1),
        "visualize.invert_representation": lambda m: visualize.invert_representation(
            m, x, x.flip(0), eps=1.0, step_size=0.1, steps=2, progress=False),
        "visualize.visualize_feature": lambda m: visualize.visualize_feature(
            m, x, torch.tensor([0, 1, 2]), eps=1.0, step_size=0.1, steps=2, progress=False),
        "visualize.generate_class_images": lambda m: visualize.generate_class_images(
            m, x, y, eps=1.0, step_size=0.1, steps=2, progress=False),
        "fid.activations": lambda m: fid.activations(x, m, progress=False),
    }
    for name, call in paths.items():
        seen = []
        call(_recording_model(seen))
        assert seen and set(seen) == {(False, False)}, name
        assert device.tf32_state() == (True, True), f"{name} did not restore the setting"


def test_training_uses_its_tf32_option_and_evaluation_does_not(tmp_path, monkeypatch, tf32_on):
    seen = {"step": set()}
    step = train._train_step

    def recording_step(*a, **k):
        seen["step"].add(device.tf32_state())
        return step(*a, **k)

    monkeypatch.setattr(train, "_train_step", recording_step)
    monkeypatch.setattr(train.attacks, "pgd", _flag_checking(train.attacks.pgd, seen))
    for flag in (True, False):
        seen["step"].clear()
        prof = tiny_profile(epochs=1, train_subset=64, tf32=flag)
        prof["eval"].update(val_steps=1, steps=1, test_images=16)
        prof["train"]["val_images"] = 16
        train.train(profiles.model_config(prof, "robust"), tmp_path / str(flag), progress=False)
        assert seen["step"] == {(flag, flag)}
    assert seen["pgd_eval"] == {(False, False)}  # val and test accuracy: exact fp32


def _flag_checking(pgd, seen):
    seen["pgd_eval"] = set()

    def wrapped(model, x, y, **k):
        if k.get("delta0") is None:  # evaluation's attack (training passes its shared noise as delta0)
            seen["pgd_eval"].add(device.tf32_state())
        return pgd(model, x, y, **k)

    return wrapped


def test_cpu_threads_follow_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert device.usable_cpus() == 3
    before = torch.get_num_threads()
    try:
        assert device.set_cpu_threads() == 3 and torch.get_num_threads() == 3
        assert device.set_cpu_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_quiet_openmp_env_keeps_a_users_choice():
    assert device.quiet_openmp_env({}) == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    assert device.quiet_openmp_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {"KMP_BLOCKTIME": "0"}


def test_importing_lib_first_makes_idle_openmp_threads_sleep():
    import subprocess
    import sys

    from conftest import ROOT

    env = {k: v for k, v in __import__("os").environ.items() if k not in device.QUIET_OPENMP}
    code = "import lib, os; print(os.environ['OMP_WAIT_POLICY'], os.environ['KMP_BLOCKTIME'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [device.QUIET_OPENMP["OMP_WAIT_POLICY"], device.QUIET_OPENMP["KMP_BLOCKTIME"]]
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's choice stays
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "ACTIVE"
