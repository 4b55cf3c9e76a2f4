"""Batched, per-sample RandAugment on uint8 tensors (the Noisy Student input noise).

Every sample of a batch draws its own ops (and sign, and optionally magnitude); per layer, the
samples are grouped by op *family* and each family runs once, vectorised, on its samples:

* LUT family (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd, Brightness,
  Contrast): per-(sample, channel) 256-entry tables, applied with one gather.
* Affine family (Rotate, ShearX/Y, TranslateX/Y): per-sample 2x3 matrices, one batched index
  gather (nearest) or four (bilinear) -- see :func:`warp_affine`.
* Color, Sharpness (3x3 SMOOTH kernel as shifted sums), Cutout: per-sample broadcast arithmetic.
* Identity: untouched.

There is no per-image Python loop; the Python loop is over op types (<= 17) per layer.

Op semantics are PIL's (``ImageOps`` / ``ImageEnhance`` / ``Image.transform`` incl. rounding),
which the official TF ops emulate; :mod:`nsp.noise.pil_reference` is the per-image PIL version
and the tests require pixel equality with it. Known deviations of the official TF code that we do
*not* copy: its Contrast blends towards ``num_pixels / 256`` instead of the mean grey level, its
affine ops address pixel indices rather than pixel centres, and its Sharpness truncates instead
of rounding the smoothed image.

Op sets: :data:`OFFICIAL_OPS` is the 15-op list of google-research/noisystudent ``randaugment.py``
without Cutout -- NSP's default (``noise.recipe: nsp``), *not* what the official 32-px runs sample
from: those add Cutout to the list (:data:`OFFICIAL_32PX_OPS`, 16 ops; ``noise.recipe: official``,
see :class:`nsp.train.step.InputNoise`). ``"Identity"`` is available as an extra op.

Magnitude scale and mapping: the official code divides the level by ``_MAX_LEVEL = 10``, so
``max_magnitude`` defaults to 10 (not 30); levels above it extrapolate linearly as in the official
code (Noisy Student's ImageNet runs use 27). With ``f = magnitude / max_magnitude``:

* Rotate: +-30 f degrees; ShearX/Y: +-0.3 f; TranslateX/Y: +-f * translate_frac * side (px).
* SolarizeAdd: add int(110 f) to pixels < 128; Cutout: square of side 2 int(f cutout_frac side).
* ``mapping="official"``: Posterize keeps int(4 f) bits (0 acts as 1, as TF's clamped shift),
  Solarize threshold int(256 f), Color/Contrast/Brightness/Sharpness factor 0.1 + 1.8 f (no sign).
* ``mapping="increasing"`` (stronger with f, identity at 0): Posterize keeps 8 - int(4 f) bits,
  Solarize threshold 256 - int(256 f), enhance factor 1 +- 0.9 f (random sign, as timm).

Signs (+-, probability 1/2 each, per sample and layer) apply to the affine ops, and to the
enhance ops under ``"increasing"``. The official code draws a per-op probability but never uses
it (every drawn op is applied), so ``op_prob`` defaults to 1.0. The official code fills with 128
and resamples nearest; ``fill`` defaults to 0 here (Fashion-MNIST background).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from nsp.errors import NSPError

OFFICIAL_OPS: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "SolarizeAdd",
)
"""The official noisystudent RandAugment op list without Cutout (15 ops): NSP's default set."""

OFFICIAL_32PX_OPS: tuple[str, ...] = OFFICIAL_OPS + ("Cutout",)
"""The 16 ops the official 32-px (CIFAR-10 / SVHN) recipe samples from: the list plus Cutout."""

ALL_OPS: tuple[str, ...] = OFFICIAL_OPS + ("Identity", "Cutout")

AFFINE_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})
ENHANCE_OPS = frozenset({"Color", "Contrast", "Brightness", "Sharpness"})
LUT_OPS = frozenset(
    {
        "AutoContrast",
        "Equalize",
        "Invert",
        "Posterize",
        "Solarize",
        "SolarizeAdd",
        "Brightness",
        "Contrast",
    }
)

Mapping = Literal["official", "increasing"]
Interpolation = Literal["nearest", "bilinear"]


def is_signed(op: str, mapping: Mapping = "official") -> bool:
    """Whether ``op`` gets a random +-1 sign on its parameter under ``mapping``."""
    return op in AFFINE_OPS or (mapping == "increasing" and op in ENHANCE_OPS)


