"""Optional tier: published layouts written by the authors' own code, read back through lib.zoo.

Needs `robustness` (MadryLab, with `dill`) and/or `robustbench` from PyPI, which are NOT dependencies of robinterp:
`pip install --no-deps robustness robustbench dill`. Skipped with the reason when they are absent. On this torch they
import only with shims, installed here and nowhere else:
- robustness: `torchvision.models.utils` (gone from torchvision; it was torch.hub's load_state_dict_from_url) and
  `cox` (their experiment logger, imported by robustness.tools.constants but not used by the model classes);
- robustbench: its package __init__ imports timm and autoattack, so its architecture files (plain torch) are
  loaded by path, without the package.
The weights are random (nothing can be downloaded here); the logits must equal the authors' own modules'.
"""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from lib import zoo

MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)  # not any dataset's: the file's own must be used
pytestmark = pytest.mark.slow  # ResNet50s on CPU: out of `make test-fast`


def _shim_robustness():
    if "torchvision.models.utils" not in sys.modules:
        utils = types.ModuleType("torchvision.models.utils")
        utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = utils
    if "cox" not in sys.modules and importlib.util.find_spec("cox") is None:
        cox, store = types.ModuleType("cox"), types.ModuleType("cox.store")
        store.PYTORCH_STATE = store.OBJECT = "stub"
        cox.store = store
        sys.modules.update({"cox": cox, "cox.store": store})


def _robustness():
    for name in ("robustness", "dill"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (optional: pip install --no-deps robustness dill)")
    _shim_robustness()
    from robustness import cifar_models, imagenet_models
    from robustness.attacker import AttackerModel
    return cifar_models, imagenet_models, AttackerModel


def _robustbench_file(name: str):
    spec = importlib.util.find_spec("robustbench")
    if spec is None:
        pytest.skip("robustbench is not installed (optional: pip install --no-deps robustbench)")
    path = Path(spec.origin).parent / "model_zoo" / "architectures" / f"{name}.py"
    mod_spec = importlib.util.spec_from_file_location(f"_robustbench_{name}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point() or name.endswith(("new_mean", "new_std", "mu", "sigma")):
                continue
            if name.endswith(("running_var", ".weight")) and t.ndim == 1:
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return module.eval()


def _close(got, want):
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item()), (got - want).abs().max()


class _Dataset:  # what AttackerModel reads of a robustness dataset
    mean, std = torch.tensor(MEAN), torch.tensor(STD)


@pytest.mark.parametrize("arch,builder", [("resnet18_cifar", "cifar_models.ResNet18"),
                                          ("resnet50_cifar", "cifar_models.ResNet50"),
                                          ("resnet18", "imagenet_models.resnet18")])
@pytest.mark.parametrize("cyclic", [False, True])
def test_madrylab_train_model_checkpoint(tmp_path, arch, builder, cyclic):
    cifar_models, imagenet_models, AttackerModel = _robustness()  # skips unless robustness and dill are installed
    import dill
    family, fn = builder.split(".")
    net = getattr({"cifar_models": cifar_models, "imagenet_models": imagenet_models}[family], fn)(num_classes=10)
    model = torch.nn.DataParallel(_seeded(AttackerModel(net, _Dataset())))  # what train_model saves
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[50, 100])
    if cyclic:  # --custom-lr-multiplier cyclic: LambdaLR over np.interp, numpy float64 learning rates
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: np.interp([e], [0, 75, 150], [0, 1, 0])[0])
        opt.step()
        schedule.step()
        assert isinstance(opt.state_dict()["param_groups"][0]["lr"], np.floating)  # the case being tested
    sd_info = {"model": model.state_dict(), "optimizer": opt.state_dict(),
               "schedule": {k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"},
               "epoch": 150, "amp": None}
    path = tmp_path / "checkpoint.pt.best"
    torch.save(sd_info, path, pickle_module=dill)  # robustness.train.train_model's own call
    loaded = zoo.load_external({"source": "madrylab", "path": str(path), "arch": arch, "dataset": "digits"})
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.module.eval()(x)[0]  # AttackerModel(x) -> (logits, input)
        _close(loaded(x), want)


def _with_normaliser(net, mean, std):
    net.register_buffer("mu", torch.tensor(mean).view(1, 3, 1, 1))
    net.register_buffer("sigma", torch.tensor(std).view(1, 3, 1, 1))
    return net


@pytest.mark.parametrize("name,build", [
    ("Rice2020Overfitting", lambda r, w: _with_normaliser(r.PreActResNet(r.PreActBlockV2, [2, 2, 2, 2],
                                                                          bn_before_fc=True), MEAN, STD)),
    ("Engstrom2019Robustness", lambda r, w: _with_normaliser(r.ResNet(r.Bottleneck, [3, 4, 6, 3]), MEAN, STD)),
    ("Sehwag2021Proxy_R18", lambda r, w: r.ResNet18()),
    ("Standard", lambda r, w: w.WideResNet(depth=28, widen_factor=10)),
])
def test_robustbench_architectures_in_their_saved_layout(tmp_path, name, build):
    net = _seeded(build(_robustbench_file("resnet"), _robustbench_file("wide_resnet")))
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # their files: DataParallel state dicts
    torch.save({"state_dict": state}, tmp_path / f"{name}.pt")
    loaded = zoo.load_external({"source": "robustbench", "name": name, "path": str(tmp_path / f"{name}.pt"),
                                "dataset": "digits"})
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net((x - net.mu) / net.sigma) if hasattr(net, "mu") else net(x)
        _close(loaded(x), want)
