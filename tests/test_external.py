"""Published checkpoints load exactly: each layout is rebuilt from seeded weights, saved as its authors
save it, loaded through lib.zoo, and must give the reference network's logits. Bad files are refused."""

import argparse
import collections
import io
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from lib import checkpoints, models, profiles, robustness, zoo

MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)  # deliberately not any dataset's: the file's own must be used


def _seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so no layer is an identity; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith(("running_var", ".weight")) and t.ndim == 1:
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return module.eval()


def _tv_resnet(arch: str, num_classes: int = 10, cifar: bool = False) -> torch.nn.Module:
    """torchvision's ResNet, optionally with the CIFAR stem (3×3 conv, no max-pool) of MadryLab/Boychev."""
    net = getattr(torchvision.models, arch)(num_classes=num_classes)
    if cifar:
        net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
    return _seeded(net)


def _cifar_names(state: dict) -> dict:
    """torchvision key names -> the CIFAR-ResNet layout (shortcut, linear) of MadryLab/Boychev/RobustBench."""
    return {k.replace("downsample.", "shortcut.").replace("fc.", "linear."): v for k, v in state.items()}


def _normalised(x, mean, std):
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _cfg(source, path, arch=None, **extra):
    cfg = {"source": source, "path": str(path), "dataset": "digits", **extra}  # digits: 10 classes, offline
    return cfg if arch is None else {**cfg, "arch": arch}


def _same_logits(model, reference, mean, std, size=32):
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(_normalised(x, mean, std) if mean else x)
        got = model(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item()), (got - want).abs().max()


def _madry(state: dict, mean, std) -> dict:
    """A robustness AttackerModel checkpoint under DataParallel, with the training state beside it."""
    sd = {}
    for prefix in ("module.model.", "module.attacker.model."):
        sd.update({prefix + k: v for k, v in state.items()})
    for prefix in ("module.normalizer.", "module.attacker.normalize."):
        sd[prefix + "new_mean"] = torch.tensor(mean)[..., None, None]
        sd[prefix + "new_std"] = torch.tensor(std)[..., None, None]
    return {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
            "schedule": {"milestones": collections.Counter({50: 1, 100: 1}), "last_epoch": 150}, "epoch": 150}


def test_torchvision_resnet18(tmp_path):
    ref = _tv_resnet("resnet18")
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    model = zoo.load_external(_cfg("torchvision", tmp_path / "resnet18.pth", "resnet18"))
    _same_logits(model, ref, *zoo.IMAGENET)
    assert model.meta["external"] and len(model.meta["sha256"]) == 64


def test_madrylab_imagenet_resnet_uses_its_normaliser_buffers(tmp_path):
    ref = _tv_resnet("resnet18")  # their ImageNet ResNets are torchvision's; resnet18 keeps the test fast
    torch.save(_madry(ref.state_dict(), MEAN, STD), tmp_path / "imagenet_l2_3_0.pt")
    model = zoo.load_external(_cfg("madrylab", tmp_path / "imagenet_l2_3_0.pt", "resnet18"))
    _same_logits(model, ref, MEAN, STD)


@pytest.mark.parametrize("arch", ["resnet18_cifar", "resnet50_cifar"])
def test_madrylab_cifar_resnets(tmp_path, arch):
    ref = _tv_resnet(arch.split("_")[0], cifar=True)
    torch.save(_madry(_cifar_names(ref.state_dict()), MEAN, STD), tmp_path / "cifar_l2_0_5.pt")
    model = zoo.load_external(_cfg("madrylab", tmp_path / "cifar_l2_0_5.pt", arch))
    _same_logits(model, ref, MEAN, STD)


