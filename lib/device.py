"""Which device a run uses. Imports nothing from lib."""

from __future__ import annotations

import os

import torch


def resolve_device(device) -> torch.device:
    """'auto' picks CUDA when present; under torchrun each rank takes its LOCAL_RANK GPU."""
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible; use --device cpu or auto.")
    return torch.device(device)
