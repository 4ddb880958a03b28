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