def test_boychev_cifar_and_small_imagenet(tmp_path):
    ref = _tv_resnet("resnet18", cifar=True)
    torch.save({"model_state_dict": _cifar_names(ref.state_dict()), "epoch": 99, "loss": 0.5,
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, tmp_path / "robust_l2_cifar10.pt")
    model = zoo.load_external(_cfg("boychev", tmp_path / "robust_l2_cifar10.pt", "resnet18_cifar"))
    _same_logits(model, ref, *zoo.CIFAR_MADRY)  # his notebook's Normalize, now inside the model

    ref = _tv_resnet("resnet50")  # his ImageNet ResNet50: torchvision stem, shortcut/linear names
    torch.save({"model_state_dict": _cifar_names(ref.state_dict())}, tmp_path / "robust_l2_smimagenet.pt")
    model = zoo.load_external(_cfg("boychev", tmp_path / "robust_l2_smimagenet.pt", "resnet50"))
    _same_logits(model, ref, *zoo.SMALL_IMAGENET_BOYCHEV)


def test_robustbench_resnet_with_mu_sigma_and_module_prefix(tmp_path):
    ref = _tv_resnet("resnet18", cifar=True)
    state = {"module." + k: v for k, v in _cifar_names(ref.state_dict()).items()}
    state["module.mu"], state["module.sigma"] = (torch.tensor(s).view(1, 3, 1, 1) for s in (MEAN, STD))
    torch.save({"state_dict": state}, tmp_path / "Sehwag2021Proxy_R18.pt")
    model = zoo.load_external(_cfg("robustbench", tmp_path / "Sehwag2021Proxy_R18.pt", name="Sehwag2021Proxy_R18"))
    _same_logits(model, ref, MEAN, STD)


def _bn(sd, p, t):
    return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])


def _preact_block(sd, p, out, stride, proj):
    """One pre-activation block from its state-dict names, functionally (RobustBench/TRADES semantics)."""
    act = F.relu(_bn(sd, p + ".bn1", out))
    skip = F.conv2d(act, sd[f"{p}.{proj}"], stride=stride) if f"{p}.{proj}" in sd else out
    h = F.conv2d(act, sd[p + ".conv1.weight"], stride=stride, padding=1)
    return F.conv2d(F.relu(_bn(sd, p + ".bn2", h)), sd[p + ".conv2.weight"], padding=1) + skip


def _reference(sd, blocks, proj, last_bn, pool, head):
    """conv1 -> pre-activation blocks (name, stride) -> relu(bn) -> average pool -> linear head."""
    def forward(x):
        out = F.conv2d(x, sd["conv1.weight"], padding=1)
        for p, stride in blocks:
            out = _preact_block(sd, p, out, stride, proj)
        out = F.avg_pool2d(F.relu(_bn(sd, last_bn, out)), pool).flatten(1)
        return F.linear(out, sd[head + ".weight"], sd[head + ".bias"])
    return forward


