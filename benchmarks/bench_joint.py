"""Joint training throughput: N default small_cnn models stepped together (lib.joint) vs one after another
(lib.train's step), per mode, on this machine.

    python benchmarks/bench_joint.py                         # N = 1, 3, 6, 12; standard, pgd, gradnorm
    python benchmarks/bench_joint.py --n 6 --modes pgd --layouts nchw channels_last --threads 1 2

Default profile shapes (read from profiles/default.yaml): small_cnn, 28×28×1, batch 128, PGD (L2), gradnorm's double
backward; the one-after-another models are placed as lib.train places them (channels-last on CPU).
Random images and labels (the step costs the same on any data). Each cell: `--warmup` steps, then the median
of `--repeats` timings of `--steps` steps; sequential and joint interleaved in each repeat, so a load change
hits both. Writes benchmarks/results/joint-<host>.json; `uptime` load before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib import joint, models, profiles, train  # noqa: E402
from lib.device import resolve_device  # noqa: E402

KEYS = {"standard": "standard", "pgd": "pgd_0.5", "gradnorm": "gradnorm_1"}


def _members(cfg: dict, n: int, device) -> list[SimpleNamespace]:
    out = []
    for i in range(n):
        torch.manual_seed(i)
        m = models.place(models.build("small_cnn", 10, 1, 28, **cfg["arch_kwargs"]), device)  # as lib.train places it
        opt = torch.optim.SGD(m.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        out.append(SimpleNamespace(model=m, opt=opt, cfg={**cfg, "seed": i}, out_dir=Path(f"m{i}"),
                                   scaler=torch.amp.GradScaler(device.type, enabled=False)))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_mode(mode: str, n: int, device, layout: str, steps: int, warmup: int, repeats: int) -> dict:
    """ms per step of n models: sequential (train._train_step each) and joint (joint._step once)."""
    cfg = profiles.model_config(profiles.load("default"), KEYS[mode])
    b = cfg["batch_size"]
    group = _members(cfg, n, device)
    net = joint.JointCNN([m.model for m in group], channels_last=layout == "channels_last")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n * b, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (n * b,), generator=gen).to(device)

    def sequential():
        for k, m in enumerate(group):
            g = torch.Generator(device=device).manual_seed(k)
            train._train_step(m.model, m.model, x[k * b:(k + 1) * b], y[k * b:(k + 1) * b], m.cfg, m.opt, m.scaler,
                              None, g, 0, 1)

    def together():
        gens = [torch.Generator(device=device).manual_seed(k) for k in range(n)]
        joint._step(net, group, x, y, gens, None)

    def clock(fn, k):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        _sync(device)
        return (time.perf_counter() - t0) / k * 1000

    clock(sequential, warmup), clock(together, warmup)
    seq, jnt = [], []
    for _ in range(repeats):
        seq.append(clock(sequential, steps))
        jnt.append(clock(together, steps))
    s, j = statistics.median(seq), statistics.median(jnt)
    return {"mode": mode, "n": n, "layout": layout, "threads": torch.get_num_threads(), "sequential_ms": s,
            "joint_ms": j, "speedup": s / j, "seq_all": seq, "joint_all": jnt}


def _layers(x, a, b, groups):
    import torch.nn.functional as F

    z = F.max_pool2d(F.relu(F.conv2d(x, a, None, padding=1, groups=groups)), 2)
    F.max_pool2d(F.relu(F.conv2d(z, b, None, padding=1, groups=groups)), 2).sum().backward()


def _probe(n: int, batch: int, calls: int) -> list[dict]:
    w1, w2 = torch.randn(n, 16, 1, 3, 3, requires_grad=True), torch.randn(n, 32, 16, 3, 3, requires_grad=True)
    xs = torch.rand(n, batch, 1, 28, 28)
    grouped = xs.transpose(0, 1).reshape(batch, n, 28, 28)
    variants = {"sequential": lambda: [_layers(xs[k], w1[k], w2[k], 1) for k in range(n)],
                "grouped_nchw": lambda: _layers(grouped, w1.flatten(0, 1), w2.flatten(0, 1), n),
                "grouped_channels_last": lambda: _layers(grouped.contiguous(memory_format=torch.channels_last),
                                                         w1.flatten(0, 1), w2.flatten(0, 1), n)}
    rows = []
    for name, fn in variants.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rows.append({"n": n, "variant": name, "ms": (time.perf_counter() - t0) / calls * 1000,
                     "load": os.getloadavg()[0]})
        print(f"layers N={n:2d} {name:22s} {rows[-1]['ms']:8.0f} ms (load {rows[-1]['load']:.1f})", flush=True)
    return rows


def layer_probe(ns=(3, 6, 12), batch: int = 128, calls: int = 3) -> list[dict]:
    """The two conv-relu-pool layers of N small_cnn models, forward + backward: N grouped (NCHW and channels_last)
    vs N one after another; ms per call."""
    return [r for n in ns for r in _probe(n, batch, calls)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1, 3, 6, 12])
    p.add_argument("--modes", nargs="+", default=list(KEYS))
    p.add_argument("--layouts", nargs="+", default=["channels_last"], choices=["nchw", "channels_last"])
    p.add_argument("--threads", type=int, nargs="+", default=[len(os.sched_getaffinity(0))])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--layers", action="store_true", help="only the grouped-convolution layer probe (CPU)")
    a = p.parse_args(argv)
    if a.layers:
        print(json.dumps(layer_probe(), indent=1))
        return 0
    device = resolve_device(a.device)
    rows = []
    load0 = os.getloadavg()
    for threads in a.threads:
        torch.set_num_threads(threads)
        for mode in a.modes:
            for n in a.n:
                for layout in a.layouts:
                    r = time_mode(mode, n, device, layout, a.steps, a.warmup, a.repeats)
                    r["load"] = os.getloadavg()[0]
                    rows.append(r)
                    print(f"{mode:8s} N={n:2d} {layout:13s} threads={threads}: sequential {r['sequential_ms']:7.1f} ms"
                          f"  joint {r['joint_ms']:7.1f} ms  speedup {r['speedup']:.2f}x  (load {r['load']:.2f})",
                          flush=True)
    res = {"device": str(device), "host": socket.gethostname(), "torch": torch.__version__, "load_before": load0,
           "load_after": os.getloadavg(), "cpus": len(os.sched_getaffinity(0)), "rows": rows}
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"joint-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
