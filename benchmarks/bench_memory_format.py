"""Channels-last vs contiguous (NCHW) models on CPU, one run: the case for `lib.models.place`.

    .venv/bin/python benchmarks/bench_memory_format.py [--repeats 3] [--threads 1]

Tasks, each timed as the minimum over interleaved repeats of a block of calls on seeded random weights:
- small_cnn width 8 (default's models), 28x28x1: a standard training step (batch 128), a PGD-3 training step
  (three input gradients, then the step), an input gradient (batch 150: notebook 04's inversion batch) and a
  forward pass (batch 500: an evaluation batch);
- resnet18_cifar, 32x32x3: a training step and an input gradient (batch 32).
The input stays NCHW (a model in channels-last order converts it at the first convolution, as `place` leaves it).
`agreement` is the largest |difference| of logits and input gradients between the two layouts.
"""

from __future__ import annotations

import argparse
import copy
import functools
import platform
import time

import torch
import torch.nn.functional as F

from lib import attacks, models


def _tasks(name, channels, size, batch, seed=0):
    torch.manual_seed(seed)
    base = models.build(name, 10, channels, size, width=8) if name == "small_cnn" else models.build(name, 10,
                                                                                                   channels, size)
    nets = {"NCHW": base, "channels-last": models.place(copy.deepcopy(base), "cpu")}
    x, y = torch.rand(batch, channels, size, size), torch.randint(0, 10, (batch,))
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.0) for k, m in nets.items()}  # lr 0: every call sees one model

    def train_step(k, pgd_steps=0):
        m = nets[k]
        xa = x if not pgd_steps else attacks.pgd(m, x, y, eps=0.5, step_size=0.4167, steps=pgd_steps)
        m.train()
        opts[k].zero_grad()
        F.cross_entropy(m(xa), y).backward()
        opts[k].step()
        m.eval()

    def input_grad(k):
        d = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(nets[k](d), y), d)[0]

    def forward(k):
        with torch.no_grad():
            return nets[k](x)

    for m in nets.values():
        m.eval()
    agree = max((nets["NCHW"](x) - nets["channels-last"](x)).abs().max().item(),
                (input_grad("NCHW") - input_grad("channels-last")).abs().max().item())
    return nets, {"train step": train_step, "PGD-3 train step": lambda k: train_step(k, 3),
                  "input gradient": input_grad, "forward": forward}, agree


def _time(fn, calls):
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# {platform.processor() or platform.machine()}, {a.threads} thread(s), torch {torch.__version__}, "
          f"min over {a.repeats} interleaved repeats")
    print("| model | task | batch | NCHW ms | channels-last ms | speed-up | agreement |\n|---|---|---|---|---|---|---|")
    plan = [("small_cnn", 1, 28, {"train step": 128, "PGD-3 train step": 128, "input gradient": 150, "forward": 500}),
            ("resnet18_cifar", 3, 32, {"train step": 32, "input gradient": 32})]
    for name, channels, size, batches in plan:
        for task, batch in batches.items():
            _, fns, agree = _tasks(name, channels, size, batch)
            calls = 20 if name == "small_cnn" else 3
            best = {k: float("inf") for k in ("NCHW", "channels-last")}
            for k in best:
                fns[task](k)  # warm-up
            for _ in range(a.repeats):
                for k in best:
                    best[k] = min(best[k], _time(functools.partial(fns[task], k), calls))
            print(f"| {name} | {task} | {batch} | {best['NCHW']:.1f} | {best['channels-last']:.1f} | "
                  f"{best['NCHW'] / best['channels-last']:.2f} | {agree:.1e} |", flush=True)


if __name__ == "__main__":
    main()
