"""Deletion and insertion curves (Petsiuk et al. 2018; Samek et al.'s pixel flipping): does the map rank the
pixels the model uses?

Pixels are ordered by the signed map Σ_c φ, most evidence for the class first (ties by index), and in `steps`
equal steps the first ⌈j·P/steps⌉ are replaced by the baseline (deletion) or revealed on the baseline image
(insertion); the curve is F_target (softmax probability by default) at fractions j/steps, j = 0..steps, and
its area the trapezoid over [0, 1]. Quantus' PixelFlipping gives the same deletion curve without the j = 0
point, and its area is the unnormalised trapezoid (tests/test_faithfulness.py).
"""

from __future__ import annotations

import torch

from lib.device import exact_fp32
from lib.path_methods import auto_batch_size, target_output

BASELINES = ("mean", "black")


def baseline_image(kind: str, reference: torch.Tensor) -> torch.Tensor:
    """(1,C,1,1) pixel values a removed pixel takes: "mean" = per-channel mean of `reference` (N,C,H,W) in [0,1],
    e.g. train images; "black" = 0."""
    if kind == "mean":
        return reference.float().mean((0, 2, 3)).view(1, -1, 1, 1)
    if kind == "black":
        return torch.zeros(1, reference.shape[1], 1, 1, device=reference.device)
    raise ValueError(f"unknown faithfulness baseline {kind!r}; use one of {', '.join(BASELINES)}")


def order(phi: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) map → (N, H·W) pixel indices, most evidence (largest Σ_c φ) first; ties in index order."""
    return torch.argsort(-phi.sum(1).flatten(1), dim=1, stable=True)


def random_order(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N, H·W) seeded random pixel orders, the same for every model given the same x and seed (paired)."""
    g = torch.Generator().manual_seed(seed)
    return torch.argsort(torch.rand(len(x), x.shape[2] * x.shape[3], generator=g), dim=1).to(x.device)


@exact_fp32
def curves(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, ranking: torch.Tensor, *,
           baseline: torch.Tensor, steps: int = 20, output: str = "softmax",
           batch_size: int | None = None) -> dict:
    """{"deletion", "insertion"}: (N, steps+1) F_target at fractions 0, 1/steps, .., 1 of pixels removed /
    revealed in the order `ranking` ((N, H·W), e.g. `order(phi)`). x: (N,C,H,W) in [0,1]; baseline (1,C,1,1)."""
    n, c, h, w = x.shape
    p = h * w
    counts = [-(-j * p // steps) for j in range(steps + 1)]            # ⌈j·P/steps⌉
    rank = torch.empty_like(ranking)
    rank.scatter_(1, ranking, torch.arange(p, device=x.device).expand(n, p))  # position of each pixel in the order
    k = torch.tensor(counts, device=x.device)
    gone = (rank[:, None, :] < k[None, :, None]).view(n, steps + 1, 1, h, w)  # (N, steps+1, 1, H, W)
    x5, b5 = x.float()[:, None], baseline.float().expand(1, c, 1, 1)[:, None]
    out = {}
    bs = batch_size or max(1, auto_batch_size(model, x) // (steps + 1))
    for name, keep_x in (("deletion", ~gone), ("insertion", gone)):
        vals = []
        for i in range(0, n, bs):
            z = torch.where(keep_x[i:i + bs], x5[i:i + bs], b5).flatten(0, 1)
            t = target[i:i + bs].repeat_interleave(steps + 1)
            vals.append(target_output(model, z, t, output).view(-1, steps + 1))
        out[name] = torch.cat(vals)
    return out


def auc(curve: torch.Tensor) -> torch.Tensor:
    """(N, K+1) curve at fractions 0..1 → (N,) trapezoid area over [0, 1]."""
    k = curve.shape[1] - 1
    return (curve[:, 1:] + curve[:, :-1]).sum(1) / (2 * k)


def scores(model, x, target, maps: dict, *, baseline: torch.Tensor, steps: int = 20, seed: int = 0,
           output: str = "softmax") -> dict:
    """method -> {"deletion", "insertion", "deletion_gain", "insertion_gain"}: (N,) areas, gains over a seeded
    random order on the same model (deletion: random − map; insertion: map − random; higher = more faithful).
    NaN rows of a map (no boundary point) give NaN."""
    rnd = curves(model, x, target, random_order(x, seed), baseline=baseline, steps=steps, output=output)
    ref = {k: auc(v) for k, v in rnd.items()}
    out = {}
    for name, phi in maps.items():
        bad = phi.flatten(1).isnan().any(1)
        a = {k: auc(v) for k, v in curves(model, x, target, order(torch.nan_to_num(phi)), baseline=baseline,
                                          steps=steps, output=output).items()}
        row = {**a, "deletion_gain": ref["deletion"] - a["deletion"],
               "insertion_gain": a["insertion"] - ref["insertion"]}
        out[name] = {k: torch.where(bad, torch.nan, v) for k, v in row.items()}
    return out
