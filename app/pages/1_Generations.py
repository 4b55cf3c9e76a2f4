"""Generations: the lineage teacher -> g1 -> g2 ... beside the baseline, metrics and deltas per model."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

from app import data as D  # noqa: E402
from app import releases as R  # noqa: E402
from app import ui  # noqa: E402

TABLE_COLS = ("model", "generation", "arch", "teacher", "status", "params")


def lineage_figure(df: pd.DataFrame) -> go.Figure:
    """Nodes teacher, g1, g2, ... on a line (each arrow from the model that labelled it), baseline below."""
    chain = df[df["model"] != "baseline"].reset_index(drop=True)
    pos = {m: (i, 0) for i, m in enumerate(chain["model"])}
    if (df["model"] == "baseline").any():
        pos["baseline"] = (max(len(chain) - 1, 0), -1)
    fig = go.Figure()
    for _, r in df.iterrows():
        src = r.get("teacher") or ""
        if r["model"] in pos and src in pos:
            (x0, y0), (x1, y1) = pos[src], pos[r["model"]]
            fig.add_annotation(
                x=x1,
                y=y1,
                ax=x0,
                ay=y0,
                xref="x",
                yref="y",
                axref="x",
                ayref="y",
                showarrow=True,
                arrowhead=3,
                arrowsize=1.5,
                standoff=20,
                startstandoff=20,
            )
    text = [
        f"<b>{r['model']}</b><br>{r['arch'] or ''}<br>acc {r['test_acc']:.3f}"
        if pd.notna(r["test_acc"])
        else f"<b>{r['model']}</b>"
        for _, r in df.iterrows()
    ]
    fig.add_trace(
        go.Scatter(
            x=[pos[m][0] for m in df["model"]],
            y=[pos[m][1] for m in df["model"]],
            mode="markers+text",
            text=text,
            textposition="bottom center",
            marker={
                "size": 34,
                "color": ["#9ecae1" if m != "baseline" else "#fdae6b" for m in df["model"]],
            },
            hoverinfo="text",
        )
    )
    fig.update_layout(
        height=260,
        showlegend=False,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"visible": False, "range": [-0.6, max(len(chain), 1) - 0.4]},
        yaxis={"visible": False, "range": [-1.9, 0.5]},
    )
    return fig


def metric_figure(df: pd.DataFrame, metric: str) -> go.Figure:
    chain = df[df["model"] != "baseline"]
    fig = go.Figure(
        go.Scatter(
            x=chain["model"], y=chain[metric], mode="lines+markers", name="teacher → students"
        )
    )
    base = df[df["model"] == "baseline"][metric]
    if len(base) and pd.notna(base.iloc[0]):
        fig.add_hline(
            y=float(base.iloc[0]),
            line_dash="dash",
            line_color="#e6550d",
            annotation_text="baseline",
            annotation_position="top left",
        )
    fig.update_layout(
        title=D.LABELS.get(metric, metric),
        height=280,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis_title=None,
        yaxis_title=metric,
    )
    return fig


def table(rows: list[dict]) -> pd.DataFrame:
    df = D.add_deltas(rows, ("test_acc", "a_acc", "mce", "rel_mce", "mfr", "mt5d", "calib_err"))
    metrics = [m for m in D.GEN_METRICS if m in df and df[m].notna().any()]
    deltas = [c for c in df.columns if c.startswith("Δ")]
    return df[[*TABLE_COLS, *metrics, *deltas, "run_id"]]


REPLICATE_CMD = "nsp replicates run --r 3 && nsp report --replicates"


def replicate_figure(summary: dict, metric: str, points: bool) -> go.Figure:
    """Mean with its 95 % CI as error bars per model; with ``points`` every replicate's value too."""
    models = [
        m for m, cols in summary["models"].items() if cols.get(metric, {}).get("mean") is not None
    ]
    entries = [summary["models"][m][metric] for m in models]
    means = [e["mean"] for e in entries]
    hi = [(e["ci95"][1] - e["mean"]) if e["ci95"] else 0.0 for e in entries]
    lo = [(e["mean"] - e["ci95"][0]) if e["ci95"] else 0.0 for e in entries]
    fig = go.Figure(
        go.Scatter(
            x=models,
            y=means,
            mode="markers",
            name="mean ± 95 % CI",
            marker={"size": 11, "color": "#3182bd"},
            error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
        )
    )
    if points:
        xs = [m for m, e in zip(models, entries, strict=True) for v in e["values"] if v is not None]
        ys = [v for e in entries for v in e["values"] if v is not None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="replicates",
                marker={"size": 6, "color": "#e6550d", "opacity": 0.7},
            )  # fmt: skip
        )
    fig.update_layout(
        title=D.LABELS.get(metric, metric),
        height=280,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        yaxis_title=metric,
    )
    return fig


def verdict_table(summary: dict) -> pd.DataFrame:
    """One row per comparison (a vs b), one column per metric: verdict, difference, Holm p."""
    rows = []
    for pair, cols in summary["comparisons"].items():
        row = {"comparison": pair}
        for metric, e in cols.items():
            p = "" if e["p_holm"] is None else f", p={e['p_holm']:.3g}"
            row[metric] = f"{e['verdict']} ({100 * e['diff']:+.2f}{p})"
        rows.append(row)
    return pd.DataFrame(rows)


