"""Our `lib.fid.frechet_distance` (two symmetric eigendecompositions) vs pytorch-fid's
`calculate_frechet_distance` (scipy `sqrtm`) on 2048-d statistics, in one run.

    .venv/bin/python benchmarks/bench_fid.py [--repeats 3] [--threads 2]

Activations mimic Inception pool features (non-negative, correlated): relu(z·W + b) with
z ~ N(0, I). "full rank": 10,000 samples per set; "rank-deficient": 1,000 samples (< 2048 dims),
where sqrtm is ill-conditioned. Reports the minimum wall time over interleaved repeats, the time ratio
and the relative difference of the two values.
"""

from __future__ import annotations

import argparse
import platform
import time
from importlib import metadata

import numpy as np
import scipy
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from lib.fid import frechet_distance


def stats(rng, n, d, w, shift):
    z = rng.standard_normal((n, d)).astype(np.float32)
    a = np.maximum(z @ w + shift, 0).astype(np.float64)
    return a.mean(0), np.cov(a, rowvar=False)


def timed(fns, args, repeats):
    """Minimum wall time of each fn(*args) over `repeats` interleaved rounds (robust to a shared, busy CPU)."""
    times, values = [[] for _ in fns], [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            values[i] = fn(*args)
            times[i].append(time.perf_counter() - t)
    return [min(t) for t in times], values


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dims", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="BLAS/torch threads (default: library default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(a.threads)
        except ImportError:
            pass
    rng = np.random.default_rng(0)
    d = a.dims
    w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, numpy "
          f"{np.__version__}, scipy {scipy.__version__}, pytorch-fid {metadata.version('pytorch-fid')}, "
          f"d={d}, min of {a.repeats} interleaved repeats")
    print("case | ours (s) | pytorch-fid (s) | time ratio ours/theirs | value ours | value theirs | rel diff")
    for case, n in (("full rank", 10_000), ("rank-deficient", 1_000)):
        s1, s2 = stats(rng, n, d, w, 0.0), stats(rng, n, d, w, 0.1)
        (t_ours, t_ref), (v_ours, v_ref) = timed([frechet_distance, calculate_frechet_distance], (*s1, *s2),
                                                  a.repeats)
        rel = abs(v_ours - v_ref) / abs(v_ref)
        print(f"{case} (n={n}) | {t_ours:.2f} | {t_ref:.2f} | {t_ours / t_ref:.3f} | {v_ours:.6f} | "
              f"{v_ref:.6f} | {rel:.1e}")


if __name__ == "__main__":
    main()
