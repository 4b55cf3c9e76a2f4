"""ImageNet-C / CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019), seeded and batched.

* Images below 224 px use the CIFAR-10-C tables (``make_cifar_c.py``), images of 224 px and more
  the ImageNet-C tables (``make_imagenet_c.py``). Images must be square uint8 (N,S,S,C), C in {1,3}.
* Like the reference, every float result is clipped and then *truncated* to uint8.
* Grey images (C=1) are corrupted as their 3-channel replica and converted back with the ITU-R 601
  luma ``round(0.299 R + 0.587 G + 0.114 B)`` (what Pillow's ``convert("L")`` does). For
  corruptions that treat the channels alike (blurs, zoom, contrast, ...) the replica's channels
  stay equal and the luma is exactly that value, so those are computed on one channel directly.
* Randomness is per image: image ``i`` of a call uses ``image_rng(seed, index_offset + i, name,
  severity)`` = ``np.random.default_rng([seed, index, corruption_id, severity])``, so its output
  does not depend on the batch it is in.
* Frost needs the texture files of the ``imagecorruptions`` wheel (``pip install --no-deps
  imagecorruptions``); the package itself is never imported.
* Motion blur (and the snow streaks) emulate ImageMagick's one-sided Gaussian line kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from nsp.errors import NSPError
from nsp.robustness import _c_batched as batched
from nsp.robustness import _c_reference as reference
from nsp.robustness._c_tables import params as _params

BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
HELDOUT_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + HELDOUT_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: Corruptions that use no randomness (bit-identical for any seed).
DETERMINISTIC_CORRUPTIONS: tuple[str, ...] = (
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
    "gaussian_blur",
    "saturate",
)

_CHUNK_PIXELS = 64 * 32 * 32  # images per chunk: 64 at 32 px, 1 at 224 px
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _check(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise NSPError(f"corruption name {name!r} is unknown; use one of {', '.join(CORRUPTIONS)}")
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int | np.integer)
        or not (1 <= int(severity) <= 5)
    ):
        raise NSPError(f"corruption severity {severity!r} is invalid; use an integer in 1..5")


def _check_images(images: np.ndarray, *, batched_input: bool) -> None:
    what = "images" if batched_input else "image"
    want = 4 if batched_input else 3
    shape_txt = "(N,H,W,C)" if batched_input else "(H,W,C)"
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != want:
        got = getattr(images, "dtype", type(images).__name__), getattr(images, "shape", "")
        raise NSPError(f"corrupt: {what} must be a uint8 array {shape_txt}, got {got}")
    h, w, c = images.shape[-3:]
    if c not in (1, 3):
        raise NSPError(f"corrupt: {what} must have 1 or 3 channels (last axis), got {c}")
    if h != w or h < 8:
        raise NSPError(f"corrupt: {what} must be square and at least 8 px, got {h}x{w}")


def corruption_id(name: str) -> int:
    """Stable integer id of a corruption (its index in :data:`CORRUPTIONS`)."""
    return CORRUPTIONS.index(name)


def image_rng(seed: int, index: int, name: str, severity: int) -> np.random.Generator:
    """The generator of image ``index`` for (seed, name, severity)."""
    return np.random.default_rng([int(seed), int(index), corruption_id(name), int(severity)])


def _to_uint8(out: np.ndarray) -> np.ndarray:
    if out.dtype == np.uint8:
        return out
    # every corruption clips to [0, 255] first: the cast truncates, like np.uint8(...)
    return out.astype(np.uint8)


def _luma(rgb_u8: np.ndarray) -> np.ndarray:
    lum = rgb_u8.astype(np.float64) @ _LUMA
    return np.clip(np.floor(lum + 0.5), 0, 255).astype(np.uint8)[..., None]


def corrupt_image(
    image: np.ndarray, *, name: str, severity: int, rng: np.random.Generator
) -> np.ndarray:
    """Corrupt one uint8 image (H,W,C), C in {1,3}, with the straightforward per-image code."""
    _check(name, severity)
    _check_images(image, batched_input=False)
    size = image.shape[0]
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    out = _to_uint8(reference.FUNCTIONS[name](rgb, _params(name, int(severity), size), rng, size))
    return _luma(out) if image.shape[2] == 1 else out


def corrupt(
    images: np.ndarray, *, name: str, severity: int, seed: int = 0, index_offset: int = 0
) -> np.ndarray:
    """Corrupt a uint8 batch (N,H,W,C), C in {1,3}; image i is seeded with index_offset + i."""
    _check(name, severity)
    _check_images(images, batched_input=True)
    n, size = images.shape[0], images.shape[1]
    severity = int(severity)
    if n == 0:
        return images.copy()
    p = _params(name, severity, size)
    rngs = None
    if name not in DETERMINISTIC_CORRUPTIONS:
        rngs = [image_rng(seed, index_offset + i, name, severity) for i in range(n)]
    grey = images.shape[3] == 1
    fn = batched.FUNCTIONS[name]
    # chunks keep the temporaries cache-sized (several times faster than one huge array);
    # the result does not depend on the chunking since every image has its own generator
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    parts = []
    for lo in range(0, n, chunk):
        block = images[lo : lo + chunk]
        brngs = None if rngs is None else rngs[lo : lo + chunk]
        if grey and name in batched.CHANNEL_SYMMETRIC:
            parts.append(_to_uint8(fn(block, p, brngs, size)))
            continue
        rgb = np.repeat(block, 3, axis=3) if grey else block
        out = _to_uint8(fn(rgb, p, brngs, size))
        parts.append(_luma(out) if grey else out)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _motion_blur(
    images: np.ndarray, *, severity: int, angle: float, batched_path: bool = True
) -> np.ndarray:
    """Motion blur with a fixed angle in degrees (for the fixed-angle oracle); uint8 (N,S,S,C)."""
    _check("motion_blur", severity)
    _check_images(images, batched_input=True)
    size = images.shape[1]
    p = _params("motion_blur", int(severity), size)
    if batched_path:
        return batched.motion_blur(images, p, None, size, angles=np.full(len(images), angle))
    return np.stack([reference.motion_blur(im, p, None, size, angle=angle) for im in images])


def build_c_set(
    images: np.ndarray,
    *,
    names: Sequence[str] = CORRUPTIONS,
    severities: Iterable[int] = SEVERITIES,
    seed: int = 0,
    progress: bool = True,
) -> dict[tuple[str, int], np.ndarray]:
    """Corrupt ``images`` with every (name, severity); returns {(name, severity): uint8 array}."""
    from tqdm.auto import tqdm

    severities = tuple(severities)
    for nm in names:
        for s in severities:
            _check(nm, s)
    _check_images(images, batched_input=True)
    jobs = [(nm, s) for nm in names for s in severities]
    out: dict[tuple[str, int], np.ndarray] = {}
    for nm, s in tqdm(jobs, desc="corruptions", disable=not progress, unit="set"):
        out[(nm, s)] = corrupt(images, name=nm, severity=s, seed=seed)
    return out
