"""numpy/scipy emulations of the OpenCV operations of the reference spatter's "water" texture,
batched over a leading image axis: Canny edges, ``equalizeHist`` and the emboss filter (+ 3x3 blur).

Both the -C spatter corruption (:mod:`nsp.robustness._c_ops`) and the -P spatter perturbation
(:mod:`nsp.robustness.perturbations`) use them; nothing here needs OpenCV.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["EMBOSS", "canny", "emboss", "equalize_hist"]

#: The reference spatter's emboss kernel (``cv2.filter2D``).
EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)


def canny(img: np.ndarray, low: float, high: float, *, strict_diagonal: bool = True) -> np.ndarray:
    """OpenCV-style Canny (3x3 Sobel, L1 magnitude, 4-sector NMS, 8-connected hysteresis).

    ``img`` is a uint8 batch (N,H,W); returns a bool edge map. ``strict_diagonal`` (OpenCV's rule)
    keeps a diagonal-sector pixel only if its magnitude exceeds both diagonal neighbours; ``False``
    accepts a tie with the lower one (the -P spatter sets were built that way, so it keeps them).
    """
    f = img.astype(np.float64)
    # 3x3 Sobel on the image axes only (ndimage.sobel would also smooth across the batch)
    deriv, smooth = np.array([-1.0, 0.0, 1.0]), np.array([1.0, 2.0, 1.0])
    dx = ndimage.correlate1d(
        ndimage.correlate1d(f, deriv, axis=2, mode="nearest"), smooth, axis=1, mode="nearest"
    )
    dy = ndimage.correlate1d(
        ndimage.correlate1d(f, deriv, axis=1, mode="nearest"), smooth, axis=2, mode="nearest"
    )
    mag = np.abs(dx) + np.abs(dy)
    pad = np.pad(mag, ((0, 0), (1, 1), (1, 1)))
    n, h, w = mag.shape

    def nb(di: int, dj: int) -> np.ndarray:
        return pad[:, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]

    ax, ay = np.abs(dx), np.abs(dy)
    tg22 = math.tan(math.radians(22.5))
    tg67 = math.tan(math.radians(67.5))
    horiz = ay < ax * tg22
    vert = ~horiz & (ay > ax * tg67)
    diag = ~horiz & ~vert
    s_neg = (dx * dy) < 0
    keep = np.zeros_like(mag, dtype=bool)
    keep |= horiz & (mag > nb(0, -1)) & (mag >= nb(0, 1))
    keep |= vert & (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    # s = -1 when signs differ: compare (y-1, x+1) and (y+1, x-1); else (y-1, x-1) and (y+1, x+1)
    if strict_diagonal:
        d_pos = (mag > nb(-1, -1)) & (mag > nb(1, 1))
        d_neg = (mag > nb(-1, 1)) & (mag > nb(1, -1))
    else:
        d_pos = (mag > nb(-1, -1)) & (mag >= nb(1, 1))
        d_neg = (mag > nb(-1, 1)) & (mag >= nb(1, -1))
    keep |= diag & np.where(s_neg, d_neg, d_pos)
    cand = keep & (mag > low)
    strong = cand & (mag > high)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity inside each image, nothing across the batch axis
    labels, nlab = ndimage.label(cand, structure=structure)
    if nlab == 0:
        return np.zeros_like(cand)
    good = np.zeros(nlab + 1, dtype=bool)
    good[np.unique(labels[strong])] = True
    good[0] = False
    return good[labels]


def equalize_hist(img: np.ndarray) -> np.ndarray:
    """``cv2.equalizeHist`` applied to each image of a uint8 batch (N,H,W)."""
    n = img.shape[0]
    flat = img.reshape(n, -1).astype(np.int64)
    total = flat.shape[1]
    hist = np.bincount((flat + 256 * np.arange(n)[:, None]).ravel(), minlength=256 * n)
    hist = hist.reshape(n, 256)
    first = np.argmax(hist > 0, axis=1)
    first_cnt = hist[np.arange(n), first]
    cum = np.cumsum(hist, axis=1) - first_cnt[:, None]
    denom = np.maximum(total - first_cnt, 1)
    lut = np.rint(cum * (255.0 / denom)[:, None])
    lut = np.clip(lut, 0, 255)
    lut[np.arange(256)[None, :] <= first[:, None]] = 0
    const = first_cnt == total  # a single grey level stays as it is
    lut[const] = first[const][:, None]
    return np.take_along_axis(lut, flat, axis=1).reshape(img.shape).astype(np.uint8)


def emboss(img: np.ndarray) -> np.ndarray:
    """``cv2.filter2D(img, CV_8U, EMBOSS)`` then ``cv2.blur(3x3)`` (reflect-101 borders, both
    rounded and saturated to uint8) of a batch (N,H,W); uint8 values as float64."""
    out = ndimage.correlate(np.asarray(img, dtype=np.float64), EMBOSS[None], mode="mirror")
    out = np.clip(np.rint(out), 0, 255)
    out = ndimage.uniform_filter(out, size=(1, 3, 3), mode="mirror")
    return np.clip(np.rint(out), 0, 255)
