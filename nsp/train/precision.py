"""``precision: auto``: fp32 or bf16, chosen by timing the model's own step on this machine.

Whether bf16 autocast pays depends on the hardware (AMX or a recent GPU: ~1.5-2.6x faster; AVX512-BF16
without AMX: often *slower* than fp32), on the model and on the batch shape, so no flag in
``/proc/cpuinfo`` predicts it. :func:`train_precision` runs a few warm-up and timed steps of the
training step itself (:class:`~nsp.train.step.TrainStep`, handed in as ``step_cls``) on synthetic data
of the real batch shape, in each precision, and keeps bf16 only when it is at least :data:`MARGIN`
faster (fp32 is the exact one). The decision and both rates are cached per machine in
``$NSP_CACHE_DIR`` (default ``~/.cache/nsp``) under a key of CPU model + bf16 flags (or GPU name),
torch version, threads, arch and batch shape: one probe per machine and model; a new key (another
machine, torch, arch or batch) probes again. :func:`decide` and :func:`measure` are the generic parts
the robustness evaluation reuses for its inference step.

Explicit ``fp32`` / ``bf16`` never probe. The probe draws from its own generator and restores the
global RNG, so a run's numbers do not depend on whether the decision came from the cache.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from nsp.config import TrainConfig
from nsp.io import write_json

PRECISIONS_PROBED = ("fp32", "bf16")  # the order the timer is called in, every round
MARGIN = 1.05  # bf16 must be this much faster than fp32 to be chosen
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")  # part of the key: same name, other silicon


def cache_dir() -> Path:
    """``$NSP_CACHE_DIR``, else ``$XDG_CACHE_HOME/nsp``, else ``~/.cache/nsp`` (as .ci/bootstrap.sh)."""
    if os.environ.get("NSP_CACHE_DIR"):
        return Path(os.environ["NSP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nsp"


def machine_name(device: torch.device) -> str:
    """GPU name, or the CPU model plus the bf16-relevant flags it has (``AMD EPYC [avx512_bf16]``)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model, flags = "unknown cpu", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and model == "unknown cpu":
                model = value.strip()
            elif name.strip() == "flags":
                flags |= set(value.split())
    except OSError:
        pass
    return f"{model} [{' '.join(f for f in CPU_FLAGS if f in flags)}]"


def cache_key(
    *, kind: str, device: torch.device, arch: str, batch_shape: tuple[int, ...]
) -> dict[str, Any]:
    """What the decision depends on: step kind ("train" / "eval"), machine, torch, threads, model, batch."""
    return {
        "kind": kind,
        "machine": machine_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "arch": arch,
        "batch_shape": [int(s) for s in batch_shape],
    }


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "precision" / f"{key['kind']}-{digest}.json"


def choose(rates: dict[str, float]) -> str:
    """bf16 only when it trains / infers at least ``MARGIN`` times as fast as fp32."""
    return "bf16" if rates["bf16"] >= MARGIN * rates["fp32"] else "fp32"


