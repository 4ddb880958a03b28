"""Shard a dataset-wide stage (attributions over a test set, FID activations) across torchrun ranks.

    torchrun --nproc-per-node 4 my_stage.py      # inside: feats = distributed.map_sharded(fn, images)

Each rank computes a contiguous block of rows and every rank receives the whole result in the
original order, so the code after `map_sharded` is the same for one process and for N.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous block; block sizes differ by at most one."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def map_sharded(fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
    """fn(*xs) computed on row blocks across ranks and gathered on every rank, in order.

    xs: tensors with the same first dimension, split alike. Equals fn(*xs) for a row-wise fn.
    """
    rank, world = rank_world()
    if world == 1:
        return fn(*xs)
    bounds = [shard_bounds(len(xs[0]), r, world) for r in range(world)]
    lo, hi = bounds[rank]
    part = fn(*(x[lo:hi] for x in xs)).contiguous()
    padded = part.new_zeros((max(b - a for a, b in bounds), *part.shape[1:]))
    padded[:len(part)] = part
    blocks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded)  # all_gather needs equal sizes: pad, then trim
    return torch.cat([blk[:b - a] for blk, (a, b) in zip(blocks, bounds)])
