"""Sharded dataset-wide stages give the single-process result, with gloo on CPU."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lib import attributions, distributed, models


def test_shard_bounds_cover_everything_once():
    for n in (0, 1, 7, 10, 101):
        for world in (1, 2, 3, 8):
            blocks = [distributed.shard_bounds(n, r, world) for r in range(world)]
            assert blocks[0][0] == 0 and blocks[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            sizes = [hi - lo for lo, hi in blocks]
            assert max(sizes) - min(sizes) <= 1


def _stage(x, target):
    torch.manual_seed(0)
    model = models.build("small_cnn", 10, 1, 8, width=4).eval()
    return distributed.map_sharded(lambda xs, ts: attributions.integrated_gradients(model, xs, ts, steps=8), x, target)


def _worker(rank, world, port, x, target, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = _stage(x, target)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_attributions_equal_single_process(tmp_path):
    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    target = torch.arange(7) % 10
    single = _stage(x, target)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, port, x, target, tmp_path / "out.pt"), nprocs=2, join=True)
    sharded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.allclose(single, sharded, atol=1e-6)
