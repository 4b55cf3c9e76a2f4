"""Corruptions: error per corruption x severity (heatmaps), severity curves, CE per corruption."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import plotly.express as px  # noqa: E402
import streamlit as st  # noqa: E402

from app import data as D  # noqa: E402
from app import releases as R  # noqa: E402
from app import ui  # noqa: E402

MEAN = "(mean over corruptions)"


def main() -> None:
    t0 = ui.page("Corruptions", "🌫️")
    ctx = R.generated_or_release(
        key="corr_source", kinds=("imagenet_c", "cifar10_c"), show=R.show_corruptions
    )
    if ctx is None:
        return ui.footer(t0)
    errors = D.corruption_errors(ctx["uri"], ctx["experiment_id"], ctx["run_id"], ctx["root"])
    if not errors:
        ui.friendly(
            "No corruption error tables (`evaluate@<model>` artifact `<model>.errors.csv` or "
            "`outputs/robustness/<model>.errors.csv`) for this pipeline run yet."
        )
        return ui.footer(t0)
    models = ui.models_picker(list(errors), key="corr_models")
    long = (
        pd.concat([errors[m].assign(model=m) for m in models], ignore_index=True)
        if models
        else None
    )
    if long is None or long.empty:
        st.caption("Select at least one model.")
        return ui.footer(t0)

    st.subheader("Error heatmap (corruption × severity)")
    cols = st.columns(min(len(models), 2))
    for i, m in enumerate(models):
        grid = errors[m].pivot_table(
            index="corruption", columns="severity", values="error", sort=False
        )
        fig = px.imshow(
            grid,
            text_auto=".2f",
            aspect="auto",
            color_continuous_scale="Reds",
            zmin=0,
            zmax=1,
            labels={"x": "severity", "y": "corruption", "color": "error"},
            title=m,
        )
        fig.update_layout(height=160 + 30 * len(grid), margin={"l": 10, "r": 10, "t": 40, "b": 10})
        cols[i % len(cols)].plotly_chart(fig, key=f"heat_{m}")

    st.subheader("Severity curves")
    corruptions = list(dict.fromkeys(long["corruption"]))
    which = st.selectbox("Corruption", [MEAN, *corruptions], key="corr_pick")
    sub = long if which == MEAN else long[long["corruption"] == which]
    curve = sub.groupby(["model", "severity"], sort=False)["error"].mean().reset_index()
    fig = px.line(curve, x="severity", y="error", color="model", markers=True, title=which)
    fig.update_layout(height=340, xaxis={"dtick": 1})
    st.plotly_chart(fig, key="severity_curve")

    st.subheader("Corruption error per corruption")
    ref_options = list(errors)
    ref = st.selectbox(
        "Normalise by (CE = Σ_s E / Σ_s E_ref)",
        ref_options,
        index=ref_options.index("baseline") if "baseline" in ref_options else 0,
        key="corr_ref",
    )
    ce = pd.concat(
        [D.ce_per_corruption(errors[m], errors[ref]).assign(model=m) for m in models],
        ignore_index=True,
    )
    fig = px.bar(
        ce, x="corruption", y="ce", color="model", barmode="group", title=f"CE (ref {ref})"
    )
    fig.update_layout(height=380)
    st.plotly_chart(fig, key="ce_bar")
    table = ce.pivot_table(index="corruption", columns="model", values="ce", sort=False)
    table = table[[m for m in models if m in table.columns]]
    bench = ce.groupby("corruption", sort=False)["benchmark"].first() if "benchmark" in ce else None
    if bench is not None and bench.any():
        table.loc["mCE"] = table.loc[[c for c in table.index if bench.get(c)]].mean()
        st.caption("mCE: mean CE over the benchmark corruptions (the others are extra).")
    else:
        table.loc["mCE"] = table.mean()
    st.dataframe(table, key="ce_table")
    ui.footer(t0)


main()
