"""The Streamlit dashboard (app/): every page through AppTest on the real tiny pipeline's MLflow store
(plus robustness files, an evaluate run and Optuna studies added to a copy of it), every page on an
empty store, the ``nsp dashboard`` command, and one real-browser load in headless chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app"
PAGES = {
    "home": APP / "Home.py",
    "generations": APP / "pages" / "1_Generations.py",
    "corruptions": APP / "pages" / "2_Corruptions.py",
    "perturbations": APP / "pages" / "3_Perturbations.py",
    "pseudo": APP / "pages" / "4_Pseudo_labels.py",
    "training": APP / "pages" / "5_Training.py",
    "studies": APP / "pages" / "6_Studies.py",
    "registry": APP / "pages" / "7_Registry.py",
}
CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog")


def _errors(seed: float) -> dict[tuple[str, int], float]:
    """A corruption x severity error table that grows with severity."""
    return {
        (c, s): round(min(0.95, seed + 0.05 * i + 0.08 * s), 4)
        for i, c in enumerate(CORRUPTIONS)
        for s in range(1, 6)
    }


ERRORS = {"teacher": _errors(0.2), "g1": _errors(0.1), "baseline": _errors(0.25)}


def _long_csv(err: dict[tuple[str, int], float]) -> str:
    return "corruption,severity,error\n" + "".join(f"{c},{s},{e}\n" for (c, s), e in err.items())


def _wide_csv_percent(err: dict[tuple[str, int], float]) -> str:
    lines = ["corruption,s1,s2,s3,s4,s5"]
    for c in CORRUPTIONS:
        lines.append(c + "," + ",".join(f"{100 * err[(c, s)]:.2f}" for s in range(1, 6)))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- fixtures


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def store(tiny_pipeline) -> dict:
    """The real tiny pipeline's store, read independently of the app (the expected values)."""
    root = Path(tiny_pipeline["root"])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = _client(uri)
    exp = c.get_experiment_by_name("nsp-tiny")
    parent = json.loads((root / "outputs" / "pipeline_run.json").read_text())["run_id"]
    runs = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    stages = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        stages[r.data.tags["nsp.stage"]] = r  # the latest run of each stage
    return {"root": root, "uri": uri, "client": c, "exp": exp, "parent": parent, "stages": stages,
            "params": tiny_pipeline["params"]}  # fmt: skip


@pytest.fixture(scope="module")
def rich(store, tmp_path_factory) -> dict:
    """A copy of the project + store with 6 more pipeline runs and two Optuna studies added."""
    import optuna

    from nsp.tracking import studies as tstudies

    root = tmp_path_factory.mktemp("dash") / "proj"
    root.mkdir()
    shutil.copy(store["root"] / "mlflow.db", root / "mlflow.db")
    shutil.copy(store["root"] / "params.yaml", root / "params.yaml")
    shutil.copytree(store["root"] / "outputs", root / "outputs")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # New artifacts of the copy go to the copy (the existing runs keep their absolute artifact URIs).
    with sqlite3.connect(root / "mlflow.db") as db:
        db.execute(
            "UPDATE experiments SET artifact_location = ?", ((root / "mlartifacts").as_uri(),)
        )
    c = _client(uri)
    extra = _add_pipelines(c, store["exp"].experiment_id, n=6)
    # studies: a single-objective sqlite study whose trials have MLflow runs, and a 2-objective
    # journal study named by a studies/*.yaml spec
    (root / "studies").mkdir()
    params = {"tracking": {"enabled": True, "uri": uri, "experiment": "nsp-tiny"}}
    saved = os.environ.get("MLFLOW_TRACKING_URI"), Path.cwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(root)  # the studies experiment's artifacts go to <copy>/mlartifacts
    try:
        study = _make_studies(root, params, tstudies, optuna)
    finally:
        os.chdir(saved[1])
        if saved[0] is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved[0]
    return {**store, "root": root, "uri": uri, "client": c, "extra": extra, **study}


