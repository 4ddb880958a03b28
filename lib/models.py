"""Classifiers whose inputs are images in [0,1]; normalisation is the first layer.

Every model is a `Classifier`: `features(x)` is the penultimate representation R(x) and
`head` maps it to logits. ReLUs are separate, non-inplace modules, each used once, so
captum's DeepLift and shap's explainers can hook every one of them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

WIDE = {"wrn28_10": (28, 10), "wrn34_10": (34, 10)}  # WideResNet-depth-widen (Zagoruyko & Komodakis)
ARCHS = ("small_cnn", "resnet18_cifar", "resnet50_cifar", "resnet18", "resnet50", "preact_resnet18", *WIDE)
STATS = {  # per-channel mean/std by channel count; 1-channel values are Fashion-MNIST's
    1: ((0.2860,), (0.3530,)),
    3: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class FakeReLU(torch.autograd.Function):
    """ReLU forward, identity backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad


class Classifier(nn.Module):
    """logits = head(body(normalize(x))); x: (N,C,H,W) in [0,1]."""

    def __init__(self, normalize: nn.Module, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.normalize, self.body, self.head = normalize, body, head

    def features(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        """R(x): (N, D) penultimate representation.

        fake_relu: the body's final ReLU (before pooling / the head) stays a ReLU in the forward pass but
        passes the gradient through unchanged, as MadryLab's and Boychev's `fake_relu=True`, so a unit
        that is 0 still receives a gradient (inversion, feature visualisation, generation).
        """
        if not fake_relu:
            return self.body(self.normalize(x))
        relus = [m for m in self.body.modules() if isinstance(m, nn.ReLU)]
        hook = relus[-1].register_forward_hook(lambda mod, inp, out: FakeReLU.apply(inp[0]))
        try:
            return self.body(self.normalize(x))
        finally:
            hook.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def place(model: nn.Module, device, channels_last: bool | None = None) -> nn.Module:
    """`model` on `device`; channels_last None: in channels-last memory order on CPU (contiguous on CUDA).

    A speed choice that changes only float summation order: on this repository's 2-core CPU a default small_cnn's
    training step is 1.55x (1.34x with PGD-3), its input gradient 1.31x and its forward pass 1.87x faster, a
    resnet18_cifar's step 1.06-1.11x (benchmarks/README.md, "Channels-last on CPU"). Every model loaded for
    evaluation is placed here; lib.train places the model it trains by `train.channels_last` (auto: this rule,
    except under torchrun, whose gradient buckets expect contiguous parameters)."""
    device = torch.device(device)
    if channels_last is None:
        channels_last = device.type == "cpu"
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build(name: str, num_classes: int, in_channels: int, image_size: int, *, bias: bool = True,
          normalize: bool = True, width: int = 32) -> Classifier:
    """Build architecture `name`. `bias=False` and `normalize=False` give a positively homogeneous net."""
    if name not in ARCHS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(ARCHS)}")
    if normalize:
        mean, std = STATS.get(in_channels, ((0.5,) * in_channels, (0.5,) * in_channels))
        norm = Normalize(mean, std)
    else:
        norm = nn.Identity()
    if name == "small_cnn":
        body, dim = _small_cnn(in_channels, image_size, width, bias)
    elif name == "resnet18_cifar":
        body, dim = _resnet(BasicBlock, (2, 2, 2, 2), in_channels, cifar_stem=True)
    elif name == "resnet50_cifar":
        body, dim = _resnet(Bottleneck, (3, 4, 6, 3), in_channels, cifar_stem=True)
    elif name == "resnet18":
        body, dim = _resnet(BasicBlock, (2, 2, 2, 2), in_channels, cifar_stem=False)
    elif name == "resnet50":
        body, dim = _resnet(Bottleneck, (3, 4, 6, 3), in_channels, cifar_stem=False)
    elif name == "preact_resnet18":
        body, dim = _preact_resnet((2, 2, 2, 2), in_channels)
    else:
        body, dim = _wide_resnet(*WIDE[name], in_channels)
    return Classifier(norm, body, nn.Linear(dim, num_classes, bias=bias))


def _small_cnn(in_channels: int, image_size: int, width: int, bias: bool):
    """LeNet-like: (conv-relu-pool) ×2, fc-relu. Works from 8×8 upwards; R(x) has 4·width dims."""
    w, pooled = width, image_size // 4
    body = nn.Sequential(
        nn.Conv2d(in_channels, w, 3, padding=1, bias=bias), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=bias), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * w * pooled * pooled, 4 * w, bias=bias), nn.ReLU(),
    )
    return body, 4 * w


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu3(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def _resnet(block, layers, in_channels: int, cifar_stem: bool):
    """CIFAR stem: 3×3 conv, no max-pool (as in Boychev 2023). ImageNet stem: 7×7/2 + max-pool."""
    if cifar_stem:
        stem = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    else:
        stem = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1)]
    mods, cin = list(stem), 64
    for i, n in enumerate(layers):
        planes = 64 * 2**i
        for j in range(n):
            mods.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
            cin = planes * block.expansion
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    body = nn.Sequential(*mods)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return body, cin


