"""Our `lib.fid.kid` vs torch-fidelity's `kid_features_to_metric` (and vs our previous `** 3` kernel), one run.

    .venv/bin/python benchmarks/bench_kid.py [--repeats 3] [--dims 96] [--subsets 100] [--subset-size 300]

The shape of notebook 06 on `default`: a generated set of 600 images against the 10,000 test images, in a
96-d domain feature space, 100 subsets of 300 (torch-fidelity's subset count). Reports the minimum wall time
over interleaved repeats, the ratio and the difference of the values (the same subsets: RandomState(seed)).
"""

from __future__ import annotations

import argparse
import platform
import time
from importlib import metadata

import numpy as np
import torch

from lib import fid


def _old_mmd2(x, y):  # the kernel as it was before `fid._cubic`: numpy's pow
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    same = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(same - 2 * kxy.sum() / (m * m))


def _old_kid(a, b, subsets, size, seed=0):
    rng = np.random.RandomState(seed)
    return float(np.mean([_old_mmd2(a[rng.choice(len(a), size, replace=False)],
                                    b[rng.choice(len(b), size, replace=False)]) for _ in range(subsets)]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dims", type=int, default=96)
    p.add_argument("--subsets", type=int, default=100)
    p.add_argument("--subset-size", type=int, default=300)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((args.dims, args.dims)) / args.dims ** 0.5
    a = np.maximum(rng.standard_normal((600, args.dims)) @ w + 0.3, 0)
    b = np.maximum(rng.standard_normal((10000, args.dims)) @ w, 0)
    runs = {"ours": lambda: fid.kid(a, b, subsets=args.subsets, subset_size=args.subset_size)["kid"],
            "ours before (** 3)": lambda: _old_kid(a, b, args.subsets, args.subset_size)}
    try:
        from torch_fidelity.metric_kid import kid_features_to_metric

        runs["torch-fidelity"] = lambda: kid_features_to_metric(
            torch.from_numpy(a), torch.from_numpy(b), kid_subsets=args.subsets, kid_subset_size=args.subset_size,
            rng_seed=0, verbose=False)["kernel_inception_distance_mean"]
    except ImportError:
        print("torch-fidelity is not installed (pip install --no-deps torch-fidelity): its row is left out")
    best, value = {k: float("inf") for k in runs}, {}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            value[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"torch-fidelity {metadata.version('torch-fidelity') if 'torch-fidelity' in runs else '-'}; "
          f"{args.subsets} subsets of {args.subset_size}, {args.dims}-d, 600 vs 10000 rows")
    print("| implementation | time (min of repeats) | ratio to ours | KID | diff to ours |")
    print("|---|---|---|---|---|")
    for k in runs:
        print(f"| {k} | {best[k] * 1e3:.0f} ms | {best[k] / best['ours']:.2f} | {value[k]:.6g} | "
              f"{abs(value[k] - value['ours']):.1e} |")


if __name__ == "__main__":
    main()