def _add_pipelines(c, exp_id: str, *, n: int) -> list[dict]:
    """``n`` more pipeline runs (8 runs each, 30-epoch histories): a store of ~60 runs to compare."""
    from mlflow.entities import Metric

    out = []
    for p in range(n):
        parent = c.create_run(exp_id, run_name="pipeline", tags={"nsp.kind": "pipeline"})
        pid = parent.info.run_id
        accs = {}
        for stage, gen in (("teacher", 0), ("pseudo_label@g1", 1), ("student@g1", 1),
                           ("pseudo_label@g2", 2), ("student@g2", 2), ("baseline", -1),
                           ("evaluate@g2", 2)):  # fmt: skip
            r = c.create_run(
                exp_id,
                run_name=stage,
                tags={"mlflow.parentRunId": pid, "nsp.kind": "stage", "nsp.stage": stage,
                      "generation": str(gen)},
            )  # fmt: skip
            acc = round(0.5 + 0.01 * p + 0.05 * gen, 4)
            ms = [Metric("val_acc", acc * e / 30, 0, e) for e in range(1, 31)]
            ms += [Metric("test_acc", acc, 0, 0), Metric("final_val_acc", acc, 0, 0)]
            ms += [Metric("pseudo_label_acc", 0.9, 0, 0), Metric("mce", 1 - acc, 0, 0)]
            c.log_batch(r.info.run_id, metrics=ms)
            c.set_terminated(r.info.run_id)
            accs[stage] = acc
        c.set_terminated(pid)
        out.append({"run_id": pid, "test_acc": accs})
    return out


def _make_studies(root: Path, params: dict, tstudies, optuna) -> dict:
    parent = tstudies.ensure_study_run(
        params, study_name="tiny", storage="sqlite:///studies/tiny.db", spec={"name": "tiny"}
    )
    study = optuna.create_study(
        study_name="tiny", storage=f"sqlite:///{root / 'studies' / 'tiny.db'}", direction="maximize"
    )
    study.set_user_attr("nsp_objectives", ["val_acc"])
    for _ in range(6):
        t = study.ask()
        x = t.suggest_float("threshold", 0.0, 1.0)
        depth = t.suggest_int("ra_magnitude", 1, 15)
        value = 1.0 - (x - 0.3) ** 2 - 0.001 * depth
        with tstudies.trial_run(
            params,
            parent_run_id=parent,
            study_name="tiny",
            trial_number=t.number,
            values=t.params,
            config={},
        ) as tr:
            tr.log_final({"val_acc": value})
        t.set_user_attr("mlflow_run_id", tr.run_id)
        study.tell(t, value)
    (root / "studies" / "pareto.yaml").write_text(
        "name: pareto\nstorage: journal:studies/pareto.log\n"
        "objectives:\n  - {metric: val_acc, direction: maximize}\n"
        "  - {metric: params, direction: minimize}\n"
    )
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(
        JournalFileBackend(str(root / "studies" / "pareto.log"))
    )
    pareto = optuna.create_study(
        study_name="pareto", storage=journal, directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )  # fmt: skip
    pareto.set_user_attr("nsp_objectives", ["val_acc", "params"])
    pareto.optimize(
        lambda t: (t.suggest_float("w", 0, 1), t.suggest_float("w2", 0, 1) + 1), n_trials=8
    )
    return {"study": study, "pareto": pareto}


