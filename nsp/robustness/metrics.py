"""Robustness metrics: CE/mCE (ImageNet-C, CIFAR-C), FP/T5D (ImageNet-P), RMS calibration error.

Everything here is plain numpy and works on error rates given as fractions (0.25, not 25 %);
papers usually print CE, mCE, FR and calibration errors multiplied by 100.

Conventions (Hendrycks & Dietterich, ICLR 2019):

* ``E[c, s]`` is the top-1 error of a model on corruption ``c`` at severity ``s``.
* ``CE_c = sum_s E[c, s] / sum_s Eb[c, s]`` for a baseline ``Eb``; ``mCE = mean_c CE_c``.
* ``relative CE_c = sum_s (E[c, s] - E_clean) / sum_s (Eb[c, s] - Eb_clean)``.
* The CIFAR-10-C protocol reports the *unnormalised* mean corruption error ``mean_{c,s} E[c, s]``.
* ImageNet-P: a perturbation sequence of ``T`` frames is scored on frame pairs. Noise
  perturbations compare every frame with frame 0; the others compare frames ``t`` and ``t + d``
  (``d`` = difficulty). Flip probability (FP) counts top-1 changes, top-5 distance (T5D) counts
  how far the top-5 ranking moved, exactly as ``ImageNet-P/test.py`` of hendrycks/robustness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from nsp.errors import NSPError
from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS

__all__ = [
    "ALEXNET_CLEAN_ERR",
    "ALEXNET_ERR",
    "CORRUPTIONS",
    "CorruptionErrors",
    "accuracy",
    "adaptive_calibration_error",
    "alexnet_corruption_errors",
    "alexnet_relative_corruption_errors",
    "calibration_error",
    "corruption_errors",
    "error_rate",
    "error_table",
    "flip_probability",
    "flip_rates",
    "frame_pairs",
    "is_noise_perturbation",
    "mean_corruption_error",
    "relative_corruption_errors",
    "rms_calibration_error",
    "top5_distance",
    "top5_distance_rates",
    "zipf_distance",
]

#: The 15 benchmark corruptions of ImageNet-C / CIFAR-10-C in the standard order.
CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS

#: AlexNet top-1 error on the real ImageNet-C, averaged over the 5 severities (fractions).
ALEXNET_ERR: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
#: AlexNet top-1 error on the clean ImageNet validation set.
ALEXNET_CLEAN_ERR: float = 0.4348


class CorruptionErrors(NamedTuple):
    """Per-corruption ratios and their unweighted mean (``ce`` has one entry per corruption)."""

    ce: np.ndarray
    mce: float


# --------------------------------------------------------------------------------------------
# error rates
# --------------------------------------------------------------------------------------------


def _as_labels(x: np.ndarray | Sequence[int], *, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise NSPError(
            f"{name}: expected integer class indices, got dtype {arr.dtype}; "
            "pass logits.argmax(-1) instead of logits"
        )
    return arr


def error_rate(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray | float:
    """Top-1 error ``mean_n [pred_n != label_n]`` along the last axis.

    ``predictions`` may have leading axes, e.g. ``(C, S, N)`` for corruption x severity; the
    result then has shape ``(C, S)``. ``labels`` has shape ``(N,)`` (broadcast) or the full shape.
    """
    pred = _as_labels(predictions, name="predictions")
    lab = _as_labels(labels, name="labels")
    if pred.shape[-1:] != lab.shape[-1:] or pred.shape[-1] == 0:
        raise NSPError(
            f"predictions shape {pred.shape} does not match labels shape {lab.shape}; "
            "the last axis must be the (non-empty) example axis of both"
        )
    err = np.mean(pred != lab, axis=-1)
    return float(err) if np.ndim(err) == 0 else err


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray | float:
    """Top-1 accuracy ``1 - error_rate`` (e.g. ImageNet-A / -R accuracy after subset masking)."""
    err = error_rate(predictions, labels)
    return 1.0 - err


def error_table(
    predictions: Mapping[str, Mapping[int, np.ndarray] | Sequence[np.ndarray] | np.ndarray],
    labels: np.ndarray | Mapping[str, np.ndarray],
    *,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
) -> np.ndarray:
    """Error matrix ``E[c, s]`` (shape ``(len(corruptions), len(severities))``) from predictions.

    ``predictions[c]`` is either a mapping ``severity -> (N,) predictions``, a sequence indexed by
    ``severity - 1``, or an array ``(S, N)`` in severity order. ``labels`` is one ``(N,)`` array
    shared by all corruptions or a mapping ``corruption -> labels``.
    """
    out = np.empty((len(corruptions), len(severities)), dtype=np.float64)
    for ci, name in enumerate(corruptions):
        if name not in predictions:
            raise NSPError(
                f"predictions: no entry for corruption {name!r}; "
                f"have {sorted(predictions)}; pass corruptions=... to restrict the table"
            )
        per_sev = predictions[name]
        lab = labels[name] if isinstance(labels, Mapping) else labels
        for si, sev in enumerate(severities):
            if isinstance(per_sev, Mapping):
                if sev not in per_sev:
                    raise NSPError(
                        f"predictions[{name!r}]: severity {sev} missing; have {sorted(per_sev)}"
                    )
                pred = per_sev[sev]
            else:
                pred = per_sev[sev - 1]
            out[ci, si] = error_rate(np.asarray(pred), np.asarray(lab))
    return out


# --------------------------------------------------------------------------------------------
# corruption errors
# --------------------------------------------------------------------------------------------


def _err_matrix(x: np.ndarray | Sequence, *, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise NSPError(
            f"{name}: expected error rates of shape (corruptions, severities) or (corruptions,), "
            f"got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise NSPError(f"{name}: contains NaN/inf error rates; recompute the evaluation")
    return arr


def corruption_errors(
    model_err: np.ndarray | Sequence, baseline_err: np.ndarray | Sequence
) -> CorruptionErrors:
    """``CE_c = sum_s E[c, s] / sum_s Eb[c, s]`` and ``mCE = mean_c CE_c``.

    Both inputs have shape ``(C, S)`` (or ``(C,)`` for one value per corruption).
    """
    e = _err_matrix(model_err, name="model_err")
    b = _err_matrix(baseline_err, name="baseline_err")
    if e.shape != b.shape:
        raise NSPError(f"model_err shape {e.shape} differs from baseline_err shape {b.shape}")
    den = b.sum(axis=1)
    if np.any(den == 0):
        raise NSPError("baseline_err: a corruption has zero total baseline error; CE undefined")
    ce = e.sum(axis=1) / den
    return CorruptionErrors(ce=ce, mce=float(ce.mean()))


def relative_corruption_errors(
    model_err: np.ndarray | Sequence,
    baseline_err: np.ndarray | Sequence,
    *,
    model_clean_err: float,
    baseline_clean_err: float,
) -> CorruptionErrors:
    """``relCE_c = sum_s (E[c, s] - E_clean) / sum_s (Eb[c, s] - Eb_clean)``; relative mCE = mean."""
    e = _err_matrix(model_err, name="model_err")
    b = _err_matrix(baseline_err, name="baseline_err")
    if e.shape != b.shape:
        raise NSPError(f"model_err shape {e.shape} differs from baseline_err shape {b.shape}")
    den = (b - float(baseline_clean_err)).sum(axis=1)
    if np.any(den == 0):
        raise NSPError(
            "baseline_err: a corruption's total error equals the baseline clean error; "
            "relative CE undefined"
        )
    ce = (e - float(model_clean_err)).sum(axis=1) / den
    return CorruptionErrors(ce=ce, mce=float(ce.mean()))


def mean_corruption_error(model_err: np.ndarray | Sequence) -> float:
    """Unnormalised mean corruption error (CIFAR-10-C protocol): ``mean_{c,s} E[c, s]``."""
    e = _err_matrix(model_err, name="model_err")
    return float(e.mean())


def _alexnet_constants(corruption_names: Sequence[str], n: int) -> np.ndarray:
    names = list(corruption_names)
    if len(names) != n:
        raise NSPError(
            f"corruption_names has {len(names)} entries but model_err has {n} rows; "
            "give one name per row"
        )
    unknown = [c for c in names if c not in ALEXNET_ERR]
    if unknown:
        raise NSPError(
            f"corruption_names: no AlexNet constant for {unknown}; "
            f"valid names are {list(CORRUPTIONS)}"
        )
    return np.array([ALEXNET_ERR[c] for c in names], dtype=np.float64)


def alexnet_corruption_errors(
    model_err: np.ndarray | Sequence, *, corruption_names: Sequence[str] = CORRUPTIONS
) -> CorruptionErrors:
    """ImageNet-C CE normalised by AlexNet: ``CE_c = mean_s E[c, s] / A_c``.

    ``A_c`` (:data:`ALEXNET_ERR`) is already a mean over severities, so this equals the
    ``sum/sum`` form. Only meaningful for the real ImageNet-C at 5 severities.
    """
    e = _err_matrix(model_err, name="model_err")
    a = _alexnet_constants(corruption_names, e.shape[0])
    ce = e.mean(axis=1) / a
    return CorruptionErrors(ce=ce, mce=float(ce.mean()))


def alexnet_relative_corruption_errors(
    model_err: np.ndarray | Sequence,
    *,
    model_clean_err: float,
    corruption_names: Sequence[str] = CORRUPTIONS,
) -> CorruptionErrors:
    """``relCE_c = (mean_s E[c, s] - E_clean) / (A_c - A_clean)`` with ``A_clean = 0.4348``."""
    e = _err_matrix(model_err, name="model_err")
    a = _alexnet_constants(corruption_names, e.shape[0])
    ce = (e.mean(axis=1) - float(model_clean_err)) / (a - ALEXNET_CLEAN_ERR)
    return CorruptionErrors(ce=ce, mce=float(ce.mean()))


# --------------------------------------------------------------------------------------------
# ImageNet-P / CIFAR-10-P stability metrics
# --------------------------------------------------------------------------------------------


def is_noise_perturbation(name: str) -> bool:
    """True for perturbations whose frames are all compared with frame 0 (``'noise' in name``)."""
    return "noise" in name


def frame_pairs(num_frames: int, *, noise: bool, difficulty: int = 1) -> tuple[np.ndarray, ...]:
    """Compared frame index pairs ``(a, b)`` as two int arrays.

    ``noise``: ``(0, t)`` for ``t = 1..T-1`` (``difficulty`` ignored). Otherwise ``(t, t + d)``
    for ``0 <= t < T - d``: consecutive frames of the ``d`` interleaved sub-sequences.
    """
    t = int(num_frames)
    d = int(difficulty)
    if noise:
        if t < 2:
            raise NSPError(f"sequence has {t} frame(s); flip metrics need at least 2 frames")
        b = np.arange(1, t)
        return np.zeros_like(b), b
    if d < 1 or t - d < 1:
        raise NSPError(
            f"difficulty={d} is invalid for sequences of {t} frames; use 1 <= difficulty < frames"
        )
    a = np.arange(0, t - d)
    return a, a + d


def _check_sequences(x: np.ndarray, *, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != ndim or 0 in arr.shape:
        shape = "(sequences, frames)" if ndim == 2 else "(sequences, frames, classes)"
        raise NSPError(f"{name}: expected a non-empty array of shape {shape}, got {arr.shape}")
    return arr


def flip_probability(predictions: np.ndarray, *, noise: bool, difficulty: int = 1) -> float:
    """Flip probability FP = mean over sequences of ``mean_{(a,b)} [p_a != p_b]``.

    ``predictions`` is ``(N, T)`` top-1 class indices, or ``(N, T, K)`` logits (argmax taken,
    ties to the lowest index). Pairs as in :func:`frame_pairs`. Every sequence has the same number
    of pairs, so this equals the pooled mean over all pairs (as ImageNet-P's ``flip_prob``).
    """
    p = np.asarray(predictions)
    if p.ndim == 3:
        p = _check_sequences(p, name="predictions", ndim=3).argmax(axis=-1)
    p = _check_sequences(p, name="predictions", ndim=2)
    a, b = frame_pairs(p.shape[1], noise=noise, difficulty=difficulty)
    return float(np.mean(p[:, a] != p[:, b]))


def _rank_distance(
    logits: np.ndarray, *, noise: bool, difficulty: int, mode: str, chunk_elems: int = 2**24
) -> float:
    lg = _check_sequences(logits, name="logits", ndim=3)
    if not np.all(np.isfinite(lg)):
        raise NSPError("logits: contains NaN/inf; ranking distances are undefined")
    n, t, k = lg.shape
    if mode == "top5" and k < 5:
        raise NSPError(f"logits have {k} classes; the top-5 distance needs at least 5")
    a, b = frame_pairs(t, noise=noise, difficulty=difficulty)
    j = np.arange(k, dtype=np.float64)
    top = min(5, k)
    total = 0.0
    step = max(1, chunk_elems // max(1, t * k))
    for s in range(0, n, step):
        x = lg[s : s + step]
        # order[..., j]: class ranked j+1 (stable sort on -logits == rankdata(..., 'ordinal'))
        order = np.argsort(-x, axis=-1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(k)[None, None, :], axis=-1)  # 0-based
        if mode == "top5":
            cls = order[:, a, :top]  # (n, P, 5): top-5 classes of frame a
            r = np.take_along_axis(rank[:, b, :], cls, axis=-1)  # 0-based rank in frame b
            d = np.abs(j[:top] - np.minimum(r, 5)).sum(axis=-1)
        else:  # zipf
            sigma = np.take_along_axis(rank[:, b, :], order[:, a, :], axis=-1) + 1.0
            recip = 1.0 / (j + 1.0)
            d = (np.abs(recip - 1.0 / sigma) * recip).sum(axis=-1)
        total += float(d.mean(axis=1).sum())
    return total / n


def top5_distance(logits: np.ndarray, *, noise: bool, difficulty: int = 1) -> float:
    """Top-5 distance T5D (ImageNet-P ``ranking_dist(mode='top5')``).

    For a pair ``(a, b)`` let ``c_1..c_5`` be frame ``a``'s top-5 classes and ``r_j`` the rank
    (1 = best) of ``c_j`` in frame ``b``: ``d5 = sum_j |(j - 1) - min(r_j - 1, 5)|``. T5D is the
    mean over pairs of a sequence, then over sequences. ``logits``: ``(N, T, K)``, ``K >= 5``.
    """
    return _rank_distance(logits, noise=noise, difficulty=difficulty, mode="top5")


def zipf_distance(logits: np.ndarray, *, noise: bool, difficulty: int = 1) -> float:
    """Zipf distance: ``sum_{j=1..K} |1/j - 1/sigma_j| / j`` with ``sigma_j`` the frame-``b`` rank
    of frame ``a``'s ``j``-th class; averaged like :func:`top5_distance`."""
    return _rank_distance(logits, noise=noise, difficulty=difficulty, mode="zipf")


def _normalised_rates(
    model: np.ndarray | Sequence, baseline: np.ndarray | Sequence, *, name: str
) -> CorruptionErrors:
    m = _err_matrix(model, name=f"model_{name}")
    b = _err_matrix(baseline, name=f"baseline_{name}")
    if m.shape != b.shape:
        raise NSPError(f"model_{name} shape {m.shape} differs from baseline_{name} {b.shape}")
    den = b.sum(axis=1)
    if np.any(den == 0):
        raise NSPError(f"baseline_{name}: a perturbation has zero baseline value; ratio undefined")
    r = m.sum(axis=1) / den
    return CorruptionErrors(ce=r, mce=float(r.mean()))


def flip_rates(
    model_fp: np.ndarray | Sequence, baseline_fp: np.ndarray | Sequence
) -> CorruptionErrors:
    """Flip rate ``FR_p = sum_d FP[p, d] / sum_d FPb[p, d]`` and ``mFR = mean_p FR_p``.

    Inputs are ``(P,)`` (one FP per perturbation) or ``(P, D)`` (several difficulties, summed like
    the severities of CE). Returned as ``CorruptionErrors(ce=FR, mce=mFR)``. AlexNet
    normalisation for ImageNet-P is not provided: pass AlexNet's FP values as the baseline.
    """
    return _normalised_rates(model_fp, baseline_fp, name="fp")


def top5_distance_rates(
    model_t5d: np.ndarray | Sequence, baseline_t5d: np.ndarray | Sequence
) -> CorruptionErrors:
    """``T5D_p / T5Db_p`` per perturbation (summed over difficulties) and its mean (mT5D)."""
    return _normalised_rates(model_t5d, baseline_t5d, name="t5d")


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


def calibration_error(
    confidence: np.ndarray,
    correct: np.ndarray,
    *,
    p: str = "2",
    beta: int = 100,
    skip_last: bool = True,
) -> float:
    """Adaptive-binning calibration error; by default exactly as Hendrycks' ``calib_err``.

    Sort by confidence (ascending, stable); ``B = N // beta`` bins of ``beta`` items, the last
    extended to ``N``. ``skip_last=True`` (the reference protocol) **skips** the last bin, so its
    ``beta + N % beta`` most confident items never count; ``skip_last=False`` scores every bin.
    With ``n_b`` items, mean confidence ``conf_b`` and accuracy ``acc_b`` per scored bin ``b``:

    * ``p='2'``: ``sqrt(sum_b n_b / N * (conf_b - acc_b)^2)`` (RMS calibration error),
    * ``p='1'``: ``sum_b n_b / N * |conf_b - acc_b|``,
    * ``p='infty'`` (or ``'infinity'``, ``'max'``): ``max_b |conf_b - acc_b|``.

    ``N`` in the weights includes a skipped bin. With ``skip_last`` and ``beta <= N < 2 * beta``
    the result is 0. The pipeline uses :func:`adaptive_calibration_error` (every bin scored).
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    corr = np.asarray(correct).ravel().astype(np.float64)
    if conf.shape != corr.shape:
        raise NSPError(
            f"confidence has {conf.size} values but correct has {corr.size}; give one per example"
        )
    beta = int(beta)
    if beta < 1:
        raise NSPError(f"beta={beta}: the bin size must be a positive integer")
    n = conf.size
    if n < beta:
        raise NSPError(
            f"calibration_error: {n} examples < beta={beta}; evaluate more examples or lower beta"
        )
    if p not in ("1", "2", "infty", "infinity", "max"):
        raise NSPError(f"p={p!r}: use '1', '2' or 'infty'")
    order = np.argsort(conf, kind="stable")
    conf, corr = conf[order], corr[order]
    starts = np.arange(n // beta) * beta  # bin b = [starts[b], starts[b+1]), the last one to N
    if skip_last:
        starts = starts[:-1]
        if len(starts) == 0:
            return 0.0
        conf, corr = conf[: len(starts) * beta], corr[: len(starts) * beta]
    size = np.diff(np.append(starts, len(conf)))
    diff = np.abs(np.add.reduceat(conf, starts) / size - np.add.reduceat(corr, starts) / size)
    if p == "2":
        return float(np.sqrt(np.sum(size / n * diff**2)))
    if p == "1":
        return float(np.sum(size / n * diff))
    return float(diff.max())


def adaptive_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, *, bins: int = 15, p: str = "2"
) -> float:
    """Calibration error with a bin size that scales with the set: ``bins`` bins of
    ``beta = N // bins`` consecutive items (sorted by confidence), the ``N % bins`` remainder joined
    to the last (most confident) bin, and **every** bin scored, so all ``N`` items count.

    This is :func:`calibration_error` with ``beta = N // bins, skip_last=False``. Hendrycks' fixed
    ``beta = 100`` with its skipped last bin ignores the 129 most confident of 329 images (an -A set
    of that size); here they count like the rest. Needs ``N >= bins``.
    """
    bins = int(bins)
    n = int(np.asarray(confidence).size)
    if bins < 1:
        raise NSPError(f"bins={bins}: the number of calibration bins must be a positive integer")
    if n < bins:
        raise NSPError(
            f"adaptive_calibration_error: {n} examples < bins={bins}; evaluate more or use fewer bins"
        )
    return calibration_error(confidence, correct, p=p, beta=n // bins, skip_last=False)


def rms_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, beta: int = 100) -> float:
    """RMS calibration error of the reference protocol: :func:`calibration_error` with ``p='2'``."""
    return calibration_error(confidence, correct, p="2", beta=beta)
