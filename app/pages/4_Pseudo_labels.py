"""Pseudo labels: class histograms before/after balancing, confidences, per-class accuracy."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import plotly.express as px  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

from app import data as D  # noqa: E402
from app import ui  # noqa: E402

SUMMARY = (
    "pseudo_label_acc",
    "pseudo_label_acc_all",
    "stream_size",
    "num_kept_unique",
    "num_unlabeled",
)


def main() -> None:
    t0 = ui.page("Pseudo labels", "🏷️")
    ctx = ui.pipeline_context()
    if ctx is None:
        return ui.footer(t0)
    ps = D.pseudo_stats(ctx["uri"], ctx["experiment_id"], ctx["run_id"])
    if not ps:
        ui.friendly("This pipeline run has no pseudo-label stages yet.")
        return ui.footer(t0)
    summary = pd.DataFrame(
        [
            {"generation": g, "teacher": v["teacher"], **{k: v["metrics"].get(k) for k in SUMMARY}}
            for g, v in ps.items()
        ]
    )
    st.subheader("Per generation")
    st.dataframe(summary, hide_index=True, key="pseudo_summary")
    gens = st.multiselect("Generations", list(ps), default=list(ps), key="pseudo_gens")
    long = []
    for g in gens:
        s = ps[g]["stats"]
        for i, (b, a) in enumerate(
            zip(s.get("class_hist_before") or [], s.get("class_hist_after") or [], strict=False)
        ):
            long.append({"generation": g, "class": i, "before balancing": b, "after balancing": a})
    if not long:
        st.info("The selected pseudo-label runs have no stats.json artifact.")
        return ui.footer(t0)
    hist = pd.DataFrame(long)

    st.subheader("Class histograms")
    melted = hist.melt(id_vars=["generation", "class"], var_name="when", value_name="images")
    fig = px.bar(
        melted,
        x="class",
        y="images",
        color="when",
        barmode="group",
        facet_row="generation",
        category_orders={"when": ["before balancing", "after balancing"]},
    )
    fig.update_layout(height=220 * len(gens) + 60, xaxis={"dtick": 1})
    st.plotly_chart(fig, key="class_hist")

    st.subheader("Confidence histograms")
    fig = go.Figure()
    for g in gens:
        ch = ps[g]["stats"].get("confidence_hist") or {}
        edges, counts = ch.get("edges") or [], ch.get("counts") or []
        if counts:
            mids = (
                [(edges[i] + edges[i + 1]) / 2 for i in range(len(counts))]
                if len(edges) > len(counts)
                else list(range(len(counts)))
            )
            fig.add_trace(go.Bar(x=mids, y=counts, name=g, opacity=0.7))
    fig.update_layout(
        barmode="overlay", height=320, xaxis_title="teacher confidence", yaxis_title="images"
    )
    st.plotly_chart(fig, key="confidence_hist")

    st.subheader("Per-class pseudo-label accuracy")
    acc = [
        {"generation": g, "class": i, "accuracy": a}
        for g in gens
        for i, a in enumerate(ps[g]["stats"].get("per_class_pseudo_label_acc") or [])
    ]
    if acc:
        fig = px.bar(
            pd.DataFrame(acc), x="class", y="accuracy", color="generation", barmode="group"
        )
        fig.update_layout(height=320, xaxis={"dtick": 1}, yaxis={"range": [0, 1]})
        st.plotly_chart(fig, key="per_class_acc")
    else:
        st.caption("No ground truth for the unlabeled split: per-class accuracy unavailable.")
    ui.footer(t0)


main()
