"""Batch-vectorised -C corruptions.

Each function takes a uint8 batch (N,S,S,C), the severity's parameter set, one generator per
image (``None`` for the deterministic corruptions) and the image size, and returns the corrupted
batch as float in [0, 255] (or uint8) before the final truncation. Per-image random numbers are
drawn exactly as in :mod:`nsp.robustness._c_reference`; the maths then runs on the whole batch.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color as skcolor

from nsp.robustness import _c_ops as ops
from nsp.robustness import _c_reference as ref

#: Corruptions whose result has equal channels for a grey input; computed on 1 channel.
CHANNEL_SYMMETRIC = frozenset(
    {
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
        "fog",
        "brightness",
        "contrast",
        "elastic_transform",
        "pixelate",
        "gaussian_blur",
    }
)


def _f64(x: np.ndarray) -> np.ndarray:
    return x / 255.0


def gaussian_noise(x, c, rngs, size):
    x = _f64(x)
    noise = np.stack([r.normal(size=x.shape[1:], scale=c) for r in rngs])
    return np.clip(x + noise, 0, 1) * 255


def shot_noise(x, c, rngs, size):
    lam = _f64(x) * c
    draws = np.stack([r.poisson(lam[i]) for i, r in enumerate(rngs)])
    return np.clip(draws / c, 0, 1) * 255


def impulse_noise(x, c, rngs, size):
    x = _f64(x)
    shape = x.shape[1:]
    hit = np.empty(x.shape, dtype=bool)
    salt = np.empty(x.shape, dtype=bool)
    for i, r in enumerate(rngs):
        hit[i] = r.random(shape) < c
        salt[i] = r.random(shape) < 0.5
    out = np.where(hit, np.where(salt, 1.0, 0.0), x)
    return np.clip(out, 0, 1) * 255


def speckle_noise(x, c, rngs, size):
    x = _f64(x)
    noise = np.stack([r.normal(size=x.shape[1:], scale=c) for r in rngs])
    return np.clip(x + x * noise, 0, 1) * 255


def gaussian_blur(x, c, rngs, size):
    return np.clip(ops.gaussian(_f64(x), c, axes=(1, 2)), 0, 1) * 255


def glass_blur(x, c, rngs, size):
    sigma, delta, iterations = c
    n = x.shape[0]
    x = np.uint8(ops.gaussian(_f64(x), sigma, axes=(1, 2)) * 255)
    offs = np.stack([ref.glass_offsets(r, size, delta, iterations) for r in rngs])  # N,I,P,2
    pos = np.arange(size - delta, delta, -1)
    hh = np.repeat(pos, len(pos))  # visiting order: h descending, then w descending
    ww = np.tile(pos, len(pos))
    ni = np.arange(n)[:, None]
    for it in range(iterations):
        dx, dy = offs[:, it, :, 0], offs[:, it, :, 1]
        if delta == 1:
            # offsets in {-1, 0}: every source is read before it is visited, so one
            # sequential pass equals a single gather from the pass's input
            x[ni, hh[None, :], ww[None, :]] = x[ni, hh[None, :] + dy, ww[None, :] + dx]
        else:
            rows = np.arange(n)
            for k in range(len(hh)):
                x[:, hh[k], ww[k]] = x[rows, hh[k] + dy[:, k], ww[k] + dx[:, k]]
    return np.clip(ops.gaussian(_f64(x), sigma, axes=(1, 2)), 0, 1) * 255


def defocus_blur(x, c, rngs, size):
    kernel = ops.disk_kernel(c[0], c[1])
    out = ndimage.correlate(_f64(x), kernel[None, :, :, None], mode="mirror")
    return np.clip(out, 0, 1) * 255


def motion_blur(x, c, rngs, size, angles=None):
    if angles is None:
        angles = np.array([r.uniform(-45, 45) for r in rngs])
    return ops.motion_blur_to_uint8(x, angles, c[1])


def zoom_blur(x, c, rngs, size):
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for z in c:
        m = ops.clipped_zoom_matrix(size, float(z))
        out += ops.apply_separable(x, m, m).astype(np.float32)
    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def fog(x, c, rngs, size):
    x = _f64(x)
    mapsize = ops.plasma_mapsize(size)
    total = sum(a * b for a, b in ops.plasma_shapes(mapsize))
    u = np.stack([r.random(total) for r in rngs])
    plasma = ops.plasma_fractal(u, mapsize, c[1])[:, :size, :size]
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + c[0] * plasma[..., None]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def frost(x, c, rngs, size):
    crops = np.stack([ref.frost_crop(r, size) for r in rngs])
    return np.clip(c[0] * x + c[1] * crops, 0, 255)


def snow(x, c, rngs, size):
    n = x.shape[0]
    x = np.asarray(x, dtype=np.float32) / 255.0
    layers = np.empty((n, size, size), dtype=np.float64)
    angles = np.empty(n)
    for i, r in enumerate(rngs):
        layers[i] = r.normal(size=(size, size), loc=c[0], scale=c[1])
        angles[i] = r.uniform(-135, -45)
    m = ops.clipped_zoom_matrix(size, float(c[2]))
    layers = ops.apply_separable(layers[..., None], m, m)[..., 0]
    layers[layers < c[3]] = 0
    layer8 = (np.clip(layers, 0, 1) * 255).astype(np.uint8)
    layer = ops.motion_blur_to_uint8(layer8[..., None], angles, c[5]) / 255.0
    gray = (
        np.float32(0.299) * x[..., 0]
        + np.float32(0.587) * x[..., 1]
        + np.float32(0.114) * x[..., 2]
    )
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
    return np.clip(x + layer + layer[:, ::-1, ::-1], 0, 1) * 255


def spatter(x, c, rngs, size):
    x = np.asarray(x, dtype=np.float32) / 255.0
    liquid = np.stack([r.normal(size=(size, size), loc=c[0], scale=c[1]) for r in rngs])
    liquid = ops.gaussian(liquid, c[2], axes=(1, 2))
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        with np.errstate(invalid="ignore", over="ignore"):
            liquid8 = (liquid * 255).astype(np.uint8)
        dist = ops.spatter_water_texture(liquid8)
        m = liquid8 * dist
        mx = m.max(axis=(1, 2), keepdims=True)
        m = np.divide(m, mx, out=np.zeros_like(m), where=mx > 0)
        m *= c[4]
        color = np.array([175, 238, 238], dtype=np.float32) / np.float32(255)
        return np.clip(x + m[..., None] * color, 0, 1) * 255
    m = np.where(liquid > c[3], 1, 0).astype(np.float32)
    m = ops.gaussian(m, c[4], axes=(1, 2))
    m[m < 0.8] = 0
    color = np.array([63, 42, 20], dtype=np.float32) / np.float32(255) * m[..., None]
    x = x * (1 - m[..., None])
    return np.clip(x + color, 0, 1) * 255


def contrast(x, c, rngs, size):
    x = _f64(x)
    means = np.mean(x, axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def brightness(x, c, rngs, size):
    if x.shape[3] == 1:  # grey: V = value, S = 0, so HSV -> RGB returns V unchanged
        return np.clip(np.clip(_f64(x) + c, 0, 1), 0, 1) * 255
    x = skcolor.rgb2hsv(_f64(x))
    x[..., 2] = np.clip(x[..., 2] + c, 0, 1)
    return np.clip(skcolor.hsv2rgb(x), 0, 1) * 255


def _saturate_pixels(x, c):
    x = skcolor.rgb2hsv(_f64(x))
    x[..., 1] = np.clip(x[..., 1] * c[0] + c[1], 0, 1)
    return np.clip(skcolor.hsv2rgb(x), 0, 1) * 255


def saturate(x, c, rngs, size):
    # A per-pixel map: on grey replicas (r = g = b) it depends on one byte, so a 256-entry table
    # computed by the same code is bit-identical and skips the HSV round trip of every image.
    if x.dtype == np.uint8 and (x == x[..., :1]).all():
        ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1), 3, axis=3)
        return _saturate_pixels(ramp, c)[0, 0][x[..., 0]]
    return _saturate_pixels(x, c)


def jpeg_compression(x, c, rngs, size):
    out = np.empty_like(x)
    for i, im in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=c)
        buf.seek(0)
        with Image.open(buf) as dec:
            out[i] = np.asarray(dec.convert("RGB"))
    return out


def pixelate(x, c, rngs, size):
    small = ops.pil_box_resize(x, int(size * c))
    return ops.pil_box_resize(small, size)


def elastic_transform(x, c, rngs, size):
    n = x.shape[0]
    alpha, sigma, jitter = ref.elastic_params(c, size)
    image = np.asarray(x, dtype=np.float32) / 255.0
    sy = np.empty((n, size, size))
    sx = np.empty((n, size, size))
    ux = np.empty((n, size, size))
    uy = np.empty((n, size, size))
    for i, r in enumerate(rngs):
        jit, ux[i], uy[i] = ref.elastic_draws(r, size, jitter)
        sy[i], sx[i] = ops.warp_source_coords(ref.elastic_affine(size, jit), size, size)
    image = ops.bilinear_sample(image, sy, sx, "mirror").astype(np.float32)
    dx = (ops.gaussian(ux, sigma, axes=(1, 2), mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    dy = (ops.gaussian(uy, sigma, axes=(1, 2), mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    grid = np.arange(size, dtype=np.float64)
    rows = grid[None, :, None] + dy
    cols = grid[None, None, :] + dx
    out = ops.bilinear_sample(image, rows, cols, "reflect").astype(np.float32)
    return np.clip(out, 0, 1) * 255


FUNCTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}
