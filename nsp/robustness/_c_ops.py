"""Shared numerical helpers of the -C corruptions (batched over a leading image axis).

They emulate the few OpenCV, ImageMagick and Pillow operations that the reference scripts call,
with numpy/scipy only: the anti-aliased disk kernel, the one-sided motion-blur line kernel, Pillow's
BOX resize, the corner-aligned linear zoom of ``scipy.ndimage.zoom``, the diamond-square plasma
fractal, OpenCV's bilinear resize, affine warp and spatter's water texture (its Canny, equalizeHist
and emboss steps come from :mod:`nsp.robustness.cv_ops`, shared with the -P spatter).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from nsp.errors import NSPError
from nsp.robustness.cv_ops import canny, emboss, equalize_hist

# ----------------------------------------------------------------------------- small filters


def gaussian(
    x: np.ndarray,
    sigma: float,
    *,
    axes: tuple[int, ...],
    mode: str = "nearest",
    truncate: float = 4.0,
) -> np.ndarray:
    """``skimage.filters.gaussian`` semantics on the given axes (others untouched)."""
    sig = [0.0] * x.ndim
    for a in axes:
        sig[a] = float(sigma)
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _cv2_gaussian_kernel_1d(ksize: int, sigma: float) -> np.ndarray:
    r = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    k = np.exp(-(r**2) / (2.0 * sigma * sigma))
    return k / k.sum()


@functools.lru_cache(maxsize=64)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference ``disk``: normalised disc indicator smoothed by OpenCV's Gaussian blur.

    The result is cropped to its non-zero support (the zero rows add nothing to a correlation).
    """
    if radius <= 8:
        grid = np.arange(-8, 8 + 1)
        ksize = 3
    else:
        grid = np.arange(-radius, radius + 1)
        ksize = 5
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    # OpenCV blurs a float32 image with a float32 kernel in float32 arithmetic
    g = _cv2_gaussian_kernel_1d(ksize, alias_blur).astype(np.float32)
    out = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    out = ndimage.correlate1d(out, g, axis=1, mode="mirror")
    rows = np.flatnonzero(out.any(axis=1))
    cols = np.flatnonzero(out.any(axis=0))
    # keep the kernel centred: crop symmetrically
    c = (out.shape[0] - 1) // 2
    half = int(max(abs(rows[0] - c), abs(rows[-1] - c), abs(cols[0] - c), abs(cols[-1] - c)))
    return out[c - half : c + half + 1, c - half : c + half + 1]


# ----------------------------------------------------------------------------- motion blur


@functools.lru_cache(maxsize=64)
def motion_weights(sigma: float, quantum_scale: float = 1.0 / 65535.0) -> np.ndarray:
    """ImageMagick's one-sided Gaussian line kernel; its width follows from sigma only.

    The width is ImageMagick's ``GetOptimalKernelWidth1D(0, sigma)`` for a Q16 build (the
    radius argument had no effect in the reference build, see the oracle README section 2b).
    """
    alpha = 1.0 / (2.0 * sigma * sigma)
    beta = 1.0 / (math.sqrt(2.0 * math.pi) * sigma)
    width = 5
    while True:
        j = (width - 1) // 2
        i = np.arange(-j, j + 1, dtype=np.float64)
        normalize = float(np.sum(np.exp(-(i * i) * alpha) * beta))
        value = math.exp(-(j * j) * alpha) * beta / normalize
        if value < quantum_scale or value < 1e-12:
            break
        width += 2
    width -= 2
    k = np.exp(-(np.arange(width, dtype=np.float64) ** 2) * alpha) * beta
    return k / k.sum()


