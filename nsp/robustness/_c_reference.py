"""Straightforward per-image -C corruptions (the readable reference path).

Each function takes one uint8 RGB image (S,S,3), its parameter set, a ``numpy`` Generator and
returns the corrupted image as float in [0, 255] (or uint8), before the final truncation. The
random numbers are drawn in the same order and shapes as in the batched path, so that both paths
give the same result for the same generator.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color as skcolor

from nsp.robustness import _c_ops as ops
from nsp.robustness._c_tables import IMAGENET_MIN_SIZE


def gaussian_noise(x, c, rng, size):
    x = x / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, c, rng, size):
    x = x / 255.0
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x, c, rng, size):
    x = x / 255.0
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return np.clip(out, 0, 1) * 255


def speckle_noise(x, c, rng, size):
    x = x / 255.0
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(x, c, rng, size):
    x = ops.gaussian(x / 255.0, c, axes=(0, 1))
    return np.clip(x, 0, 1) * 255


def glass_offsets(rng: np.random.Generator, size: int, delta: int, iterations: int) -> np.ndarray:
    """(iterations, positions, 2) offsets (dx, dy), each uniform in [-delta, delta)."""
    npos = len(range(size - delta, delta, -1)) ** 2
    return rng.integers(-delta, delta, size=(iterations, npos, 2))


def glass_blur(x, c, rng, size):
    sigma, delta, iterations = c
    x = np.uint8(ops.gaussian(x / 255.0, sigma, axes=(0, 1)) * 255)
    offs = glass_offsets(rng, size, delta, iterations)
    for it in range(iterations):
        k = 0
        for h in range(size - delta, delta, -1):
            for w in range(size - delta, delta, -1):
                dx, dy = offs[it, k]
                k += 1
                hp, wp = h + dy, w + dx
                # the reference "swap" is a copy: x[h, w] takes the neighbour's value
                x[h, w], x[hp, wp] = x[hp, wp], x[h, w]
    return np.clip(ops.gaussian(x / 255.0, sigma, axes=(0, 1)), 0, 1) * 255


def defocus_blur(x, c, rng, size):
    x = x / 255.0
    kernel = ops.disk_kernel(c[0], c[1])
    chans = [ndimage.correlate(x[:, :, d], kernel, mode="mirror") for d in range(x.shape[2])]
    return np.clip(np.stack(chans, axis=2), 0, 1) * 255


def motion_blur(x, c, rng, size, angle=None):
    a = rng.uniform(-45, 45) if angle is None else angle
    return ops.motion_blur_to_uint8(x[None], np.array([a]), c[1])[0]


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top : top + ch, top : top + ch], (factor, factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim : trim + h, trim : trim + h]


def zoom_blur(x, c, rng, size):
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for z in c:
        out += _clipped_zoom(x, z)
    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def plasma_fractal(rng: np.random.Generator, mapsize: int, wibbledecay: float) -> np.ndarray:
    """Diamond-square heightmap in [0, 1], drawing uniforms step by step like the reference."""
    arr = np.zeros((mapsize, mapsize), dtype=np.float64)
    step = mapsize
    wibble = 100.0
    m = mapsize
    while step >= 2:
        half = step // 2
        corner = arr[0:m:step, 0:m:step]
        sq = corner + np.roll(corner, shift=-1, axis=0)
        sq += np.roll(sq, shift=-1, axis=1)
        arr[half:m:step, half:m:step] = sq / 4 + wibble * rng.uniform(-wibble, wibble, sq.shape)
        dr = arr[half:m:step, half:m:step]
        ul = arr[0:m:step, 0:m:step]
        lt = (dr + np.roll(dr, 1, axis=0)) + (ul + np.roll(ul, -1, axis=1))
        arr[0:m:step, half:m:step] = lt / 4 + wibble * rng.uniform(-wibble, wibble, lt.shape)
        tt = (dr + np.roll(dr, 1, axis=1)) + (ul + np.roll(ul, -1, axis=0))
        arr[half:m:step, 0:m:step] = tt / 4 + wibble * rng.uniform(-wibble, wibble, tt.shape)
        step //= 2
        wibble /= wibbledecay
    arr -= arr.min()
    return arr / arr.max()


def fog(x, c, rng, size):
    x = x / 255.0
    max_val = x.max()
    plasma = plasma_fractal(rng, ops.plasma_mapsize(size), c[1])[:size, :size]
    x = x + c[0] * plasma[..., None]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def frost_scale(size: int) -> float:
    """Texture scale: 0.2 for 32-px CIFAR (scaled with the image size below 224 px), 1 above."""
    return 1.0 if size >= IMAGENET_MIN_SIZE else min(0.2 * size / 32.0, 1.0)


def frost_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw a texture index, then the row and column start; return the RGB crop (S,S,3)."""
    from nsp.errors import NSPError

    textures = ops.frost_textures(frost_scale(size))
    tex = textures[int(rng.integers(5))]
    if tex.shape[0] <= size or tex.shape[1] <= size:
        raise NSPError(
            f"frost corruption: images of {size} px are larger than the frost textures "
            f"({tex.shape[1]}x{tex.shape[0]}); resize the images to at most 300 px"
        )
    r0 = int(rng.integers(0, tex.shape[0] - size))
    c0 = int(rng.integers(0, tex.shape[1] - size))
    return tex[r0 : r0 + size, c0 : c0 + size]


