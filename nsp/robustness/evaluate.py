"""Evaluate a model on the robustness sets: the library behind the ``evaluate_raw@<model>`` and
``evaluate@<model>`` stages (their runners are in :mod:`nsp.robustness.stage`).

Two steps, so that normalising by the baseline needs no cycle in the DAG:

1. :func:`evaluate_raw` runs the model over the clean test split and the -C / -P / -A sets and keeps
   only numbers that depend on that model: the corruption x severity error matrix, flip probability
   and top-5 distance per perturbation, -A accuracy, RMS calibration errors
   (the stage writes them to ``outputs/robustness/raw/<model>.json``).
2. :func:`robustness_metrics` combines a model's raw numbers with the baseline's: CE / mCE and
   relative mCE (15 benchmark corruptions; the 4 held-out ones are reported per corruption only),
   the unnormalised mean corruption error (CIFAR protocol), flip rate / mFR and top-5 distance rate /
   mT5D (11 test perturbations); :func:`errors_table_rows` is the per-corruption table (the stage
   writes ``outputs/robustness/<model>.metrics.json`` and ``<model>.errors.csv``).

Also :func:`predict` (logits of uint8 NHWC images) and :func:`optimise_for_inference` (a traced,
frozen, optionally bfloat16 model). Relative CE uses the clean error on the -C images themselves
(``c_clean_err``); ``clean_err`` and ``calib_err`` use the whole clean test split. A ratio whose
baseline denominator is 0 is ``None``; so is the relative CE of a corruption that degrades the
baseline by less than ``evaluate.rel_ce_min_degradation`` (listed in ``rel_ce_excluded``, left out of
relative mCE). Calibration errors use adaptive bins that scale with the set (``evaluate.calib_bins``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsp.errors import NSPError
from nsp.robustness import metrics as M
from nsp.robustness.build import load_summary
from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS, SEVERITIES
from nsp.robustness.perturbations import NOISE_PERTURBATIONS, PERTURBATIONS, TEST_PERTURBATIONS

RAW_FORMAT = "nsp-robustness-raw/1"

__all__ = [
    "RAW_FORMAT",
    "REL_CE_MIN_DEGRADATION",
    "calibration_or_none",
    "errors_table_rows",
    "evaluate_raw",
    "optimise_for_inference",
    "predict",
    "relative_ce",
    "robustness_metrics",
]


@torch.inference_mode()
def predict(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """float32 logits ``(N, K)`` of uint8 NHWC ``images`` (eval mode, no noise); the model moves the
    batch to its own device (:class:`nsp.train.engine.Classifier`), the logits come back to the CPU."""
    model.eval()
    x = np.asarray(images)
    outs = []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.array(x[i : i + batch_size], copy=True)).permute(0, 3, 1, 2)
        outs.append(model(xb).float().cpu().numpy())
    if not outs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outs)


class _Bf16Autocast(torch.nn.Module):
    """``model`` under bfloat16 autocast on ``device_type`` ("cpu" or "cuda"), returning float32 logits."""

    def __init__(self, model: torch.nn.Module, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x).float()


def optimise_for_inference(
    model: torch.nn.Module, example: np.ndarray, *, bf16: bool = False
) -> torch.nn.Module:
    """TorchScript-trace and freeze ``model`` (folds BatchNorm into the convolutions: ~1.4x faster on
    CPU, logits equal to ~1e-7); the eager model if tracing fails. ``example``: uint8 NHWC images.
    ``bf16``: run it under bfloat16 autocast (2.6x faster with AMX; top-1 agrees on ~99.8 %)."""
    import warnings

    model.eval()
    if bf16:
        device = next(iter(model.parameters()), torch.empty(0)).device
        model = _Bf16Autocast(model, device.type).eval()
    x = torch.from_numpy(np.array(example[:2], copy=True)).permute(0, 3, 1, 2)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.freeze(torch.jit.trace(model, x))
    except Exception:  # an architecture TorchScript cannot trace: evaluate it eagerly
        return model


def _softmax_conf(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p.max(axis=1) / p.sum(axis=1)).astype(np.float64)


def calibration_or_none(logits: np.ndarray, labels: np.ndarray, *, bins: int) -> float | None:
    """RMS calibration error of softmax confidences in ``bins`` adaptive bins of ``N // bins``
    images each, every image counted (:func:`nsp.robustness.metrics.adaptive_calibration_error`),
    or ``None`` when there are fewer than ``2 * bins`` images (a bin of one image is no estimate)."""
    if len(labels) < 2 * bins:
        return None
    correct = logits.argmax(axis=1) == np.asarray(labels)
    return M.adaptive_calibration_error(_softmax_conf(logits), correct, bins=bins, p="2")


def evaluate_raw(
    *,
    model: torch.nn.Module,
    test_x: np.ndarray,
    test_y: np.ndarray,
    sets: str | Path,
    batch_size: int = 1024,
    calib_bins: int = 15,
    progress: bool = True,
    exact_model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Run ``model`` over the clean test split and every set under ``sets``; the raw numbers.

    ``exact_model`` (default: ``model``) computes the clean test accuracy / calibration and the -A
    numbers, so that a reduced-precision ``model`` only touches the bulk (-C and -P, and the clean
    -C images that relative CE subtracts); the clean accuracy then equals the training stage's.
    """
    from tqdm.auto import tqdm

    sets = Path(sets)
    summary = load_summary(sets)
    test_y = np.asarray(test_y, dtype=np.int64)
    t0 = time.perf_counter()
    exact = model if exact_model is None else exact_model
    clean_logits = predict(exact, test_x, batch_size=batch_size)
    clean_pred = clean_logits.argmax(axis=1)
    c_idx = np.load(sets / "c_index.npy")
    c_y = np.load(sets / "c_labels.npy")
    if len(c_idx) and (c_idx.max() >= len(test_y) or not np.array_equal(test_y[c_idx], c_y)):
        raise NSPError(
            f"{sets} was built from another test split (labels differ); re-run `nsp robustness`"
        )
    c_clean_pred = (
        clean_pred[c_idx]
        if exact_model is None
        else predict(model, np.asarray(test_x)[c_idx], batch_size=batch_size).argmax(axis=1)
    )
    images = 0 if exact_model is None else len(c_idx)
    names = summary["c"]["corruptions"]
    err = np.empty((len(names), len(SEVERITIES)), dtype=np.float64)
    for ci, name in enumerate(tqdm(names, desc="eval -C", disable=not progress)):
        arr = np.load(sets / f"c_{name}.npy", mmap_mode="r")
        for si in range(arr.shape[0]):
            pred = predict(model, arr[si], batch_size=batch_size).argmax(axis=1)
            err[ci, si] = M.error_rate(pred, c_y)
            images += len(pred)
    fp: dict[str, float] = {}
    t5d: dict[str, float | None] = {}
    for name in tqdm(summary["p"]["perturbations"], desc="eval -P", disable=not progress):
        seq = np.load(sets / f"p_{name}.npy", mmap_mode="r")
        n, t = seq.shape[:2]
        logits = predict(model, seq.reshape(n * t, *seq.shape[2:]), batch_size=batch_size)
        logits = logits.reshape(n, t, -1)
        noise = name in NOISE_PERTURBATIONS
        fp[name] = M.flip_probability(logits.argmax(axis=-1), noise=noise)
        t5d[name] = M.top5_distance(logits, noise=noise) if logits.shape[-1] >= 5 else None
        images += n * t
    a_x = np.load(sets / "a_x.npy")
    a_y = np.load(sets / "a_y.npy")
    a_logits = predict(exact, a_x, batch_size=batch_size)
    images += len(test_x) + len(a_x)
    return {
        "format": RAW_FORMAT,
        "clean_err": M.error_rate(clean_pred, test_y),
        "clean_acc": M.accuracy(clean_pred, test_y),
        "c_clean_err": M.error_rate(c_clean_pred, c_y) if len(c_idx) else None,
        "calib_err": calibration_or_none(clean_logits, test_y, bins=calib_bins),
        "calib_bins": calib_bins,
        "test_images": len(test_y),
        "c": {
            "images": len(c_y),
            "corruptions": list(names),
            "severities": list(SEVERITIES),
            "err": err.tolist(),
        },
        "p": {"images": summary["p"]["images"], "fp": fp, "t5d": t5d},
        "a": {
            "size": len(a_y),
            "acc": M.accuracy(a_logits.argmax(axis=1), a_y) if len(a_y) else None,
            "calib_err": calibration_or_none(a_logits, a_y, bins=calib_bins) if len(a_y) else None,
        },
        "images_evaluated": images,
        "seconds": time.perf_counter() - t0,
    }


