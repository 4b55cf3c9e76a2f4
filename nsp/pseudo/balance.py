"""Confidence threshold and per-class balancing of pseudo labels (as the official filter_unlabel.py).

Per class c (bucketed by the teacher's argmax), take the highest confidence threshold t_c on a 0.01 grid
starting at ``threshold`` at which the class still has ``per_class`` images (never below ``threshold``);
keep each image with confidence >= t_c ``per_class / n_c`` times, with stochastic rounding
(floor + Bernoulli(frac)), which down-samples large classes and duplicates small ones.
"""

from __future__ import annotations

import numpy as np


def threshold_grid(threshold: float, step: float = 0.01) -> np.ndarray:
    """Candidate thresholds ``threshold, threshold + step, ...`` up to 1.0 (inclusive)."""
    n = int(np.floor((1.0 - threshold) / step + 1e-9)) + 1
    return np.round(threshold + step * np.arange(n), 10)


def grid_bins(conf: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index j of the highest grid value <= conf (-1 when below the first)."""
    return np.searchsorted(grid, conf.astype(np.float64), side="right") - 1


def class_histogram(
    labels: np.ndarray, conf: np.ndarray, grid: np.ndarray, num_classes: int
) -> np.ndarray:
    """(num_classes, len(grid)) counts of images per class per grid bin (streamable: add shard results)."""
    b = grid_bins(conf, grid)
    keep = b >= 0
    hist = np.zeros((num_classes, len(grid)), dtype=np.int64)
    np.add.at(hist, (labels[keep], b[keep]), 1)
    return hist


def class_thresholds(
    hist: np.ndarray, grid: np.ndarray, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class threshold and the count of images at or above it, from a :func:`class_histogram`."""
    at_least = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # count with conf >= grid[j]
    ok = at_least >= per_class
    # highest j with ok; if none, j = 0 (the base threshold)
    j = np.where(ok.any(1), len(grid) - 1 - np.argmax(ok[:, ::-1], axis=1), 0)
    return grid[j], at_least[np.arange(len(hist)), j]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniform_by_index(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per sample index, independent of batch/shard layout."""
    with np.errstate(over="ignore"):
        h = _splitmix64(index.astype(np.uint64) ^ _splitmix64(np.array([seed], dtype=np.uint64)))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def copy_counts(
    *,
    index: np.ndarray,
    labels: np.ndarray,
    conf: np.ndarray,
    thresholds: np.ndarray,
    counts_above: np.ndarray,
    per_class: int,
    seed: int,
    balance: bool,
    threshold: float,
) -> np.ndarray:
    """Number of copies of each image in the student's stream (0 = dropped)."""
    if not balance:
        return (conf >= threshold).astype(np.int64)
    t = thresholds[labels]
    n = counts_above[labels].astype(np.float64)
    above = conf.astype(np.float64) >= t
    ratio = np.where(n > 0, per_class / np.maximum(n, 1), 0.0)
    base = np.floor(ratio)
    extra = uniform_by_index(index, seed) < (ratio - base)
    return np.where(above, base + extra, 0).astype(np.int64)
