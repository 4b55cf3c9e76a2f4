"""Training engine: teacher / noised student / baseline. Returns plain dicts; never imports mlflow.

A student step draws a labeled batch and an unlabeled batch ``unlabeled_ratio`` times larger;
loss = CE(labeled) + ``unlabeled_weight`` * soft-CE(pseudo). Noise (RandAugment, crop/flip, dropout,
stochastic depth) is applied on the fly to the whole concatenated batch, per sample.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from nsp.config import TrainConfig
from nsp.errors import NSPError
from nsp.models import build_model


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


@dataclass
class PseudoBatchSource:
    """Pseudo-labeled stream: rows ``index`` into ``images`` with soft targets and copy counts."""

    images: torch.Tensor  # uint8 (N, C, H, W), the unlabeled split
    index: torch.Tensor  # int64 (M,)
    targets: torch.Tensor  # float32 (M, K), rows sum to 1
    counts: torch.Tensor  # int64 (M,), duplication counts (>= 1)


def default_device() -> torch.device:
    """``NSP_DEVICE`` if set, else CUDA when available, else CPU."""
    import os

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


def to_nchw(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) numpy -> uint8 (N, C, H, W) torch (no copy of pixels beyond one)."""
    return torch.from_numpy(np.array(x, copy=True)).permute(0, 3, 1, 2).contiguous()


class _EpochSampler:
    """Yields batches of indices from successive seeded permutations of ``n`` items."""

    def __init__(self, n: int, batch: int, gen: torch.Generator) -> None:
        self.n, self.batch, self.gen = n, batch, gen
        self.perm = torch.randperm(n, generator=gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        out = []
        need = self.batch
        while need > 0:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.gen)
                self.pos = 0
            take = self.perm[self.pos : self.pos + need]
            self.pos += take.numel()
            need -= take.numel()
            out.append(take)
        return torch.cat(out) if len(out) > 1 else out[0]


