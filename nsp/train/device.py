"""Where and in which precision a model runs: the device (``NSP_DEVICE``, CUDA, CPU) and bf16."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """``NSP_DEVICE`` if set, else CUDA when available, else CPU."""
    name = os.environ.get("NSP_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether an explicit ``precision`` ("fp32" | "bf16") runs under bfloat16 autocast.

    ``auto`` is decided by measurement (:mod:`nsp.train.precision`), not here: on CPUs with
    AVX512-BF16 but no AMX, bf16 is often slower than fp32, so no cpuinfo flag predicts it.
    """
    if precision == "auto":
        raise ValueError(
            "precision 'auto' is measured: use nsp.train.precision (train_precision / decide)"
        )
    return precision == "bf16"