def _wrn_reference(sd, depth):
    """RobustBench's WideResNet (TRADES layout): blockB.layer.J, convShortcut, bn1, fc."""
    blocks = [(f"block{b}.layer.{j}", 2 if (b > 1 and j == 0) else 1)
              for b in (1, 2, 3) for j in range((depth - 4) // 6)]
    return _reference(sd, blocks, "convShortcut.weight", "bn1", 8, "fc")


def _preact_reference(sd):
    """RobustBench's PreActResNet-18 (PreActBlockV2, BN before the head): layerL.J, shortcut.0, bn, linear."""
    blocks = [(f"layer{b}.{j}", 2 if (b > 1 and j == 0) else 1) for b in (1, 2, 3, 4) for j in (0, 1)]
    return _reference(sd, blocks, "shortcut.0.weight", "bn", 4, "linear")


@pytest.mark.parametrize("name", ["Rice2020Overfitting", "Wu2020Adversarial"])
def test_robustbench_preact_and_wide_resnets(tmp_path, name):
    arch, stats = zoo.ROBUSTBENCH_CIFAR10_L2[name]
    ours = _seeded(models.build(arch, 10, 3, 32))
    sd = {v: ours.state_dict()[k] for k, v in zoo.external_names(ours, arch, "cifar").items()}
    if arch in models.WIDE:
        # names RobustBench's WideResNet has: 16 -> 160 -> 320 -> 640 channels, 1×1 projections
        assert sd["block1.layer.0.convShortcut.weight"].shape == (160, 16, 1, 1)
        assert sd["block3.layer.4.conv2.weight"].shape == (640, 640, 3, 3) and sd["fc.weight"].shape == (10, 640)
        assert sum(v.numel() for k, v in sd.items() if "running" not in k and "tracked" not in k) == 46_160_474
        sd["sub_block1.layer.0.bn1.weight"] = torch.ones(16)  # TRADES' unused copy is ignored
        reference = _wrn_reference(sd, 34)
    else:
        assert sd["layer2.0.shortcut.0.weight"].shape == (128, 64, 1, 1) and "bn.weight" in sd
        reference = _preact_reference(sd)
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / f"{name}.pt")
    model = zoo.load_external(_cfg("robustbench", tmp_path / f"{name}.pt", name=name))
    _same_logits(model, reference, *(stats or (None, None)))


def test_wnids_keep_the_dataset_classes_logits(tmp_path):
    ref = _tv_resnet("resnet18", num_classes=20)
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    wnids = [f"n{i:08d}" for i in range(20)]
    (tmp_path / "wnids.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(wnids)))
    cfg = _cfg("torchvision", tmp_path / "resnet18.pth", "resnet18", wnids=str(tmp_path / "wnids.txt"))
    with pytest.raises(checkpoints.CheckpointError, match="not in"):  # digits' classes are not wnids
        zoo.load_external(cfg)
    state = zoo._layout(ref.state_dict(), "torchvision", tmp_path)[0]
    m = models.build("resnet18", 20, 3, 32)
    zoo._load_strict(m, state, zoo.external_names(m, "resnet18", "torchvision"), tmp_path, "x")
    m.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = m(x)
    classes = [wnids[i] for i in (7, 3, 11)]
    zoo._restrict_head(m, tmp_path / "wnids.txt", classes)
    with torch.no_grad():
        assert torch.allclose(m(x), before[:, [7, 3, 11]])


# ---------------------------------------------------------------- numpy numbers in the training state

def _numpy_lrs(ckpt: dict) -> dict:
    """What `robustness` saves after `--custom-lr-multiplier cyclic` / `lr_interpolation linear`: numpy float64
    learning rates (np.interp) in the optimizer's param groups and the scheduler's state, and a dtype."""
    lr = np.interp(3.5, [0, 10], [0.0, 0.1])  # a np.float64, as np.interp returns it
    ckpt["optimizer"]["param_groups"][0].update(lr=lr, initial_lr=np.float64(0.1))
    ckpt["schedule"] = {**ckpt["schedule"], "base_lrs": [np.float64(0.1)], "_last_lr": [lr],
                        "lr_lambdas": [None], "dtype": np.dtype("float64"), "n": np.int64(3), "f": np.float32(0.5)}
    return ckpt


def _as_numpy1(path):
    """Rewrite a torch.save file as numpy < 2 pickles scalars (numpy.core.multiarray.scalar)."""
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            raw = src.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in raw
                raw = raw.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            dst.writestr(item.filename, raw)
    path.write_bytes(out.getvalue())


@pytest.mark.parametrize("numpy1", [False, True])
def test_madrylab_checkpoint_with_numpy_learning_rates_loads(tmp_path, numpy1):
    ref = _tv_resnet("resnet18", cifar=True)
    path = tmp_path / "cifar_l2_cyclic.pt"
    torch.save(_numpy_lrs(_madry(_cifar_names(ref.state_dict()), MEAN, STD)), path)
    if numpy1:
        _as_numpy1(path)
    with pytest.raises(pickle.UnpicklingError):  # the case: torch alone refuses it
        torch.load(path, weights_only=True)
    _same_logits(zoo.load_external(_cfg("madrylab", path, "resnet18_cifar")), ref, MEAN, STD)


def test_an_unsafe_global_keeps_torchs_cause_and_the_advice_works(tmp_path):
    ref = _tv_resnet("resnet18", cifar=True)
    src, dst = tmp_path / "with_args.pt", tmp_path / "weights.pt"
    torch.save({**_madry(_cifar_names(ref.state_dict()), MEAN, STD), "args": argparse.Namespace(lr=0.1)}, src)
    with pytest.raises(checkpoints.CheckpointError, match=r"Unsupported global: GLOBAL argparse\.Namespace") as err:
        zoo.load_external(_cfg("madrylab", src, "resnet18_cifar"))
    advice = re.search(r"re-save its weights once with (torch\.save\(.*\))\.$", str(err.value)).group(1)
    exec(advice, {"torch": torch, "src": src, "dst": dst})  # exactly what the message tells the user to run
    _same_logits(zoo.load_external(_cfg("madrylab", dst, "resnet18_cifar")), ref, MEAN, STD)
    assert src.is_file()


def test_model_config_keeps_dataset_options_for_external_entries():
    prof = profiles.load("imagenet150", {"models": {"robust": {"source": "boychev", "path": "x.pt",
                                                               "arch": "resnet50"}}})
    cfg = profiles.model_config(prof, "robust")
    assert cfg["dataset_options"] == prof["dataset_options"] == {"image_size": 128, "train_per_class": 600,
                                                                  "val_per_class": 50}
    plain = profiles.model_config(profiles.load("imagenet_pretrained"), "robust")
    assert "dataset_options" not in plain  # absent stays absent: existing hashes do not move


# ---------------------------------------------------------------- refusals

class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("source", ["madrylab", "boychev", "robustbench", "torchvision"])
def test_pickled_objects_are_refused_and_never_executed(tmp_path, source):
    marker = tmp_path / "pwned"
    torch.save({"model": {"module.model.conv1.weight": Evil(str(marker))}}, tmp_path / "evil.pt")
    with pytest.raises(checkpoints.CheckpointError, match="cannot be read safely"):
        zoo.load_external(_cfg(source, tmp_path / "evil.pt", zoo.ARCHS[source][0] if source != "robustbench" else None,
                               **({"name": "Standard"} if source == "robustbench" else {})))
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"state_dict": Evil(str(marker))}))
    with pytest.raises(checkpoints.CheckpointError, match="cannot be read safely"):
        zoo.load_external(_cfg("torchvision", tmp_path / "raw.pt", "resnet18"))
    assert not marker.exists()


