"""The training step: what one optimizer step of any NSP model does, in one public place.

:class:`TrainStep` owns the batch samplers, the input noise, the optimizer and its schedule, the EMA
and the loss. :func:`nsp.train.engine.train_model` is a loop over it (plus validation, history and
resume), and ``nsp bench`` times the same object, so the benchmark measures the code that trains.

A student step draws a labeled batch and an unlabeled batch ``unlabeled_ratio`` times larger, applies
the input noise (``noise.recipe``, see :class:`InputNoise`) to the concatenated uint8 batch, and
minimises ``CE(labeled) + w * soft-CE(pseudo targets)`` (each a batch mean). ``w`` is
``unlabeled_weight``: a number (default 1.0, the paper's equation) or ``"ratio"`` (= ``unlabeled_ratio``,
as the official ``main.py``, i.e. every image weighs the same). ``label_smoothing`` applies to the
labeled CE and, with ``smooth_pseudo_labels``, to hard (one-hot) pseudo targets as the official code.
Dropout and stochastic depth live in the model. A teacher / baseline step is the labeled half alone.

New input noise goes into :class:`InputNoise`; a new loss term into :meth:`TrainStep.loss`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from nsp.config import TrainConfig
from nsp.errors import NSPError
from nsp.train.precision import train_precision


@dataclass
class PseudoBatchSource:
    """Pseudo-labeled stream: rows ``index`` into ``images`` with soft targets and copy counts."""

    images: torch.Tensor  # uint8 (N, C, H, W), the unlabeled split
    index: torch.Tensor  # int64 (M,)
    targets: torch.Tensor  # float32 (M, K), rows sum to 1
    counts: torch.Tensor  # int64 (M,), duplication counts (>= 1)


class EpochSampler:
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


class InputNoise:
    """Per-sample input noise on a uint8 NCHW batch, by ``noise.recipe``.

    * ``"nsp"`` (default): random crop from the reflect-padded image (pad side // 8) + h-flip, then
      RandAugment over the 15 ops of :data:`~nsp.noise.randaugment.OFFICIAL_OPS`, fill 0 (the
      Fashion-MNIST background); no cutout.
    * ``"official"``: the 32-px (CIFAR-10 / SVHN) recipe of google-research/noisystudent
      (``_cifar10_preprocess_for_train`` in ``preprocessing.py``; ``randaugment.py`` with its
      ``cutout_op`` flag on, the default): RandAugment over the 16 ops of
      :data:`~nsp.noise.randaugment.OFFICIAL_32PX_OPS` (Cutout included), then an always-on cutout
      of side ``side // 2`` (pad ``side // 4``: 16 px at 32 px), then the same crop + flip; fill 128
      for affine ops and both cutouts, the official ``replace`` value.

    ``randaugment`` / ``ra_num_ops``, ``crop_flip`` and ``flip`` switch parts off in both recipes;
    the official cutout has no switch. Both recipes share the batched per-sample ops of
    :mod:`nsp.noise.randaugment` (no per-image loop). Dropout and stochastic depth are the model's.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        from nsp.noise.randaugment import OFFICIAL_32PX_OPS, OFFICIAL_OPS, RandAugmentBatch

        n = cfg.noise
        self.official = n.recipe == "official"
        self.fill = 128 if self.official else 0
        self.ra = None
        self.crop_flip = n.crop_flip
        self.flip = n.flip
        if n.randaugment and n.ra_num_ops > 0:
            self.ra = RandAugmentBatch(
                num_ops=n.ra_num_ops,
                magnitude=n.ra_magnitude,
                fill=self.fill,
                ops=OFFICIAL_32PX_OPS if self.official else OFFICIAL_OPS,
            )

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # Many tiny uint8 ops: one thread is as fast and immune to OpenMP spin-waits on a busy host.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if self.official:
                return self._official(x, gen)
            if self.crop_flip:
                x = self._crop_flip(x, gen)
            if self.ra is not None:
                x = self.ra(x, generator=gen)
        finally:
            torch.set_num_threads(threads)
        return x

    def _crop_flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from nsp.noise.randaugment import random_crop_flip

        return random_crop_flip(x, pad=max(1, x.shape[-1] // 8), flip=self.flip, generator=gen)

    def _official(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from nsp.noise.randaugment import random_cutout

        if self.ra is not None:
            x = self.ra(x, generator=gen)
        x = random_cutout(x, pad_size=max(1, min(x.shape[-2:]) // 4), fill=self.fill, generator=gen)
        return self._crop_flip(x, gen) if self.crop_flip else x


class Ema:
    """Exponential moving average of a model's parameters (buffers are copied)."""

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


def smooth_hard_targets(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Label-smooth the one-hot rows of ``targets`` (as cross_entropy's label_smoothing); soft rows
    (and rows smoothed when the set was built, max < 1) are returned unchanged."""
    hard = targets.amax(1, keepdim=True) == 1.0
    smoothed = targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[1]
    return torch.where(hard, smoothed, targets)


def lr_at(step: int, *, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """Nesterov SGD; weight decay on weights (ndim > 1) only, not on biases and BN parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=True,
    )


class TrainStep:
    """One model's training step: samplers, noise, optimizer + schedule, EMA, loss.

    ``model`` is the :class:`~nsp.train.engine.Classifier` being trained (on ``device``); ``gen``
    draws the batches and the noise. The step schedule (``steps_per_epoch``, ``total``, ``warmup``)
    follows ``cfg`` unless ``total`` / ``warmup`` are given. ``rank`` / ``world``: under torchrun each
    rank keeps its slice of every global batch (see :meth:`distribute`).
    """

    def __init__(
        self,
        *,
        cfg: TrainConfig,
        model: nn.Module,
        labeled_x: torch.Tensor,
        labeled_y: torch.Tensor,
        gen: torch.Generator,
        device: torch.device,
        pseudo: PseudoBatchSource | None = None,
        total: int | None = None,
        warmup: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.cfg, self.model, self.net = cfg, model, model
        self.labeled_x, self.labeled_y, self.pseudo = labeled_x, labeled_y, pseudo
        self.gen, self.device, self.rank, self.world = gen, device, rank, world
        self.noise = InputNoise(cfg)
        self.unlabeled_weight = cfg.unlabeled_weight_value()
        self.precision = train_precision(cfg=cfg, model=model, device=device, labeled_x=labeled_x,
                                         pseudo=pseudo, step_cls=TrainStep)  # fmt: skip
        self.bf16 = self.precision["precision"] == "bf16"
        self.lab = EpochSampler(len(labeled_x), cfg.batch_size, gen)
        self.unl: EpochSampler | None = None
        if pseudo is not None:
            self.stream = torch.repeat_interleave(torch.arange(len(pseudo.index)), pseudo.counts)
            if len(self.stream) == 0:
                raise NSPError(
                    f"{cfg.name}: the pseudo-label set keeps no images; lower the threshold"
                )
            ub = max(1, int(round(cfg.batch_size * cfg.unlabeled_ratio)))
            self.unl = EpochSampler(len(self.stream), ub, gen)
            self.steps_per_epoch = math.ceil(len(self.stream) / ub)
        else:
            self.steps_per_epoch = math.ceil(len(labeled_x) / cfg.batch_size)
        self.total = (
            total if total is not None else max(cfg.epochs * self.steps_per_epoch, cfg.min_steps)
        )
        self.warmup = (
            warmup if warmup is not None else int(cfg.warmup_epochs * self.steps_per_epoch)
        )
        self.opt = make_optimizer(model, cfg)
        self.ema = Ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step_no = 0

    def distribute(self) -> None:
        """Wrap the model in DDP (torchrun): BN over the global batch, gradients averaged."""
        from torch.nn.parallel import DistributedDataParallel

        from nsp.train.distributed import global_batchnorm

        if self.device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        else:
            net = global_batchnorm(self.model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.net = DistributedDataParallel(net, device_ids=ids)
        self.model = self.net.module
        if self.ema is not None:
            resumed = self.ema.model.state_dict()
            self.ema.model = copy.deepcopy(self.model).eval()
            self.ema.model.load_state_dict(resumed)
            for p in self.ema.model.parameters():
                p.requires_grad_(False)

    @property
    def evaluated(self) -> nn.Module:
        """The weights validation scores and the run keeps: the EMA if any, else the model."""
        return self.ema.model if self.ema is not None else self.model

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The next noised batch on ``device``: (x, labels of its first rows, pseudo targets or None)."""
        li = self.lab.next()
        xb, yb = self.labeled_x[li], self.labeled_y[li]
        n_lab = len(xb)
        tu = None
        if self.pseudo is not None:
            rows = self.stream[self.unl.next()]
            x = torch.cat([xb, self.pseudo.images[self.pseudo.index[rows]]])
            tu = self.pseudo.targets[rows]
        else:
            x = xb
        x = self.noise(x.to(self.device, non_blocking=True), self.gen)
        yb = yb.to(self.device)
        if tu is not None:
            tu = tu.to(self.device)
        if self.world > 1:  # this rank's slice of the labeled and of the unlabeled part
            r, w = self.rank, self.world
            lsl = slice(r * n_lab // w, (r + 1) * n_lab // w)
            yb = yb[lsl]
            if tu is not None:
                nu = len(tu)
                usl = slice(r * nu // w, (r + 1) * nu // w)
                x = torch.cat([x[:n_lab][lsl], x[n_lab:][usl]])
                tu = tu[usl]
            else:
                x = x[lsl]
        return x, yb, tu

    def loss(
        self, logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(total, labeled CE, unlabeled soft CE or None) for a batch whose first ``len(y)`` rows are labeled."""
        n_lab = len(y)
        loss_l = F.cross_entropy(logits[:n_lab], y, label_smoothing=self.cfg.label_smoothing)
        if targets is None:
            return loss_l, loss_l, None
        if self.cfg.smooth_pseudo_labels:
            targets = smooth_hard_targets(targets, self.cfg.label_smoothing)
        loss_u = -(targets * F.log_softmax(logits[n_lab:], dim=1)).sum(1).mean()
        return loss_l + self.unlabeled_weight * loss_u, loss_l, loss_u

    def step(
        self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None, *, net: Any = None
    ) -> dict[str, float | None]:
        """One optimizer step on (x, y, targets); returns the losses as floats.

        ``net``: call this instead of the model for the forward pass (the bench's raw step feeds
        pre-normalised floats to ``model.net``); the optimizer and EMA still act on the model.
        """
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step_no, total=self.total, warmup=self.warmup, base_lr=self.cfg.lr)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = (net or self.net)(x)
        loss, loss_l, loss_u = self.loss(logits.float(), y, targets)
        unl = float(loss_u.detach()) if loss_u is not None else None
        if not torch.isfinite(loss):
            raise NSPError(
                f"{self.cfg.name}: loss is {float(loss.detach())} at step {self.step_no}; "
                f"lower {self.cfg.name}.lr or check the inputs"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step_no)
        self.step_no += 1
        return {"loss": float(loss.detach()), "labeled": float(loss_l.detach()), "unlabeled": unl}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides the model weights (RNG and sampler positions too)."""
        return {
            "opt": self.opt.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "lab": (self.lab.perm, self.lab.pos),
            "unl": (self.unl.perm, self.unl.pos) if self.unl is not None else None,
            "step": self.step_no,
        }

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.opt.load_state_dict(st["opt"])
        if self.ema is not None:
            self.ema.model.load_state_dict(st["ema"])
        self.gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        self.lab.perm, self.lab.pos = st["lab"]
        if self.unl is not None:
            self.unl.perm, self.unl.pos = st["unl"]
        self.step_no = st["step"]
