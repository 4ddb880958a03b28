"""Which device a run uses, and at which float32 precision. Imports nothing from lib.

Precision policy: Ampere and newer GPUs may run float32 matmuls and convolutions as TF32 (10-bit
mantissa, ~1e-3 relative error). That is a fair speed option for training (`allow_tf32(True)`), never
for a measurement: attributions, alignment, inversion, generation and FID activations run inside
`exact_fp32()` (a context manager and a decorator), which turns TF32 off and restores the setting.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch


def resolve_device(device) -> torch.device:
    """'auto' picks CUDA when present. Under torchrun, 'cuda' and 'cuda:N' give each rank GPU N + LOCAL_RANK
    (so 'cuda:0' means "this node's GPUs from 0"), never the same GPU for every rank."""
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but no CUDA GPU is visible; use --device cpu or auto.")
    if device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        first = int(device.partition(":")[2] or 0)
        index = first + int(os.environ["LOCAL_RANK"])
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"rank {os.environ['LOCAL_RANK']} needs GPU {index} ({device} + LOCAL_RANK) but only "
                               f"{torch.cuda.device_count()} are visible; start fewer processes per node.")
        device = f"cuda:{index}"
    return torch.device(device)


def tf32_state() -> tuple[bool, bool]:
    """(matmul, cuDNN convolution) TF32 flags as they are now."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@contextlib.contextmanager
def allow_tf32(flag: bool):
    """Within the block, float32 matmuls and convolutions may (True) or may not (False) use TF32."""
    before = tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(flag)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def exact_fp32(fn=None):
    """TF32 off: `with exact_fp32():` or `@exact_fp32` on a measurement's entry point."""
    if fn is None:
        return allow_tf32(False)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with allow_tf32(False):
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- a shared CPU

# OpenMP threads that wait at a barrier spin by default (libgomp: ~300k spins, a few ms, before sleeping), so on a
# CPU shared with other jobs every process burns its cores while waiting for the others' time slices
# (benchmarks/README.md, "A shared CPU"). PASSIVE makes idle threads sleep; KMP_BLOCKTIME is the same setting
# for Intel's OpenMP. Both are read once, when the OpenMP runtime loads (import torch), so they belong in the
# environment of a process before it starts: `quiet_openmp_env` is what a launcher adds for the processes it starts.
QUIET_OPENMP = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset, a cgroup cpuset or SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_cpu_threads(n: int | None = None) -> int:
    """torch's intra-op threads: `n`, or one per usable CPU (torch's default counts every CPU of the machine,
    even those the affinity mask forbids, and oversubscribes). Returns the number set."""
    n = n or usable_cpus()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def quiet_openmp_env(env: dict | None = None) -> dict:
    """The QUIET_OPENMP variables that `env` (default os.environ) does not set already: a user's choice stays.
    E.g. `os.environ.update(quiet_openmp_env())` before starting kernels or workers."""
    env = os.environ if env is None else env
    return {k: v for k, v in QUIET_OPENMP.items() if k not in env}
