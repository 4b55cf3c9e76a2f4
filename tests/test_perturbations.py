"""CIFAR-10-P style perturbation sequences: shapes, seeding, parameters and frame structure."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from nsp.errors import NSPError
from nsp.robustness import cv_ops
from nsp.robustness import perturbations as P
from nsp.robustness.metrics import is_noise_perturbation

EXPECTED_FRAMES = {
    "gaussian_noise": 31,
    "shot_noise": 31,
    "motion_blur": 21,
    "zoom_blur": 31,
    "snow": 31,
    "spatter": 31,
    "brightness": 31,
    "translate": 16,
    "rotate": 31,
    "tilt": 31,
    "scale": 31,
    "speckle_noise": 31,
    "gaussian_blur": 31,
    "shear": 31,
}
RANDOM = {"gaussian_noise", "shot_noise", "speckle_noise", "snow", "spatter"}
# perturbations that treat the channels alike (so R=G=B stays grey)
CHANNEL_BLIND = set(P.PERTURBATIONS) - {"gaussian_noise", "shot_noise", "speckle_noise", "spatter"}


def _images(n: int = 6, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random colour images with a bright off-centre square (asymmetric content)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 4, 4, 3))
    yy = np.linspace(0, 3, h)
    xx = np.linspace(0, 3, w)
    y0, x0 = np.floor(yy).astype(int).clip(0, 2), np.floor(xx).astype(int).clip(0, 2)
    fy, fx = (yy - y0)[None, :, None, None], (xx - x0)[None, None, :, None]
    top = coarse[:, y0][:, :, x0] * (1 - fx) + coarse[:, y0][:, :, x0 + 1] * fx
    bot = coarse[:, y0 + 1][:, :, x0] * (1 - fx) + coarse[:, y0 + 1][:, :, x0 + 1] * fx
    img = top * (1 - fy) + bot * fy
    img[:, h // 5 : h // 5 + h // 4, w // 6 : w // 6 + w // 3] = 240.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def imgs() -> np.ndarray:
    return _images()


@pytest.fixture(scope="module")
def seqs(imgs) -> dict[str, np.ndarray]:
    return {name: P.perturb_sequence(imgs, name=name, seed=3) for name in P.PERTURBATIONS}


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_public_constants():
    assert P.PERTURBATIONS[: len(P.TEST_PERTURBATIONS)] == P.TEST_PERTURBATIONS
    assert (
        P.PERTURBATIONS[-3:]
        == P.VALIDATION_PERTURBATIONS
        == (
            "speckle_noise",
            "gaussian_blur",
            "shear",
        )
    )
    assert set(P.PERTURBATIONS) == set(EXPECTED_FRAMES)
    for name in P.PERTURBATIONS + P.EXTRA_NOISE_LEVELS:
        assert (name in P.NOISE_PERTURBATIONS) == is_noise_perturbation(name)
    assert {n: P.num_frames(n) for n in P.PERTURBATIONS} == EXPECTED_FRAMES
    assert all(P.num_frames(n) == 31 for n in P.EXTRA_NOISE_LEVELS)


@pytest.mark.parametrize("name", P.PERTURBATIONS)
def test_shape_dtype_and_frames_differ(name, imgs, seqs):
    s = seqs[name]
    assert s.dtype == np.uint8
    assert s.shape == (imgs.shape[0], EXPECTED_FRAMES[name]) + imgs.shape[1:]
    # consecutive frames are not all identical: the sequence really moves
    changes = [_mad(s[:, t], s[:, t + 1]) for t in range(s.shape[1] - 1)]
    assert min(changes) > 0.0, name
    # a perturbation, not a replacement: the frames stay close to the image on average
    assert _mad(s.mean(axis=1).astype(np.uint8), imgs) < 60, name


@pytest.mark.parametrize("name", P.PERTURBATIONS)
def test_determinism_and_seeding(name, imgs, seqs):
    again = P.perturb_sequence(imgs, name=name, seed=3)
    np.testing.assert_array_equal(again, seqs[name])
    other = P.perturb_sequence(imgs, name=name, seed=4)
    if name in RANDOM:
        assert not np.array_equal(other, seqs[name])
    else:
        np.testing.assert_array_equal(other, seqs[name])


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_chunked_generation_with_index_offset_is_identical(name, imgs, seqs):
    parts = [
        P.perturb_sequence(imgs[:2], name=name, seed=3),
        P.perturb_sequence(imgs[2:5], name=name, seed=3, index_offset=2),
        P.perturb_sequence(imgs[5:], name=name, seed=3, index_offset=5),
    ]
    np.testing.assert_array_equal(np.concatenate(parts), seqs[name])
    # per-image streams: the same image at another position gets other noise
    shifted = P.perturb_sequence(imgs[:2], name=name, seed=3, index_offset=1)
    assert not np.array_equal(shifted[0], seqs[name][0])


@pytest.mark.parametrize(
    "name, std255",
    [
        ("gaussian_noise", 0.02 * 255),
        ("gaussian_noise_3", 0.06 * 255),
        ("shot_noise", math.sqrt(128 / 255 * 700) / 700 * 255),
        ("shot_noise_2", math.sqrt(128 / 255 * 400) / 400 * 255),
        ("speckle_noise", 128 / 255 * 0.05 * 255),
        ("speckle_noise_3", 128 / 255 * 0.10 * 255),
    ],
)
def test_noise_sequences_first_frame_clean_and_noise_level(name, std255):
    grey = np.full((16, 16, 16, 3), 128, dtype=np.uint8)
    s = P.perturb_sequence(grey, name=name, seed=0)
    np.testing.assert_array_equal(s[:, 0], grey)  # frame 0 is the clean image
    d = s[:, 1:].astype(np.float64) - 128.0
    # truncation adds variance 1/12 and shifts the mean by -1/2
    assert d.std() == pytest.approx(math.sqrt(std255**2 + 1 / 12), rel=0.03)
    assert -0.7 < d.mean() < -0.3
    # every noisy frame is an independent draw
    assert all(not np.array_equal(s[:, t], s[:, t + 1]) for t in range(1, 30))


def test_translate_is_a_shift_growing_from_the_centre_frame(imgs, seqs):
    s = seqs["translate"]
    np.testing.assert_array_equal(s[:, 7], imgs)  # shift 0
    np.testing.assert_array_equal(s[:, 8, :, 1:], imgs[:, :, :-1])  # shift +1 to the right
    assert np.all(s[:, 8, :, 0] == 0)  # black fill
    np.testing.assert_array_equal(s[:, 0, :, :-7], imgs[:, :, 7:])  # shift -7
    mad = [_mad(s[:, t], imgs) for t in range(8, 16)]
    assert all(b > a for a, b in zip(mad, mad[1:], strict=False))


@pytest.mark.parametrize("name, centre", [("rotate", 15), ("shear", 15), ("scale", 15)])
def test_geometric_identity_frame_and_monotone_difficulty(name, centre, imgs, seqs):
    s = seqs[name]
    np.testing.assert_array_equal(s[:, centre], imgs)
    right = [_mad(s[:, t], imgs) for t in range(centre, 31, 3)]
    left = [_mad(s[:, t], imgs) for t in range(centre, -1, -3)]
    for mad in (right, left):
        assert all(b > a for a, b in zip(mad, mad[1:], strict=False)), (name, mad)


def test_zoom_blur_and_gaussian_blur_grow_monotonically(imgs, seqs):
    z = seqs["zoom_blur"]
    np.testing.assert_array_equal(z[:, 0], imgs)
    mad = [_mad(z[:, t], imgs) for t in range(0, 31, 5)]
    assert all(b > a for a, b in zip(mad, mad[1:], strict=False)), mad
    g = seqs["gaussian_blur"]
    mad = [_mad(g[:, t], imgs) for t in range(0, 31, 5)]
    assert all(b > a for a, b in zip(mad, mad[1:], strict=False)), mad


def test_brightness_identity_centre_and_monotone(imgs, seqs):
    s = seqs["brightness"]
    np.testing.assert_array_equal(s[:, 15], imgs)
    means = s.reshape(s.shape[0], s.shape[1], -1).mean(axis=(0, 2))
    assert np.all(np.diff(means) > 0)
    # HSV value shift: the brightest channel V*255 = k becomes trunc(k + 255 * c)
    vmax = s.max(axis=-1).astype(np.int16)
    inner = (imgs.max(-1) > 20) & (imgs.max(-1) < 200)
    for frame, shift in ((16, 3), (17, 7), (25, 38), (14, -4), (0, -58)):
        c = (frame - 15) * 1.5 / 100.0
        assert math.floor(255 * c + 1e-9) == shift
        assert np.all((vmax[:, frame] - imgs.max(-1))[inner] == shift), frame


def test_tilt_sweeps_through_the_centre(imgs, seqs):
    s = seqs["tilt"]
    near = _mad(s[:, 15], s[:, 16])
    assert _mad(s[:, 15], s[:, 0]) > 3 * near
    assert _mad(s[:, 15], s[:, 30]) > 3 * near
    assert _mad(s[:, 0], s[:, 30]) > _mad(s[:, 15], s[:, 30])


def test_blurs_keep_flat_images_flat():
    flat = np.full((2, 16, 16, 3), 77, dtype=np.uint8)
    for name in ("motion_blur", "gaussian_blur", "zoom_blur"):
        s = P.perturb_sequence(flat, name=name)
        assert np.all(s == 77), name


def test_motion_blur_direction_changes_with_angle(imgs, seqs):
    s = seqs["motion_blur"]
    # angle -180 and 0 smear in opposite horizontal directions
    assert _mad(s[:, 0], s[:, 20]) > 1.0
    assert _mad(s[:, 10], imgs) > 1.0


def test_snow_brightens_and_spatter_tints_turquoise(imgs, seqs):
    snow = seqs["snow"].astype(np.float64)
    assert snow.mean() > imgs.mean() + 5
    sp = seqs["spatter"].astype(np.float64) - imgs[:, None].astype(np.float64)
    assert np.all(sp >= 0)  # water only adds light
    gain = sp.reshape(-1, 3).sum(axis=0)
    assert gain[1] > gain[0] and gain[2] > gain[0]  # (175, 238, 238): more green/blue than red
    # the liquid drips: the spatter mask moves between first and last frame
    assert _mad(seqs["spatter"][:, 0], seqs["spatter"][:, 30]) > 0


@pytest.mark.parametrize("name", P.PERTURBATIONS)
def test_grey_in_grey_out(name):
    grey3 = np.repeat(_images(3, 20, 24, seed=1).mean(-1, keepdims=True).astype(np.uint8), 3, -1)
    s3 = P.perturb_sequence(grey3, name=name, seed=2)
    s1 = P.perturb_sequence(grey3[..., :1], name=name, seed=2)
    assert s1.shape == (3, EXPECTED_FRAMES[name], 20, 24, 1)
    if name in CHANNEL_BLIND:
        assert np.array_equal(s3[..., 0], s3[..., 1]) and np.array_equal(s3[..., 1], s3[..., 2])
        np.testing.assert_array_equal(s1, s3[..., :1])


def test_geometry_matches_torchvision_affine():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    x = _images(2, seed=7)
    cases = {
        "rotate": lambda i: {"angle": i - 15, "scale": 1.0, "shear": 0.0},
        "shear": lambda i: {"angle": 0, "scale": 1.0, "shear": i - 15},
        "scale": lambda i: {"angle": 0, "scale": (i * 2 + 70) / 100.0, "shear": 0.0},
    }
    for name, params in cases.items():
        ours = P.perturb_sequence(x, name=name)
        ref = np.stack(
            [
                np.stack(
                    [
                        np.asarray(
                            tvf.affine(
                                Image.fromarray(img),
                                translate=[0, 0],
                                interpolation=InterpolationMode.BILINEAR,
                                **params(i),
                            )
                        )
                        for i in range(31)
                    ]
                )
                for img in x
            ]
        )
        diff = np.abs(ours.astype(np.int16) - ref)
        assert diff.max() <= 1, name
        assert (diff > 0).mean() <= 0.005, name


def test_cv_ops_equalize_hist_is_opencvs_per_image_lut():
    """The shared ``equalizeHist`` (used by the -C and the -P spatter) equals OpenCV's formula."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 16, 16)).astype(np.uint8)
    img[1] = rng.integers(40, 60, (16, 16))  # narrow histogram
    img[2] = 77  # one grey level: left as it is
    for ours, x in zip(cv_ops.equalize_hist(img), img, strict=True):
        hist = np.bincount(x.ravel(), minlength=256)
        lo = int(np.flatnonzero(hist)[0])
        if hist[lo] == x.size:
            np.testing.assert_array_equal(ours, x)
            continue
        lut = np.rint((np.cumsum(hist) - hist[lo]) * (255.0 / (x.size - hist[lo])))
        lut[: lo + 1] = 0
        np.testing.assert_array_equal(ours, lut[x].astype(np.uint8))