def replicates_section(root: Path) -> None:
    """Mean ± CI over replicates with verdicts, or a plain statement that this is one run."""
    st.subheader("Replicates")
    summary = D.replicate_summary(root)
    n = len(summary["replicates"]) if summary else 0
    if n < 2:
        st.info(
            "Single run: no error bars. Every number on this page is one run (one seed per stage), "
            "not tested against seed noise; a difference here may flip with other seeds. For mean "
            f"± 95 % CI and won / tied / lost verdicts run `{REPLICATE_CMD}`."
        )
        return
    st.caption(
        f"Config {summary['config_hash']}: {n} replicates (every seed offset by "
        f"{summary.get('seed_stride')} x replicate). Error bars: 95 % CI of the mean (Student t). "
        "Verdicts: paired t by replicate, Holm-corrected across the columns, alpha 0.05 (for a; "
        "lower is better for mCE, mFR, mT5D and calibration errors). Values in points (x 100)."
    )
    from nsp.replicates import config_hash

    try:
        current = config_hash(D.load_params(root), vary_data=bool(summary.get("vary_data")))
    except Exception:
        current = None
    if current and current != summary["config_hash"]:
        st.warning(
            f"These replicates are of config {summary['config_hash']}; params.yaml is now {current}. "
            f"Rerun `{REPLICATE_CMD}` for the current configuration."
        )
    st.dataframe(verdict_table(summary), hide_index=True, key="replicate_verdicts")
    points = st.checkbox("Show the per-replicate points", key="replicate_points")
    metrics = [m for m in D.GEN_METRICS if any(m in c for c in summary["models"].values())]
    cols = st.columns(2)
    for i, m in enumerate(metrics):
        cols[i % 2].plotly_chart(replicate_figure(summary, m, points), key=f"replicate_{m}")


def main() -> None:
    t0 = ui.page("Generations", "🧬")
    release = R.picker(key="gen_source", kinds=tuple(R.TITLES))  # an official release, if evaluated
    if release is not None:
        R.show_summary(release)
        return ui.footer(t0)
    ctx = ui.pipeline_context()
    if ctx is None:
        return ui.footer(t0)
    rows = D.generation_rows(ctx["uri"], ctx["experiment_id"], ctx["run_id"], ctx["root"])
    if not rows:
        ui.friendly("This pipeline run has no trained models yet.")
        return ui.footer(t0)
    df = table(rows)
    st.subheader("Lineage")
    st.plotly_chart(lineage_figure(df), key="lineage")
    st.subheader("Generation table")
    fmt = {c: "{:+.4f}" for c in df.columns if c.startswith("Δ")}
    st.dataframe(
        df,
        hide_index=True,
        key="generation_table",
        column_config={
            "params": st.column_config.NumberColumn("params", format="%d"),
            **{c: st.column_config.NumberColumn(c, format="%+.4f") for c in fmt},
        },
    )
    if not any(c in df for c in D.ROBUST_KEYS):
        ui.friendly(
            "No robustness metrics (-A accuracy, mCE, mFR, mT5D, calibration) for this run yet.",
            "dvc repro",
        )
    metrics = [m for m in D.GEN_METRICS if m in df]
    cols = st.columns(2)
    for i, m in enumerate(metrics):
        cols[i % 2].plotly_chart(metric_figure(df, m), key=f"metric_{m}")

    replicates_section(Path(ctx["root"]))

    st.subheader("Compare two pipeline runs")
    others = [r for r in ctx["runs"] if r["run_id"] != ctx["run_id"]]
    if not others:
        st.caption("Only one pipeline run in this experiment: nothing to compare with.")
        return ui.footer(t0)
    labels = {r["run_id"]: r["label"] for r in others}
    other = st.selectbox("Compare with", list(labels), format_func=labels.get, key="compare")
    rows_b = D.generation_rows(ctx["uri"], ctx["experiment_id"], other, ctx["root"])
    left, right = st.columns(2)
    left.caption(f"selected: {ctx['run_id'][:8]}")
    left.dataframe(df.drop(columns=["run_id"]), hide_index=True, key="compare_a")
    right.caption(f"compared: {other[:8]}")
    if rows_b:
        df_b = table(rows_b)
        right.dataframe(df_b.drop(columns=["run_id"]), hide_index=True, key="compare_b")
        shared = [m for m in metrics if m in df_b]
        if shared:
            metric = st.selectbox("Metric", shared, format_func=lambda m: D.LABELS.get(m, m))
            fig = go.Figure(
                [
                    go.Bar(name=ctx["run_id"][:8], x=df["model"], y=df[metric]),
                    go.Bar(name=other[:8], x=df_b["model"], y=df_b[metric]),
                ]
            )
            fig.update_layout(barmode="group", height=320, yaxis_title=metric)
            st.plotly_chart(fig, key="compare_chart")
    else:
        right.info("That run has no trained models.")
    ui.footer(t0)


main()
