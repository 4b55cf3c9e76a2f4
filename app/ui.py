"""Shared page furniture: the sidebar (tracking URI, experiment, pipeline run) and friendly messages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st

from app import data as D

# Non-widget session keys keep the choices when the user switches pages (widget state does not).
_URI, _EXP, _RUN = "nsp_uri", "nsp_experiment", "nsp_pipeline"


def page(title: str, icon: str) -> float:
    """Set the page config + title; returns the start time for :func:`footer`."""
    st.set_page_config(page_title=f"NSP · {title}", page_icon=icon, layout="wide")
    st.title(title)
    return time.perf_counter()


def footer(t0: float) -> None:
    st.caption(f"rendered in {time.perf_counter() - t0:.2f} s · queries cached {D.CACHE_TTL} s")


def friendly(what: str, command: str = D.REPRO) -> None:
    """The "nothing to show yet" message with the command that produces it."""
    st.info(f"{what} Run `{command}` to produce it.", icon="ℹ️")


def _remember(widget_key: str, store_key: str) -> None:
    st.session_state[store_key] = st.session_state[widget_key]


def tracking_uri(root: Path) -> str:
    """Sidebar text box for the tracking URI (defaults: env > params.yaml > sqlite:///mlflow.db)."""
    if _URI not in st.session_state:
        st.session_state[_URI] = D.default_tracking_uri(root)
    st.session_state["w_uri"] = st.session_state[_URI]
    st.sidebar.text_input(
        "MLflow tracking URI",
        key="w_uri",
        on_change=_remember,
        args=("w_uri", _URI),
        help="MLFLOW_TRACKING_URI, else params.yaml tracking.uri, else sqlite:///mlflow.db",
    )
    if st.sidebar.button("Reload data", help=f"queries are cached for {D.CACHE_TTL} s"):
        st.cache_data.clear()
    return st.session_state[_URI]


def _select(label: str, options: list[Any], store_key: str, fmt: Any, default: Any = None) -> Any:
    values = list(options)
    current = st.session_state.get(store_key, default)
    index = values.index(current) if current in values else 0
    widget = f"w_{store_key}"
    st.session_state[widget] = values[index]
    st.sidebar.selectbox(
        label, values, key=widget, format_func=fmt, on_change=_remember, args=(widget, store_key)
    )
    st.session_state[store_key] = st.session_state[widget]
    return st.session_state[widget]


def pipeline_context() -> dict[str, Any] | None:
    """Sidebar: URI, experiment, pipeline run. None (after a friendly message) when there is none."""
    root = D.project_root()
    uri = tracking_uri(root)
    try:
        exps = D.experiments(uri)
    except Exception as exc:  # unreachable server, foreign DB, ...
        st.warning(f"Cannot read the MLflow store {uri}: {type(exc).__name__}: {exc}")
        return None
    if not exps:
        friendly(f"No NSP pipeline runs in the MLflow store `{uri}` yet.")
        return None
    by_id = {e["experiment_id"]: e for e in exps}
    default = next(
        (e["experiment_id"] for e in exps if e["name"] == D.default_experiment(root)), None
    )
    exp_id = _select(
        "Experiment",
        list(by_id),
        _EXP,
        lambda i: f"{by_id[i]['name']} ({by_id[i]['pipelines']} pipelines)",
        default=default,
    )
    runs = D.pipeline_runs(uri, exp_id)
    if not runs:
        friendly(f"Experiment {by_id[exp_id]['name']} has no pipeline runs.")
        return None
    by_run = {r["run_id"]: r for r in runs}
    current = D.current_pipeline_run(root)
    run_id = _select(
        "Pipeline run",
        list(by_run),
        _RUN,
        lambda r: by_run[r]["label"] + (" (outputs/)" if r == current else ""),
        default=current,
    )
    return {
        "root": root,
        "uri": uri,
        "experiment_id": exp_id,
        "experiment": by_id[exp_id]["name"],
        "run_id": run_id,
        "runs": runs,
    }


def models_picker(models: list[str], key: str, label: str = "Models") -> list[str]:
    """Multiselect of models (teacher, g1.., baseline), all selected by default."""
    return st.multiselect(label, models, default=models, key=key)
