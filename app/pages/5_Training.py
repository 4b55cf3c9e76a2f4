"""Training: per-epoch curves of any logged metric, overlaid across generations."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import plotly.express as px  # noqa: E402
import streamlit as st  # noqa: E402

from app import data as D  # noqa: E402
from app import ui  # noqa: E402


def main() -> None:
    t0 = ui.page("Training", "📈")
    ctx = ui.pipeline_context()
    if ctx is None:
        return ui.footer(t0)
    stages = [
        s
        for s in D.stage_runs(ctx["uri"], ctx["experiment_id"], ctx["run_id"])
        if s["kind"] in ("teacher", "student", "baseline")
    ]
    if not stages:
        ui.friendly("This pipeline run has no training stages yet.")
        return ui.footer(t0)
    keys = sorted({k for s in stages for k in s["metrics"]})
    keys = [k for k in D.PER_EPOCH if k in keys] + [k for k in keys if k not in D.PER_EPOCH]
    metric = st.selectbox("Metric", keys, key="train_metric")
    models = ui.models_picker([s["model"] for s in stages], key="train_models")
    chosen = [s for s in stages if s["model"] in models]
    df = D.curves(ctx["uri"], chosen, metric)
    if df.empty:
        st.info(f"No history of {metric} in the selected runs.")
        return ui.footer(t0)
    fig = px.line(df, x="epoch", y="value", color="model", markers=True, title=metric)
    fig.update_layout(height=420, yaxis_title=metric)
    st.plotly_chart(fig, key="curve")
    st.dataframe(
        df.pivot_table(index="epoch", columns="model", values="value", sort=False),
        key="curve_table",
    )
    ui.footer(t0)


main()
