"""Read-only query layer of the dashboard: MLflow runs/registry, Optuna studies, DVC metrics files.

Nothing here trains or writes to a store: a missing sqlite file is reported as "no store" instead of
being created, and Optuna storages are opened only when their file exists. Every query that touches
a store is wrapped in ``st.cache_data`` (TTL :data:`CACHE_TTL` seconds) and returns plain data
(dicts, lists, DataFrames), so pages re-render from memory.

Model names follow the pipeline: ``teacher``, ``g1`` .. ``gN`` (stage ``student@gN``), ``baseline``;
``pseudo_label@gN`` runs hold the pseudo-label statistics of generation N and ``evaluate@<model>``
runs the robustness metrics of ``<model>``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd
import yaml

from nsp.report import ROBUST_COLUMNS

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

CACHE_TTL = 60
PER_EPOCH = ("val_acc", "train_loss", "labeled_loss", "unlabeled_loss", "lr")
ROBUST_KEYS = ROBUST_COLUMNS
#: Columns of the Generations table (clean accuracy first, then robustness, then pseudo labels).
GEN_METRICS = ("test_acc", "val_acc", *ROBUST_COLUMNS, "pseudo_label_acc")
LABELS = {
    "test_acc": "clean accuracy",
    "val_acc": "val accuracy",
    "a_acc": "-A accuracy",
    "mce": "mCE",
    "rel_mce": "relative mCE",
    "mean_corruption_error": "mean corruption error",
    "mfr": "mFR",
    "mt5d": "mT5D",
    "calib_err": "calibration error",
    "a_calib_err": "-A calibration error",
    "pseudo_label_acc": "pseudo-label accuracy",
}
#: The pipeline command printed by the friendly "nothing here yet" messages.
REPRO = "dvc repro"


def cached(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``st.cache_data(ttl=CACHE_TTL)`` when Streamlit is importable, else the plain function."""
    try:
        import streamlit as st
    except ImportError:  # pragma: no cover - streamlit is a project dependency
        return fn
    return st.cache_data(ttl=CACHE_TTL, show_spinner=False)(fn)


# ----------------------------------------------------------------------------- locations


def project_root() -> Path:
    """The project whose ``params.yaml`` / ``outputs/`` / ``studies/`` are shown: $NSP_PROJECT_ROOT or cwd."""
    return Path(os.environ.get("NSP_PROJECT_ROOT") or Path.cwd()).resolve()


