"""Batched per-sample RandAugment vs the per-image PIL reference (nsp.noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nsp.errors import NSPError
from nsp.noise import (
    ALL_OPS,
    OFFICIAL_OPS,
    RandAugmentBatch,
    level_to_arg,
    random_crop_flip,
    random_cutout,
)
from nsp.noise.pil_reference import (
    PILRandAugment,
    PILRandAugmentDataset,
    pil_apply_op,
    pil_to_tensor,
    tensor_to_pil,
)
from nsp.noise.randaugment import AFFINE_OPS, is_signed

# Ops whose output depends only on (image, magnitude, sign): compared pixel by pixel.
DETERMINISTIC_OPS = tuple(o for o in ALL_OPS if o != "Cutout")
UNSIGNED_OFFICIAL = tuple(o for o in OFFICIAL_OPS if not is_signed(o, "official"))


def make_images(n: int, c: int, h: int = 20, w: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth random images plus noise (non-trivial histograms), one constant and one 2-level."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, c, 5, 6, generator=g) * 255
    x = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    x = x + torch.randn(n, c, h, w, generator=g) * 18
    x = x.clamp(0, 255).to(torch.uint8)
    x[0] = 77  # constant image: autocontrast / equalize must leave it alone
    x[1] = torch.where(torch.rand(c, h, w, generator=g) < 0.3, 10, 200).to(torch.uint8)
    return x


def pil_batch(x: torch.Tensor, op: str, magnitude: float, **kwargs: object) -> torch.Tensor:
    return torch.stack(
        [pil_to_tensor(pil_apply_op(tensor_to_pil(xi), op, magnitude, **kwargs)) for xi in x]
    )


# --------------------------------------------------------------------------- magnitude mapping


def test_level_to_arg_official_worked_examples() -> None:
    # Official noisystudent mapping, _MAX_LEVEL = 10, level 9, 32-px image, translate 32 // 8 px.
    def arg(op: str, m: float = 9.0, **kw: object) -> float:
        return float(level_to_arg(op, m, **kw))

    assert arg("Rotate") == pytest.approx(27.0)
    assert arg("Rotate", sign=-1.0) == pytest.approx(-27.0)
    assert arg("ShearX") == pytest.approx(0.27)
    assert arg("TranslateY", sign=-1.0) == pytest.approx(-3.6)
    assert arg("Posterize") == 3.0  # int(0.9 * 4)
    assert arg("Solarize") == 230.0  # int(0.9 * 256)
    assert arg("SolarizeAdd") == 99.0  # int(0.9 * 110)
    assert arg("Color") == pytest.approx(1.72)  # 0.9 * 1.8 + 0.1, never signed officially
    assert arg("Color", sign=-1.0) == pytest.approx(1.72)
    assert arg("Cutout") == 3.0  # int(0.9 * 32 // 8)
    # Level 0: enhance ops degenerate to 0.1, posterize's 0 bits act as 1 (TF shift clamp).
    assert arg("Brightness", 0.0) == pytest.approx(0.1)
    assert arg("Posterize", 0.0) == 1.0
    assert arg("Solarize", 0.0) == 0.0
    # Noisy Student's ImageNet level 27 extrapolates past _MAX_LEVEL like the official code.
    assert arg("Rotate", 27.0) == pytest.approx(81.0)
    assert arg("Posterize", 27.0) == 8.0


def test_level_to_arg_increasing_mapping() -> None:
    def arg(op: str, m: float = 9.0, **kw: object) -> float:
        return float(level_to_arg(op, m, mapping="increasing", **kw))

    assert arg("Posterize") == 5.0  # 8 - int(3.6)
    assert arg("Solarize") == 26.0  # 256 - 230
    assert arg("Contrast") == pytest.approx(1.81)
    assert arg("Contrast", sign=-1.0) == pytest.approx(0.19)
    assert arg("Sharpness", 0.0, sign=-1.0) == 1.0
    assert arg("Posterize", 0.0) == 8.0 and arg("Solarize", 0.0) == 256.0
    assert arg("TranslateX", 10.0, image_size=28, translate_frac=0.25) == pytest.approx(7.0)


# --------------------------------------------------------------------------- per-op vs PIL


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mapping", ["official", "increasing"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_each_op_matches_pil_pixels(channels: int, mapping: str, interpolation: str) -> None:
    """Deterministic ops at a fixed magnitude and sign equal PIL pixel for pixel.

    Both sides evaluate the same formulas (PIL's LUTs, float32 blends, float64 coordinates), so
    the only admissible difference is a float tie in bilinear resampling: at most 1 grey level
    on < 0.1% of pixels. Nearest-neighbour and all colour ops must be exact.
    """
    x = make_images(16, channels)
    fill = (7,) * channels
    for magnitude in (3.0, 9.0, 27.0):
        ra = RandAugmentBatch(fill=fill, mapping=mapping, interpolation=interpolation)
        for op in DETERMINISTIC_OPS:
            for sign in (1.0, -1.0) if is_signed(op, mapping) else (1.0,):
                got = ra.apply_op(x, op, magnitude, sign=sign)
                want = pil_batch(
                    x, op, magnitude, sign=sign, mapping=mapping, fill=fill,
                    interpolation=interpolation,
                )  # fmt: skip
                diff = (got.int() - want.int()).abs()
                where = f"{op} m={magnitude} sign={sign}"
                if interpolation == "bilinear" and op in AFFINE_OPS:
                    assert diff.max() <= 1, where
                    assert (diff > 0).float().mean() < 1e-3, where
                else:
                    assert diff.max() == 0, where


@pytest.mark.parametrize("channels", [1, 3])
def test_ops_match_pil_in_distribution(channels: int) -> None:
    """One random op (random sign, random cutout position) per image, batched vs PIL.

    Per op, compare the image-level statistics mean, std and mean |out - in| averaged over 200
    images. Both pipelines draw signs / positions independently, so each difference of means is
    tested against 4.5 standard errors sqrt(var_a / n + var_b / n) (plus 0.05 grey levels of
    slack for the exactly-equal deterministic ops).
    """
    x = make_images(200, channels, 24, 24, seed=3)
    g = torch.Generator().manual_seed(11)
    for op in ALL_OPS:
        ra = RandAugmentBatch(num_ops=1, magnitude=8.0, fill=0, ops=(op,))
        got = ra(x, generator=g)
        ref = PILRandAugment(num_ops=1, magnitude=8.0, fill=0, ops=(op,), seed=5)
        want = torch.stack([pil_to_tensor(ref(tensor_to_pil(xi))) for xi in x])
        for name, fn in (
            ("mean", lambda y: y.float().mean(dim=(1, 2, 3))),
            ("std", lambda y: y.float().std(dim=(1, 2, 3))),
            ("mad", lambda y: (y.float() - x.float()).abs().mean(dim=(1, 2, 3))),
        ):
            a, b = fn(got), fn(want)
            se = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
            assert abs(a.mean().item() - b.mean().item()) <= 4.5 * se + 0.05, (op, name)
        if op in AFFINE_OPS or op == "Cutout":  # actually random: the noise is visible
            assert (got.float() - x.float()).abs().mean() > 1.0, op


# --------------------------------------------------------------------------- per-sample routing


def test_samples_draw_their_own_ops_and_follow_them() -> None:
    """Identical inputs, different per-sample ops; each output = PIL chain of its recorded ops."""
    img = make_images(3, 3, seed=7)[2]
    x = img.expand(64, -1, -1, -1).contiguous()
    ra = RandAugmentBatch(num_ops=2, magnitude=7.0, ops=UNSIGNED_OFFICIAL)
    out, ops = ra(x, generator=torch.Generator().manual_seed(0), return_ops=True)
    assert ops.shape == (64, 2) and ops.dtype == torch.int64
    assert len({tuple(r) for r in ops.tolist()}) > 20
    assert len({tuple(o.flatten().tolist()) for o in out}) > 10
    for i in range(64):
        pil = tensor_to_pil(img)
        for k in ops[i].tolist():
            pil = pil_apply_op(pil, UNSIGNED_OFFICIAL[k], 7.0)
        assert torch.equal(out[i], pil_to_tensor(pil)), (i, ops[i].tolist())


@pytest.mark.parametrize(("op", "mapping"), [("Rotate", "official"), ("Brightness", "increasing")])
def test_signed_ops_draw_a_random_sign_per_sample(op: str, mapping: str) -> None:
    img = make_images(3, 3, seed=2)[2]
    x = img.expand(40, -1, -1, -1).contiguous()
    ra = RandAugmentBatch(num_ops=1, magnitude=6.0, ops=(op,), mapping=mapping)
    out = ra(x, generator=torch.Generator().manual_seed(0))
    plus, minus = (
        pil_to_tensor(pil_apply_op(tensor_to_pil(img), op, 6.0, sign=s, mapping=mapping))
        for s in (1.0, -1.0)
    )
    n_plus = sum(torch.equal(o, plus) for o in out)
    n_minus = sum(torch.equal(o, minus) for o in out)
    assert n_plus + n_minus == 40 and 8 < n_plus < 32


def test_magnitude_std_gives_per_sample_magnitudes() -> None:
    x = make_images(3, 1, seed=1)[2].expand(32, -1, -1, -1).contiguous()
    g = torch.Generator().manual_seed(4)
    ra = RandAugmentBatch(num_ops=1, magnitude=5.0, magnitude_std=3.0, ops=("Solarize",))
    out = ra(x, generator=g)
    # Same op everywhere; different thresholds give different outputs.
    assert len({tuple(o.flatten().tolist()) for o in out}) > 5
    fixed = RandAugmentBatch(num_ops=1, magnitude=5.0, ops=("Solarize",))(x, generator=g)
    assert len({tuple(o.flatten().tolist()) for o in fixed}) == 1


# --------------------------------------------------------------------------- identities


@pytest.mark.parametrize("channels", [1, 3])
def test_no_op_cases_leave_images_unchanged(channels: int) -> None:
    x = make_images(12, channels)
    g = torch.Generator().manual_seed(0)
    out = RandAugmentBatch(num_ops=0)(x, generator=g)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    assert torch.equal(RandAugmentBatch(num_ops=3, op_prob=0.0)(x, generator=g), x)
    # Magnitude 0 is the identity for these ops (official mapping) ...
    zero_ok = ("Identity", "Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
    zero_ok += ("SolarizeAdd", "Cutout")
    for interpolation in ("nearest", "bilinear"):
        ra = RandAugmentBatch(num_ops=4, magnitude=0.0, ops=zero_ok, interpolation=interpolation)
        assert torch.equal(ra(x, generator=g), x)
    # ... and, under the increasing mapping, also for posterize/solarize/enhance ops.
    inc_ok = zero_ok + ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness")
    ra = RandAugmentBatch(num_ops=4, magnitude=0.0, ops=inc_ok, mapping="increasing")
    assert torch.equal(ra(x, generator=g), x)
    # Whereas official level 0 is *not* the identity for e.g. Solarize (threshold 0 inverts).
    inv = RandAugmentBatch(magnitude=0.0).apply_op(x, "Solarize", 0.0)
    assert torch.equal(inv, 255 - x)


def test_grey_and_rgb_specifics() -> None:
    grey = make_images(8, 1)
    ra = RandAugmentBatch(fill=(5,))
    assert torch.equal(ra.apply_op(grey, "Color", 9.0), grey)  # no chroma in a grey image
    rot = ra.apply_op(grey, "Rotate", 10.0)  # 30 degrees: corners uncovered
    assert rot[:, :, 0, 0].eq(5).all()
    rgb = make_images(8, 3)
    rot = RandAugmentBatch(fill=(1, 2, 3)).apply_op(rgb, "Rotate", 10.0)
    assert rot[:, :, 0, 0].tolist() == [[1, 2, 3]] * 8
    with pytest.raises(NSPError, match="fill"):
        RandAugmentBatch(fill=(1, 2, 3))(grey)
    with pytest.raises(NSPError, match="fill"):
        RandAugmentBatch(fill=300)
    with pytest.raises(NSPError, match="uint8"):
        RandAugmentBatch()(grey.float())
    with pytest.raises(NSPError, match="channels"):
        RandAugmentBatch()(grey.permute(0, 2, 3, 1).expand(-1, -1, -1, 2))
    with pytest.raises(NSPError, match="ops"):
        RandAugmentBatch(ops=("Rotate", "Blur"))


def test_deterministic_given_seed() -> None:
    x = make_images(32, 3)
    ra = RandAugmentBatch(num_ops=3, magnitude=9.0, magnitude_std=1.0, op_prob=0.8,
                          ops=ALL_OPS)  # fmt: skip
    a, ops_a = ra(x, generator=torch.Generator().manual_seed(123), return_ops=True)
    b, ops_b = ra(x, generator=torch.Generator().manual_seed(123), return_ops=True)
    c, ops_c = ra(x, generator=torch.Generator().manual_seed(124), return_ops=True)
    assert torch.equal(a, b) and torch.equal(ops_a, ops_b)
    assert not torch.equal(ops_a, ops_c) and not torch.equal(a, c)
    assert (ops_a == -1).any()  # op_prob < 1 skips some draws


# --------------------------------------------------------------------------- crop / flip / cutout


def test_random_crop_flip() -> None:
    x = make_images(40, 3, 12, 12)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(x, pad=0, flip=False, generator=g), x)
    flipped = random_crop_flip(x, pad=0, flip=True, generator=g)
    is_same = [torch.equal(f, o) for f, o in zip(flipped, x, strict=True)]
    is_mirror = [torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x, strict=True)]
    assert all(s or m for s, m in zip(is_same, is_mirror, strict=True))
    assert 5 < sum(is_mirror) < 35
    # Each reflect-padded crop is one of the 9 x 9 windows of np.pad(..., "reflect").
    out = random_crop_flip(x, pad=4, flip=False, generator=g)
    offsets = set()
    for o, xi in zip(out, x, strict=True):
        padded = np.pad(xi.numpy(), ((0, 0), (4, 4), (4, 4)), mode="reflect")
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(padded[:, dy : dy + 12, dx : dx + 12], o.numpy())
        ]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 10
    const = random_crop_flip(x, pad=4, flip=True, generator=g, padding_mode="constant", fill=9)
    assert const.shape == x.shape and (const == 9).any()


def test_random_cutout_square_and_fill() -> None:
    x = torch.full((50, 1, 16, 16), 3, dtype=torch.uint8)
    out = random_cutout(x, pad_size=2, fill=200, generator=torch.Generator().manual_seed(0))
    filled = (out == 200).sum(dim=(1, 2, 3))
    assert (filled <= 16).all() and (filled > 0).all() and (filled == 16).sum() > 20


# --------------------------------------------------------------------------- PIL dataset


@pytest.mark.parametrize("channels", [1, 3])
def test_pil_dataset_returns_augmented_tensors(channels: int) -> None:
    x = make_images(6, channels).permute(0, 2, 3, 1).numpy()
    images = x[..., 0] if channels == 1 else x  # NHW grey is accepted too
    ds = PILRandAugmentDataset(images, np.arange(6), num_ops=2, magnitude=9.0, seed=1)
    ref = PILRandAugment(2, 9.0, seed=1)
    for i in (4, 0):  # same seed, same draw order -> same images as the plain PIL pipeline
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (channels, 20, 24)
        assert label.dtype == torch.int64 and int(label) == i
        want = pil_to_tensor(ref(tensor_to_pil(torch.from_numpy(x[i]).permute(2, 0, 1))))
        assert torch.equal(img, want)
    with pytest.raises(NSPError, match="labels"):
        PILRandAugmentDataset(images, np.arange(5))