def motion_offsets(n_taps: int, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer (dy, dx) offsets of the taps for one angle (y points down)."""
    t = math.radians(angle_deg)
    i = np.arange(n_taps, dtype=np.float64)
    dy = np.ceil(i * math.sin(t) - 0.5).astype(np.int64)
    dx = np.ceil(i * math.cos(t) - 0.5).astype(np.int64)
    return dy, dx


def motion_blur(x: np.ndarray, angles_deg: np.ndarray, sigma: float) -> np.ndarray:
    """Motion-blur a batch (N,H,W,C) in [0,255] float, one angle per image, edge replication.

    Returns float64 values; the caller truncates to uint8 as ImageMagick's output does.
    """
    n, h, w = x.shape[:3]
    wts = motion_weights(float(sigma))
    k = len(wts)
    offs = [motion_offsets(k, float(a)) for a in np.asarray(angles_deg).reshape(-1)]
    dys = np.stack([o[0] for o in offs])  # (N, K)
    dxs = np.stack([o[1] for o in offs])
    rows0 = np.arange(h)
    cols0 = np.arange(w)
    nidx = np.arange(n)[:, None, None]
    out = np.zeros(x.shape, dtype=np.float64)
    for i in range(k):
        rows = np.clip(rows0[None, :] + dys[:, i : i + 1], 0, h - 1)  # (N, H)
        cols = np.clip(cols0[None, :] + dxs[:, i : i + 1], 0, w - 1)  # (N, W)
        out += wts[i] * x[nidx, rows[:, :, None], cols[:, None, :]]
    return out


def motion_blur_to_uint8(x_u8: np.ndarray, angles_deg: np.ndarray, sigma: float) -> np.ndarray:
    """ImageMagick motion blur of a uint8 batch; the result is truncated (small guard for 1e-13)."""
    out = motion_blur(x_u8.astype(np.float64), angles_deg, sigma)
    return np.clip(np.floor(out + 1e-7), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- zoom / resize


@functools.lru_cache(maxsize=256)
def clipped_zoom_matrix(size: int, factor: float) -> np.ndarray:
    """(size, size) matrix of the reference ``clipped_zoom`` along one axis.

    Centre crop of ceil(size/factor) pixels, ``scipy.ndimage.zoom(order=1)`` (corner aligned:
    output j samples input j*(in-1)/(out-1)), then the centred ``size`` crop.
    """
    ch = int(np.ceil(size / factor))
    top = (size - ch) // 2
    out_len = int(round(ch * factor))
    ratio = (ch - 1) / (out_len - 1) if out_len > 1 else 0.0
    trim = (out_len - size) // 2
    mat = np.zeros((size, size), dtype=np.float64)
    for i in range(size):
        cc = (i + trim) * ratio
        lo = int(math.floor(cc))
        t = cc - lo
        if lo >= ch - 1:
            lo, t = ch - 1, 0.0
        mat[i, top + lo] += 1.0 - t
        if t > 0.0:
            mat[i, top + lo + 1] += t
    return mat


def _two_tap(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of a linear-interpolation matrix as (index0, index1, weight0, weight1)."""
    i0 = np.argmax(mat != 0, axis=1)
    w0 = mat[np.arange(len(mat)), i0]
    i1 = np.minimum(i0 + 1, mat.shape[1] - 1)
    w1 = np.where(i1 != i0, mat[np.arange(len(mat)), i1], 0.0)
    return i0, i1, w0, w1


def apply_separable(x: np.ndarray, mat_rows: np.ndarray, mat_cols: np.ndarray) -> np.ndarray:
    """out[n] = mat_rows @ x[n] @ mat_cols.T for (N,H,W,C) x and 2-tap interpolation matrices.

    Computed in float64 with two gathers per axis (no BLAS: tiny matrices, many images).
    """
    x = x.astype(np.float64, copy=False)
    r0, r1, a0, a1 = _two_tap(mat_rows)
    y = x[:, r0] * a0[None, :, None, None] + x[:, r1] * a1[None, :, None, None]
    c0, c1, b0, b1 = _two_tap(mat_cols)
    return y[:, :, c0] * b0[None, None, :, None] + y[:, :, c1] * b1[None, None, :, None]


_PIL_PRECISION_BITS = 32 - 8 - 2


@functools.lru_cache(maxsize=64)
def pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's fixed-point BOX resampling coefficients as an (out, in) float matrix of integers."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        ks = []
        for x in range(xmin, xmax):
            u = (x - center + 0.5) * ss
            ks.append(1.0 if -0.5 < u <= 0.5 else 0.0)
        ww = sum(ks)
        for j, k in enumerate(ks):
            k = k / ww if ww != 0.0 else k
            mat[xx, xmin + j] = math.floor(0.5 + k * (1 << _PIL_PRECISION_BITS))
    return mat


def pil_box_resize(x_u8: np.ndarray, out_size: int) -> np.ndarray:
    """Pillow ``resize((s, s), BOX)`` of a square uint8 batch (N,S,S,C): horizontal pass first."""
    n, h, w, c = x_u8.shape
    half = float(1 << (_PIL_PRECISION_BITS - 1))
    div = float(1 << _PIL_PRECISION_BITS)
    mw = pil_box_matrix(w, out_size)
    mh = pil_box_matrix(h, out_size)
    # sparse taps, no BLAS (integer products and sums stay exact in float64)
    y = _apply_taps(x_u8.astype(np.float64), mw, axis=2)
    y = np.clip(np.floor((y + half) / div), 0, 255)
    z = _apply_taps(y, mh, axis=1)
    return np.clip(np.floor((z + half) / div), 0, 255).astype(np.uint8)


def _apply_taps(x: np.ndarray, mat: np.ndarray, axis: int) -> np.ndarray:
    """Apply an (out, in) matrix with few non-zeros per row along ``axis`` of x."""
    ntap = int((mat != 0).sum(axis=1).max())
    idx = np.zeros((mat.shape[0], ntap), dtype=np.int64)
    wts = np.zeros((mat.shape[0], ntap))
    for o in range(mat.shape[0]):
        nz = np.flatnonzero(mat[o])
        idx[o, : len(nz)] = nz
        wts[o, : len(nz)] = mat[o, nz]
    shape = [1] * x.ndim
    shape[axis] = mat.shape[0]
    out = np.zeros(x.shape[:axis] + (mat.shape[0],) + x.shape[axis + 1 :])
    for k in range(ntap):
        out += np.take(x, idx[:, k], axis=axis) * wts[:, k].reshape(shape)
    return out


def cv2_resize_linear(img_u8: np.ndarray, scale: float) -> np.ndarray:
    """OpenCV ``resize(img, (0,0), fx=scale, fy=scale)`` (bilinear, half-pixel centres), uint8 HWC."""
    h, w = img_u8.shape[:2]
    oh, ow = int(round(h * scale)), int(round(w * scale))

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = (np.arange(n_out) + 0.5) / scale - 0.5
        s = np.floor(f)
        t = f - s
        s = s.astype(np.int64)
        t[s < 0] = 0.0
        s[s < 0] = 0
        over = s >= n_in - 1
        t[over] = 0.0
        s[over] = n_in - 1
        t = np.round(t * 2048) / 2048  # OpenCV's 11-bit fixed-point coefficients
        return s, np.minimum(s + 1, n_in - 1), t

    y0, y1, ty = coords(oh, h)
    x0, x1, tx = coords(ow, w)
    f = img_u8.astype(np.float64)
    top = f[y0][:, x0] * (1 - tx)[None, :, None] + f[y0][:, x1] * tx[None, :, None]
    bot = f[y1][:, x0] * (1 - tx)[None, :, None] + f[y1][:, x1] * tx[None, :, None]
    out = top * (1 - ty)[:, None, None] + bot * ty[:, None, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- plasma fractal


def plasma_shapes(mapsize: int) -> list[tuple[int, int]]:
    """Shapes of the uniform draws of the diamond-square algorithm, in draw order."""
    shapes = []
    step = mapsize
    while step >= 2:
        k = mapsize // step
        shapes += [(k, k), (k, k), (k, k)]
        step //= 2
    return shapes


def plasma_fractal(uniforms: np.ndarray, mapsize: int, wibbledecay: float) -> np.ndarray:
    """Batched diamond-square heightmap in [0, 1] from pre-drawn U[0,1) numbers (N, total).

    ``uniforms`` are consumed in the reference order; ``-w + 2w*u`` equals the reference
    ``np.random.uniform(-w, w)`` draw for the same underlying double.
    """
    n = uniforms.shape[0]
    m = mapsize
    arr = np.zeros((n, m, m), dtype=np.float64)
    step = m
    wibble = 100.0
    pos = 0

    def take(shape: tuple[int, int]) -> np.ndarray:
        nonlocal pos
        cnt = shape[0] * shape[1]
        u = uniforms[:, pos : pos + cnt].reshape(n, *shape)
        pos += cnt
        return -wibble + (wibble - -wibble) * u

    while step >= 2:
        half = step // 2
        corner = arr[:, 0:m:step, 0:m:step]
        sq = corner + np.roll(corner, shift=-1, axis=1)
        sq += np.roll(sq, shift=-1, axis=2)
        arr[:, half:m:step, half:m:step] = sq / 4 + wibble * take(sq.shape[1:])
        dr = arr[:, half:m:step, half:m:step]
        ul = arr[:, 0:m:step, 0:m:step]
        lt = (dr + np.roll(dr, 1, axis=1)) + (ul + np.roll(ul, -1, axis=2))
        arr[:, 0:m:step, half:m:step] = lt / 4 + wibble * take(lt.shape[1:])
        tt = (dr + np.roll(dr, 1, axis=2)) + (ul + np.roll(ul, -1, axis=1))
        arr[:, half:m:step, 0:m:step] = tt / 4 + wibble * take(tt.shape[1:])
        step //= 2
        wibble /= wibbledecay
    arr -= arr.min(axis=(1, 2), keepdims=True)
    return arr / arr.max(axis=(1, 2), keepdims=True)


def plasma_mapsize(size: int) -> int:
    """Smallest power of two >= size (32 for CIFAR, 256 for 224-px ImageNet)."""
    return 1 << max(int(size - 1).bit_length(), 1)


# ----------------------------------------------------------------------------- frost textures

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_PIP = "pip install --no-deps imagecorruptions==1.1.2"


def frost_dir() -> Path:
    """The folder of the frost textures shipped in the ``imagecorruptions`` wheel (not imported)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            d = Path(loc) / "frost"
            if all((d / f).is_file() for f in FROST_FILES):
                return d
    raise NSPError(
        "frost corruption: texture files frost1..frost5 not found (package data of "
        f"'imagecorruptions'); install them with `{FROST_PIP}`"
    )


@functools.lru_cache(maxsize=8)
def frost_textures(scale: float) -> tuple[np.ndarray, ...]:
    """The 5 frost textures as RGB uint8 (alpha dropped, as ``cv2.imread``), resized by ``scale``."""
    from PIL import Image

    d = frost_dir()
    out = []
    for f in FROST_FILES:
        with Image.open(d / f) as im:
            arr = np.asarray(im.convert("RGB"))
        if scale != 1.0:
            arr = cv2_resize_linear(arr, scale)
        out.append(np.ascontiguousarray(arr))
    return tuple(out)


# ----------------------------------------------------------------------------- affine warp


def affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``cv2.getAffineTransform``: the 2x3 matrix M with dst = M @ [src, 1] ((x, y) points)."""
    a = np.zeros((6, 6))
    b = np.zeros(6)
    for i in range(3):
        a[2 * i, 0:2] = src[i]
        a[2 * i, 2] = 1
        a[2 * i + 1, 3:5] = src[i]
        a[2 * i + 1, 5] = 1
        b[2 * i], b[2 * i + 1] = dst[i]
    return np.linalg.solve(a.astype(np.float64), b.astype(np.float64)).reshape(2, 3)


def warp_source_coords(m: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Source (row, col) sampled by ``cv2.warpAffine(img, M, (w, h))`` at every output pixel.

    OpenCV inverts M and quantises the source coordinates to 1/32 pixel.
    """
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    sx = np.floor(np.rint(sx * 1024) / 32) / 32
    sy = np.floor(np.rint(sy * 1024) / 32) / 32
    return sy, sx


def _border_index(idx: np.ndarray, size: int, mode: str) -> np.ndarray:
    if size == 1:
        return np.zeros_like(idx)
    if mode == "mirror":  # reflect-101: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        period = 2 * (size - 1)
        i = np.mod(idx, period)
        return np.where(i >= size, period - i, i)
    # "reflect" (half-sample symmetric): ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
    period = 2 * size
    i = np.mod(idx, period)
    return np.where(i >= size, period - 1 - i, i)


def bilinear_sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """Bilinear sampling of (N,H,W,C) at per-image (N,H',W') float coordinates, given border mode.

    Same result as ``scipy.ndimage.map_coordinates(order=1, mode=mode)`` per image and channel.
    """
    n, h, w, _ = x.shape
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    tr = (rows - r0)[..., None]
    tc = (cols - c0)[..., None]
    r0 = r0.astype(np.int64)
    c0 = c0.astype(np.int64)
    ra, rb = _border_index(r0, h, mode), _border_index(r0 + 1, h, mode)
    ca, cb = _border_index(c0, w, mode), _border_index(c0 + 1, w, mode)
    ni = np.arange(n).reshape((n,) + (1,) * (rows.ndim - 1))
    x = x.astype(np.float64, copy=False)
    top = x[ni, ra, ca] * (1 - tc) + x[ni, ra, cb] * tc
    bot = x[ni, rb, ca] * (1 - tc) + x[ni, rb, cb] * tc
    return top * (1 - tr) + bot * tr


# ----------------------------------------------------------------------------- spatter helpers


def spatter_water_texture(liquid_u8: np.ndarray) -> np.ndarray:
    """The edge/distance texture of spatter mode 0 for a uint8 batch (N,H,W); float32 result."""
    edges = canny(liquid_u8, 50, 150)
    if edges.any():
        dist = ndimage.distance_transform_edt(~edges, sampling=(1e6, 1.0, 1.0))
    else:
        dist = np.full(edges.shape, 1e6)
    dist = np.minimum(dist, 20.0).astype(np.float32)
    dist = ndimage.uniform_filter(dist, size=(1, 3, 3), mode="mirror").astype(np.uint8)
    return emboss(equalize_hist(dist)).astype(np.float32)
