"""The generation table (teacher, g1..gN, baseline) from the stages' DVC metrics files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nsp import config as C

COLUMNS = ("model", "arch", "params", "test_acc", "val_acc", "pseudo_label_acc", "train_seconds")
ROBUST_COLUMNS = (
    "a_acc",
    "mce",
    "rel_mce",
    "mean_corruption_error",
    "mfr",
    "mt5d",
    "calib_err",
    "a_calib_err",
)

#: Official-release columns (``<release>_<metric>``, from ``outputs/releases/<model>.metrics.json``):
#: the headline numbers and, beside each release, its shared classes and images.
RELEASE_COLUMNS = (
    "imagenet_c_mce",
    "imagenet_c_rel_mce",
    "imagenet_c_mce_baseline",
    "imagenet_p_mfr",
    "imagenet_p_mt5d",
    "imagenet_p_mfr_baseline",
    "imagenet_p_mt5d_baseline",
    "imagenet_a_acc",
    "imagenet_a_calib_err",
    "imagenet_r_acc",
    "imagenet_r_calib_err",
    "cifar10_c_mean_error",
    "cifar10_c_mce_baseline",
    "cifar10_p_mfr_baseline",
    "cifar10_p_mt5d_baseline",
)


def release_columns(out: Path, name: str) -> dict[str, Any]:
    """The release columns of one model (``{}`` without releases): every ``<release>_<metric>``
    in :data:`RELEASE_COLUMNS` plus ``<release>_classes`` / ``<release>_images``."""
    m = _read(out / "releases" / f"{name}.metrics.json")
    if not m:
        return {}
    keep = [c for c in RELEASE_COLUMNS if c in m]
    for rel in m.get("releases", {}):
        keep += [f"{rel}_classes", f"{rel}_images"]
    return {k: m.get(k) for k in keep}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def generation_table(params: dict[str, Any], out: Path = Path("outputs")) -> list[dict[str, Any]]:
    """One row per model that exists: teacher, each generation in order, baseline."""
    names = ["teacher", *C.generation_keys(params), "baseline"]
    rows = []
    for name in names:
        m = _read(out / "models" / name / "metrics.json")
        if m is None:
            continue
        cfg = _read(out / "models" / name / "config.json") or {}
        row: dict[str, Any] = {
            "model": name,
            "arch": (cfg.get("config") or {}).get("arch"),
            "params": m.get("params"),
            "test_acc": m.get("test_acc"),
            "val_acc": m.get("val_acc"),
            "pseudo_label_acc": m.get("pseudo_label_acc"),
            "train_seconds": m.get("train_seconds"),
            "steps": m.get("steps"),
        }
        rob = _read(out / "robustness" / f"{name}.metrics.json")
        if rob is not None:
            row.update({k: rob.get(k) for k in ROBUST_COLUMNS})
        row.update(release_columns(out, name))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no trained models yet: run `dvc repro`"
    cols = [c for c in rows[0] if any(r.get(c) is not None for r in rows)]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
