"""Where and in which precision a model runs: the device (``NSP_DEVICE``, CUDA, CPU) and bf16."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def default_device() -> torch.device:
    """``NSP_DEVICE`` if set, else CUDA when available, else CPU."""
    name = os.environ.get("NSP_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` ("fp32" | "bf16" | "auto") trains under bfloat16 autocast on ``device``."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:  # native bf16 matrix units only: emulated bf16 is slower than fp32
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
