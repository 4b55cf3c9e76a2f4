"""Training engine: the model wrapper, inference helpers and :func:`train_model`, a loop over
:class:`nsp.train.step.TrainStep` (which holds the step itself: samplers, noise, optimizer, EMA, loss).
Returns plain dicts; never imports mlflow.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from nsp.config import TrainConfig
from nsp.errors import NSPError
from nsp.models import build_model
from nsp.train.device import default_device, use_bf16
from nsp.train.distributed import plain_batchnorm, world_info
from nsp.train.step import PseudoBatchSource, TrainStep, lr_at

__all__ = [  # default_device, use_bf16, PseudoBatchSource and lr_at are re-exported for callers
    "Classifier",
    "PseudoBatchSource",
    "accuracy",
    "default_device",
    "lr_at",
    "make_classifier",
    "predict_logits",
    "to_nchw",
    "train_model",
    "use_bf16",
]


class Classifier(nn.Module):
    """Wraps a backbone: takes NCHW pixels in [0, 255] (uint8 or float), normalises inside."""

    def __init__(self, net: nn.Module, mean: float = 72.9, std: float = 90.0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.mean.device, non_blocking=True).float() - self.mean) / self.std
        return self.net(x.contiguous(memory_format=torch.channels_last))


def make_classifier(
    *,
    arch: str,
    num_classes: int,
    in_chans: int,
    dropout: float = 0.0,
    drop_path: float = 0.0,
    mean: float = 72.9,
    std: float = 90.0,
) -> Classifier:
    net = build_model(
        arch=arch,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=dropout,
        drop_path_rate=drop_path,
    )
    return Classifier(net, mean=mean, std=std).to(memory_format=torch.channels_last)


def model_for(cfg: TrainConfig, *, labeled_x: torch.Tensor, num_classes: int) -> Classifier:
    """The model ``train_model`` trains for ``cfg``: its arch, dropout and stochastic depth, inputs
    normalised by the labeled images' mean and s.d. (draws its initial weights from the global RNG)."""
    return make_classifier(
        arch=cfg.arch,
        num_classes=num_classes,
        in_chans=labeled_x.shape[1],
        dropout=cfg.noise.dropout,
        drop_path=cfg.noise.drop_path,
        mean=float(labeled_x.float().mean()),
        std=float(labeled_x.float().std()) or 1.0,
    )