def level_to_arg(
    op: str,
    magnitude: float | torch.Tensor,
    *,
    sign: float | torch.Tensor = 1.0,
    max_magnitude: float = 10.0,
    mapping: Mapping = "official",
    image_size: int = 32,
    translate_frac: float = 0.125,
    cutout_frac: float = 0.125,
) -> torch.Tensor:
    """Map a magnitude (scalar or per-sample tensor) to the op's parameter, as float64.

    ``sign`` is applied only to signed ops (see :func:`is_signed`). Ops without a parameter
    (Identity, AutoContrast, Equalize, Invert) return zeros. ``image_size`` is the side (pixels)
    that TranslateX/Y and Cutout scale with (width for X, height for Y).
    """
    if op not in ALL_OPS:
        raise NSPError(f"op {op!r}: unknown RandAugment op; use one of {', '.join(ALL_OPS)}")
    m = torch.as_tensor(magnitude, dtype=torch.float64)
    s = torch.as_tensor(sign, dtype=torch.float64, device=m.device)
    f = m / float(max_magnitude)
    if op in ("Identity", "AutoContrast", "Equalize", "Invert"):
        return torch.zeros_like(f)
    if op == "Rotate":
        return s * f * 30.0
    if op in ("ShearX", "ShearY"):
        return s * f * 0.3
    if op in ("TranslateX", "TranslateY"):
        return s * f * (translate_frac * image_size)
    if op == "Posterize":
        bits = torch.trunc(f * 4.0)
        bits = bits if mapping == "official" else 8.0 - bits
        # TF clamps shifts to 0..7 (so the official "0 bits" keeps 1 bit); Pillow rejects 0.
        return bits.clamp(1.0, 8.0)
    if op == "Solarize":
        thr = torch.trunc(f * 256.0)
        thr = thr if mapping == "official" else 256.0 - thr
        return thr.clamp(0.0, 256.0)
    if op == "SolarizeAdd":
        return torch.trunc(f * 110.0).clamp(0.0, 255.0)
    if op == "Cutout":
        return torch.trunc(f * (cutout_frac * image_size)).clamp(min=0.0)
    # Enhance ops: Color, Contrast, Brightness, Sharpness.
    if mapping == "official":
        return (f * 1.8 + 0.1).clamp(min=0.0)
    return (1.0 + s * f * 0.9).clamp(min=0.0)


