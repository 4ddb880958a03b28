"""Throughput and FLOP utilisation of the heavy workloads, against their own bounds, in one run.

    python benchmarks/bench_throughput.py                          # small_cnn, Fashion-MNIST shapes, CPU
    python benchmarks/bench_throughput.py --arch resnet18_cifar --shape 3,32,32 --device cuda --amp bf16

For each workload it prints images/s, FLOPs per image (counted with torch's flop formulas on one
call, not estimated) and the utilisation against the device's measured matmul peak. Adversarial
training with PGD-k is compared with its bound: plain forward+backward throughput / (k+1); a ratio
near 1 means the attack loop adds no overhead beyond its k extra passes.
Results go to benchmarks/results/throughput-<device>-<arch>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lib import attacks, attributions, models, visualize  # noqa: E402
from lib.device import resolve_device  # noqa: E402


def timed(fn, repeats: int, device) -> float:
    """Best-of-`repeats` seconds of fn() after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


class _FlopCount(TorchDispatchMode):
    """Counts matmul/conv FLOPs with torch's own formulas (flop_registry). Unlike FlopCounterMode it
    installs no module hooks, which break torch.autograd.grad on leaf inputs (our attacks and IG)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def flops(fn) -> int:
    with _FlopCount() as counter:
        fn()
    return counter.total


def matmul_peak(device, dtype, n: int = 4096 if torch.cuda.is_available() else 2048) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, 5, device)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--width", type=int, default=16, help="small_cnn width")
    p.add_argument("--shape", default="1,28,28")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--pgd-steps", type=int, default=5)
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast for training+attack steps")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    c, h, w = (int(v) for v in a.shape.split(","))
    kw = {"width": a.width} if a.arch == "small_cnn" else {}
    torch.manual_seed(0)
    model = models.build(a.arch, a.classes, c, h, **kw).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.amp]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(a.batch, c, h, w, device=device)
    y = torch.randint(0, a.classes, (a.batch,), device=device)
    k = a.pgd_steps

    def train_step(inp):
        model.train()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(inp).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def adv_step():
        xa = attacks.pgd(model, x, y, eps=1.0, step_size=0.25, steps=k, autocast=amp)
        train_step(xa)

    n = a.batch
    bg = torch.rand(32, c, h, w, device=device)
    workloads = {
        "train fwd+bwd (standard)": (lambda: train_step(x), n),
        f"train PGD-{k} (adversarial)": (adv_step, n),
        "IG, 50 steps (fp32)": (
            lambda: attributions.integrated_gradients(model.eval(), x, y, steps=50, batch_size=512), n),
        "expected gradients, 50 samples": (lambda: attributions.expected_gradients(model.eval(), x, y, background=bg,
                                                                                  samples=50), n),
        "inversion, 20 iterations": (lambda: visualize.invert_representation(
            model, x, x.flip(0), eps=1000.0, step_size=1.0, steps=20, progress=False), n),
        "class generation, 20 iterations": (lambda: visualize.generate_class_images(
            model, x, y, eps=30.0, step_size=0.5, steps=20, progress=False), n),
    }
    peak_dtype = amp or torch.float32
    peak = matmul_peak(device, peak_dtype)
    rows = []
    for name, (fn, images) in workloads.items():
        sec = timed(fn, a.repeats, device)
        f = flops(fn) / images
        rows.append({"workload": name, "images_per_s": images / sec, "gflop_per_image": f / 1e9,
                     "utilisation": f * images / sec / peak})
    plain, adv = rows[0]["images_per_s"], rows[1]["images_per_s"]
    bound = plain / (k + 1)
    result = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "arch": a.arch, "shape": [c, h, w], "batch": a.batch, "amp": a.amp, "channels_last": a.channels_last,
        "matmul_peak_gflops": peak / 1e9, "peak_dtype": str(peak_dtype), "rows": rows,
        "adversarial_bound_images_per_s": bound, "adversarial_ratio_to_bound": adv / bound,
    }
    print(f"{result['device_name']} ({device}), {a.arch} {a.shape}, batch {a.batch}, amp {a.amp}; "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s ({peak_dtype})")
    print("| workload | images/s | GFLOP/image | utilisation |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['images_per_s']:.0f} | {r['gflop_per_image']:.4f} | {r['utilisation']:.1%} |")
    print(f"PGD-{k} training: {adv:.0f} img/s vs bound {bound:.0f} img/s (fwd+bwd / {k + 1}): "
          f"ratio {adv / bound:.2f}")
    out = Path(__file__).parent / "results" / f"throughput-{device.type}-{a.arch}-{a.amp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