def to_nchw(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) numpy -> uint8 (N, C, H, W) torch (no copy of pixels beyond one)."""
    return torch.from_numpy(np.array(x, copy=True)).permute(0, 3, 1, 2).contiguous()


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Float32 logits on the CPU for uint8 NCHW ``x`` in eval mode (no noise), whatever the model's device."""
    was_training = model.training
    model.eval()
    outs = [model(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    return float((predict_logits(model, x, batch_size).argmax(1).cpu() == y.cpu()).float().mean())


def _save_state(path: Path, state: dict[str, Any]) -> None:
    from nsp.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train_model(
    *,
    cfg: TrainConfig,
    labeled_x: torch.Tensor,
    labeled_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    pseudo: PseudoBatchSource | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    state_path: str | Path | None = None,
) -> dict[str, Any]:
    """Train one model; returns ``{"model", "history", "metrics"}`` (model = best-on-val weights).

    ``state_path``: every epoch the full training state (weights, optimizer, EMA, RNG and sampler states,
    step, history) is written there atomically; if it exists at start, training resumes from it.
    Under torchrun (torch.distributed initialised) each rank takes its slice of every global batch (the
    noise is drawn for the global batch, so every sample gets the noise it gets in one process),
    gradients are averaged by DDP and BN statistics cover the global batch (SyncBatchNorm on GPUs,
    :func:`~nsp.train.distributed.global_batchnorm` on CPU), so N processes compute what one computes,
    up to float rounding and the dropout / stochastic-depth masks, which each rank draws for its own samples.
    """
    rank, world = world_info()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = model_for(cfg, labeled_x=labeled_x, num_classes=num_classes)
    if init_state is not None:
        model.load_state_dict(init_state)
    device = default_device()
    ts = TrainStep(
        cfg=cfg,
        model=model.to(device),
        labeled_x=labeled_x,
        labeled_y=labeled_y,
        gen=gen,
        device=device,
        pseudo=pseudo,
        rank=rank,
        world=world,
    )
    run: dict[str, Any] = {"history": [], "best": {"val_acc": -1.0, "epoch": 0, "state": None}}
    run.update(seen=0, elapsed=0.0)
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.exists():
        _resume(ts, run, state_path)
    if world > 1:
        ts.distribute()
    t0 = time.perf_counter() - run["elapsed"]
    ts.model.train()
    spe = ts.steps_per_epoch
    bar = tqdm(total=ts.total, initial=ts.step_no, desc=f"train {cfg.name}", leave=False,
               disable=not progress or rank > 0)  # fmt: skip
    sums = {"loss": 0.0, "labeled": 0.0, "unlabeled": 0.0}
    for step in range(ts.step_no, ts.total):
        x, y, targets = ts.next_batch()
        losses = ts.step(x, y, targets)
        run["seen"] += len(x) * world
        for k in sums:
            sums[k] += losses[k] or 0.0
        bar.update(1)
        if (step + 1) % spe == 0 or step + 1 == ts.total:
            rec = _end_epoch(ts, step, sums, run, val_x=val_x, val_y=val_y, t0=t0)
            sums = dict.fromkeys(sums, 0.0)
            bar.set_postfix(val_acc=f"{rec['val_acc']:.4f}")
            if on_epoch is not None and rank == 0:
                on_epoch(rec)
            if state_path is not None and rank == 0:
                run["elapsed"] = time.perf_counter() - t0
                state = {"config": cfg_fingerprint(cfg, ts.total), "model": ts.model.state_dict()}
                _save_state(state_path, {**state, **ts.state_dict(), **run})
    bar.close()
    seconds = time.perf_counter() - t0
    final = plain_batchnorm(ts.evaluated)
    final.load_state_dict(run["best"]["state"])
    final.eval()
    metrics = {
        "val_acc": run["best"]["val_acc"],
        "best_epoch": run["best"]["epoch"],
        "epochs": math.ceil(ts.total / spe),
        "steps": ts.total,
        "steps_per_epoch": spe,
        "train_seconds": seconds,
        "images_seen": run["seen"],
        "train_img_per_s": run["seen"] / seconds if seconds > 0 else 0.0,
        "bf16": ts.bf16,
        **precision_metrics(ts.precision),
    }
    return {"model": final, "history": run["history"], "metrics": metrics}


def precision_metrics(decision: dict[str, Any]) -> dict[str, Any]:
    """What ``precision: auto`` chose and both measured rates (nothing for an explicit precision)."""
    if "fp32_img_per_s" not in decision:
        return {}
    return {
        "precision": decision["precision"],
        "precision_source": decision["source"],
        "precision_fp32_img_per_s": decision["fp32_img_per_s"],
        "precision_bf16_img_per_s": decision["bf16_img_per_s"],
    }


def _resume(ts: TrainStep, run: dict[str, Any], path: Path) -> None:
    """Load a saved training state into ``ts`` and ``run`` (history, best, images seen, elapsed).

    The state holds only tensors, numbers, strings, lists, tuples and dicts, so it loads with
    ``weights_only=True``: a file that needs anything else (a pickled object) is refused, unrun."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign, or a pickle that would run code
        raise NSPError(
            f"{path}: not a loadable NSP training state ({type(exc).__name__}); "
            "delete it to start over"
        ) from None
    if not isinstance(st, dict) or st.get("config") != cfg_fingerprint(ts.cfg, ts.total):
        raise NSPError(f"{path}: a training state from a different config; delete it to start over")
    ts.model.load_state_dict(st["model"])
    ts.load_state_dict(st)
    run.update({k: st[k] for k in ("seen", "elapsed", "history", "best")})


def _end_epoch(
    ts: TrainStep,
    step: int,
    sums: dict[str, float],
    run: dict[str, Any],
    *,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    t0: float,
) -> dict[str, Any]:
    """Validate the evaluated weights, append the epoch's record to the history, keep the best."""
    spe = ts.steps_per_epoch
    n = (step % spe) + 1
    if ts.world > 1:  # the history records the global batch's losses, as in one process
        import torch.distributed as dist

        losses = torch.tensor(
            [sums["loss"], sums["labeled"], sums["unlabeled"]], dtype=torch.float64
        )
        dist.all_reduce(losses)
        sums = dict(
            zip(("loss", "labeled", "unlabeled"), (losses / ts.world).tolist(), strict=True)
        )
    epoch = (step + 1 + spe - 1) // spe
    evaluated = ts.evaluated
    val_acc = accuracy(evaluated, val_x, val_y, ts.cfg.eval_batch_size)
    rec = {
        "epoch": epoch,
        "step": step + 1,
        "lr": ts.opt.param_groups[0]["lr"],
        "train_loss": sums["loss"] / n,
        "labeled_loss": sums["labeled"] / n,
        "unlabeled_loss": sums["unlabeled"] / n if ts.pseudo is not None else None,
        "val_acc": val_acc,
        "seconds": time.perf_counter() - t0,
    }
    run["history"].append(rec)
    if val_acc > run["best"]["val_acc"]:
        state = copy.deepcopy(evaluated.state_dict())
        run["best"] = {"val_acc": val_acc, "epoch": epoch, "state": state}
    return rec


def cfg_fingerprint(cfg: TrainConfig, total: int) -> str:
    """Identifies the run a saved training state belongs to (config + total steps)."""
    import hashlib
    import json
    from dataclasses import asdict

    return hashlib.sha256(json.dumps([asdict(cfg), total], sort_keys=True).encode()).hexdigest()