def test_foreign_corrupt_and_missing_files_get_one_clear_sentence(tmp_path):
    tv = _tv_resnet("resnet18").state_dict()
    torch.save(tv, tmp_path / "tv.pth")
    with pytest.raises(checkpoints.CheckpointError, match="not a madrylab checkpoint: expected MadryLab"):
        zoo.load_external(_cfg("madrylab", tmp_path / "tv.pth", "resnet18"))
    with pytest.raises(checkpoints.CheckpointError, match="does not fit a torchvision resnet50"):
        zoo.load_external(_cfg("torchvision", tmp_path / "tv.pth", "resnet50"))
    torch.save({"model_state_dict": _cifar_names(tv)}, tmp_path / "b.pt")  # ImageNet stem, said to be CIFAR
    with pytest.raises(checkpoints.CheckpointError, match="shape"):
        zoo.load_external(_cfg("boychev", tmp_path / "b.pt", "resnet18_cifar"))
    (tmp_path / "cut.pth").write_bytes((tmp_path / "tv.pth").read_bytes()[:5000])
    with pytest.raises(checkpoints.CheckpointError, match="cannot be read safely"):
        zoo.load_external(_cfg("torchvision", tmp_path / "cut.pth", "resnet18"))
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(checkpoints.CheckpointError, match="not a dict of tensors"):
        zoo.load_external(_cfg("torchvision", tmp_path / "tensor.pt", "resnet18"))
    torch.save(_tv_resnet("resnet18", num_classes=1000).state_dict(), tmp_path / "in1k.pth")
    with pytest.raises(checkpoints.CheckpointError, match="1000 outputs .* give `wnids:`"):
        zoo.load_external(_cfg("torchvision", tmp_path / "in1k.pth", "resnet18"))
    with pytest.raises(FileNotFoundError, match=r"not found: get it from MadryLab .* put it at .*cifar_l2_0_5\.pt"):
        zoo.load_external(_cfg("madrylab", "data/models/nowhere/cifar_l2_0_5.pt", "resnet50_cifar"))


