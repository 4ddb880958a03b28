"""The one nearest-boundary search (Wang's ε list and Etmann's min-norm ρ) and ρ̃, against closed forms."""

import math

import pytest
import torch
from torch import nn

from lib import attacks, boundary
from lib.models import build

ETMANN = dict(eps_list=None, loss="margin", toward_nearest=True, steps=20, bisect_steps=10, rtol=0.01, refine_steps=12)


class Affine(nn.Module):
    """Ψ(x) = W·vec(x) + b."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.w, self.b = nn.Parameter(w.float()), nn.Parameter(b.float())

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def interior_images(n, seed=0, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    return (0.5 + spread * torch.randn(n, 1, 8, 8, generator=g)).clamp(0.05, 0.95)


def affine(classes=10, seed=1, shared=0.0):
    """A random affine model; `shared` adds the same vector (times `shared`) to every class weight."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, 64, generator=g)
    return Affine(w + shared * torch.randn(64, generator=g), torch.randn(classes, generator=g))


def exact_affine_distance(model, x):
    """Distance to the nearest decision boundary of an affine model, in float64 from W and b alone."""
    w, b = model.w.detach().double(), model.b.detach().double()
    logits = x.flatten(1).double() @ w.T + b
    i = logits.argmax(1)
    gaps = logits.gather(1, i[:, None]) - logits
    norms = (w[i][:, None, :] - w[None]).norm(dim=2)
    ratio = gaps / norms
    ratio[torch.arange(len(x)), i] = math.inf
    return ratio.min(1).values.float()


def assert_verified(model, x, b, y):
    ok = b.success
    assert (model(b.points[ok]).argmax(1) != y[ok]).all()  # every successful point flips
    assert torch.allclose((b.points[ok] - x[ok]).flatten(1).norm(dim=1), b.distance[ok], atol=1e-5)
    assert (b.distance[ok] <= b.eps[ok] + 1e-5).all()  # and lies within its ε
    assert not ok.any() or (b.points[ok].min() >= 0 and b.points[ok].max() <= 1)
    assert b.points[~ok].isnan().all() and b.distance[~ok].isnan().all() and b.eps[~ok].isnan().all()


# ---------------------------------------------------------------- Etmann's ρ: closed forms

def test_binary_linear_radius_is_exact_within_rtol():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, generator=g)
    z -= z.mean()
    model = Affine(torch.stack([z / 2, -z / 2]), torch.zeros(2))
    x = interior_images(16)
    rho = (x.flatten(1) @ z).abs() / z.norm()
    b = boundary.boundary_search(model, x, **ETMANN)
    assert b.success.all()
    assert (b.distance >= rho * (1 - 1e-4)).all()  # a verified adversarial point is never closer than ρ
    assert (b.distance <= rho * 1.01 + 1e-6).all()


@pytest.mark.parametrize("shared", [0.0, 3.0])
def test_multiclass_affine_radius_within_2_percent_and_never_below(shared):
    model = affine(shared=shared)
    x = interior_images(32, seed=2)
    exact = exact_affine_distance(model, x)
    assert (exact > 1e-3).all() and (exact < 0.5).all()  # boundaries well inside the [0,1] box
    assert torch.allclose(boundary.linearized_robustness(model, x), exact, rtol=1e-4)
    b = boundary.boundary_search(model, x, **{**ETMANN, "rtol": 0.02})
    assert b.success.all()
    assert_verified(model, x, b, model(x).argmax(1))
    assert (b.distance >= exact * (1 - 1e-4)).all()
    assert ((b.distance - exact) / exact).max() < 0.02
    assert (b.lower <= exact * (1 + 1e-4)).all()  # PGD is exact on affine models: a failed radius is below ρ


def test_untargeted_alone_is_an_upper_bound():
    model = affine()
    x = interior_images(32, seed=2)
    b = boundary.boundary_search(model, x, **{**ETMANN, "toward_nearest": False})
    assert (b.distance[b.success] >= exact_affine_distance(model, x)[b.success] * (1 - 1e-4)).all()


