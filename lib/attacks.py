"""Projected gradient descent in [0,1] pixel space, per example, in L2 or L∞.

`pgd` is the one optimisation loop of robinterp: adversarial training, evaluation, boundary
search, representation inversion and class generation all call it, the last two through
`loss_fn`.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from lib.data import check_images
from lib.models import eval_mode

NORMS = ("l2", "linf")
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None, *, eps, step_size, steps: int,
        norm: str = "l2", random_start: bool = True, targeted: bool = False, loss_fn: LossFn | None = None,
        generator: torch.Generator | None = None, delta0: torch.Tensor | None = None,
        autocast: torch.dtype | None = None, snapshot: Callable[[int, torch.Tensor], None] | None = None
        ) -> torch.Tensor:
    """Maximise a per-example loss over the ε-ball around x; return x + δ in [0,1].

    x: (N,C,H,W) in [0,1]; y: (N,) labels (the target class when `targeted`).
    eps, step_size: floats or (N,) tensors, in pixel units of the chosen norm.
    loss_fn(model, x_adv, y) -> (N,) loss to *maximise*; default CE, or -CE when targeted.
    delta0: a fixed starting perturbation (projected), e.g. noise shared across DDP ranks.
    snapshot(t, x_adv): called with the detached iterate after t = 0, 1, …, steps steps (one run gives a
    whole trajectory, e.g. generation images at several budgets).
    The attack runs in eval mode; the model's modes are restored afterwards.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    eps_t = _per_example(eps, x, "eps")
    step_t = _per_example(step_size, x, "step_size")
    for name, value, t in (("eps", eps, eps_t), ("step_size", step_size, step_t)):
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):  # NaN < 0 is False: test finiteness first
            raise ValueError(f"pgd: {name} must be a finite number >= 0, got {value}")
    if not hasattr(steps, "__index__") or steps < 0:
        raise ValueError(f"pgd: steps must be an integer >= 0, got {steps!r}")
    check_images(x)
    if not torch.is_tensor(eps) and eps == 0:
        if snapshot is not None:
            for t in range(steps + 1):
                snapshot(t, x.detach().clone())
        return x.detach().clone()
    if loss_fn is None:
        loss_fn = _neg_ce if targeted else _ce
    x = x.detach()
    if delta0 is not None:
        delta = delta0.detach().to(x)
    elif random_start:
        delta = random_perturbation(x, eps_t, norm, generator=generator)
    else:
        delta = torch.zeros_like(x)
    delta = _project(x, delta, eps_t, norm)
    amp = torch.autocast(x.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    if snapshot is not None:
        snapshot(0, (x + delta).detach())
    with eval_mode(model), torch.enable_grad():
        for t in range(steps):
            delta.requires_grad_(True)
            with amp:
                loss = loss_fn(model, x + delta, y).float().sum()
            (grad,) = torch.autograd.grad(loss, delta)
            delta = _project(x, delta.detach() + step_t * _direction(grad, norm), eps_t, norm)
            if snapshot is not None:
                snapshot(t + 1, (x + delta).detach())
    return (x + delta).detach()


def random_perturbation(x: torch.Tensor, eps, norm: str = "l2", *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """δ uniform in the ε-ball (L∞) or uniform in the L2 ball; same shape as x."""
    eps_t = _per_example(eps, x, "eps")
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps_t
    if norm != "l2":
        raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    d = x[0].numel()
    r = torch.rand((len(x), 1, 1, 1), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return g / _l2(g).clamp_min(1e-12) * r * eps_t


def _ce(model, x, y):
    return F.cross_entropy(model(x), y, reduction="none")


def _neg_ce(model, x, y):
    return -F.cross_entropy(model(x), y, reduction="none")


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _per_example(v, x: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if t.ndim == x.ndim:  # already (N,1,1,1)
        t = t.flatten()
    if t.ndim == 0:
        t = t.expand(len(x))
    if t.shape != (len(x),):
        raise ValueError(f"{name} must be a number or a ({len(x)},) tensor, got shape {tuple(t.shape)}")
    return t.view(-1, *([1] * (x.ndim - 1)))


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / _l2(grad).clamp_min(1e-12)


def _project(x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project onto the ε-ball, then into [0,1]; the box step never increases the norm."""
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    else:
        delta = delta * torch.clamp(eps / _l2(delta).clamp_min(1e-12), max=1.0)
    return (x + delta).clamp(0, 1) - x


def apgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "l2",
         steps: int = 50, targets: int = 9, restarts: int = 1, seed: int = 0) -> torch.Tensor:
    """AutoAttack's two gradient components: APGD-CE, then APGD-T (targeted DLR loss against the
    `targets` runner-up classes) on the images APGD-CE left correctly classified (Croce & Hein 2020).

    Runs torchattacks' port of the reference code; x: (N,C,H,W) in [0,1], y: (N,) labels. Returns
    x_adv in [0,1] with ‖x_adv − x‖ ≤ eps; an image neither attack fooled comes back unchanged. Seeded
    by `seed`; the global torch RNG state is restored afterwards (torchattacks reseeds it).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    if eps < 0 or steps < 1:
        raise ValueError(f"eps must be >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    check_images(x)
    ta = _torchattacks()
    lib_norm = {"l2": "L2", "linf": "Linf"}[norm]
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    x, y = x.detach(), y.detach()
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        xa = ta.APGD(model, norm=lib_norm, eps=eps, steps=steps, n_restarts=restarts, seed=seed, loss="ce")(x, y)
        with torch.no_grad():
            left = (model(xa).argmax(1) == y).nonzero().flatten()
        if targets > 0 and len(left):
            # torchattacks attacks the ranks 2 .. n_classes of the logits: n_classes = targets + 1
            t = ta.APGDT(model, norm=lib_norm, eps=eps, steps=steps, n_restarts=restarts, seed=seed,
                         n_classes=targets + 1)
            xa[left] = t(x[left], y[left])
    return xa.detach()


def _torchattacks():
    try:
        import torchattacks
    except ImportError as e:
        raise ImportError("APGD needs torchattacks: run `pip install --no-deps torchattacks==3.5.1` (`make setup` "
                          "does; --no-deps because it pins requests==2.25.1, which it never imports).") from e
    return torchattacks