class _Noise:
    """Input noise applied to a uint8 NCHW batch (per-sample RandAugment + crop/flip)."""

    def __init__(self, cfg: TrainConfig) -> None:
        n = cfg.noise
        self.ra = None
        self.crop_flip = n.crop_flip
        self.flip = n.flip
        if n.randaugment and n.ra_num_ops > 0:
            from nsp.noise.randaugment import RandAugmentBatch

            self.ra = RandAugmentBatch(num_ops=n.ra_num_ops, magnitude=n.ra_magnitude, fill=0)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # Many tiny uint8 ops: one thread is as fast and immune to OpenMP spin-waits on a busy host.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if self.crop_flip:
                from nsp.noise.randaugment import random_crop_flip

                x = random_crop_flip(x, pad=max(1, x.shape[-1] // 8), flip=self.flip, generator=gen)
            if self.ra is not None:
                x = self.ra(x, generator=gen)
        finally:
            torch.set_num_threads(threads)
        return x


def lr_at(step: int, *, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


class _Ema:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, m in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(m, 1 - d)
        for e, m in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(m)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.clone()
        dist.all_reduce(out)
        return out


class _GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of every rank (CPU/gloo).

    ``nn.SyncBatchNorm`` only runs on GPUs; this all-reduces per-channel sums (autograd-aware), so
    a DDP step on N processes computes what one process computes on the whole batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], dtype=torch.float64)
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3))]).double()
        total = _AllReduceSum.apply(torch.cat([local, count]))
        c = self.num_features
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                unbiased = var * n / max(float(n) - 1, 1.0)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = (1, c, 1, 1)
        y = (xf - mean.float().view(shape)) * torch.rsqrt(var.float().view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def global_batchnorm(model: nn.Module) -> nn.Module:
    """Switch every BatchNorm2d of ``model`` (in place, same parameters) to global-batch statistics."""
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = _GlobalBatchNorm2d
    return model


def plain_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`global_batchnorm` / SyncBatchNorm (in place): the saved model runs anywhere."""
    for m in model.modules():
        if isinstance(m, _GlobalBatchNorm2d | nn.SyncBatchNorm):
            m.__class__ = nn.BatchNorm2d
    return model


def _dist() -> tuple[int, int]:
    """(rank, world_size) when torch.distributed is initialised (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
    :func:`global_batchnorm` on CPU), so N processes compute what one computes, up to float rounding
    and the dropout / stochastic-depth masks, which each rank draws for its own samples.
    """
    rank, world = _dist()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    in_chans = labeled_x.shape[1]
    mean = float(labeled_x.float().mean())
    std = float(labeled_x.float().std()) or 1.0
    model = make_classifier(
        arch=cfg.arch,
        num_classes=num_classes,
        in_chans=in_chans,
        dropout=cfg.noise.dropout,
        drop_path=cfg.noise.drop_path,
        mean=mean,
        std=std,
    )
    if init_state is not None:
        model.load_state_dict(init_state)
    device = default_device()
    model = model.to(device)
    noise = _Noise(cfg)
    bf16 = use_bf16(cfg.precision, device)
    lab = _EpochSampler(len(labeled_x), cfg.batch_size, gen)
    unl = None
    if pseudo is not None:
        stream = torch.repeat_interleave(torch.arange(len(pseudo.index)), pseudo.counts)
        if len(stream) == 0:
            raise NSPError(f"{cfg.name}: the pseudo-label set keeps no images; lower the threshold")
        ub = max(1, int(round(cfg.batch_size * cfg.unlabeled_ratio)))
        unl = _EpochSampler(len(stream), ub, gen)
        steps_per_epoch = math.ceil(len(stream) / ub)
    else:
        steps_per_epoch = math.ceil(len(labeled_x) / cfg.batch_size)
    total = max(cfg.epochs * steps_per_epoch, cfg.min_steps)
    epochs = math.ceil(total / steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=True,
    )
    ema = _Ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_acc": -1.0, "epoch": 0, "state": None}
    start, seen, elapsed = 0, 0, 0.0
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("config") != cfg_fingerprint(cfg, total):
            raise NSPError(
                f"{state_path}: a training state from a different config; delete it to start over"
            )
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        if ema is not None:
            ema.model.load_state_dict(st["ema"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        lab.perm, lab.pos = st["lab"]
        if unl is not None:
            unl.perm, unl.pos = st["unl"]
        start, seen, elapsed = st["step"], st["seen"], st["elapsed"]
        history, best = st["history"], st["best"]
    train_net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # BN statistics over the global batch: SyncBatchNorm on GPUs, our all-reduce BN on CPU
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            net = global_batchnorm(model)
        train_net = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
        model = train_net.module
        if ema is not None:
            resumed_ema = ema.model.state_dict()
            ema.model = copy.deepcopy(model).eval()
            ema.model.load_state_dict(resumed_ema)
            for p in ema.model.parameters():
                p.requires_grad_(False)
    t0 = time.perf_counter() - elapsed
    model.train()
    bar = tqdm(
        total=total,
        initial=start,
        desc=f"train {cfg.name}",
        disable=not progress or rank > 0,
        leave=False,
    )
    run_loss = run_lab = run_unl = 0.0
    for step in range(start, total):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total=total, warmup=warmup, base_lr=cfg.lr)
        li = lab.next()
        xb, yb = labeled_x[li], labeled_y[li]
        n_lab = len(xb)
        if pseudo is not None:
            rows = stream[unl.next()]
            x = torch.cat([xb, pseudo.images[pseudo.index[rows]]])
            tu = pseudo.targets[rows]
        else:
            x = xb
        x = noise(x.to(device, non_blocking=True), gen)
        yb = yb.to(device)
        if pseudo is not None:
            tu = tu.to(device)
        if world > 1:  # this rank's slice of the labeled and of the unlabeled part
            lsl = slice(rank * n_lab // world, (rank + 1) * n_lab // world)
            yb = yb[lsl]
            if pseudo is not None:
                nu = len(tu)
                usl = slice(rank * nu // world, (rank + 1) * nu // world)
                x = torch.cat([x[:n_lab][lsl], x[n_lab:][usl]])
                tu = tu[usl]
            else:
                x = x[lsl]
            n_lab = len(yb)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = train_net(x)
        logits = logits.float()
        loss_l = F.cross_entropy(logits[:n_lab], yb, label_smoothing=cfg.label_smoothing)
        loss = loss_l
        if pseudo is not None:
            loss_u = -(tu * F.log_softmax(logits[n_lab:], dim=1)).sum(1).mean()
            loss = loss_l + cfg.unlabeled_weight * loss_u
            run_unl += float(loss_u.detach())
        if not torch.isfinite(loss):
            raise NSPError(
                f"{cfg.name}: loss is {float(loss.detach())} at step {step}; lower {cfg.name}.lr or check the inputs"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model, step)
        seen += len(x) * world
        run_loss += float(loss.detach())
        run_lab += float(loss_l.detach())
        bar.update(1)
        if (step + 1) % steps_per_epoch == 0 or step + 1 == total:
            n = (step % steps_per_epoch) + 1
            if world > 1:  # the history records the global batch's losses, as in one process
                import torch.distributed as dist

                losses = torch.tensor([run_loss, run_lab, run_unl], dtype=torch.float64)
                dist.all_reduce(losses)
                run_loss, run_lab, run_unl = (losses / world).tolist()
            epoch = (step + 1 + steps_per_epoch - 1) // steps_per_epoch
            evaluated = ema.model if ema is not None else model
            val_acc = accuracy(evaluated, val_x, val_y, cfg.eval_batch_size)
            rec = {
                "epoch": epoch,
                "step": step + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": run_loss / n,
                "labeled_loss": run_lab / n,
                "unlabeled_loss": run_unl / n if pseudo is not None else None,
                "val_acc": val_acc,
                "seconds": time.perf_counter() - t0,
            }
            history.append(rec)
            run_loss = run_lab = run_unl = 0.0
            if val_acc > best["val_acc"]:
                best = {
                    "val_acc": val_acc,
                    "epoch": epoch,
                    "state": copy.deepcopy(evaluated.state_dict()),
                }
            bar.set_postfix(val_acc=f"{val_acc:.4f}")
            if on_epoch is not None and rank == 0:
                on_epoch(rec)
            if state_path is not None and rank == 0:
                _save_state(
                    state_path,
                    {
                        "config": cfg_fingerprint(cfg, total),
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "ema": ema.model.state_dict() if ema is not None else None,
                        "gen": gen.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "lab": (lab.perm, lab.pos),
                        "unl": (unl.perm, unl.pos) if unl is not None else None,
                        "step": step + 1,
                        "seen": seen,
                        "elapsed": time.perf_counter() - t0,
                        "history": history,
                        "best": best,
                    },
                )
    bar.close()
    seconds = time.perf_counter() - t0
    final = plain_batchnorm(ema.model if ema is not None else model)
    final.load_state_dict(best["state"])
    final.eval()
    metrics = {
        "val_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "epochs": epochs,
        "steps": total,
        "steps_per_epoch": steps_per_epoch,
        "train_seconds": seconds,
        "images_seen": seen,
        "train_img_per_s": seen / seconds if seconds > 0 else 0.0,
        "bf16": bf16,
    }
    return {"model": final, "history": history, "metrics": metrics}


def cfg_fingerprint(cfg: TrainConfig, total: int) -> str:
    """Identifies the run a saved training state belongs to (config + total steps)."""
    import hashlib
    import json
    from dataclasses import asdict

    return hashlib.sha256(json.dumps([asdict(cfg), total], sort_keys=True).encode()).hexdigest()