def load_params(root: Path) -> dict[str, Any]:
    p = Path(root) / "params.yaml"
    if not p.is_file():
        return {}
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def default_tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` > params.yaml ``tracking.uri`` > ``sqlite:///<root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = (load_params(root).get("tracking") or {}).get("uri")
    return str(uri) if uri else f"sqlite:///{Path(root) / 'mlflow.db'}"


def default_experiment(root: Path) -> str | None:
    return (load_params(root).get("tracking") or {}).get("experiment")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :]
    return Path(rest) if rest.startswith("/") else Path.cwd() / rest


def store_exists(uri: str) -> bool:
    """False for a sqlite file / file store that is not there (we never create one by reading)."""
    if not uri:
        return False
    path = _sqlite_path(uri)
    if path is not None:
        return path.is_file() and path.stat().st_size > 0
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path)).is_dir()
    if "://" not in uri:
        return Path(uri).is_dir()
    return True


_CLIENTS: dict[str, Any] = {}


def client(uri: str) -> Any:
    """One ``MlflowClient`` per tracking URI (creating it opens the DB engine once)."""
    if uri not in _CLIENTS:
        from mlflow import MlflowClient

        _CLIENTS[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return _CLIENTS[uri]


# ----------------------------------------------------------------------------- runs


def split_stage(stage: str) -> tuple[str, str]:
    """``student@g2`` -> (student, g2); ``teacher`` -> (teacher, teacher); ``evaluate@g1`` -> (evaluate, g1)."""
    if "@" in stage:
        kind, model = stage.split("@", 1)
        return kind, model
    return stage, stage


def model_order(models: list[str]) -> list[str]:
    """teacher, g1, g2, ..., other names, baseline."""

    def key(m: str) -> tuple[int, int, str]:
        if m == "teacher":
            return (0, 0, m)
        g = re.fullmatch(r"g(\d+)", m)
        if g:
            return (1, int(g[1]), m)
        if m == "baseline":
            return (3, 0, m)
        return (2, 0, m)

    return sorted(set(models), key=key)


@cached
def experiments(uri: str) -> list[dict[str, Any]]:
    """Experiments of the store that hold at least one NSP pipeline run, newest activity first."""
    if not store_exists(uri):
        return []
    c = client(uri)
    out = []
    for exp in c.search_experiments():
        runs = c.search_runs(
            [exp.experiment_id], filter_string="tags.`nsp.kind` = 'pipeline'", max_results=1000
        )
        if runs:
            out.append(
                {"name": exp.name, "experiment_id": exp.experiment_id, "pipelines": len(runs)}
            )
    return out


@cached
def pipeline_runs(uri: str, experiment_id: str) -> list[dict[str, Any]]:
    """Pipeline (parent) runs of an experiment, newest first, with a human label."""
    if not store_exists(uri):
        return []
    runs = client(uri).search_runs(
        [experiment_id],
        filter_string="tags.`nsp.kind` = 'pipeline'",
        max_results=1000,
        order_by=["attributes.start_time DESC"],
    )
    out = []
    for r in runs:
        start = pd.Timestamp(r.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M:%S")
        commit = r.data.tags.get("git_commit", "")[:8]
        out.append(
            {
                "run_id": r.info.run_id,
                "start": start,
                "status": r.info.status,
                "git_commit": r.data.tags.get("git_commit", ""),
                "data_manifest_sha256": r.data.tags.get("data_manifest_sha256", ""),
                "label": f"{start} · {r.info.run_id[:8]}" + (f" · {commit}" if commit else ""),
            }
        )
    return out


@cached
def stage_runs(uri: str, experiment_id: str, parent_id: str) -> list[dict[str, Any]]:
    """The latest run of each stage nested under ``parent_id`` (FINISHED runs preferred)."""
    if not store_exists(uri):
        return []
    runs = client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        max_results=5000,
        order_by=["attributes.start_time ASC"],
    )
    best: dict[str, Any] = {}
    for r in runs:
        stage = r.data.tags.get("nsp.stage")
        if not stage:
            continue
        prev = best.get(stage)
        if prev is None or r.info.status == "FINISHED" or prev.info.status != "FINISHED":
            best[stage] = r
    out = []
    for stage, r in best.items():
        kind, model = split_stage(stage)
        try:
            gen = int(r.data.tags.get("generation", ""))
        except ValueError:
            gen = None
        out.append(
            {
                "run_id": r.info.run_id,
                "stage": stage,
                "kind": kind,
                "model": model,
                "generation": gen,
                "status": r.info.status,
                "start_time": r.info.start_time,
                "artifact_uri": r.info.artifact_uri,
                "metrics": dict(r.data.metrics),
                "params": dict(r.data.params),
                "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.log")},
            }
        )
    order = {m: i for i, m in enumerate(model_order([s["model"] for s in out]))}
    return sorted(out, key=lambda s: (order[s["model"]], s["kind"]))


def _artifact_text(uri: str, run_id: str, artifact_uri: str, path: str) -> str | None:
    """Text of one run artifact, or None when the run has no such file."""
    if artifact_uri.startswith("file:") or "://" not in artifact_uri:
        base = (
            Path(unquote(urlparse(artifact_uri).path))
            if "://" in artifact_uri
            else Path(artifact_uri)
        )
        f = base / path
        return f.read_text() if f.is_file() else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client(uri).download_artifacts(run_id, path, tmp)
            return Path(local).read_text()
    except Exception:
        return None


@cached
def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of a metric, sorted by step."""
    if not store_exists(uri):
        return []
    hist = client(uri).get_metric_history(run_id, key)
    return sorted((int(m.step), float(m.value)) for m in hist)


def current_pipeline_run(root: Path) -> str | None:
    """The parent run id that ``outputs/`` belongs to (``outputs/pipeline_run.json``)."""
    f = Path(root) / "outputs" / "pipeline_run.json"
    try:
        return json.loads(f.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _dvc_json(root: Path, rel: str) -> dict[str, Any] | None:
    f = Path(root) / rel
    try:
        return json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):
        return None


def _use_dvc_files(root: Path, parent_id: str) -> bool:
    """DVC metrics files describe the pipeline run recorded in outputs/pipeline_run.json only."""
    return current_pipeline_run(root) == parent_id


def robustness_metrics(
    uri: str, stages: list[dict[str, Any]], root: Path, parent_id: str
) -> dict[str, dict[str, Any]]:
    """model -> robustness metrics: the ``evaluate@<model>`` run, else ``outputs/robustness/<model>.metrics.json``."""
    out: dict[str, dict[str, Any]] = {}
    for s in stages:
        if s["kind"] == "evaluate":
            out[s["model"]] = {k: v for k, v in s["metrics"].items()}
    if _use_dvc_files(root, parent_id):
        models = {s["model"] for s in stages if s["kind"] in ("teacher", "student", "baseline")}
        for m in models:
            rob = _dvc_json(root, f"outputs/robustness/{m}.metrics.json")
            if rob:
                merged = {**rob, **out.get(m, {})}
                out[m] = merged
    return out


def generation_rows(
    uri: str, experiment_id: str, parent_id: str, root: Path
) -> list[dict[str, Any]]:
    """One row per trained model (teacher, g1..gN, baseline) with clean/robustness/pseudo metrics."""
    stages = stage_runs(uri, experiment_id, parent_id)
    rob = robustness_metrics(uri, stages, root, parent_id)
    pseudo = {s["model"]: s for s in stages if s["kind"] == "pseudo_label"}
    rows = []
    for s in stages:
        if s["kind"] not in ("teacher", "student", "baseline"):
            continue
        m = s["metrics"]
        p = pseudo.get(s["model"])
        pl_acc = m.get("pseudo_label_acc")
        if pl_acc is None and p is not None:
            pl_acc = p["metrics"].get("pseudo_label_acc")
        row: dict[str, Any] = {
            "model": s["model"],
            "generation": s["generation"],
            "arch": s["params"].get("arch"),
            "teacher": s["tags"].get("teacher_model", ""),
            "params": m.get("params"),
            "test_acc": m.get("test_acc"),
            "val_acc": m.get("final_val_acc", m.get("val_acc")),
            "pseudo_label_acc": pl_acc,
            "status": s["status"],
            "run_id": s["run_id"],
        }
        for k in ROBUST_KEYS:
            v = rob.get(s["model"], {}).get(k)
            row[k] = float(v) if isinstance(v, (int, float)) else None
        rows.append(row)
    return rows


def add_deltas(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> pd.DataFrame:
    """The rows as a DataFrame plus ``Δ<metric> vs teacher`` / ``vs baseline`` columns."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for ref in ("teacher", "baseline"):
        base = df[df["model"] == ref]
        for k in metrics:
            if k not in df or df[k].isna().all() or base.empty or pd.isna(base[k].iloc[0]):
                continue
            df[f"Δ{k} vs {ref}"] = df[k] - float(base[k].iloc[0])
    return df


# ----------------------------------------------------------------------------- robustness tables


def parse_errors_csv(text: str) -> pd.DataFrame:
    """``<model>.errors.csv`` -> long table (corruption, severity, error).

    Accepts the long form (columns corruption, severity, error|err|top1_error) or the wide form
    (corruption, then one column per severity: ``1``..``5`` or ``s1``..``s5`` / ``severity_1``..).
    Errors are fractions; a table whose values exceed 1 is taken as percent and divided by 100.
    A ``benchmark`` column (true for the corruptions that enter mCE) is kept.
    """
    df = pd.read_csv(io.StringIO(text))
    df.columns = [str(c).strip().lower() for c in df.columns]
    if "corruption" not in df.columns:
        df = df.rename(columns={df.columns[0]: "corruption"})
    err_col = next((c for c in ("error", "err", "top1_error", "error_rate") if c in df), None)
    if "severity" in df.columns and err_col is not None:
        long = df[["corruption", "severity", err_col]].rename(columns={err_col: "error"})
    else:
        sev_cols = {c: re.sub(r"\D", "", c) for c in df.columns if c != "corruption"}
        sev_cols = {c: int(s) for c, s in sev_cols.items() if s}
        long = df.melt(
            id_vars="corruption", value_vars=list(sev_cols), var_name="severity", value_name="error"
        )
        long["severity"] = long["severity"].map(sev_cols)
    if "benchmark" in df.columns:  # nsp evaluate marks the 15 benchmark corruptions of mCE
        bench = dict(
            zip(df["corruption"], df["benchmark"].astype(str).str.lower() == "true", strict=False)
        )
        long["benchmark"] = long["corruption"].map(bench)
    long = long.dropna(subset=["error"]).copy()
    long["severity"] = long["severity"].astype(int)
    long["error"] = long["error"].astype(float)
    if (long["error"] > 1.0).any():
        long["error"] = long["error"] / 100.0
    long["corruption"] = long["corruption"].astype(str)
    return long.reset_index(drop=True)


@cached
def corruption_errors(
    uri: str, experiment_id: str, parent_id: str, root: Path
) -> dict[str, pd.DataFrame]:
    """model -> (corruption, severity, error) table from ``evaluate@<model>`` or outputs/robustness/."""
    stages = stage_runs(uri, experiment_id, parent_id)
    out: dict[str, pd.DataFrame] = {}
    for s in stages:
        if s["kind"] != "evaluate":
            continue
        text = _artifact_text(uri, s["run_id"], s["artifact_uri"], f"{s['model']}.errors.csv")
        if text:
            out[s["model"]] = parse_errors_csv(text)
    if _use_dvc_files(root, parent_id):
        for f in sorted((Path(root) / "outputs" / "robustness").glob("*.errors.csv")):
            model = f.name[: -len(".errors.csv")]
            if model not in out:
                out[model] = parse_errors_csv(f.read_text())
    return {m: out[m] for m in model_order(list(out))}


def ce_per_corruption(errors: pd.DataFrame, baseline: pd.DataFrame | None) -> pd.DataFrame:
    """Per corruption: mean error over severities, and CE = sum_s E / sum_s E_baseline when given."""
    g = errors.groupby("corruption", sort=False)["error"]
    out = pd.DataFrame({"mean_error": g.mean()})
    if "benchmark" in errors.columns:
        out["benchmark"] = errors.groupby("corruption", sort=False)["benchmark"].first()
    if baseline is not None and not baseline.empty:
        b = baseline.groupby("corruption", sort=False)["error"].sum()
        out["ce"] = g.sum() / b.reindex(out.index)
    return out.reset_index()


def test_perturbations() -> tuple[str, ...] | None:
    """The ImageNet-P test perturbations that mFR / mT5D average (None if nsp cannot say)."""
    try:
        from nsp.robustness.perturbations import TEST_PERTURBATIONS
    except Exception:
        return None
    return tuple(TEST_PERTURBATIONS)


#: Per-perturbation metrics: FP (flip probability), FR (FP / baseline FP), T5D (top-5 distance),
#: T5D rate (T5D / baseline T5D); mFR / mT5D are the means of ``fr`` / ``t5d_rate``.
PERTURBATION_METRICS = ("fr", "t5d_rate", "fp", "t5d")
_RATE = re.compile(r"^(fr|fp|t5d_rate|t5d)[./](.+)$")


@cached
def perturbation_rates(uri: str, experiment_id: str, parent_id: str, root: Path) -> pd.DataFrame:
    """Rows (model, perturbation, metric, value) for metric in :data:`PERTURBATION_METRICS`.

    Sources: ``evaluate@<model>`` run metrics ``fr.<perturbation>``, ``t5d_rate.<perturbation>``,
    ... (as ``nsp evaluate`` logs the dicts of its metrics file), else the DVC file
    ``outputs/robustness/<model>.metrics.json`` keys ``fr`` / ``fp`` / ``t5d`` / ``t5d_rate``
    (dicts perturbation -> value).
    """
    stages = stage_runs(uri, experiment_id, parent_id)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()

    def add(model: str, pert: str, metric: str, value: Any) -> None:
        if isinstance(value, (int, float)) and (model, pert, metric) not in seen:
            seen.add((model, pert, metric))
            rows.append(
                {"model": model, "perturbation": pert, "metric": metric, "value": float(value)}
            )

    for s in stages:
        if s["kind"] != "evaluate":
            continue
        for k, v in s["metrics"].items():
            m = _RATE.match(k)
            if m:
                add(s["model"], m[2], m[1], v)
    if _use_dvc_files(root, parent_id):
        for f in sorted((Path(root) / "outputs" / "robustness").glob("*.metrics.json")):
            model = f.name[: -len(".metrics.json")]
            d = _dvc_json(root, str(f.relative_to(root))) or {}
            for metric in PERTURBATION_METRICS:
                if isinstance(d.get(metric), dict):
                    for pert, v in d[metric].items():
                        add(model, pert, metric, v)
    df = pd.DataFrame(rows, columns=["model", "perturbation", "metric", "value"])
    if not df.empty:
        order = {m: i for i, m in enumerate(model_order(df["model"].tolist()))}
        df = df.sort_values(
            ["model", "perturbation"], key=lambda c: c.map(order) if c.name == "model" else c
        )
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- pseudo labels


@cached
def pseudo_stats(uri: str, experiment_id: str, parent_id: str) -> dict[str, dict[str, Any]]:
    """model (g1, g2, ...) -> the pseudo-label run's ``stats.json`` plus its run metrics/tags."""
    out: dict[str, dict[str, Any]] = {}
    for s in stage_runs(uri, experiment_id, parent_id):
        if s["kind"] != "pseudo_label":
            continue
        text = _artifact_text(uri, s["run_id"], s["artifact_uri"], "stats.json")
        stats = json.loads(text) if text else {}
        out[s["model"]] = {
            "stats": stats,
            "metrics": s["metrics"],
            "teacher": s["tags"].get("teacher_model", ""),
            "run_id": s["run_id"],
        }
    return out


# ----------------------------------------------------------------------------- training curves


def curves(uri: str, stages: list[dict[str, Any]], key: str) -> pd.DataFrame:
    """Rows (model, stage, epoch, value) of metric ``key`` for the given stage runs."""
    rows = []
    for s in stages:
        for step, value in metric_history(uri, s["run_id"], key):
            rows.append({"model": s["model"], "stage": s["stage"], "epoch": step, "value": value})
    return pd.DataFrame(rows, columns=["model", "stage", "epoch", "value"])


# ----------------------------------------------------------------------------- registry


@cached
def registry(uri: str) -> list[dict[str, Any]]:
    """Registered models: name, aliases {alias: version}, versions [{version, tags, run_id, ...}]."""
    if not store_exists(uri):
        return []
    c = client(uri)
    out = []
    for m in c.search_registered_models():
        versions = []
        for mv in c.search_model_versions(f"name='{m.name}'"):
            versions.append(
                {
                    "version": int(mv.version),
                    "run_id": mv.run_id or mv.tags.get("run_id"),
                    "created": pd.Timestamp(mv.creation_timestamp, unit="ms").strftime(
                        "%Y-%m-%d %H:%M:%S"
                    ),
                    "tags": dict(mv.tags),
                }
            )
        out.append(
            {
                "name": m.name,
                "aliases": {a: int(v) for a, v in (m.aliases or {}).items()},
                "versions": sorted(versions, key=lambda v: v["version"]),
            }
        )
    return out


# ----------------------------------------------------------------------------- Optuna studies


def _resolve_storage(url: str, root: Path) -> str:
    """Relative sqlite / journal paths are relative to the project root."""
    if url.startswith("sqlite:///") and not url[len("sqlite:///") :].startswith("/"):
        return f"sqlite:///{Path(root) / url[len('sqlite:///') :]}"
    if url.startswith("journal:") and not url[len("journal:") :].startswith("/"):
        return f"journal:{Path(root) / url[len('journal:') :]}"
    return url


def discover_storages(root: Path) -> list[str]:
    """Storages of ``studies/*.db`` and of the ``storage:`` keys of ``studies/*.yaml`` that exist."""
    d = Path(root) / "studies"
    found: list[str] = []
    for spec in sorted(d.glob("*.y*ml")):
        try:
            raw = yaml.safe_load(spec.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        name = raw.get("name") or spec.stem
        url = _resolve_storage(str(raw.get("storage") or f"sqlite:///studies/{name}.db"), root)
        if storage_exists(url) and url not in found:
            found.append(url)
    for db in sorted(d.glob("*.db")):
        url = f"sqlite:///{db.resolve()}"
        if url not in found:
            found.append(url)
    return found


def storage_exists(url: str) -> bool:
    path = _sqlite_path(url)
    if path is not None:
        return path.is_file() and path.stat().st_size > 0
    if url.startswith("journal:"):
        return Path(url[len("journal:") :]).is_file()
    return "://" in url


def open_storage(url: str) -> Any:
    """An Optuna storage for reading ``url`` (sqlite/RDB URL or ``journal:<file>``)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:") :]))
    return optuna.storages.RDBStorage(url)


@cached
def study_names(url: str) -> list[str]:
    import optuna

    if not storage_exists(url):
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]


def load_study(url: str, name: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=open_storage(url))


@cached
def study_trials(url: str, name: str) -> dict[str, Any]:
    """Directions, objective names and one row per trial (number, state, values, params, run id)."""
    study = load_study(url, name)
    directions = [d.name.lower() for d in study.directions]
    names = study.user_attrs.get("nsp_objectives") or getattr(study, "metric_names", None)
    names = list(
        names or [f"value_{i}" if len(directions) > 1 else "value" for i in range(len(directions))]
    )
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        vals = t.values or [None] * len(names)
        row.update({n: v for n, v in zip(names, vals, strict=False)})
        row.update({f"param {k}": v for k, v in t.params.items()})
        dur = t.duration.total_seconds() if t.duration is not None else None
        row["seconds"] = dur
        row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id")
        row["repeats"] = t.user_attrs.get("repeats", 1)
        row.update({f"{n} se": t.user_attrs.get(f"{n}_se") for n in names})
        rows.append(row)
    add_trial0_marks(rows, names, directions)
    return {"directions": directions, "metric_names": names, "trials": rows}


def add_trial0_marks(rows: list[dict[str, Any]], names: list[str], directions: list[str]) -> None:
    """``<metric> vs trial 0``: better / worse beyond the combined s.e., ``~`` within, ``-`` no s.e.
    (the rule of ``nsp study show``); only when some trial has an s.e. (``repeats`` > 1)."""
    from nsp.study.results import versus_trial0

    if not any(r.get(f"{n} se") is not None for r in rows for n in names):
        return
    t0 = next((r for r in rows if r["trial"] == 0 and r["state"] == "COMPLETE"), None)

    def view(r: dict[str, Any]) -> dict[str, Any] | None:
        if r is None or r["state"] != "COMPLETE":
            return None
        return {**{n: r.get(n) for n in names}, **{f"{n}_se": r.get(f"{n} se") for n in names}}

    base = view(t0) if t0 else None
    for r in rows:
        v = view(r)
        for n, d in zip(names, directions, strict=False):
            if r is t0:
                r[f"{n} vs trial 0"] = "trial 0"
            else:
                r[f"{n} vs trial 0"] = versus_trial0(v, base, n, d) if v else "-"


@cached
def run_lookup(uri: str, run_ids: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """run id -> {experiment_id, run_name, status} for the runs that exist in the store."""
    if not store_exists(uri):
        return {}
    c = client(uri)
    out = {}
    for rid in run_ids:
        try:
            r = c.get_run(rid)
        except Exception:
            continue
        out[rid] = {
            "experiment_id": r.info.experiment_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
        }
    return out


def replicate_summary(root: Path) -> dict[str, Any] | None:
    """``outputs/replicates.json`` (``nsp report --replicates``): replicate statistics, or None."""
    return _dvc_json(root, "outputs/replicates.json")
