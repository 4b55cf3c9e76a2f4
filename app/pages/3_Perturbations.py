"""Perturbations: flip rate (FR) and top-5 distance (T5D) per perturbation and generation."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import plotly.express as px  # noqa: E402
import streamlit as st  # noqa: E402

from app import data as D  # noqa: E402
from app import releases as R  # noqa: E402
from app import ui  # noqa: E402

TITLES = {
    "fr": ("Flip rate FR (flip probability / baseline's)", "mFR"),
    "t5d_rate": ("Top-5 distance T5D (relative to the baseline's)", "mT5D"),
    "fp": ("Flip probability (raw)", "mean"),
    "t5d": ("Top-5 distance (raw)", "mean"),
}


def main() -> None:
    t0 = ui.page("Perturbations", "📹")
    ctx = R.generated_or_release(
        key="pert_source", kinds=("imagenet_p", "cifar10_p"), show=R.show_perturbations
    )
    if ctx is None:
        return ui.footer(t0)
    df = D.perturbation_rates(ctx["uri"], ctx["experiment_id"], ctx["run_id"], ctx["root"])
    if df.empty:
        ui.friendly(
            "No perturbation metrics (FR / T5D per perturbation from `evaluate@<model>` runs or "
            "`outputs/robustness/<model>.metrics.json`) for this pipeline run yet."
        )
        return ui.footer(t0)
    models = ui.models_picker(D.model_order(df["model"].tolist()), key="pert_models")
    df = df[df["model"].isin(models)]
    if D.test_perturbations():
        st.caption(
            "mFR / mT5D rows average the test perturbations: " + ", ".join(D.test_perturbations())
        )
    for metric in D.PERTURBATION_METRICS:
        sub = df[df["metric"] == metric]
        if sub.empty:
            continue
        title, mean_label = TITLES[metric]
        st.subheader(title)
        fig = px.bar(sub, x="perturbation", y="value", color="model", barmode="group")
        fig.update_layout(height=360, yaxis_title=metric)
        st.plotly_chart(fig, key=f"bar_{metric}")
        table = sub.pivot_table(index="perturbation", columns="model", values="value", sort=False)
        table = table[[m for m in models if m in table.columns]]
        test = [p for p in (D.test_perturbations() or ()) if p in table.index]
        table.loc[mean_label] = table.loc[test].mean() if test else table.mean()
        st.dataframe(table, key=f"table_{metric}")
    ui.footer(t0)


main()
