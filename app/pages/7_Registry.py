"""Registry: registered models, versions, aliases, metric tags and a copyable pull command."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

from app import data as D  # noqa: E402
from app import ui  # noqa: E402

TAG_COLS = (
    "stage",
    "generation",
    "arch",
    "val_acc",
    "test_acc",
    "pseudo_label_acc",
    "params",
    "steps",
)


def _num(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def main() -> None:
    t0 = ui.page("Registry", "📦")
    root = D.project_root()
    uri = ui.tracking_uri(root)
    try:
        models = D.registry(uri)
    except Exception as exc:
        st.warning(f"Cannot read the model registry at {uri}: {type(exc).__name__}: {exc}")
        return ui.footer(t0)
    if not models:
        ui.friendly(f"No registered models in `{uri}` yet.")
        return ui.footer(t0)
    names = [m["name"] for m in models]
    default = (D.load_params(root).get("tracking") or {}).get("registered_model")
    name = st.selectbox(
        "Registered model", names, index=names.index(default) if default in names else 0
    )
    m = next(x for x in models if x["name"] == name)
    by_version: dict[int, list[str]] = {}
    for alias, v in m["aliases"].items():
        by_version.setdefault(v, []).append(alias)
    rows = []
    for v in m["versions"]:
        t = v["tags"]
        rows.append(
            {
                "version": v["version"],
                "aliases": ", ".join(sorted(by_version.get(v["version"], []))),
                **{
                    k: (_num(t.get(k)) if k not in ("stage", "arch", "generation") else t.get(k))
                    for k in TAG_COLS
                },
                "checkpoint_sha256": (t.get("checkpoint_sha256") or "")[:12],
                "run_id": v["run_id"],
                "created": v["created"],
            }
        )
    df = pd.DataFrame(rows)
    df = df[[c for c in df.columns if df[c].notna().any()]]
    st.subheader("Versions")
    st.dataframe(df, hide_index=True, key="versions")
    st.subheader("Aliases")
    st.dataframe(
        pd.DataFrame(sorted(m["aliases"].items()), columns=["alias", "version"]),
        hide_index=True,
        key="aliases",
    )
    metric_cols = [c for c in ("val_acc", "test_acc", "pseudo_label_acc") if c in df]
    if metric_cols:
        labels = [f"v{r.version} {r.stage or ''}" for r in df.itertuples()]
        fig = go.Figure([go.Bar(name=c, x=labels, y=df[c]) for c in metric_cols])
        fig.update_layout(barmode="group", height=340, title="metric tags per version")
        st.plotly_chart(fig, key="version_metrics")
    st.subheader("Pull a model")
    refs = [f"{name}@{a}" for a in sorted(m["aliases"])] + [
        f"{name}/{v['version']}" for v in m["versions"]
    ]
    default_ref = refs.index(f"{name}@champion") if f"{name}@champion" in refs else 0
    ref = st.selectbox("Reference", refs, index=default_ref, key="pull_ref")
    out = "models/" + ref.replace("@", "-").replace("/", "-v")
    st.code(f"nsp registry pull {ref} --out {out}", language="bash")
    ui.footer(t0)


main()
