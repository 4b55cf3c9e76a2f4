"""Small ResNet family for 28-32 px inputs (BN + ReLU basic blocks, stochastic depth, dropout head).

Sizes grow in width and depth (S <= M <= L) so a student can be equal to or larger than its teacher.
Stochastic depth rises linearly with block index from 0 to ``drop_path_rate`` (the paper: survival
probability 1.0 -> 0.8, i.e. ``drop_path_rate=0.2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import register_model


@dataclass(frozen=True)
class ResNetSpec:
    stem: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]


SPECS: dict[str, ResNetSpec] = {
    "nsp_resnet_xs": ResNetSpec(stem=16, widths=(24, 48, 96), depths=(1, 1, 1)),
    "nsp_resnet_s": ResNetSpec(stem=24, widths=(32, 64, 128), depths=(1, 1, 1)),
    "nsp_resnet_m": ResNetSpec(stem=32, widths=(48, 96, 192), depths=(1, 1, 1)),
    "nsp_resnet_l": ResNetSpec(stem=32, widths=(56, 112, 224), depths=(1, 1, 1)),
}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop_path: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        sc = x if self.shortcut is None else self.shortcut(x)
        return F.relu(sc + self.drop_path(out), inplace=True)


class SmallResNet(nn.Module):
    """Stem at full resolution, then one stride-2 stage per width (32 -> 16 -> 8 -> 4 px)."""

    def __init__(
        self,
        spec: ResNetSpec,
        num_classes: int = 10,
        in_chans: int = 1,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        **_: object,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, spec.stem, 3, 1, 1, bias=False),
            nn.BatchNorm2d(spec.stem),
            nn.ReLU(inplace=True),
        )
        n_blocks = sum(spec.depths)
        blocks: list[nn.Module] = []
        cin, idx = spec.stem, 0
        for width, depth in zip(spec.widths, spec.depths, strict=True):
            for j in range(depth):
                rate = drop_path_rate * idx / max(n_blocks - 1, 1)
                blocks.append(BasicBlock(cin, width, 2 if j == 0 else 1, rate))
                cin, idx = width, idx + 1
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each residual branch
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return self.fc(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _make(name: str, **kwargs: object) -> SmallResNet:
    kwargs.pop("pretrained", None)
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return SmallResNet(SPECS[name], **kwargs)


@register_model
def nsp_resnet_xs(pretrained: bool = False, **kwargs: object) -> SmallResNet:
    """Extra-small ResNet (for tests and tiny profiles)."""
    return _make("nsp_resnet_xs", **kwargs)


@register_model
def nsp_resnet_s(pretrained: bool = False, **kwargs: object) -> SmallResNet:
    """Small ResNet: the default teacher."""
    return _make("nsp_resnet_s", **kwargs)


@register_model
def nsp_resnet_m(pretrained: bool = False, **kwargs: object) -> SmallResNet:
    """Medium ResNet: wider than S."""
    return _make("nsp_resnet_m", **kwargs)


@register_model
def nsp_resnet_l(pretrained: bool = False, **kwargs: object) -> SmallResNet:
    """Large ResNet: wider and deeper than M."""
    return _make("nsp_resnet_l", **kwargs)
