"""The official releases on the dashboard: a picker (generated sets or a release found under
``outputs/releases``) and the release views of the Generations, Corruptions and Perturbations
pages. Reads ``outputs/releases/<model>.metrics.json`` and ``raw/<model>/<release>.json`` only."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.express as px
import streamlit as st

from app import data as D
from app import ui
from nsp.robustness.release_protocols import PROTOCOL

GENERATED = "generated sets"
TITLES = {
    "imagenet_c": "ImageNet-C",
    "imagenet_p": "ImageNet-P",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
    "cifar10_c": "CIFAR-10-C",
    "cifar10_p": "CIFAR-10-P",
}


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def release_metrics(root: Path) -> dict[str, dict[str, Any]]:
    """model -> its ``outputs/releases/<model>.metrics.json`` (only models with a release)."""
    out = {}
    for p in sorted((Path(root) / "outputs" / "releases").glob("*.metrics.json")):
        m = _json(p)
        if m and m.get("releases"):
            out[p.name[: -len(".metrics.json")]] = m
    return {k: out[k] for k in D.model_order(list(out))}


def found(root: Path, kinds: tuple[str, ...]) -> list[str]:
    """The releases of ``kinds`` that some model has been evaluated on."""
    have = {r for m in release_metrics(root).values() for r in m["releases"]}
    return [k for k in kinds if k in have]


def picker(key: str, kinds: tuple[str, ...]) -> str | None:
    """A "Robustness set" selector when a release was evaluated: ``None`` means the generated sets
    (also when no release is found, and then nothing is drawn)."""
    options = found(D.project_root(), kinds)
    if not options:
        return None
    pick = st.selectbox(
        "Robustness set",
        [GENERATED, *options],
        format_func=lambda k: TITLES.get(k, k),
        key=key,
    )
    return None if pick == GENERATED else pick


def generated_or_release(
    *, key: str, kinds: tuple[str, ...], show: Callable[[str], None]
) -> dict[str, Any] | None:
    """A page's source: draws the picked official release with ``show`` and returns None, else returns
    the pipeline run to draw the generated sets of (``ui.pipeline_context``; None when there is none)."""
    release = picker(key=key, kinds=kinds)
    if release is not None:
        show(release)
        return None
    return ui.pipeline_context()


def _protocol_caption(release: str, metrics: dict[str, dict[str, Any]]) -> None:
    first = next(iter(metrics.values()))
    summ = first["releases"][release]
    st.caption(
        f"Protocol: {PROTOCOL[release]}. Baseline: {first.get('normalised_by')}. "
        f"Evaluated on the {summ['classes']} classes each model shares with the release "
        f"({summ['images']} images / sequences)."
    )


def show_summary(release: str) -> None:
    """Generations page: one row per model with the release's summary numbers."""
    metrics = {
        m: v for m, v in release_metrics(D.project_root()).items() if release in v["releases"]
    }
    st.subheader(f"{TITLES[release]} per model")
    _protocol_caption(release, metrics)
    rows = [{"model": m, **v["releases"][release]} for m, v in metrics.items()]
    df = pd.DataFrame(rows).drop(columns=["ce"], errors="ignore")
    st.dataframe(df, key=f"release_summary_{release}")
    headline = next(
        (
            k
            for k in ("mce", "mfr", "acc", "mean_error", "mfr_baseline")
            if k in df and df[k].notna().any()
        ),
        None,
    )
    if headline:
        fig = px.bar(df, x="model", y=headline, title=f"{TITLES[release]} {headline}")
        st.plotly_chart(fig, key=f"release_bar_{release}")


def _raw(root: Path, model: str, release: str) -> dict[str, Any] | None:
    return _json(Path(root) / "outputs" / "releases" / "raw" / model / f"{release}.json")


def show_corruptions(release: str) -> None:
    """Corruptions page: error heatmap per model and CE per corruption (AlexNet for ImageNet-C)."""
    root = D.project_root()
    metrics = {m: v for m, v in release_metrics(root).items() if release in v["releases"]}
    _protocol_caption(release, metrics)
    for model in metrics:
        raw = _raw(root, model, release)
        if not raw:
            continue
        grid = pd.DataFrame(raw["errors"], index=[1, 2, 3, 4, 5]).T
        fig = px.imshow(
            grid, text_auto=".2f", aspect="auto", color_continuous_scale="Reds", zmin=0, zmax=1,
            labels={"x": "severity", "y": "corruption", "color": "error"}, title=model,
        )  # fmt: skip
        st.plotly_chart(fig, key=f"release_heat_{release}_{model}")
    ce = {m: v["releases"][release].get("ce") for m, v in metrics.items()}
    ce = {m: c for m, c in ce.items() if c}
    if ce:
        st.subheader("CE per corruption (normalised by AlexNet)")
        table = pd.DataFrame(ce)
        table.loc["mCE"] = table.mean()
        st.dataframe(table, key=f"release_ce_{release}")


def show_perturbations(release: str) -> None:
    """Perturbations page: flip probability and top-5 distance per perturbation folder."""
    root = D.project_root()
    metrics = {m: v for m, v in release_metrics(root).items() if release in v["releases"]}
    _protocol_caption(release, metrics)
    rows = []
    for model in metrics:
        raw = _raw(root, model, release) or {}
        for metric in ("fp", "t5d"):
            for folder, v in (raw.get(metric) or {}).items():
                rows.append({"model": model, "metric": metric, "perturbation": folder, "value": v})
    df = pd.DataFrame(rows)
    for metric, title in (("fp", "Flip probability"), ("t5d", "Top-5 distance")):
        sub = df[df["metric"] == metric] if not df.empty else df
        if sub.empty or sub["value"].isna().all():
            continue
        st.subheader(f"{title} ({TITLES[release]})")
        st.plotly_chart(
            px.bar(sub, x="perturbation", y="value", color="model", barmode="group"),
            key=f"release_{metric}_{release}",
        )
        st.dataframe(
            sub.pivot_table(index="perturbation", columns="model", values="value", sort=False),
            key=f"release_table_{metric}_{release}",
        )
