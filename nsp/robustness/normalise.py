"""The ``evaluate@<model>`` stage: a model's raw robustness numbers normalised by the baseline's.

Torch-free on purpose (the stage runs once per model per run and only reads JSON): the raw numbers
come from ``evaluate_raw@<model>`` (:mod:`nsp.robustness.evaluate`, ``robustness/raw/<model>.json``
in the :data:`RAW_FORMAT`). :func:`robustness_metrics` combines them with the baseline's: CE / mCE
and relative mCE (15 benchmark corruptions; the 4 held-out ones are reported per corruption only),
the unnormalised mean corruption error (CIFAR protocol), flip rate / mFR and top-5 distance rate /
mT5D (11 test perturbations); :func:`errors_table_rows` is the per-corruption table.
:func:`run_evaluate` is the tracked stage runner (``<model>.metrics.json``, ``<model>.errors.csv``).
:func:`eval_settings` resolves the ``evaluate:`` params section for both evaluate stages and the
release stages.

Relative CE uses the clean error on the -C images themselves (``c_clean_err``). A ratio whose
baseline denominator is 0 is ``None``; so is the relative CE of a corruption that degrades the
baseline by less than ``evaluate.rel_ce_min_degradation`` (listed in ``rel_ce_excluded``, left out
of relative mCE).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nsp.config import PRECISIONS, baseline_name, generation_of, model_names
from nsp.errors import NSPError
from nsp.io import atomic_path, write_json
from nsp.robustness import metrics as M
from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS
from nsp.robustness.perturbations import PERTURBATIONS, TEST_PERTURBATIONS
from nsp.runtime import OUT

#: ``format`` of ``robustness/raw/<model>.json`` (written by ``evaluate_raw@<model>``).
RAW_FORMAT = "nsp-robustness-raw/1"

__all__ = [
    "RAW_FORMAT",
    "REL_CE_MIN_DEGRADATION",
    "check_model",
    "errors_table_rows",
    "eval_settings",
    "raw_path",
    "read_raw",
    "relative_ce",
    "robustness_metrics",
    "run_evaluate",
]


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


# ------------------------------------------------------------------------------ the stage


def check_model(params: dict[str, Any], model: str) -> None:
    names = model_names(params)
    if model not in names:
        raise NSPError(f"unknown model {model!r}; use one of {', '.join(names)} (params.yaml)")


def eval_settings(params: dict[str, Any]) -> dict[str, Any]:
    sec = dict(params.get("evaluate") or {})
    if "calib_beta" in sec:
        raise NSPError(
            "params.yaml: evaluate.calib_beta is gone (a fixed bin size skipped the most confident "
            "images); write evaluate.calib_bins: 15 (bins of N // 15 images, every image counted)"
        )
    s = {
        "baseline": baseline_name(params),
        "batch_size": sec.get("batch_size", 1024),
        "calib_bins": sec.get("calib_bins", 15),
        "precision": sec.get("precision", "fp32"),
        "rel_ce_min_degradation": sec.get("rel_ce_min_degradation", REL_CE_MIN_DEGRADATION),
    }
    eps = s["rel_ce_min_degradation"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise NSPError(
            "params.yaml: evaluate.rel_ce_min_degradation must be a number in [0, 1) "
            f"(an error-rate difference, e.g. 0.01; got {eps!r})"
        )
    if s["precision"] not in PRECISIONS:
        raise NSPError(
            f"params.yaml: evaluate.precision must be fp32, bf16 or auto (got {s['precision']!r})"
        )
    for key in ("batch_size", "calib_bins"):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise NSPError(f"params.yaml: evaluate.{key} must be an integer >= 1 (got {v!r})")
    return s


def raw_path(model: str, out: Path = OUT) -> Path:
    """Where ``evaluate_raw@<model>`` writes the model's raw numbers."""
    return out / "robustness" / "raw" / f"{model}.json"


def read_raw(model: str, out: Path) -> dict[str, Any]:
    p = raw_path(model, out)
    if not p.is_file():
        raise NSPError(
            f"{p} not found; run `nsp evaluate {model} --raw` (dvc repro evaluate_raw@{model}) first"
        )
    raw = json.loads(p.read_text())
    if raw.get("format") != RAW_FORMAT:
        raise NSPError(f"{p} is not a raw robustness result ({RAW_FORMAT}); re-run its stage")
    return raw


def _flat_numeric(metrics: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, (int, float)) and not isinstance(v2, bool):
                    flat[f"{k}.{k2}"] = float(v2)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[k] = float(v)
    return flat


def run_evaluate(params: dict[str, Any], model: str, *, out: Path = OUT) -> dict[str, Any]:
    """``evaluate@<model>``: normalise by the baseline -> ``<model>.metrics.json`` + ``.errors.csv``,
    logged in a nested MLflow run ``evaluate@<model>``."""
    from nsp import tracking

    check_model(params, model)
    s = eval_settings(params)
    base_name = s["baseline"]
    check_model(params, base_name)
    raw = read_raw(model, out)
    base = raw if base_name == model else read_raw(base_name, out)
    if raw.get("sets_sha256") != base.get("sets_sha256"):
        raise NSPError(
            f"raw results of {model} and {base_name} come from different robustness sets; "
            f"re-run evaluate_raw@{model} and evaluate_raw@{base_name}"
        )
    if raw.get("precision", "fp32") != base.get("precision", "fp32"):
        raise NSPError(
            f"raw results of {model} ({raw.get('precision', 'fp32')}) and {base_name} "
            f"({base.get('precision', 'fp32')}) were computed at different precisions; "
            f"re-run evaluate_raw@{model} and evaluate_raw@{base_name} with the same evaluate.precision"
        )
    metrics = {
        "model": model,
        "normalised_by": base_name,
        **robustness_metrics(raw, base, rel_ce_min_degradation=s["rel_ce_min_degradation"]),
        "checkpoint_sha256": raw["checkpoint_sha256"],
        "eval_seconds": raw["seconds"],
        "eval_precision": raw.get("precision", "fp32"),
    }
    if "precision_probe" in raw:  # auto: what it chose from, recorded with the numbers
        metrics["eval_precision_probe"] = raw["precision_probe"]
    d = out / "robustness"
    csv_path = d / f"{model}.errors.csv"
    rows = errors_table_rows(raw, metrics)
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    gen = generation_of(params, model)
    tags = {
        "dvc_stage": f"evaluate@{model}",
        "model": model,
        "generation": gen,
        "checkpoint_sha256": raw["checkpoint_sha256"],
        "robustness_sets_sha256": raw["sets_sha256"],
        "normalised_by": base_name,
        "eval_precision": metrics["eval_precision"],
    }
    with tracking.stage_run(
        params=params, stage=f"evaluate@{model}", generation=gen, config=s, tags=tags
    ) as tr:
        write_json(d / f"{model}.metrics.json", metrics)
        tr.log_final(_flat_numeric(metrics), artifacts=[csv_path, d / f"{model}.metrics.json"])
    return metrics
