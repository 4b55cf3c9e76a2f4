"""Per-image PIL RandAugment: the "how public re-implementations do it" baseline.

Same op set and magnitude mapping as :class:`nsp.noise.randaugment.RandAugmentBatch` (the mapping
itself is shared via :func:`nsp.noise.randaugment.level_to_arg`), but one image at a time with
``PIL.ImageOps`` / ``ImageEnhance`` / ``Image.transform``. Used by the tests as the semantic
reference and by the benchmark as the speed baseline.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from nsp.errors import NSPError
from nsp.noise.randaugment import (
    ALL_OPS,
    OFFICIAL_OPS,
    Interpolation,
    Mapping,
    is_signed,
    level_to_arg,
)

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}


def _pil_fill(fill: int | Sequence[int], mode: str) -> int | tuple[int, ...]:
    """PIL fill colour for ``mode`` ("L" or "RGB") from an int or a 1-/3-tuple."""
    vals = [int(fill)] if isinstance(fill, int | float) else [int(v) for v in fill]
    if mode == "L":
        if len(vals) != 1:
            raise NSPError(f"fill={fill!r}: grey images need one fill value; pass e.g. fill=0")
        return vals[0]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise NSPError(f"fill={fill!r}: RGB images need 1 or 3 fill values; pass e.g. fill=0")
    return tuple(vals)


def pil_apply_op(
    img: Image.Image,
    op: str,
    magnitude: float,
    *,
    sign: float = 1.0,
    max_magnitude: float = 10.0,
    mapping: Mapping = "official",
    fill: int | Sequence[int] = 0,
    interpolation: Interpolation = "nearest",
    translate_frac: float = 0.125,
    cutout_frac: float = 0.125,
    rng: random.Random | None = None,
) -> Image.Image:
    """Apply one RandAugment op to a PIL "L" or "RGB" image; returns a new image."""
    w, h = img.size
    size = h if op == "TranslateY" else (min(w, h) if op == "Cutout" else w)
    p = float(
        level_to_arg(
            op,
            magnitude,
            sign=sign,
            max_magnitude=max_magnitude,
            mapping=mapping,
            image_size=size,
            translate_frac=translate_frac,
            cutout_frac=cutout_frac,
        )
    )
    fc = _pil_fill(fill, img.mode)
    resample = _RESAMPLE[interpolation]
    if op == "Identity":
        return img.copy()
    if op == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op == "Equalize":
        return ImageOps.equalize(img)
    if op == "Invert":
        return ImageOps.invert(img)
    if op == "Posterize":
        return ImageOps.posterize(img, int(p))
    if op == "Solarize":
        return ImageOps.solarize(img, int(p))
    if op == "SolarizeAdd":
        add = int(p)
        lut = [min(255, i + add) if i < 128 else i for i in range(256)]
        return img.point(lut * len(img.getbands()))
    if op == "Color":
        return ImageEnhance.Color(img).enhance(p)
    if op == "Contrast":
        return ImageEnhance.Contrast(img).enhance(p)
    if op == "Brightness":
        return ImageEnhance.Brightness(img).enhance(p)
    if op == "Sharpness":
        return ImageEnhance.Sharpness(img).enhance(p)
    if op == "Rotate":
        return img.rotate(p, resample=resample, fillcolor=fc)
    affine = {
        "ShearX": (1.0, p, 0.0, 0.0, 1.0, 0.0),
        "ShearY": (1.0, 0.0, 0.0, p, 1.0, 0.0),
        "TranslateX": (1.0, 0.0, p, 0.0, 1.0, 0.0),
        "TranslateY": (1.0, 0.0, 0.0, 0.0, 1.0, p),
    }
    if op in affine:
        return img.transform(
            img.size, Image.Transform.AFFINE, affine[op], resample=resample, fillcolor=fc
        )
    if op == "Cutout":
        r = rng or random
        cy, cx, pad = r.randrange(h), r.randrange(w), int(p)
        out = img.copy()
        box = (max(0, cx - pad), max(0, cy - pad), min(w, cx + pad), min(h, cy + pad))
        if box[2] > box[0] and box[3] > box[1]:
            out.paste(fc, box)
        return out
    raise NSPError(f"op {op!r}: unknown RandAugment op; use one of {', '.join(ALL_OPS)}")


class PILRandAugment:
    """Per-image RandAugment on PIL images, configured like ``RandAugmentBatch``."""

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.0,
        max_magnitude: float = 10.0,
        fill: int | Sequence[int] = 0,
        ops: Sequence[str] | None = None,
        *,
        op_prob: float = 1.0,
        mapping: Mapping = "official",
        interpolation: Interpolation = "nearest",
        translate_frac: float = 0.125,
        cutout_frac: float = 0.125,
        seed: int | None = None,
    ) -> None:
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.max_magnitude = float(max_magnitude)
        self.fill = fill
        self.ops = tuple(OFFICIAL_OPS if ops is None else ops)
        unknown = [o for o in self.ops if o not in ALL_OPS]
        if unknown:
            raise NSPError(f"ops: unknown {unknown!r}; choose from {', '.join(ALL_OPS)}")
        self.op_prob = float(op_prob)
        self.mapping: Mapping = mapping
        self.interpolation: Interpolation = interpolation
        self.translate_frac = float(translate_frac)
        self.cutout_frac = float(cutout_frac)
        self.rng = random.Random(seed)

    def __call__(self, img: Image.Image) -> Image.Image:
        """Draw ``num_ops`` ops (with replacement) and apply them in sequence."""
        r = self.rng
        for _ in range(self.num_ops):
            op = self.ops[r.randrange(len(self.ops))]
            if self.op_prob < 1.0 and r.random() >= self.op_prob:
                continue
            m = self.magnitude
            if self.magnitude_std > 0:
                upper = max(self.max_magnitude, self.magnitude)
                m = min(max(r.gauss(m, self.magnitude_std), 0.0), upper)
            sign = -1.0 if (is_signed(op, self.mapping) and r.random() < 0.5) else 1.0
            img = pil_apply_op(
                img,
                op,
                m,
                sign=sign,
                max_magnitude=self.max_magnitude,
                mapping=self.mapping,
                fill=self.fill,
                interpolation=self.interpolation,
                translate_frac=self.translate_frac,
                cutout_frac=self.cutout_frac,
                rng=r,
            )
        return img


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) tensor, C in {1, 3} -> PIL "L" / "RGB" image."""
    arr = x.detach().cpu().numpy()
    return Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL "L" / "RGB" image -> uint8 (C, H, W) tensor."""
    arr = np.array(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


class PILRandAugmentDataset(torch.utils.data.Dataset):
    """Dataset applying per-image PIL RandAugment to uint8 NHWC images (C in {1, 3}, or NHW).

    Returns ``(uint8 tensor (C, H, W), int64 label)``. Randomness comes from one
    ``random.Random(seed)`` per dataset object (each DataLoader worker gets a copy; reseed it in a
    ``worker_init_fn`` if workers must differ).
    """

    def __init__(
        self,
        images_uint8_NHWC: np.ndarray,  # noqa: N803 - the layout is part of the name on purpose
        labels: np.ndarray | Sequence[int],
        num_ops: int = 2,
        magnitude: float = 9.0,
        *,
        seed: int | None = 0,
        **kwargs: object,
    ) -> None:
        images = np.asarray(images_uint8_NHWC)
        if images.ndim == 3:
            images = images[..., None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise NSPError(
                f"images_uint8_NHWC: expected uint8 (N, H, W, C) with C in (1, 3), got "
                f"{images.dtype} {images.shape}; convert with .astype(np.uint8) / transpose"
            )
        lab = np.asarray(labels)
        if lab.shape[0] != images.shape[0]:
            raise NSPError(
                f"labels: {lab.shape[0]} labels for {images.shape[0]} images; pass one per image"
            )
        self.images = images
        self.labels = lab.astype(np.int64)
        self.augment = PILRandAugment(num_ops, magnitude, seed=seed, **kwargs)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        arr = self.images[i]
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        out = self.augment(img)
        return pil_to_tensor(out), torch.tensor(self.labels[i])
