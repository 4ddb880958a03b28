import copy

import pytest
import torch

from lib import models

CASES = [("small_cnn", 1, 8), ("small_cnn", 1, 28), ("small_cnn", 3, 32), ("resnet18_cifar", 3, 32),
         ("resnet18", 3, 64), ("resnet50", 3, 64), ("resnet50_cifar", 3, 32), ("preact_resnet18", 3, 32)]


@pytest.mark.parametrize("name,cin,size", CASES)
def test_build_shapes_and_features(name, cin, size):
    m = models.build(name, 7, cin, size).eval()
    x = torch.rand(2, cin, size, size)
    r = m.features(x)
    assert r.ndim == 2 and r.shape[0] == 2
    assert torch.allclose(m.head(r), m(x))
    assert m(x).shape == (2, 7)


@pytest.mark.parametrize("name,cin,size", CASES)
def test_relus_are_separate_and_not_inplace(name, cin, size):
    m = models.build(name, 3, cin, size).eval()
    relus = [mod for mod in m.modules() if isinstance(mod, torch.nn.ReLU)]
    assert relus and not any(r.inplace for r in relus)
    calls = {id(r): 0 for r in relus}
    hooks = [r.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls[id(mod)] + 1)) for r in relus]
    m(torch.rand(1, cin, size, size))
    for h in hooks:
        h.remove()
    assert set(calls.values()) == {1}  # each ReLU module is used exactly once


def test_normalisation_is_inside_the_model():
    m = models.build("small_cnn", 10, 3, 32)
    assert isinstance(m.normalize, models.Normalize)
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(m.normalize(x), (x - m.normalize.mean) / m.normalize.std)


def test_bias_free_net_is_positively_homogeneous():
    torch.manual_seed(0)
    m = models.build("small_cnn", 10, 1, 8, bias=False, normalize=False).eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(m(3.0 * x), 3.0 * m(x), atol=1e-5)


def test_unknown_model_lists_known():
    with pytest.raises(ValueError, match="known models: small_cnn"):
        models.build("vgg", 10, 3, 32)


def test_external_architectures_have_the_published_sizes():
    """Parameter counts of the published networks these rebuild (MadryLab's CIFAR ResNet50, RobustBench's
    PreActResNet-18 and WRN-28-10, torchvision's ResNet50): a wrong width or block shows up here."""
    count = lambda name, classes=10: sum(p.numel() for p in models.build(name, classes, 3, 32).parameters())
    assert count("resnet50_cifar") == 23_520_842
    assert count("preact_resnet18") == 11_172_170
    assert count("wrn28_10") == 36_479_194
    assert count("resnet50", 1000) == 25_557_032  # torchvision.models.resnet50()


def test_wide_resnet_relus_are_separate_and_used_once():
    body, dim = models._wide_resnet(10, 2, 3)  # WRN-10-2: the WRN-28-10 code path at a test's size
    relus = [m for m in body.modules() if isinstance(m, torch.nn.ReLU)]
    calls = []
    for r in relus:
        r.register_forward_hook(lambda mod, i, o: calls.append(id(mod)))
    assert body(torch.rand(2, 3, 32, 32)).shape == (2, dim) and sorted(calls) == sorted(map(id, relus))
    assert not any(r.inplace for r in relus)


def test_place_is_channels_last_on_cpu_and_changes_only_summation_order():
    """lib.models.place: a speed choice. Same weights bitwise, logits and input gradients equal to float32 rounding."""
    torch.manual_seed(0)
    m = models.build("small_cnn", 10, 3, 16, width=4).eval()
    placed = models.place(copy.deepcopy(m), "cpu")
    conv = placed.body[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert models.place(copy.deepcopy(m), "cpu", channels_last=False).body[0].weight.is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), placed.state_dict().values(), strict=True))
    x = torch.rand(5, 3, 16, 16, requires_grad=True)
    out, out_cl = m(x), placed(x)
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(out[:, 0].sum(), x)
    (g_cl,) = torch.autograd.grad(out_cl[:, 0].sum(), x)
    torch.testing.assert_close(g_cl, g, rtol=1e-5, atol=1e-7)
