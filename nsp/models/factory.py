"""Model construction through timm's registry (our ``nsp_*`` models or any timm model)."""

from __future__ import annotations

import timm
import torch.nn as nn

from nsp.errors import NSPError

MODEL_FAMILY = (
    "nsp_resnet_xs",
    "nsp_resnet_s",
    "nsp_resnet_m",
    "nsp_resnet_l",
    "nsp_resnet_mw",
    "nsp_resnet_lw",
)


def build_model(
    *,
    arch: str,
    num_classes: int,
    in_chans: int,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Create ``arch`` from timm's registry (our family is registered on import of ``nsp.models``)."""
    import nsp.models.resnet  # noqa: F401  (registration side effect)

    if not timm.is_model(arch):
        raise NSPError(
            f"unknown architecture {arch!r}: use one of {', '.join(MODEL_FAMILY)} or any name from "
            "timm.list_models()"
        )
    return timm.create_model(
        arch,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