def scaled_affine(seed=7, classes=10):
    """Affine classes with weight norms from 0.1 to 10 and spread biases: the class CE-PGD heads for (large
    softmax share) is often not the nearest boundary (small gap / ‖∇ gap‖), so a search must target ρ̃'s class."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, 64, generator=g) * torch.logspace(-1, 1, classes)[:, None]
    return Affine(w, 3 * torch.randn(classes, generator=g))


@pytest.mark.parametrize("model", [affine(), affine(shared=3.0), scaled_affine()], ids=["plain", "shared", "scaled"])
def test_default_arguments_find_the_exact_affine_distance_within_rtol(model):
    x = interior_images(64, seed=7)
    exact = exact_affine_distance(model, x)
    b = boundary.boundary_search(model, x)  # every argument at its default: the accurate search
    assert b.success.all()
    assert_verified(model, x, b, model(x).argmax(1))
    rel = (b.distance - exact) / exact
    assert rel.min() >= -1e-4  # never below the exact distance: every point is verified
    bound = 1 / (1 - 0.01) - 1  # distance ≤ ρ/(1 − rtol) at the default rtol 0.01
    assert rel.median() <= bound and rel.max() <= bound


def test_default_arguments_on_a_biased_binary_model():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(64, generator=g)
    model = Affine(torch.stack([z / 2, -z / 2]), torch.tensor([0.4, -0.4]))
    x = interior_images(32, seed=4)
    exact = ((x.flatten(1) @ z) + 0.8).abs() / z.norm()  # |w·x + b| / ‖w‖ with w = z, b = 0.8
    b = boundary.boundary_search(model, x)
    assert b.success.all()
    rel = (b.distance - exact) / exact
    assert rel.min() >= -1e-4 and rel.max() <= 1 / (1 - 0.01) - 1


def test_misclassified_label_has_radius_zero():
    model = affine(classes=2)
    x = interior_images(4)
    wrong = 1 - model(x).argmax(1)
    b = boundary.boundary_search(model, x, wrong, **ETMANN)
    assert b.success.all() and (b.distance == 0).all() and torch.equal(b.points, x)


# ---------------------------------------------------------------- Wang's ε-list search

@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = build("small_cnn", 10, 1, 8, width=4).eval()
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    return model, x, model(x).argmax(1)


def test_eps_list_points_flip_lie_within_their_eps_and_refine_only_shortens(net):
    model, x, y = net
    b = boundary.boundary_search(model, x, y, eps_list=[0.1, 0.3, 1.0, 3.0], steps=10, **boundary.WANG)
    assert b.success.float().mean() > 0.9
    assert_verified(model, x, b, y)
    raw = boundary.boundary_search(model, x, y, eps_list=[0.1, 0.3, 1.0, 3.0], steps=10,
                                  **{**boundary.WANG, "refine_steps": 0})
    assert torch.equal(raw.success, b.success) and torch.equal(raw.eps[b.success], b.eps[b.success])
    assert (b.distance[b.success] <= raw.distance[b.success] + 1e-6).all()
    bis = boundary.boundary_search(model, x, y, eps_list=[0.1, 0.3, 1.0, 3.0], steps=10,
                                  **{**boundary.WANG, "bisect_steps": 6})
    assert_verified(model, x, bis, y)
    assert (bis.distance[b.success] <= b.distance[b.success] + 1e-6).all()  # bisection never moves away


def test_wang_preset_is_ce_pgd_over_the_list_without_bisection(net, monkeypatch):
    model, x, y = net
    losses = []
    pgd = attacks.pgd

    def spy(*args, **kw):
        losses.append(kw.get("loss_fn"))
        return pgd(*args, **kw)

    monkeypatch.setattr(attacks, "pgd", spy)
    eps_list = [0.1, 0.3, 1.0, 3.0]
    b = boundary.boundary_search(model, x, y, eps_list=eps_list, steps=10, **boundary.WANG)
    assert all(fn is None for fn in losses) and len(losses) <= len(eps_list)  # CE, one untargeted run per ε
    assert set(b.eps[b.success].tolist()) <= set(eps_list)  # no bisection: every kept radius is from the list


def test_failures_are_flagged_nan(net):
    model, x, y = net
    b = boundary.boundary_search(model, x, y, eps_list=[1e-4], steps=3, bisect_steps=3)
    assert (~b.success).sum() > 0
    assert_verified(model, x, b, y)
    assert boundary.boundary_stats(b)["success_rate"] == pytest.approx(b.success.float().mean().item())


def test_absolute_steps_and_smallest_flipping_eps(net, monkeypatch):
    model, x, y = net
    calls, pgd = [], attacks.pgd

    def spy(*args, **kw):
        calls.append((float(kw["eps"][0]), float(kw["step_size"][0]), kw["steps"], len(args[1])))
        return pgd(*args, **kw)

    monkeypatch.setattr(attacks, "pgd", spy)
    eps_list = [0.05, 0.2, 0.8, 3.2]
    b = boundary.boundary_search(model, x, y, eps_list=eps_list, steps=8, **{**boundary.WANG, "refine_steps": 0})
    assert len(calls) >= 2  # the spy sees the search's attacks
    for eps, step, steps, _ in calls:
        assert step == pytest.approx(2.5 * eps / 8) and steps == 8  # absolute, not ∝ ε² (reference bug)
    assert [c[3] for c in calls] == sorted((c[3] for c in calls), reverse=True)  # only images not yet crossed
    for i, e in enumerate(eps_list[1:], 1):  # anything kept at ε_i did not cross at ε_{i−1}
        rows = (b.eps == e).nonzero().flatten()
        if len(rows):
            prev = pgd(model, x[rows], y[rows], eps=eps_list[i - 1], step_size=2.5 * eps_list[i - 1] / 8, steps=8,
                       random_start=False)
            assert (model(prev).argmax(1) == y[rows]).all()
            assert (b.lower[rows] == eps_list[i - 1]).all()


def test_bad_arguments_are_clear_errors(net):
    model, x, y = net
    with pytest.raises(ValueError, match="increasing"):
        boundary.boundary_search(model, x, y, eps_list=[1.0, 0.5])
    with pytest.raises(ValueError, match="loss"):
        boundary.boundary_search(model, x, y, eps_list=[1.0], loss="hinge")