def _per_row(
    fn: Callable[..., M.CorruptionErrors],
    model: np.ndarray | Sequence[float],
    base: np.ndarray | Sequence[float],
    names: Sequence[str],
    **kw: float,
) -> dict[str, float | None]:
    """``fn`` row by row (one corruption/perturbation each); ``None`` where it is undefined."""
    out: dict[str, float | None] = {}
    model, base = np.asarray(model, dtype=np.float64), np.asarray(base, dtype=np.float64)
    for i, name in enumerate(names):
        try:
            out[name] = float(fn(model[i : i + 1], base[i : i + 1], **kw).ce[0])
        except NSPError:
            out[name] = None
    return out


def _mean_of(values: dict[str, float | None], names: Sequence[str]) -> float | None:
    vals = [values[n] for n in names if values.get(n) is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(names) else None


#: Default of ``evaluate.rel_ce_min_degradation``: a corruption whose baseline degradation (mean error
#: over the severities minus the clean error) is below this is left out of relative mCE.
REL_CE_MIN_DEGRADATION = 0.01


def relative_ce(
    e: np.ndarray,
    eb: np.ndarray,
    names: Sequence[str],
    *,
    model_clean_err: float,
    baseline_clean_err: float,
    min_degradation: float = REL_CE_MIN_DEGRADATION,
) -> tuple[dict[str, float | None], dict[str, float], list[str]]:
    """Relative CE per corruption, the baseline degradation behind each denominator, the excluded.

    ``degradation_c = mean_s Eb[c, s] - Eb_clean`` (the denominator of relative CE divided by the
    number of severities). Where it is below ``min_degradation`` the corruption barely hurts (or
    helps) the baseline, so relative CE would divide by ~0: its relative CE is ``None`` and its name
    is in the excluded list instead of being averaged in.
    """
    deg = eb.mean(axis=1) - float(baseline_clean_err)
    rel: dict[str, float | None] = {}
    excluded: list[str] = []
    for i, name in enumerate(names):
        if not deg[i] >= min_degradation:
            rel[name] = None
            excluded.append(name)
            continue
        num = float((e[i] - float(model_clean_err)).sum())
        rel[name] = num / float((eb[i] - float(baseline_clean_err)).sum())
    return rel, {n: float(d) for n, d in zip(names, deg, strict=True)}, excluded


def robustness_metrics(
    raw: dict[str, Any],
    baseline: dict[str, Any],
    *,
    rel_ce_min_degradation: float = REL_CE_MIN_DEGRADATION,
) -> dict[str, Any]:
    """The normalised metrics of one model from its raw numbers and the baseline's raw numbers.

    ``mce`` / ``mean_corruption_error`` average the 15 benchmark corruptions, ``mfr`` / ``mt5d`` the
    11 test perturbations; such a mean is ``None`` if one of its terms is undefined. ``rel_mce``
    averages the benchmark corruptions whose baseline degradation is at least
    ``rel_ce_min_degradation`` (:func:`relative_ce`); ``rel_ce_excluded`` lists the others,
    ``rel_mce_corruptions`` counts the averaged ones and ``rel_ce_baseline_degradation`` gives
    every corruption's denominator (``None`` when a clean error is missing).
    """
    names = list(raw["c"]["corruptions"])
    if list(baseline["c"]["corruptions"]) != names:
        raise NSPError("the model's and the baseline's raw results cover different corruptions")
    e = np.asarray(raw["c"]["err"], dtype=np.float64)
    eb = np.asarray(baseline["c"]["err"], dtype=np.float64)
    ce = _per_row(M.corruption_errors, e, eb, names)
    if raw.get("c_clean_err") is None or baseline.get("c_clean_err") is None:
        rel, degradation, excluded = dict.fromkeys(names), None, []
    else:
        rel, degradation, excluded = relative_ce(
            e,
            eb,
            names,
            model_clean_err=raw["c_clean_err"],
            baseline_clean_err=baseline["c_clean_err"],
            min_degradation=rel_ce_min_degradation,
        )
    bench = [n for n in BENCHMARK_CORRUPTIONS if n in names]
    bench_rows = [names.index(n) for n in bench]
    rel_bench = [n for n in bench if rel[n] is not None]
    pnames = [n for n in PERTURBATIONS if n in raw["p"]["fp"]]

    def _rates(key: str, fn: Callable[..., M.CorruptionErrors]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for n in pnames:
            m, b = raw["p"][key].get(n), baseline["p"][key].get(n)
            out[n] = None if m is None or b is None else _per_row(fn, [m], [b], [n])[n]
        return out

    fr = _rates("fp", M.flip_rates)
    t5r = _rates("t5d", M.top5_distance_rates)
    ptest = [n for n in TEST_PERTURBATIONS if n in pnames]
    return {
        "clean_err": raw["clean_err"],
        "clean_acc": raw["clean_acc"],
        "c_clean_err": raw["c_clean_err"],
        "calib_err": raw["calib_err"],
        "a_acc": raw["a"]["acc"],
        "a_calib_err": raw["a"]["calib_err"],
        "a_size": raw["a"]["size"],
        "mce": _mean_of(ce, bench),
        "rel_mce": _mean_of(rel, rel_bench) if rel_bench else None,
        "rel_mce_corruptions": len(rel_bench),
        "rel_ce_excluded": [n for n in bench if n in excluded],
        "rel_ce_min_degradation": rel_ce_min_degradation,
        "rel_ce_baseline_degradation": degradation,
        "mean_corruption_error": M.mean_corruption_error(e[bench_rows]) if bench_rows else None,
        "mfr": _mean_of(fr, ptest),
        "mt5d": _mean_of(t5r, ptest),
        "ce": ce,
        "rel_ce": rel,
        "corruption_err": {n: float(e[i].mean()) for i, n in enumerate(names)},
        "fr": fr,
        "t5d_rate": t5r,
        "fp": dict(raw["p"]["fp"]),
        "t5d": dict(raw["p"]["t5d"]),
    }


def errors_table_rows(raw: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per corruption: error per severity, their mean, CE, relative CE and its denominator
    over the severities (the baseline's degradation; relative CE is empty where it is too small)."""
    rows = []
    sev = raw["c"]["severities"]
    for name, errs in zip(raw["c"]["corruptions"], raw["c"]["err"], strict=True):
        row: dict[str, Any] = {
            "corruption": name,
            "benchmark": name in BENCHMARK_CORRUPTIONS,
        }
        row.update({f"severity_{s}": e for s, e in zip(sev, errs, strict=True)})
        row["mean"] = float(np.mean(errs))
        row["ce"] = metrics["ce"].get(name)
        row["rel_ce"] = metrics["rel_ce"].get(name)
        row["baseline_degradation"] = (metrics.get("rel_ce_baseline_degradation") or {}).get(name)
        rows.append(row)
    return rows