class PreActBlock(nn.Module):
    """Pre-activation block: relu(bn1(x)) -> conv1 -> relu(bn2) -> conv2, plus x, or plus a 1×1 projection
    of relu(bn1(x)) when the shape changes. The projection's name is the source's: `shortcut.0` in
    RobustBench's PreActBlockV2 (Rice et al. 2020), `convShortcut` in TRADES' WideResNet block."""

    def __init__(self, cin: int, cout: int, stride: int, proj: str = "shortcut"):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = proj if (stride != 1 or cin != cout) else None
        if self.proj:
            conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            setattr(self, proj, nn.Sequential(conv) if proj == "shortcut" else conv)

    def forward(self, x):
        out = self.relu1(self.bn1(x))
        skip = getattr(self, self.proj)(out) if self.proj else x
        return self.conv2(self.relu2(self.bn2(self.conv1(out)))) + skip


def _preact_resnet(layers, in_channels: int):
    """PreActResNet with a BN-ReLU before pooling; module names follow RobustBench's (conv1, layerN, bn)."""
    mods, cin = [("conv1", nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False))], 64
    for i, n in enumerate(layers):
        planes = 64 * 2**i
        blocks = []
        for j in range(n):
            blocks.append(PreActBlock(cin, planes, 2 if (j == 0 and i > 0) else 1))
            cin = planes
        mods.append((f"layer{i + 1}", nn.Sequential(*blocks)))
    mods += [("bn", nn.BatchNorm2d(cin)), ("relu", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(1)),
             ("flatten", nn.Flatten())]
    return nn.Sequential(OrderedDict(mods)), cin


class _Stage(nn.Module):
    """RobustBench's NetworkBlock: a `layer` of pre-activation blocks (kept for its state-dict names)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[PreActBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1,
                                                 proj="convShortcut") for j in range(n)])

    def forward(self, x):
        return self.layer(x)


def _wide_resnet(depth: int, widen: int, in_channels: int):
    """WRN-depth-widen for 32×32 inputs; names follow RobustBench's WideResNet (conv1, blockN, bn1)."""
    n, widths = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
    mods = [("conv1", nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False))]
    for i in range(3):
        mods.append((f"block{i + 1}", _Stage(n, widths[i], widths[i + 1], 1 if i == 0 else 2)))
    mods += [("bn1", nn.BatchNorm2d(widths[3])), ("relu", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(1)),
             ("flatten", nn.Flatten())]
    return nn.Sequential(OrderedDict(mods)), widths[3]


class eval_mode:
    """Context manager: put `model` in eval mode and restore every submodule's own mode on exit."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode
        return False


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel or torch.compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
