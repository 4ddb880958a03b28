import pytest
import torch

from lib import models

CASES = [("small_cnn", 1, 8), ("small_cnn", 1, 28), ("small_cnn", 3, 32), ("resnet18_cifar", 3, 32),
         ("resnet18", 3, 64), ("resnet50", 3, 64)]


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