# ---------------------------------------------------------------------------------------------
# Building blocks (all vectorised over the leading sample dimension)
# ---------------------------------------------------------------------------------------------


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, image, factor)``: float32 lerp, truncated and clipped."""
    d = degenerate.to(torch.float32)
    out = d + factor.to(torch.float32) * (image.to(torch.float32) - d)
    return out.clamp_(0.0, 255.0).trunc_()


def _grey_l(x: torch.Tensor) -> torch.Tensor:
    """PIL RGB -> L conversion (ITU-R 601-2, fixed point with rounding); (n,3,H,W) -> (n,1,H,W)."""
    xi = x.to(torch.int32)
    return (xi[:, 0:1] * 19595 + xi[:, 1:2] * 38470 + xi[:, 2:3] * 7471 + 0x8000) >> 16


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """Per-(sample, channel) 256-bin histograms of a uint8 tensor (n,C,H,W) -> (n,C,256) int64."""
    n, c = x.shape[:2]
    rows = torch.arange(n * c, device=x.device).unsqueeze(1) * 256
    flat = x.reshape(n * c, -1).to(torch.int64) + rows
    return torch.bincount(flat.reshape(-1), minlength=n * c * 256).view(n, c, 256)


def _lut_autocontrast(x: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.autocontrast`` (cutoff 0) LUTs, per channel; (n,C,256) float64."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    lo = flat.amin(dim=2).to(torch.float64).unsqueeze(2)
    hi = flat.amax(dim=2).to(torch.float64).unsqueeze(2)
    valid = hi > lo
    # Tensor / tensor (``255.0 / t`` is computed as ``255 * (1/t)`` and can be 1 ulp off PIL).
    scale = torch.full_like(hi, 255.0) / torch.where(valid, hi - lo, torch.ones_like(hi))
    offset = -lo * scale
    lut = torch.trunc(ramp * scale + offset).clamp(0.0, 255.0)
    return torch.where(valid, lut, ramp.expand_as(lut))


def _lut_equalize(x: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` LUTs, per channel; (n,C,256) float64."""
    hist = _histogram(x)
    total = hist.sum(dim=2, keepdim=True)
    last = torch.gather(
        hist, 2, x.reshape(x.shape[0], x.shape[1], -1).amax(dim=2, keepdim=True).long()
    )
    step = (total - last) // 255  # zero when <= 1 distinct value (then last == total)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    excl = torch.cumsum(hist, dim=2) - hist
    lut = ((safe // 2 + excl) // safe).clamp(0, 255).to(torch.float64)
    return torch.where(step > 0, lut, ramp.expand_as(lut))


def _affine_matrices(
    op_ids: torch.Tensor, params: torch.Tensor, names: Sequence[str], height: int, width: int
) -> torch.Tensor:
    """Per-sample PIL-convention affine matrices (n,2,3), float64: output (x,y) -> input (x,y).

    ``op_ids`` index into ``names``. Coordinates are continuous with pixel centres at ``i + 0.5``
    (as PIL); rotation is about the image centre, counter-clockwise for a positive angle
    (``Image.rotate``, including its rounding of cos/sin to 15 decimals); shear about the origin.
    """
    n = params.shape[0]
    mats = torch.zeros(n, 2, 3, dtype=torch.float64, device=params.device)
    one = torch.ones_like(params)
    zero = torch.zeros_like(params)

    def is_op(name: str) -> torch.Tensor:
        return op_ids == names.index(name) if name in names else torch.zeros_like(params).bool()

    rot = is_op("Rotate")
    a = -params * (math.pi / 180.0)
    cos = torch.where(rot, torch.round(torch.cos(a), decimals=15), one)
    sin = torch.where(rot, torch.round(torch.sin(a), decimals=15), zero)
    cx, cy = width / 2.0, height / 2.0
    mats[:, 0, 0] = cos
    mats[:, 0, 1] = torch.where(is_op("ShearX"), params, sin)
    mats[:, 1, 0] = torch.where(is_op("ShearY"), params, -sin)
    mats[:, 1, 1] = cos
    tx = torch.where(rot, cx - cos * cx - sin * cy, zero)
    ty = torch.where(rot, cy + sin * cx - cos * cy, zero)
    mats[:, 0, 2] = torch.where(is_op("TranslateX"), params, tx)
    mats[:, 1, 2] = torch.where(is_op("TranslateY"), params, ty)
    return mats


def warp_affine(
    x: torch.Tensor,
    matrices: torch.Tensor,
    *,
    fill: int | Sequence[int] | torch.Tensor = 0,
    interpolation: Interpolation = "nearest",
) -> torch.Tensor:
    """Warp each sample of uint8 ``x`` (n,C,H,W) by its PIL-convention 2x3 matrix.

    Matches ``PIL.Image.transform(size, AFFINE, matrix, resample, fillcolor=fill)``: output pixel
    centre ``(j+0.5, i+0.5)`` samples the input at ``matrix @ (x, y, 1)``; points outside
    ``[0,W) x [0,H)`` get ``fill`` (int, C-tuple or (C,) tensor). Nearest takes the pixel at the
    ``floor`` of the source point; bilinear lerps border-clamped neighbours in float64 and
    truncates, as PIL. Both are pure gathers (nearest never leaves uint8).
    """
    n, c, h, w = x.shape
    dev = x.device
    if not isinstance(fill, torch.Tensor):
        fill = _normalise_fill(fill, c)
    ys = torch.arange(h, dtype=torch.float64, device=dev) + 0.5
    xs = torch.arange(w, dtype=torch.float64, device=dev) + 0.5
    m = matrices.to(device=dev, dtype=torch.float64)
    fill_v = fill.to(device=dev).view(1, c, 1, 1)
    if interpolation == "nearest":
        # Source padded by a 1-pixel ring of ``fill``: shifting coordinates by +1 and clamping to
        # the padded frame sends every outside point (floor < 0 or >= size) onto the ring, so no
        # mask is needed; for in-frame values trunc == floor.
        wp, hp = w + 2, h + 2
        px = (m[:, 0, 0, None] * xs)[:, None, :] + (m[:, 0, 1, None] * ys + m[:, 0, 2, None] + 1.0)[
            :, :, None
        ]
        py = (m[:, 1, 0, None] * xs)[:, None, :] + (m[:, 1, 1, None] * ys + m[:, 1, 2, None] + 1.0)[
            :, :, None
        ]
        px.clamp_(0.0, wp - 1.0).trunc_()
        py.clamp_(0.0, hp - 1.0).trunc_()
        idx = py.mul_(wp).add_(px).to(torch.int64).view(n, 1, h * w).expand(n, c, h * w)
        src = fill_v.to(x.dtype).expand(n, c, hp, wp).clone()
        src[:, :, 1 : h + 1, 1 : w + 1] = x
        return torch.gather(src.view(n, c, hp * wp), 2, idx).view(n, c, h, w)
    px = (m[:, 0, 0, None] * xs)[:, None, :] + (m[:, 0, 1, None] * ys + m[:, 0, 2, None])[
        :, :, None
    ]
    py = (m[:, 1, 0, None] * xs)[:, None, :] + (m[:, 1, 1, None] * ys + m[:, 1, 2, None])[
        :, :, None
    ]
    inside = ((px >= 0) & (px < w) & (py >= 0) & (py < h)).unsqueeze(1)
    # PIL bilinear_filter8: shift to pixel-index space, lerp in double with border-clamped
    # neighbours, truncate to uint8. A 1-pixel replicate pad makes the clamp implicit: for every
    # inside point floor(fx) is in [-1, w-1], so the four taps are tl, tl+1, tl+wp, tl+wp+1.
    wp = w + 2
    fx, fy = px - 0.5, py - 0.5
    x0, y0 = fx.floor(), fy.floor()
    dx, dy = (fx - x0).unsqueeze(1), (fy - y0).unsqueeze(1)
    x0.add_(1.0).clamp_(0.0, w)
    y0.add_(1.0).clamp_(0.0, h)
    tl = y0.mul_(wp).add_(x0).to(torch.int64).view(n, 1, h * w).expand(n, c, h * w)
    src = torch.cat((x[:, :, :1], x, x[:, :, -1:]), dim=2)
    src = torch.cat((src[..., :1], src, src[..., -1:]), dim=3).to(torch.float64).view(n, c, -1)
    top_l = torch.gather(src, 2, tl).view(n, c, h, w)
    top_r = torch.gather(src, 2, tl + 1).view(n, c, h, w)
    bot_l = torch.gather(src, 2, tl + wp).view(n, c, h, w)
    bot_r = torch.gather(src, 2, tl + (wp + 1)).view(n, c, h, w)
    v1 = top_l + (top_r - top_l) * dx
    v2 = bot_l + (bot_r - bot_l) * dx
    out = (v1 + (v2 - v1) * dy).clamp_(0.0, 255.0).to(torch.uint8)
    return torch.where(inside, out, fill_v.to(torch.uint8))


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with SMOOTH-filtered image (borders unfiltered)."""
    n, c, h, w = x.shape
    xf = x.to(torch.float32)
    # SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 = (3x3 box sum + 4 centre) / 13, on the interior;
    # integer sums are exact in float32, and sum/13 + 0.5 is never within 1/26 of an integer.
    rows = xf[:, :, :-2] + xf[:, :, 1:-1] + xf[:, :, 2:]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = box.add_(xf[:, :, 1:-1, 1:-1], alpha=4.0)
    smooth = torch.floor(smooth.div_(13.0).add_(0.5)).clamp_(0.0, 255.0)
    degenerate = xf.clone()
    degenerate[:, :, 1 : h - 1, 1 : w - 1] = smooth
    return _blend(degenerate, xf, factor.view(n, 1, 1, 1)).to(torch.uint8)


def _color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Color`` (identity on single-channel images)."""
    if x.shape[1] == 1:
        return x.clone()
    grey = _grey_l(x)
    return _blend(grey, x, factor.view(-1, 1, 1, 1)).to(torch.uint8)


def _cutout(
    x: torch.Tensor, pad: torch.Tensor, centre_u: torch.Tensor, fill: torch.Tensor
) -> torch.Tensor:
    """Official cutout: a (2 pad)-square (clipped at borders) at a uniform random centre."""
    n, c, h, w = x.shape
    dev = x.device
    cy = torch.floor(centre_u[:, 0] * h).clamp_(max=h - 1).to(dev)
    cx = torch.floor(centre_u[:, 1] * w).clamp_(max=w - 1).to(dev)
    p = pad.to(dev)
    rows = torch.arange(h, device=dev, dtype=torch.float64)
    cols = torch.arange(w, device=dev, dtype=torch.float64)
    in_r = (rows[None, :] >= (cy - p)[:, None]) & (rows[None, :] < (cy + p)[:, None])
    in_c = (cols[None, :] >= (cx - p)[:, None]) & (cols[None, :] < (cx + p)[:, None])
    mask = (in_r[:, :, None] & in_c[:, None, :]).unsqueeze(1)
    return torch.where(mask, fill.to(dev, x.dtype).view(1, c, 1, 1), x)


def _normalise_fill(fill: int | Sequence[int], channels: int) -> torch.Tensor:
    """Fill value(s) as a (C,) uint8 tensor; a scalar or 1-tuple broadcasts to every channel."""
    vals = [int(fill)] if isinstance(fill, int | float) else [int(v) for v in fill]
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels or any(v < 0 or v > 255 for v in vals):
        raise NSPError(
            f"fill={fill!r}: needs one value or {channels} values in 0..255 for "
            f"{channels}-channel images; pass e.g. fill=0 or fill={(128,) * channels}"
        )
    return torch.tensor(vals, dtype=torch.uint8)


def _check_images(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise NSPError(f"{name}: expected a uint8 tensor (B, C, H, W), got {got}; convert first")
    if x.shape[1] not in (1, 3):
        raise NSPError(
            f"{name}: expected 1 or 3 channels in dim 1 (channels-first), got shape "
            f"{tuple(x.shape)}; permute NHWC input with x.permute(0, 3, 1, 2)"
        )


# ---------------------------------------------------------------------------------------------
# RandAugment
# ---------------------------------------------------------------------------------------------


class RandAugmentBatch:
    """Per-sample RandAugment for uint8 (B, C, H, W) batches, C in {1, 3}.

    Args:
        num_ops: ops applied in sequence to each image (N in the paper).
        magnitude: shared magnitude M, on the official 0..``max_magnitude`` scale.
        magnitude_std: if > 0, each sample and layer draws M ~ N(magnitude, std), clipped to
            ``[0, max(max_magnitude, magnitude)]`` (timm's extension; the official code uses 0).
        max_magnitude: the level that maps to each op's full strength; the official code's
            ``_MAX_LEVEL`` is 10 (levels above it extrapolate linearly, as in the official code).
        fill: fill for pixels uncovered by affine ops and for Cutout: an int or a C-tuple
            (the official code uses 128).
        ops: op names to sample from; default :data:`OFFICIAL_OPS` (15, no Cutout);
            the official 32-px recipe uses :data:`OFFICIAL_32PX_OPS`. See :data:`ALL_OPS`.
        op_prob: probability each drawn op is applied (effectively 1.0 in the official code).
        mapping: ``"official"`` or ``"increasing"`` magnitude -> parameter table (module doc).
        interpolation: resampling for affine ops: ``"nearest"`` (official) or ``"bilinear"``.
        translate_frac: translation at full strength, as a fraction of the image side
            (official CIFAR/SVHN: ``image_size // 8`` pixels, i.e. 1/8).
        cutout_frac: Cutout half-side at full strength, as a fraction of the side (official 1/8).
    """

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
    ) -> None:
        if int(num_ops) != num_ops or num_ops < 0:
            raise NSPError(f"num_ops={num_ops!r}: must be an integer >= 0; use e.g. num_ops=2")
        if magnitude < 0 or magnitude_std < 0 or max_magnitude <= 0:
            raise NSPError(
                f"magnitude={magnitude}, magnitude_std={magnitude_std}, "
                f"max_magnitude={max_magnitude}: need magnitude >= 0, magnitude_std >= 0, "
                "max_magnitude > 0; use e.g. magnitude=9, max_magnitude=10"
            )
        if not 0.0 <= op_prob <= 1.0:
            raise NSPError(f"op_prob={op_prob}: must lie in [0, 1]; use op_prob=1.0 (official)")
        if mapping not in ("official", "increasing"):
            raise NSPError(f"mapping={mapping!r}: use 'official' or 'increasing'")
        if interpolation not in ("nearest", "bilinear"):
            raise NSPError(f"interpolation={interpolation!r}: use 'nearest' or 'bilinear'")
        names = tuple(OFFICIAL_OPS if ops is None else ops)
        unknown = [o for o in names if o not in ALL_OPS]
        if unknown or not names or len(set(names)) != len(names):
            raise NSPError(
                f"ops={list(names)!r}: unknown, repeated or empty op list; "
                f"choose distinct names from {', '.join(ALL_OPS)}"
            )
        n_fill = 1 if isinstance(fill, int | float) else len(fill)
        _normalise_fill(fill, n_fill)  # range check now; the channel count is checked per call
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.max_magnitude = float(max_magnitude)
        self.fill = fill
        self.ops = names
        self.op_prob = float(op_prob)
        self.mapping: Mapping = mapping
        self.interpolation: Interpolation = interpolation
        self.translate_frac = float(translate_frac)
        self.cutout_frac = float(cutout_frac)
        self._table_cache: dict[tuple[object, ...], torch.Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"RandAugmentBatch(num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"magnitude_std={self.magnitude_std}, max_magnitude={self.max_magnitude}, "
            f"fill={self.fill!r}, mapping={self.mapping!r}, interpolation={self.interpolation!r}, "
            f"op_prob={self.op_prob}, ops={self.ops!r})"
        )

    # -- parameter mapping --------------------------------------------------------------------

    def _op_param(
        self, op: str, magnitude: torch.Tensor, sign: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        size = {"TranslateY": height, "Cutout": min(height, width)}.get(op, width)
        return level_to_arg(
            op,
            magnitude,
            sign=sign,
            max_magnitude=self.max_magnitude,
            mapping=self.mapping,
            image_size=size,
            translate_frac=self.translate_frac,
            cutout_frac=self.cutout_frac,
        )

    def _layer_params(
        self,
        names: Sequence[str],
        op_idx: torch.Tensor,
        mags: torch.Tensor,
        signs: torch.Tensor,
        uniform_magnitude: float | None,
        height: int,
        width: int,
    ) -> torch.Tensor:
        """Per-sample op parameter (B,) float64 (0 where op_idx is -1)."""
        if uniform_magnitude is not None:
            # One magnitude for everyone: a cached (2, 1 + n_ops) table for sign +1 / -1.
            key = (tuple(names), uniform_magnitude, height, width)
            table = self._table_cache.get(key)
            if table is None:
                m = torch.tensor(uniform_magnitude, dtype=torch.float64)
                table = torch.tensor(
                    [
                        [0.0] + [float(self._op_param(o, m, sgn, height, width)) for o in names]
                        for sgn in (torch.tensor(1.0), torch.tensor(-1.0))
                    ],
                    dtype=torch.float64,
                )
                if len(self._table_cache) > 64:
                    self._table_cache.clear()
                self._table_cache[key] = table
            return table[(signs < 0).long(), op_idx + 1]
        params = torch.zeros_like(mags)
        for k in torch.unique(op_idx).tolist():
            if k >= 0:
                value = self._op_param(names[k], mags, signs, height, width)
                params = torch.where(op_idx == k, value, params)
        return params

    # -- public API ---------------------------------------------------------------------------

    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        return_ops: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Augment a uint8 (B, C, H, W) batch; returns a new uint8 tensor of the same shape.

        With ``return_ops=True`` also returns a (B, num_ops) int64 tensor of indices into
        ``self.ops`` (-1 where the drawn op was skipped by ``op_prob``), in application order.
        Randomness comes only from ``generator`` (CPU), so a seeded generator is deterministic.
        """
        _check_images(x)
        b = x.shape[0]
        fill = _normalise_fill(self.fill, x.shape[1])
        n_layers = self.num_ops
        op_idx = torch.randint(len(self.ops), (b, n_layers), generator=generator)
        mags = torch.full((b, n_layers), self.magnitude, dtype=torch.float64)
        uniform: float | None = self.magnitude
        if self.magnitude_std > 0:
            noise = torch.randn((b, n_layers), generator=generator, dtype=torch.float64)
            upper = max(self.max_magnitude, self.magnitude)
            mags = (mags + self.magnitude_std * noise).clamp_(0.0, upper)
            uniform = None
        signs = torch.where(torch.rand((b, n_layers), generator=generator) < 0.5, -1.0, 1.0)
        signs = signs.to(torch.float64)
        if self.op_prob < 1.0:
            applied = torch.rand((b, n_layers), generator=generator) < self.op_prob
            op_idx = torch.where(applied, op_idx, torch.full_like(op_idx, -1))
        centres = torch.rand((b, n_layers, 2), generator=generator, dtype=torch.float64)
        out = x.contiguous()
        for layer in range(n_layers):
            out = self._apply_layer(
                out,
                self.ops,
                op_idx[:, layer],
                mags[:, layer],
                signs[:, layer],
                centres[:, layer],
                fill,
                uniform,
            )
        if out is x:
            out = x.clone()
        if return_ops:
            return out, op_idx
        return out

    def apply_op(
        self,
        x: torch.Tensor,
        op: str,
        magnitude: float | torch.Tensor | None = None,
        *,
        sign: float | torch.Tensor = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Apply one op to every sample of ``x`` (magnitude/sign scalar or per-sample (B,))."""
        _check_images(x)
        if op not in ALL_OPS:
            raise NSPError(f"op {op!r}: unknown RandAugment op; use one of {', '.join(ALL_OPS)}")
        b = x.shape[0]
        fill = _normalise_fill(self.fill, x.shape[1])
        m = self.magnitude if magnitude is None else magnitude
        mags = torch.as_tensor(m, dtype=torch.float64).expand(b).clone()
        signs = torch.as_tensor(sign, dtype=torch.float64).expand(b).clone()
        centres = torch.rand((b, 2), generator=generator, dtype=torch.float64)
        op_idx = torch.zeros(b, dtype=torch.int64)
        out = self._apply_layer(x.contiguous(), (op,), op_idx, mags, signs, centres, fill, None)
        return x.clone() if out is x else out

    # -- one layer ----------------------------------------------------------------------------

    def _apply_layer(
        self,
        x: torch.Tensor,
        names: Sequence[str],
        op_idx: torch.Tensor,
        mags: torch.Tensor,
        signs: torch.Tensor,
        centres: torch.Tensor,
        fill: torch.Tensor,
        uniform_magnitude: float | None,
    ) -> torch.Tensor:
        """Apply each sample's op ``names[op_idx]`` (-1 = none); returns a new tensor or ``x``.

        Each op family runs once on the samples that drew it (gathered with ``index_select``);
        the results and the untouched samples are concatenated and put back in batch order with
        one more ``index_select``.
        """
        b, c, h, w = x.shape
        dev = x.device
        fam_table = torch.tensor([_FAMILY["Identity"]] + [_FAMILY[o] for o in names])
        fam = fam_table[op_idx + 1]
        counts = torch.bincount(fam, minlength=len(_FAMILY_NAMES)).tolist()
        if counts[0] == b:
            return x
        params = self._layer_params(names, op_idx, mags, signs, uniform_magnitude, h, w)
        row_parts: list[torch.Tensor] = []
        out_parts: list[torch.Tensor] = []
        for code, count in enumerate(counts):
            if count == 0:
                continue
            idx = (fam == code).nonzero().squeeze(1)
            rows = idx.to(dev)
            xs = x.index_select(0, rows)
            family = _FAMILY_NAMES[code]
            if family == "identity":
                ys = xs
            elif family == "lut":
                ys = self._lut_family(xs, names, op_idx[idx], params[idx])
            elif family == "affine":
                mats = _affine_matrices(op_idx[idx], params[idx], names, h, w)
                ys = warp_affine(xs, mats, fill=fill, interpolation=self.interpolation)
            elif family == "color":
                ys = _color(xs, params[idx].to(dev))
            elif family == "sharpness":
                ys = _sharpness(xs, params[idx].to(dev))
            else:
                ys = _cutout(xs, params[idx], centres[idx], fill)
            row_parts.append(rows)
            out_parts.append(ys)
        order = torch.cat(row_parts)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(b, device=dev)
        return torch.cat(out_parts).index_select(0, inverse)

    def _lut_family(
        self, xs: torch.Tensor, names: Sequence[str], ids: torch.Tensor, ps: torch.Tensor
    ) -> torch.Tensor:
        """LUT-family ops on their samples: build (n, C, 256) tables, apply with one gather."""
        n, c, h, w = xs.shape
        dev = xs.device
        ids = ids.to(dev)
        ps = ps.to(dev)
        ramp = torch.arange(256, dtype=torch.float64, device=dev).view(1, 1, 256)
        lut = torch.arange(256, dtype=torch.uint8, device=dev).repeat(n, c, 1)
        for k in torch.unique(ids).tolist():
            op = names[k]
            rows = (ids == k).nonzero().squeeze(1)
            image_dependent = op in ("AutoContrast", "Equalize", "Contrast")
            sub_x = xs.index_select(0, rows) if image_dependent else xs[:0]
            sub = self._lut(op, sub_x, ps.index_select(0, rows), ramp)
            lut.index_copy_(0, rows, sub.to(torch.uint8).expand(len(rows), c, 256))
        # one flat lookup with int32 indices (row * 256 + pixel): 4 bytes per pixel instead of the 8 of
        # gather's int64 index, ~3.5x faster at 224 px, the same bytes out
        rows_off = torch.arange(n * c, dtype=torch.int32, device=dev).mul_(256).view(n * c, 1)
        idx = xs.reshape(n * c, h * w).to(torch.int32).add_(rows_off)
        return lut.reshape(-1).index_select(0, idx.view(-1)).view(n, c, h, w)

    @staticmethod
    def _lut(op: str, xs: torch.Tensor, p: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
        """Per-sample float64 LUTs (n, C or 1, 256) for one LUT-family op (``xs`` is only read
        by the image-dependent ops; the others need just the parameters ``p``)."""
        n, c = p.shape[0], xs.shape[1]
        pv = p.view(n, 1, 1)
        if op == "AutoContrast":
            return _lut_autocontrast(xs, ramp)
        if op == "Equalize":
            return _lut_equalize(xs, ramp)
        if op == "Invert":
            return (255.0 - ramp).expand(n, 1, 256)
        if op == "Posterize":
            q = torch.pow(2.0, 8.0 - pv)
            return torch.floor(ramp / q) * q
        if op == "Solarize":
            return torch.where(ramp < pv, ramp, 255.0 - ramp)
        if op == "SolarizeAdd":
            return torch.where(ramp < 128.0, (ramp + pv).clamp(max=255.0), ramp)
        if op == "Brightness":
            return _blend(torch.zeros_like(ramp), ramp, pv).double()
        if op == "Contrast":
            grey = _grey_l(xs) if c == 3 else xs.to(torch.int32)
            mean = grey.reshape(n, -1).to(torch.float64).mean(dim=1)
            mean = torch.floor(mean + 0.5).view(n, 1, 1)
            return _blend(mean, ramp, pv).double()
        raise AssertionError(op)


_FAMILY_NAMES = ("identity", "lut", "affine", "color", "sharpness", "cutout")
_FAMILY: dict[str, int] = {
    **{op: 1 for op in LUT_OPS},
    **{op: 2 for op in AFFINE_OPS},
    "Identity": 0,
    "Color": 3,
    "Sharpness": 4,
    "Cutout": 5,
}


# ---------------------------------------------------------------------------------------------
# Crop-with-padding + horizontal flip, and standalone cutout
# ---------------------------------------------------------------------------------------------


def random_crop_flip(
    x: torch.Tensor,
    pad: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
    *,
    padding_mode: Literal["reflect", "constant"] = "reflect",
    fill: int | Sequence[int] = 0,
) -> torch.Tensor:
    """Random crop of each sample from its ``pad``-padded version, then optional random h-flip.

    The official small-image pipeline pads 4 px with REFLECT (mirror without repeating the edge)
    and flips left/right with probability 0.5 except on SVHN. One gather for the whole batch.
    """
    _check_images(x)
    n, c, h, w = x.shape
    if pad < 0 or pad >= min(h, w):
        raise NSPError(f"pad={pad}: must be in [0, {min(h, w) - 1}] for {h}x{w} images; use pad=4")
    if padding_mode not in ("reflect", "constant"):
        raise NSPError(f"padding_mode={padding_mode!r}: use 'reflect' or 'constant'")
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    flips = torch.rand((n,), generator=generator).to(dev) < 0.5
    if not flip:
        flips = torch.zeros_like(flips)
    rows = torch.arange(h, device=dev)[None, :] + oy[:, None] - pad  # (n, h)
    cols_plain = torch.arange(w, device=dev)[None, :]
    cols = torch.where(flips[:, None], (w - 1) - cols_plain, cols_plain) + ox[:, None] - pad
    if padding_mode == "reflect":
        rows_src = torch.where(rows < 0, -rows, torch.where(rows > h - 1, 2 * (h - 1) - rows, rows))
        cols_src = torch.where(cols < 0, -cols, torch.where(cols > w - 1, 2 * (w - 1) - cols, cols))
    else:
        rows_src, cols_src = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    idx = (rows_src[:, :, None] * w + cols_src[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    out = torch.gather(x.reshape(n, c, h * w), 2, idx).view(n, c, h, w)
    if padding_mode == "constant":
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        fill_v = _normalise_fill(fill, c).to(dev).view(1, c, 1, 1)
        out = torch.where(inside.unsqueeze(1), out, fill_v)
    return out


def random_cutout(
    x: torch.Tensor,
    pad_size: int,
    fill: int | Sequence[int] = 128,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Official post-RandAugment cutout: a (2 pad_size)-square at a uniform centre, per sample.

    The square is clipped at the image border (the centre is uniform over all pixels). The official
    CIFAR/SVHN pipeline applies it always, after RandAugment and before crop/flip, with
    ``pad_size = image_size // 4`` (a 16-px square at 32 px) and fill 128 (``noise.recipe: official``).
    """
    _check_images(x)
    n, c = x.shape[:2]
    centres = torch.rand((n, 2), generator=generator, dtype=torch.float64)
    pad = torch.full((n,), float(pad_size), dtype=torch.float64)
    return _cutout(x, pad, centres, _normalise_fill(fill, c))