def test_cv_ops_canny_tie_rule_only_adds_edges():
    """-P spatter keeps its non-strict diagonal tie rule; OpenCV's strict one (-C) finds a subset."""
    rng = np.random.default_rng(0)
    img = (rng.integers(0, 4, (8, 32, 32)) * 60).astype(np.uint8)
    strict = cv_ops.canny(img, 50, 150)
    loose = cv_ops.canny(img, 50, 150, strict_diagonal=False)
    assert strict.any() and not (strict & ~loose).any() and (loose & ~strict).any()
    flat = np.full((2, 16, 16), 9, np.uint8)
    assert not cv_ops.canny(flat, 50, 150).any()


def test_bad_input_raises_one_line_errors(imgs):
    with pytest.raises(NSPError, match="unknown"):
        P.perturb_sequence(imgs, name="fog")
    with pytest.raises(NSPError, match="uint8"):
        P.perturb_sequence(imgs.astype(np.float32), name="rotate")
    with pytest.raises(NSPError, match="C in"):
        P.perturb_sequence(imgs[..., :2], name="rotate")
    with pytest.raises(NSPError, match="N, H, W, C"):
        P.perturb_sequence(imgs[0], name="rotate")
    with pytest.raises(NSPError, match="unknown"):
        P.num_frames("frost")


@pytest.mark.slow
def test_thousand_images_all_perturbations_under_a_minute():
    x = np.concatenate([_images(100, seed=s) for s in range(10)])
    start = time.perf_counter()
    for name in P.PERTURBATIONS:
        P.perturb_sequence(x, name=name)
    assert time.perf_counter() - start < 60.0
