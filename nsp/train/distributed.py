"""Data-parallel training (torchrun) helpers: the rank / world size, and BatchNorm over the global
batch on CPU (``nn.SyncBatchNorm`` only runs on GPUs)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


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


def world_info() -> tuple[int, int]:
    """(rank, world_size) when torch.distributed is initialised (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