def test_profile_entries_are_validated_before_any_work():
    prof = profiles.load("smoke", {"models": {"robust": {"source": "madrylab", "path": "x.pt",
                                                         "arch": "vgg16"}}})
    with pytest.raises(ValueError, match="`arch:` must be one of resnet18_cifar"):
        zoo.check_entry(profiles.model_config(prof, "robust"))
    with pytest.raises(ValueError, match=r"unknown setting 'models\.robust\.eps'; known at this level: arch, mean"):
        profiles.load("smoke", {"models": {"robust": {"source": "madrylab", "path": "x.pt", "eps": 0.5}}})
    prof = profiles.merge(profiles.load("smoke"), {"models": {"robust": {"source": "madrylab", "path": "x.pt",
                                                                          "eps": 0.5}}})  # a dict that bypassed load
    with pytest.raises(ValueError, match="takes only source, path"):
        profiles.model_config(prof, "robust")
    prof = profiles.load("smoke", {"models": {"robust": {"source": "robustbench", "path": "x.pt",
                                                         "name": "Gowal2020Uncovering"}}})
    with pytest.raises(ValueError, match="RobustBench CIFAR-10 L2 model robinterp can express"):
        zoo.check_entry(profiles.model_config(prof, "robust"))


@pytest.mark.parametrize("name", ["cifar10_pretrained", "imagenet_pretrained"])
def test_pretrained_profiles_name_only_external_checkpoints(name):
    prof = profiles.load(name)
    for key in prof["models"]:
        assert zoo.is_external(prof, key)
        cfg = zoo.check_entry(profiles.model_config(prof, key))
        assert cfg["path"].startswith("data/models/")
    for members in prof["sweeps"].values():
        assert set(members) <= set(prof["models"])


def test_profile_model_loads_through_get_model(tmp_path):
    ref = _tv_resnet("resnet18", cifar=True)
    torch.save({"model_state_dict": _cifar_names(ref.state_dict())}, tmp_path / "b.pt")
    prof = profiles.load("smoke", {"models": {"robust": {"source": "boychev", "path": str(tmp_path / "b.pt"),
                                                         "arch": "resnet18_cifar"}}})
    model = zoo.get_model(prof, "robust", tmp_path / "run", train_if_missing=False)
    _same_logits(model, ref, *zoo.CIFAR_MADRY)


def test_external_models_get_notebook_01_rows_and_the_cache_is_reused(tmp_path):
    ref = _tv_resnet("resnet18")
    ref.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # digits are 1×8×8
    torch.save(_seeded(ref).state_dict(), tmp_path / "r18.pth")
    entry = {"source": "torchvision", "path": str(tmp_path / "r18.pth"), "arch": "resnet18", "mean": [0.5],
             "std": [0.25]}
    prof = profiles.load("smoke", {"models": {"standard": entry, "robust": entry},
                                   "eval": {"test_images": 16, "steps": 2,
                                            "apgd": {"images": 8, "steps": 3, "targets": 1}}})
    trained = zoo.get_models(prof, profiles.units(prof, ["standard", "robust"]), tmp_path / "run")
    assert list(trained) == ["standard@0", "robust@0"]  # an external checkpoint is one unit, whatever `seeds` says
    rows = robustness.accuracy_rows(prof, trained, tmp_path / "run", progress=False)
    table = robustness.accuracy_table(rows)
    row = table.set_index("model").loc["robust"]
    assert row["source"] == "torchvision" and row["test_images"] == 16 and row["apgd_images"] == 8
    assert 0 <= row["apgd_acc"] <= row["clean_acc_apgd_images"] and row["pgd_acc"] <= row["clean_acc"]
    cached = sorted((tmp_path / "run" / "robustness").glob("*.json"))
    assert len(cached) == 4  # per model: test metrics and APGD
    again = robustness.accuracy_table(robustness.accuracy_rows(prof, trained, tmp_path / "run", progress=False))
    assert again.equals(table)
    metrics = robustness.summary(rows, prof["eval"])
    assert metrics["per_unit"]["apgd_acc"]["robust@0"] == metrics["per_unit"]["apgd_acc"]["standard@0"]
    assert len(metrics["per_unit"]["clean_acc"]["robust@0"]) == 16 and metrics["units"]["robust@0"]["eps"] is None
