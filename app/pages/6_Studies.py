"""Studies: Optuna optimisation history, parallel coordinates, importances, Pareto front, trials."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app import data as D  # noqa: E402
from app import ui  # noqa: E402

STUDY_CMD = "nsp study run studies/<name>.yaml"


def _first(directions: list[str]):
    """Target of the importances of a multi-objective study: its first objective, lower = better."""
    sign = -1.0 if directions[0] == "maximize" else 1.0
    return lambda t: sign * t.values[0]


def _chart(title: str, make, key: str) -> None:
    """One Optuna plotly figure; Optuna's own "not enough trials" errors become a caption."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = make()
    except Exception as exc:
        st.caption(f"{title}: not available ({exc})")
        return
    fig.update_layout(height=380)
    st.plotly_chart(fig, key=key)


def main() -> None:
    import optuna.visualization as vis

    t0 = ui.page("Studies", "🔬")
    root = D.project_root()
    uri = ui.tracking_uri(root)
    found = D.discover_storages(root)
    extra = st.sidebar.text_input(
        "Optuna storage URL",
        key="study_storage",
        help="sqlite:///path.db, journal:path.log or a database URL (studies/*.db are found automatically)",
    ).strip()
    storages = ([D._resolve_storage(extra, root)] if extra else []) + found
    if not storages:
        ui.friendly("No Optuna studies found (studies/*.db, studies/*.yaml storage:).", STUDY_CMD)
        return ui.footer(t0)
    storage = st.selectbox("Storage", storages, key="study_pick_storage")
    try:
        names = D.study_names(storage)
    except Exception as exc:
        st.warning(f"Cannot open the Optuna storage {storage}: {type(exc).__name__}: {exc}")
        return ui.footer(t0)
    if not names:
        ui.friendly(f"The storage {storage} holds no studies.", STUDY_CMD)
        return ui.footer(t0)
    name = st.selectbox("Study", names, key="study_pick_name")
    info = D.study_trials(storage, name)
    trials = pd.DataFrame(info["trials"])
    metrics, directions = info["metric_names"], info["directions"]
    done = int((trials["state"] == "COMPLETE").sum()) if not trials.empty else 0
    st.markdown(
        f"**{name}** — {len(trials)} trials ({done} complete); objectives: "
        + ", ".join(f"{d} `{m}`" for m, d in zip(metrics, directions, strict=False))
    )
    if done == 0:
        ui.friendly("No completed trials yet.", STUDY_CMD)
    else:
        study = D.load_study(storage, name)
        multi = len(directions) > 1
        cols = st.columns(2)
        with cols[0]:
            for i, m in enumerate(metrics):
                _chart(
                    f"history of {m}",
                    lambda i=i, m=m: vis.plot_optimization_history(
                        study, target=(lambda t, i=i: t.values[i]) if multi else None, target_name=m
                    ),
                    key=f"history_{i}",
                )
        with cols[1]:
            _chart(
                "parameter importances",
                lambda: vis.plot_param_importances(
                    study, target=_first(directions) if multi else None, target_name=metrics[0]
                ),
                key="importances",
            )
        _chart(
            "parallel coordinates",
            lambda: vis.plot_parallel_coordinate(
                study, target=(lambda t: t.values[0]) if multi else None, target_name=metrics[0]
            ),
            key="parallel",
        )
        if multi:
            _chart(
                "Pareto front",
                lambda: vis.plot_pareto_front(
                    study, target_names=metrics[:3] if len(metrics) <= 3 else None
                ),
                key="pareto",
            )
        else:
            st.caption("Pareto front: single-objective study (shown for multi-objective studies).")

    st.subheader("Trials")
    ids = tuple(r for r in trials.get("mlflow_run_id", pd.Series(dtype=object)).dropna())
    runs = D.run_lookup(uri, ids) if ids else {}
    ui_url = st.sidebar.text_input(
        "MLflow UI URL (for trial links)", value="http://127.0.0.1:5000", key="mlflow_ui"
    ).rstrip("/")
    if not trials.empty:
        trials["mlflow_run"] = [
            f"{ui_url}/#/experiments/{runs[r]['experiment_id']}/runs/{r}" if r in runs else None
            for r in trials["mlflow_run_id"]
        ]
        trials["run_status"] = [runs.get(r, {}).get("status") for r in trials["mlflow_run_id"]]
    st.dataframe(
        trials,
        hide_index=True,
        key="trials",
        column_config={
            "mlflow_run": st.column_config.LinkColumn("MLflow run", display_text="open run")
        },
    )
    if any(str(c).endswith("vs trial 0") for c in trials.columns):
        st.caption(
            "Trials with repeats: values are the mean over the repeats, `se` its standard error; "
            "'vs trial 0': better / worse than trial 0 (the params.yaml values) by more than the "
            "combined s.e., '~' within it (as `nsp study show`)."
        )
    if ids and not runs:
        st.caption(f"The trials' MLflow runs are not in the tracking store {uri}.")
    ui.footer(t0)


main()
