"""NSP dashboard home: where the data comes from and what each page shows (`nsp dashboard`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st  # noqa: E402

from app import data as D  # noqa: E402
from app import ui  # noqa: E402

t0 = ui.page("Noisy Student dashboard", "🎓")
root = D.project_root()
uri = ui.tracking_uri(root)
st.markdown(
    "Read-only views of the **MLflow** store, the **Optuna** studies and the **DVC** metrics of "
    f"the project in `{root}`. Nothing here trains; data refreshes every {D.CACHE_TTL} s "
    "(or with *Reload data*)."
)
pages = {
    "Generations": "teacher → g1 → g2 … beside the baseline: clean / -A accuracy, mCE, mFR, mT5D, "
    "calibration, pseudo-label accuracy, deltas; compare two pipeline runs",
    "Corruptions": "corruption × severity error heatmaps, severity curves, CE per corruption",
    "Perturbations": "flip rate and top-5 distance per perturbation and generation",
    "Pseudo labels": "class histograms before/after balancing, confidence, per-class accuracy",
    "Training": "per-epoch curves of any metric, overlaid across generations",
    "Studies": "Optuna history, parallel coordinates, importances, Pareto front, trials → runs",
    "Registry": "registered models, versions, aliases, metric tags, pull commands",
}
st.table({"page": list(pages), "shows": list(pages.values())})
try:
    exps = D.experiments(uri)
except Exception as exc:
    exps = []
    st.warning(f"Cannot read the MLflow store {uri}: {type(exc).__name__}: {exc}")
if exps:
    st.subheader("Experiments with pipeline runs")
    st.dataframe(exps, hide_index=True)
else:
    ui.friendly(f"No NSP pipeline runs in the MLflow store `{uri}` yet.")
studies = D.discover_storages(root)
st.caption(f"Optuna storages found under studies/: {len(studies)}")
ui.footer(t0)
