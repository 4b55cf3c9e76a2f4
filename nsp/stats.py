"""Replicate statistics (scipy): mean, s.d. and 95 % CI per column; paired t-tests by replicate, Holm
correction across columns and a direction-aware verdict (won / tied / lost).

Conventions (README, "Replicates"):

* CIs are Student-t intervals (``scipy.stats.t``); paired comparisons are ``scipy.stats.ttest_rel``
  on values matched by replicate index, two-sided, alpha 0.05 after Holm across the tested columns.
* Fewer than 2 values: no s.d., CI or p (``None``) and the verdict ``untested`` ("one run, not tested").
* Zero variance (every value equal, within 1e-12): s.d. 0 and CI ``[mean, mean]``. For a paired
  difference that is the same in every replicate the t statistic is infinite: p = 0 (scipy's limit)
  when that difference is non-zero, p = 1 when it is zero; such entries carry ``zero_variance: true``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as st

ALPHA = 0.05
CONFIDENCE = 0.95
# columns where a smaller value is better; every other column: larger is better
LOWER_IS_BETTER = frozenset(
    {"mce", "rel_mce", "mean_corruption_error", "mfr", "mt5d", "calib_err", "a_calib_err"}
)


def _zero_spread(x: np.ndarray) -> bool:
    return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))


def describe(values: Sequence[float]) -> dict[str, Any]:
    """``{mean, sd, ci95: [low, high], n}`` of the values (sample s.d., Student-t CI)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": None, "sd": None, "ci95": None, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "sd": None, "ci95": None, "n": 1}
    if _zero_spread(x):
        return {"mean": mean, "sd": 0.0, "ci95": [mean, mean], "n": n}
    sd = float(x.std(ddof=1))
    low, high = st.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return {"mean": mean, "sd": sd, "ci95": [float(low), float(high)], "n": n}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired comparison of ``a - b`` (equal-length sequences matched by replicate).

    ``{diff, sd, ci95, p, n, zero_variance}``: the mean difference, the s.d. of the differences,
    the CI of the mean difference and the two-sided paired-t p-value.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    n = len(d)
    out: dict[str, Any] = {"diff": float(d.mean()) if n else None, "n": n}
    if n < 2:
        return {**out, "sd": None, "ci95": None, "p": None, "zero_variance": False}
    if _zero_spread(d):
        diff = out["diff"]
        p = 1.0 if abs(diff) <= 1e-12 else 0.0
        return {**out, "sd": 0.0, "ci95": [diff, diff], "p": p, "zero_variance": True}
    res = st.ttest_rel(x, y)
    ci = res.confidence_interval(CONFIDENCE)
    return {
        **out,
        "sd": float(d.std(ddof=1)),
        "ci95": [float(ci.low), float(ci.high)],
        "p": float(res.pvalue),
        "zero_variance": False,
    }


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Unpaired comparison of ``mean(a) - mean(b)`` (two configurations, independent runs).

    ``{diff, ci95, p, df, n_a, n_b, zero_variance}``: Welch's t (``scipy.stats.ttest_ind`` with
    ``equal_var=False``), two-sided, with its CI of the difference of means.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out: dict[str, Any] = {
        "diff": float(x.mean() - y.mean()) if len(x) and len(y) else None,
        "n_a": len(x),
        "n_b": len(y),
    }
    if len(x) < 2 or len(y) < 2:
        return {**out, "ci95": None, "p": None, "df": None, "zero_variance": False}
    if _zero_spread(x) and _zero_spread(y):
        diff = out["diff"]
        p = 1.0 if abs(diff) <= 1e-12 else 0.0
        return {**out, "ci95": [diff, diff], "p": p, "df": None, "zero_variance": True}
    res = st.ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(CONFIDENCE)
    return {
        **out,
        "ci95": [float(ci.low), float(ci.high)],
        "p": float(res.pvalue),
        "df": float(res.df),
        "zero_variance": False,
    }


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values of the non-None entries (step-down, monotone, <= 1)."""
    keys = sorted((k for k, p in pvalues.items() if p is not None), key=lambda k: pvalues[k])
    m = len(keys)
    out: dict[str, float | None] = {k: None for k in pvalues}
    running = 0.0
    for i, k in enumerate(keys):
        running = max(running, min(1.0, (m - i) * float(pvalues[k])))
        out[k] = running
    return out


def verdict(column: str, diff: float | None, p_holm: float | None) -> str:
    """``won`` / ``lost`` (Holm p < alpha, direction-aware), ``tied``, or ``untested`` (no p)."""
    if diff is None or p_holm is None:
        return "untested"
    if p_holm >= ALPHA or diff == 0:
        return "tied"
    better = diff < 0 if column in LOWER_IS_BETTER else diff > 0
    return "won" if better else "lost"


def compare_columns(
    a: dict[str, Sequence[float | None]],
    b: dict[str, Sequence[float | None]],
    *,
    matched: bool = True,
) -> dict[str, dict[str, Any]]:
    """Per column: stats of ``a - b``, Holm across the columns tested, and the verdict. ``a``/``b``
    map column -> values in replicate order. ``matched``: paired t over the replicates where both
    have a value; otherwise Welch's t over each side's values (two configurations)."""
    out: dict[str, dict[str, Any]] = {}
    for col in a:
        if col not in b:
            continue
        better = "lower" if col in LOWER_IS_BETTER else "higher"
        if not matched:
            xs = [v for v in a[col] if v is not None]
            ys = [v for v in b[col] if v is not None]
            if xs and ys:
                out[col] = {**welch(xs, ys), "better": better}
            continue
        pairs = [
            (x, y) for x, y in zip(a[col], b[col], strict=True) if x is not None and y is not None
        ]
        if not pairs:
            continue
        xs, ys = zip(*pairs, strict=True)
        out[col] = {**paired(xs, ys), "better": better}
    adjusted = holm({c: r["p"] for c, r in out.items()})
    for col, r in out.items():
        r["p_holm"] = adjusted[col]
        r["verdict"] = verdict(col, r["diff"], r["p_holm"])
    return out
