"""BatchNorm over the global batch: two gloo ranks give the single-process result (CPU)."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lib import distributed


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bn_step(bn, x, w):
    """Loss Σ w·BN(x) plus a gradient-norm penalty (double backward); returns (out, ∇x, ∇weight, ∇bias)."""
    x = x.clone().requires_grad_(True)
    out = bn(x)
    loss = (out * w).sum()
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    (loss + gx.pow(2).sum()).backward()
    return out.detach(), gx.detach(), bn.weight.grad.clone(), bn.bias.grad.clone()


def _bn_worker(rank, world, port, x, w, out, plain):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        bn = torch.nn.BatchNorm2d(3)
        bn = bn if plain else distributed.global_batchnorm(torch.nn.Sequential(bn))[0]
        o, gx, gw, gb = _bn_step(bn, x[rank::world], w[rank::world])
        dist.all_reduce(gw)  # what DDP does with parameter gradients (sum; the loss is a sum here)
        dist.all_reduce(gb)
        result = {"out": o, "gx": gx, "gw": gw, "gb": gb, "rm": bn.running_mean, "rv": bn.running_var}
        torch.save(result, f"{out}{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("plain", [False, True])
def test_global_batchnorm_over_two_ranks_equals_one_process(tmp_path, plain):
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(6, 3, 4, 4, generator=gen) * 3 + 1, torch.randn(6, 3, 4, 4, generator=gen)
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    o, gx, gw, gb = _bn_step(bn, x, w)
    mp.spawn(_bn_worker, args=(2, _port(), x, w, tmp_path / "r", plain), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"r{r}", weights_only=True) for r in range(2)]
    got_o, got_gx = torch.empty_like(o), torch.empty_like(gx)
    for r, p in enumerate(parts):
        got_o[r::2], got_gx[r::2] = p["out"], p["gx"]
    same = [torch.allclose(a, b, atol=1e-5) for a, b in
            ((got_o, o), (got_gx, gx), (parts[0]["gw"], gw), (parts[0]["gb"], gb),
             (parts[0]["rm"], bn.running_mean), (parts[0]["rv"], bn.running_var))]
    # global statistics: forward, input gradient (incl. the double backward) and running stats equal;
    # per-rank BatchNorm (what DDP does without it) gets every one of them wrong
    assert all(same) if not plain else not any(same[:2])
