"""Deletion curves: ours (lib.faithfulness.curves) against Quantus' PixelFlipping, same model, maps and baseline.

    .venv/bin/python benchmarks/bench_faithfulness.py

small_cnn width 16 with seeded random weights, 64 images 28×28, 16 steps (49 pixels a step), softmax output,
baseline 0.286 (Fashion-MNIST's mean). Minimum over 3 interleaved repeats, 1 thread; prints one table row.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from lib import faithfulness as F
from lib import models


def main() -> None:
    import quantus

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = models.build("small_cnn", 10, 1, 28, width=16).eval()
    x, phi = torch.rand(64, 1, 28, 28), torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    steps, value = 16, 0.286
    metric = quantus.PixelFlipping(features_in_step=784 // steps, perturb_baseline=value, abs=False,
                                   normalise=False, disable_warnings=True, display_progressbar=False)
    ours_t, theirs_t = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        ours = F.curves(net, x, y, F.order(phi), baseline=torch.full((1, 1, 1, 1), value), steps=steps)["deletion"]
        ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = np.array(metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=phi.numpy(), softmax=True,
                                 device="cpu", batch_size=64))
        theirs_t.append(time.perf_counter() - t0)
    n = min(theirs.shape[1], steps)
    diff = np.abs(theirs[:, :n] - ours[:, 1:n + 1].numpy()).max()
    print(f"| deletion curve, 64 images, {steps} steps | ours {1e3 * min(ours_t):.0f} ms | quantus PixelFlipping "
          f"{1e3 * min(theirs_t):.0f} ms | ratio {min(theirs_t) / min(ours_t):.1f} | max |Δ| {diff:.1e} |")


if __name__ == "__main__":
    main()