def measure(
    runs: dict[str, Callable[[], int]],
    *,
    warmup: int = 2,
    steps: int = 3,
    rounds: int = 2,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Images per second of each run (``runs[p]()`` does one step and returns its images).

    Rounds alternate the precisions (load changes hit both alike); each keeps its best round. The
    timer is called twice per round and precision, in the order of ``PRECISIONS_PROBED``.
    """
    for p in PRECISIONS_PROBED:
        for _ in range(warmup):
            runs[p]()
    best = dict.fromkeys(PRECISIONS_PROBED, 0.0)
    for _ in range(rounds):
        for p in PRECISIONS_PROBED:
            t0 = timer()
            done = sum(runs[p]() for _ in range(steps))
            dt = timer() - t0
            best[p] = max(best[p], done / dt if dt > 0 else float("inf"))
    return best


def decide(*, key: dict[str, Any], probe: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """The cached decision for ``key``, else ``probe()``'s rates -> choice, cached (atomic write).

    Returns ``{"precision", "fp32_img_per_s", "bf16_img_per_s", "source": "probe" | "cache"}``.
    """
    path = cache_path(key)
    try:
        rec = json.loads(path.read_text())
        if rec.get("key") == key and rec.get("precision") in PRECISIONS_PROBED:
            return {k: rec[k] for k in ("precision", "fp32_img_per_s", "bf16_img_per_s")} | {
                "source": "cache"
            }
    except (OSError, ValueError):
        pass
    rates = probe()
    rec = {
        "precision": choose(rates),
        "fp32_img_per_s": float(rates["fp32"]),
        "bf16_img_per_s": float(rates["bf16"]),
    }
    write_json(path, {**rec, "key": key})
    return {**rec, "source": "probe"}


def _probe_step(
    *, step_cls: Any, cfg: TrainConfig, model: nn.Module, device: torch.device,
    image_shape: tuple[int, ...], unlabeled: int, num_classes: int, pseudo_cls: Any = None,
) -> Callable[[], int]:  # fmt: skip
    """One training step of a copy of ``model`` on synthetic uint8 data of the real batch shape
    (``pseudo_cls``: the step's pseudo-batch class; this module cannot import the step's module)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (cfg.batch_size, *image_shape), dtype=torch.uint8, generator=g)
    y = torch.zeros(cfg.batch_size, dtype=torch.int64)
    src = None
    if unlabeled:
        imgs = torch.randint(0, 256, (unlabeled, *image_shape), dtype=torch.uint8, generator=g)
        src = pseudo_cls(
            images=imgs,
            index=torch.arange(unlabeled),
            targets=torch.full((unlabeled, num_classes), 1.0 / num_classes),
            counts=torch.ones(unlabeled, dtype=torch.int64),
        )
    ts = step_cls(cfg=cfg, model=copy.deepcopy(model).train(), labeled_x=x, labeled_y=y, gen=g,
                  device=device, pseudo=src, total=1000, warmup=10)  # fmt: skip

    def run() -> int:
        xb, yb, tb = ts.next_batch()
        ts.step(xb, yb, tb)  # returns python floats: the step has finished on the device too
        return int(xb.shape[0])

    return run


def train_precision(
    *,
    cfg: TrainConfig,
    model: nn.Module,
    device: torch.device,
    labeled_x: torch.Tensor,
    pseudo: Any = None,
    step_cls: Any,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """The precision a :class:`~nsp.train.step.TrainStep` for ``cfg`` trains in.

    Explicit ``fp32`` / ``bf16``: ``{"precision": cfg.precision}``. ``auto``: :func:`decide` on a
    probe of ``step_cls`` (the step class itself: it imports this module) at the real batch shape.
    Under torchrun rank 0 decides and every rank follows.
    """
    if cfg.precision != "auto":
        return {"precision": cfg.precision}
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return {"precision": "fp32", "source": "no bf16 on this GPU"}
    ub = 0 if pseudo is None else max(1, int(round(cfg.batch_size * cfg.unlabeled_ratio)))
    image_shape = tuple(labeled_x.shape[1:])
    key = cache_key(kind="train", device=device, arch=cfg.arch,
                    batch_shape=(cfg.batch_size + ub, *image_shape))  # fmt: skip

    def probe() -> dict[str, float]:
        k = 1 if pseudo is None else int(pseudo.targets.shape[1])
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            runs = {
                p: _probe_step(step_cls=step_cls, cfg=replace(cfg, precision=p), model=model,
                               device=device, image_shape=image_shape, unlabeled=ub, num_classes=k,
                               pseudo_cls=type(pseudo))
                for p in PRECISIONS_PROBED
            }  # fmt: skip
            return measure(runs, timer=timer)

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [decide(key=key, probe=probe) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return decide(key=key, probe=probe)