def frost(x, c, rng, size):
    crop = frost_crop(rng, size)
    return np.clip(c[0] * np.asarray(x) + c[1] * crop, 0, 255)


def snow(x, c, rng, size):
    x = np.asarray(x, dtype=np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer[..., None], c[2])
    layer[layer < c[3]] = 0
    layer8 = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)
    angle = rng.uniform(-135, -45)
    blurred = ops.motion_blur_to_uint8(layer8[None, :, :, None], np.array([angle]), c[5])
    layer = blurred[0] / 255.0
    gray = (
        np.float32(0.299) * x[..., 0]
        + np.float32(0.587) * x[..., 1]
        + np.float32(0.114) * x[..., 2]
    )
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def spatter(x, c, rng, size):
    x = np.asarray(x, dtype=np.float32) / 255.0
    liquid = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    liquid = ops.gaussian(liquid, c[2], axes=(0, 1))
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        with np.errstate(invalid="ignore", over="ignore"):
            liquid8 = (liquid * 255).astype(np.uint8)
        dist = ops.spatter_water_texture(liquid8[None])[0]
        m = liquid8 * dist
        mx = m.max()
        m = m / mx if mx > 0 else np.zeros_like(m)
        m *= c[4]
        color = np.array([175, 238, 238], dtype=np.float32) / np.float32(255)
        return np.clip(x + m[..., None] * color, 0, 1) * 255
    m = np.where(liquid > c[3], 1, 0).astype(np.float32)
    m = ops.gaussian(m, c[4], axes=(0, 1))
    m[m < 0.8] = 0
    color = np.array([63, 42, 20], dtype=np.float32) / np.float32(255) * m[..., None]
    x = x * (1 - m[..., None])
    return np.clip(x + color, 0, 1) * 255


def contrast(x, c, rng, size):
    x = x / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def brightness(x, c, rng, size):
    x = skcolor.rgb2hsv(x / 255.0)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return np.clip(skcolor.hsv2rgb(x), 0, 1) * 255


def saturate(x, c, rng, size):
    x = skcolor.rgb2hsv(x / 255.0)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    return np.clip(skcolor.hsv2rgb(x), 0, 1) * 255


def jpeg_compression(x, c, rng, size):
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=c)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def pixelate(x, c, rng, size):
    im = Image.fromarray(x)
    small = int(size * c)
    im = im.resize((small, small), Image.Resampling.BOX)
    return np.asarray(im.resize((size, size), Image.Resampling.BOX))


def elastic_params(c: tuple, size: int) -> tuple[float, float, float]:
    """(alpha, sigma, jitter) in pixels: CIFAR fractions times size, ImageNet values times size/224."""
    if size >= IMAGENET_MIN_SIZE:
        f = size / 224.0
        return c[0] * f, c[1] * f, c[2] * f
    return c[0] * size, c[1] * size, c[2] * size


def elastic_draws(rng, size, jitter):
    """The affine jitter (3,2) float32 and the two U(-1,1) displacement fields, in that order."""
    jit = rng.uniform(-jitter, jitter, size=(3, 2)).astype(np.float32)
    ux = rng.uniform(-1, 1, size=(size, size))
    uy = rng.uniform(-1, 1, size=(size, size))
    return jit, ux, uy


def elastic_affine(size: int, jit: np.ndarray) -> np.ndarray:
    center = np.float32([size, size]) // 2
    sq = size // 3
    pts1 = np.float32([center + sq, [center[0] + sq, center[1] - sq], center - sq])
    return ops.affine_from_points(pts1, pts1 + jit)


def elastic_transform(x, c, rng, size):
    alpha, sigma, jitter = elastic_params(c, size)
    image = np.asarray(x, dtype=np.float32) / 255.0
    jit, ux, uy = elastic_draws(rng, size, jitter)
    sy, sx = ops.warp_source_coords(elastic_affine(size, jit), size, size)
    image = np.stack(
        [
            ndimage.map_coordinates(image[..., d], [sy, sx], order=1, mode="mirror")
            for d in range(image.shape[2])
        ],
        axis=2,
    )
    dx = (ops.gaussian(ux, sigma, axes=(0, 1), mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    dy = (ops.gaussian(uy, sigma, axes=(0, 1), mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    shape = image.shape
    xg, yg, zg = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    idx = (
        np.reshape(yg + dy[..., None], (-1, 1)),
        np.reshape(xg + dx[..., None], (-1, 1)),
        np.reshape(zg, (-1, 1)),
    )
    out = ndimage.map_coordinates(image, idx, order=1, mode="reflect").reshape(shape)
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