def page(name: str, ctx: dict, monkeypatch) -> AppTest:
    """Run one page with the app pointed at ``ctx`` (env), failing on any exception."""
    monkeypatch.setenv("NSP_PROJECT_ROOT", str(ctx["root"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ctx["uri"])
    at = AppTest.from_file(str(PAGES[name]), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame(at: AppTest, i: int = 0) -> pd.DataFrame:
    """The page's ``i``-th table (AppTest does not expose dataframe keys)."""
    assert len(at.dataframe) > i, f"only {len(at.dataframe)} tables"
    return at.dataframe[i].value


def charts(at: AppTest) -> list:
    return list(at.get("plotly_chart"))


def _array(v) -> np.ndarray:
    """A plotly JSON array: a list, or the typed form {dtype, bdata (base64), shape}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = [int(x) for x in str(v.get("shape", len(a))).split(",")]
        return a.reshape(shape)
    return np.asarray(v)


# ----------------------------------------------------------------------------- pure helpers


def test_errors_csv_long_wide_and_percent_forms_agree():
    from app.data import parse_errors_csv

    long = parse_errors_csv(_long_csv(ERRORS["teacher"]))
    wide = parse_errors_csv(_wide_csv_percent(ERRORS["teacher"]))
    key = ["corruption", "severity"]
    a, b = (
        long.sort_values(key).reset_index(drop=True),
        wide.sort_values(key).reset_index(drop=True),
    )
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-9)
    assert a.loc[(a.corruption == "fog") & (a.severity == 3), "error"].item() == pytest.approx(
        ERRORS["teacher"][("fog", 3)]
    )


def test_deltas_and_ce():
    from app.data import add_deltas, ce_per_corruption, parse_errors_csv

    df = add_deltas(
        [{"model": "teacher", "test_acc": 0.8}, {"model": "g1", "test_acc": 0.85},
         {"model": "baseline", "test_acc": 0.9}],
        ("test_acc",),
    )  # fmt: skip
    assert df["Δtest_acc vs teacher"].round(6).tolist() == [0.0, 0.05, 0.1]
    assert df["Δtest_acc vs baseline"].round(6).tolist() == [-0.1, -0.05, 0.0]
    g1, base = (
        parse_errors_csv(_long_csv(ERRORS["g1"])),
        parse_errors_csv(_long_csv(ERRORS["baseline"])),
    )
    ce = ce_per_corruption(g1, base).set_index("corruption")
    fog = [ERRORS["g1"][("fog", s)] for s in range(1, 6)]
    fog_b = [ERRORS["baseline"][("fog", s)] for s in range(1, 6)]
    assert ce.loc["fog", "ce"] == pytest.approx(sum(fog) / sum(fog_b))
    assert ce.loc["fog", "mean_error"] == pytest.approx(sum(fog) / 5)


def test_dashboard_command(tmp_path, monkeypatch):
    from nsp.cli import build_parser
    from nsp.commands import dashboard

    args = build_parser().parse_args(
        ["dashboard", "--port", "8600", "--tracking-uri", "sqlite:///x.db"]
    )
    cmd = dashboard.build_command(port=args.port, host=args.host, app=dashboard.app_dir())
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP / "Home.py")
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8600"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    env = dashboard.build_env(tracking_uri="sqlite:///x.db", project_root=tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:///x.db" and env["NSP_PROJECT_ROOT"] == str(
        tmp_path
    )
    from nsp.cli import main

    assert main(["dashboard", "--port", "0"]) == 2  # NSPError: one-line message, no traceback


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    from app import data as D

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert D.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text("tracking:\n  uri: sqlite:////data/other.db\n")
    assert D.default_tracking_uri(tmp_path) == "sqlite:////data/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert D.default_tracking_uri(tmp_path) == "http://127.0.0.1:5000"


# ----------------------------------------------------------------------------- pages on the real store


def test_generations_table_equals_store(store, monkeypatch):
    at = page("generations", store, monkeypatch)
    df = frame(at, 0).set_index("model")
    st = store["stages"]
    trained = [s for s in st if s == "teacher" or s == "baseline" or s.startswith("student@")]
    expected = ["teacher", *sorted(s.split("@")[1] for s in trained if "@" in s), "baseline"]
    assert list(df.index) == [m for m in expected if m in df.index] and len(df) == len(trained)
    for stage in trained:
        m = stage.split("@")[1] if "@" in stage else stage
        metrics = st[stage].data.metrics
        assert df.loc[m, "test_acc"] == metrics["test_acc"]
        assert df.loc[m, "val_acc"] == metrics["final_val_acc"]
        assert df.loc[m, "params"] == metrics["params"]
        assert df.loc[m, "run_id"] == st[stage].info.run_id
        dvc = json.loads((store["root"] / "outputs" / "models" / m / "metrics.json").read_text())
        assert df.loc[m, "test_acc"] == pytest.approx(dvc["test_acc"])
        assert df.loc[m, "Δtest_acc vs teacher"] == pytest.approx(
            metrics["test_acc"] - st["teacher"].data.metrics["test_acc"]
        )
    g1 = st["pseudo_label@g1"].data.metrics["pseudo_label_acc"]
    assert df.loc["g1", "pseudo_label_acc"] == pytest.approx(g1)
    assert df.loc["g1", "teacher"] == "teacher" and df.loc["g1", "generation"] == 1
    # the "run dvc repro" hint for robustness shows exactly when no evaluate@ run exists
    has_rob = any(s.startswith("evaluate@") for s in st)
    assert any("robustness" in i.value and "dvc repro" in i.value for i in at.info) != has_rob
    assert len(charts(at)) >= 3  # the lineage + metric charts


def test_pseudo_labels_page_equals_stats(store, monkeypatch):
    at = page("pseudo", store, monkeypatch)
    df = frame(at, 0).set_index("generation")
    for stage, run in store["stages"].items():
        if stage.startswith("pseudo_label@"):
            g = stage.split("@")[1]
            for k in ("stream_size", "num_kept_unique", "num_unlabeled"):
                assert df.loc[g, k] == run.data.metrics[k]
    assert (
        df.loc["g1", "pseudo_label_acc"]
        == store["stages"]["pseudo_label@g1"].data.metrics["pseudo_label_acc"]
    )
    assert len(charts(at)) == 3  # class histograms, confidence histograms, per-class accuracy


def test_training_page_curves_equal_history(store, monkeypatch):
    at = page("training", store, monkeypatch)
    assert at.selectbox(key="train_metric").value == "val_acc"
    table = frame(at, 0)
    hist = store["client"].get_metric_history(store["stages"]["teacher"].info.run_id, "val_acc")
    expected = {m.step: m.value for m in hist}
    got = table["teacher"].dropna().to_dict()
    assert got == pytest.approx(expected) and len(expected) == 30
    at.selectbox(key="train_metric").set_value("train_loss").run()
    hist = store["client"].get_metric_history(
        store["stages"]["student@g1"].info.run_id, "train_loss"
    )
    assert frame(at, 0)["g1"].dropna().to_dict() == pytest.approx({m.step: m.value for m in hist})


def test_registry_page_equals_registry(store, monkeypatch):
    at = page("registry", store, monkeypatch)
    c = store["client"]
    versions = c.search_model_versions("name='nsp-tiny'")
    df = frame(at, 0).set_index("version")
    assert sorted(df.index) == sorted(int(v.version) for v in versions)
    for v in versions:
        assert df.loc[int(v.version), "stage"] == v.tags["stage"]
        assert df.loc[int(v.version), "val_acc"] == pytest.approx(float(v.tags["val_acc"]))
    aliases = frame(at, 1).set_index("alias")["version"].to_dict()
    assert aliases == {a: int(v) for a, v in c.get_registered_model("nsp-tiny").aliases.items()}
    assert {"teacher", "champion", "gen-1"} <= set(aliases)
    assert (
        at.code[0].value.startswith("nsp registry pull nsp-tiny@") and "--out " in at.code[0].value
    )
    at.selectbox(key="pull_ref").set_value("nsp-tiny@champion").run()
    assert at.code[0].value == "nsp registry pull nsp-tiny@champion --out models/nsp-tiny-champion"


# ----------------------------------------------------------------------------- robustness + studies


def _robustness(store) -> dict[str, dict]:
    """model -> outputs/robustness/<model>.metrics.json of the real pipeline (skip when absent)."""
    files = sorted((store["root"] / "outputs" / "robustness").glob("*.metrics.json"))
    out = {f.name[: -len(".metrics.json")]: json.loads(f.read_text()) for f in files}
    out = {m: d for m, d in out.items() if "mce" in d}
    if not out:
        pytest.skip(
            "the pipeline has no robustness stages (outputs/robustness/<model>.metrics.json)"
        )
    return out


def test_generations_shows_robustness(store, monkeypatch):
    rob = _robustness(store)
    at = page("generations", store, monkeypatch)
    df = frame(at, 0).set_index("model")
    for m, d in rob.items():
        run = store["stages"][f"evaluate@{m}"]
        for k in ("a_acc", "mce", "rel_mce", "mfr", "mt5d", "calib_err", "a_calib_err"):
            if d[k] is None:  # undefined (e.g. rel. mCE when no corruption degrades the baseline)
                assert k not in df.columns or pd.isna(df.loc[m, k])
                assert k not in run.data.metrics
                continue
            assert df.loc[m, k] == run.data.metrics[k]  # the evaluate@<model> MLflow run
            assert df.loc[m, k] == pytest.approx(d[k])  # == the DVC metrics file
    if "baseline" in rob and "g1" in rob:
        assert df.loc["g1", "Δmce vs baseline"] == pytest.approx(
            rob["g1"]["mce"] - rob["baseline"]["mce"]
        )
    assert not any("robustness" in i.value for i in at.info)


def test_robustness_from_dvc_files_only(tmp_path):
    """Without evaluate@ runs the DVC files of the pipeline run in outputs/ are used (only for it)."""
    from app.data import robustness_metrics

    (tmp_path / "outputs" / "robustness").mkdir(parents=True)
    (tmp_path / "outputs" / "pipeline_run.json").write_text('{"run_id": "abc"}')
    (tmp_path / "outputs" / "robustness" / "g1.metrics.json").write_text('{"mce": 0.7, "mfr": 0.2}')
    stages = [{"kind": "student", "model": "g1", "metrics": {}},
              {"kind": "evaluate", "model": "teacher", "metrics": {"mce": 1.0}}]  # fmt: skip
    got = robustness_metrics("sqlite:///none.db", stages, tmp_path, "abc")
    assert got == {"teacher": {"mce": 1.0}, "g1": {"mce": 0.7, "mfr": 0.2}}
    assert robustness_metrics("sqlite:///none.db", stages, tmp_path, "other") == {
        "teacher": {"mce": 1.0}
    }


def test_corruptions_page(store, monkeypatch):
    rob = _robustness(store)
    at = page("corruptions", store, monkeypatch)
    assert at.selectbox(key="corr_ref").value == "baseline"
    ce = frame(at, 0)
    assert list(ce.columns) == [m for m in ("teacher", "g1", "g2", "baseline") if m in rob]
    for m, d in rob.items():
        for c, v in d["ce"].items():
            assert ce.loc[c, m] == pytest.approx(v, rel=1e-9)  # Σ_s E / Σ_s E_baseline
        assert ce.loc["mCE", m] == pytest.approx(d["mce"], rel=1e-9)
    assert len(charts(at)) == len(rob) + 2  # a heatmap per model, severity curves, CE bars
    heat = json.loads(charts(at)[0].proto.spec)["data"][0]  # the teacher's
    csv = pd.read_csv(store["root"] / "outputs" / "robustness" / "teacher.errors.csv")
    assert list(_array(heat["y"])) == csv["corruption"].tolist()
    assert list(_array(heat["x"])) == [1, 2, 3, 4, 5]
    sev = csv[[f"severity_{s}" for s in range(1, 6)]].to_numpy()
    np.testing.assert_allclose(_array(heat["z"]), sev, rtol=1e-12)


def test_perturbations_page(store, monkeypatch):
    rob = _robustness(store)
    at = page("perturbations", store, monkeypatch)
    tables = {k: frame(at, i) for i, k in enumerate(("fr", "t5d_rate", "fp", "t5d"))}
    for m, d in rob.items():
        for k, table in tables.items():
            for pert, v in d[k].items():
                assert table.loc[pert, m] == pytest.approx(v, rel=1e-9)
        assert tables["fr"].loc["mFR", m] == pytest.approx(d["mfr"], rel=1e-9)
        assert tables["t5d_rate"].loc["mT5D", m] == pytest.approx(d["mt5d"], rel=1e-9)
    assert len(charts(at)) == 4


def test_studies_page(rich, monkeypatch):
    at = page("studies", rich, monkeypatch)
    storages = at.selectbox(key="study_pick_storage").options
    assert len(storages) == 2 and "pareto.log" in storages[0] and "tiny.db" in storages[1]
    at.selectbox(key="study_pick_storage").set_value(storages[1]).run()
    assert not at.exception
    trials = frame(at, 0).set_index("trial")
    study = rich["study"]
    for t in study.trials:
        assert trials.loc[t.number, "val_acc"] == pytest.approx(t.value)
        assert trials.loc[t.number, "param threshold"] == pytest.approx(t.params["threshold"])
        run_id = t.user_attrs["mlflow_run_id"]
        assert trials.loc[t.number, "mlflow_run_id"] == run_id
        assert trials.loc[t.number, "mlflow_run"].endswith(f"/runs/{run_id}")
        assert trials.loc[t.number, "run_status"] == "FINISHED"
    assert len(charts(at)) == 3  # history, importances, parallel coordinates
    at.selectbox(key="study_pick_storage").set_value(storages[0]).run()
    assert not at.exception
    trials = frame(at, 0)
    assert len(trials) == 8 and list(trials["val_acc"]) == pytest.approx(
        [t.values[0] for t in rich["pareto"].trials]
    )
    assert len(charts(at)) == 5  # 2 histories, importances, parallel coordinates, Pareto front


def test_compare_two_pipeline_runs(rich, monkeypatch):
    at = page("generations", rich, monkeypatch)
    other = rich["extra"][2]
    at.selectbox(key="compare").set_value(other["run_id"]).run()
    assert not at.exception
    b = frame(at, 2).set_index("model")  # tables: main, selected (left), compared (right)
    assert frame(at, 1)["test_acc"].tolist() == frame(at, 0)["test_acc"].tolist()
    assert b.loc["g2", "test_acc"] == other["test_acc"]["student@g2"]
    assert b.loc["baseline", "test_acc"] == other["test_acc"]["baseline"]
    assert b.loc["g2", "mce"] == pytest.approx(1 - other["test_acc"]["evaluate@g2"])
    assert len(charts(at)) >= 4  # lineage, metric charts, the comparison bars


def test_every_page_loads_fast_on_rich_store(rich, monkeypatch):
    """A store of ~60 runs: every page renders in < 2 s with cold query caches, far less warm."""
    import streamlit as st

    runs = rich["client"].search_runs([rich["exp"].experiment_id], max_results=1000)
    assert len(runs) >= 50
    page("home", rich, monkeypatch)  # imports (mlflow, optuna, plotly) are not page load time
    st.cache_data.clear()
    times = {}
    for name in PAGES:
        t0 = time.perf_counter()
        at = page(name, rich, monkeypatch)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        at.run()
        times[name] = (round(first, 2), round(time.perf_counter() - t0, 2))
        assert not at.exception
    print(f"page load seconds (cold cache, cached) with {len(runs)} runs:", times)
    assert all(cold < 2.0 for cold, _ in times.values()), times


# ----------------------------------------------------------------------------- empty store


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_on_empty_store(name, tmp_path, monkeypatch):
    empty = {"root": tmp_path, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    at = page(name, empty, monkeypatch)
    msgs = [i.value for i in at.info]
    if name == "home":
        assert any("Run `dvc repro`" in m for m in msgs)
    elif name == "studies":
        assert any("Run `nsp study run" in m for m in msgs)
    else:
        assert any("Run `dvc repro`" in m for m in msgs), msgs
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store


# ----------------------------------------------------------------------------- real browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(args: list[str], profile: Path) -> str:
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", f"--user-data-dir={profile}", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_generations_in_headless_chromium(store, tmp_path):
    port = _free_port()
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = store["uri"]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "nsp"), "dashboard", "--port", str(port)],
        cwd=store["root"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard server did not come up")
        profile = tmp_path / "chrome"
        page_url = f"{url}/Generations"
        teacher_acc = store["stages"]["teacher"].data.metrics["test_acc"]
        t0 = time.perf_counter()
        _chromium(["--dump-dom", page_url], profile)  # a fresh server may render blank first
        dom, loads = "", []
        for _ in range(15):  # the server's first script run (imports mlflow) can take a while
            t1 = time.perf_counter()
            dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", page_url], profile)
            loads.append(round(time.perf_counter() - t1, 2))
            if "Generation table" in dom and 'role="grid"' in dom:
                break
            time.sleep(1.0)
        print(
            f"chromium: first load + {len(loads)} loads {loads}, total {time.perf_counter() - t0:.1f}s"
        )
        assert "Generation table" in dom and 'role="grid"' in dom
        assert store["params"]["teacher"]["arch"] in dom and "teacher" in dom
        assert f"{teacher_acc:g}"[:4] in dom
        assert "js-plotly-plot" in dom  # the lineage / metric charts rendered
        assert "Traceback" not in dom
        shot = tmp_path / "generations.png"
        for _ in range(10):  # a screenshot taken before the script run finished shows skeletons
            shot.unlink(missing_ok=True)
            _chromium(["--virtual-time-budget=10000", f"--screenshot={shot}", "--window-size=1400,1000",
                       page_url], profile)  # fmt: skip
            if shot.is_file() and shot.stat().st_size > 40_000:
                break
            time.sleep(1.0)
        assert shot.is_file() and shot.stat().st_size > 40_000  # a skeleton page is ~8 kB
        print(f"screenshot: {shot}")
        _assert_rendered_page(shot)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _assert_rendered_page(shot: Path) -> None:
    """The screenshot shows a rendered page, not a skeleton: dark text pixels in the main column
    (right of the sidebar) spread over many rows (title, table, chart labels), and coloured pixels
    (the plotly traces and the table's highlight), which a grey skeleton does not have."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    main = img[:, img.shape[1] // 4 :]  # the sidebar takes the left quarter or less
    dark = main.max(axis=2) < 110  # text is near-black on the light theme
    rows_with_text = int((dark.sum(axis=1) >= 3).sum())
    assert dark.sum() > 2_000 and rows_with_text > 100, (int(dark.sum()), rows_with_text)
    colour = (main.max(axis=2) - main.min(axis=2)) > 80  # saturated: traces, links, highlights
    assert colour.sum() > 500, int(colour.sum())
