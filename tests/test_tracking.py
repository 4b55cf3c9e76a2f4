"""MLflow tracking + registry against the real store written by the tiny pipeline, and a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from tests.pipeline_helpers import run


def _client(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_runs_are_nested_under_one_pipeline_run(tiny_pipeline):
    root = tiny_pipeline["root"]
    c = _client(root)
    exp = c.get_experiment_by_name("nsp-tiny")
    runs = c.search_runs([exp.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("nsp.kind") == "pipeline"]
    stages = {r.data.tags["nsp.stage"]: r for r in runs if r.data.tags.get("nsp.kind") == "stage"}
    assert len(parents) == 1
    chain = (
        "teacher",
        "pseudo_label@g1",
        "student@g1",
        "pseudo_label@g2",
        "student@g2",
        "baseline",
    )
    evaluations = {f"evaluate@{m}" for m in ("teacher", "g1", "g2", "baseline")}
    assert set(stages) == {*chain, "robustness", *evaluations}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in stages.values())
    for name in chain:
        r = stages[name]
        assert r.info.status == "FINISHED"
        assert len(r.data.tags["data_manifest_sha256"]) == 64
        assert r.data.tags["git_commit"]
    s2 = stages["student@g2"]
    assert s2.data.tags["generation"] == "2" and s2.data.tags["teacher_model"] == "g1"
    assert (
        s2.data.tags["pseudo_set_sha256"]
        == stages["pseudo_label@g2"].data.tags["pseudo_set_sha256"]
    )
    # per-epoch metrics with step=epoch, final metrics equal to the DVC metrics file
    hist = c.get_metric_history(s2.info.run_id, "val_acc")
    assert [m.step for m in hist] == list(range(1, len(hist) + 1))
    dvc_metrics = json.loads((root / "outputs/models/g2/metrics.json").read_text())
    assert s2.data.metrics["test_acc"] == pytest.approx(dvc_metrics["test_acc"])
    assert s2.data.params["arch"] == tiny_pipeline["params"]["generations"]["g2"]["arch"]
    arts = {a.path for a in c.list_artifacts(s2.info.run_id)}
    assert {"resolved_config.json", "confusion.json", "config.json", "history.csv"} <= arts
    pl_arts = {a.path for a in c.list_artifacts(stages["pseudo_label@g1"].info.run_id)}
    assert "stats.json" in pl_arts


def test_registry_aliases_and_lineage(tiny_pipeline):
    root = tiny_pipeline["root"]
    c = _client(root)
    rm = c.get_registered_model("nsp-tiny")
    aliases = rm.aliases
    assert {"teacher", "gen-1", "gen-2", "latest-student", "baseline", "champion"} <= set(aliases)
    assert aliases["latest-student"] == aliases["gen-2"]
    versions = c.search_model_versions("name='nsp-tiny'")
    assert len(versions) == 4  # teacher, g1, g2, baseline: one version per checkpoint
    best = max(versions, key=lambda v: float(v.tags["val_acc"]))
    assert aliases["champion"] == best.version
    # walk back from gen-2 to the data
    v2 = c.get_model_version_by_alias("nsp-tiny", "gen-2")
    run2 = c.get_run(v2.tags["run_id"])
    assert run2.data.tags["teacher_model"] == "g1"
    v1 = c.get_model_version_by_alias("nsp-tiny", "gen-1")
    assert run2.data.tags["teacher_checkpoint_sha256"] == v1.tags["checkpoint_sha256"]
    assert (
        c.get_run(v1.tags["run_id"]).data.tags["data_manifest_sha256"]
        == run2.data.tags["data_manifest_sha256"]
    )


def test_champion_loads_in_fresh_process_and_reproduces_test_accuracy(tiny_pipeline):
    root, env = tiny_pipeline["root"], tiny_pipeline["env"]
    code = (
        "import json, mlflow, numpy as np, torch\n"
        "m = mlflow.pytorch.load_model('models:/nsp-tiny@champion')\n"
        "x = torch.from_numpy(np.load('data/prepared/test_x.npy')).permute(0, 3, 1, 2)\n"
        "y = np.load('data/prepared/test_y.npy')\n"
        "m.eval()\n"
        "with torch.inference_mode(): acc = float((m(x).argmax(1).numpy() == y).mean())\n"
        "print(json.dumps({'acc': acc}))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    acc = json.loads(p.stdout.strip().splitlines()[-1])["acc"]
    c = _client(root)
    v = c.get_model_version_by_alias("nsp-tiny", "champion")
    assert acc == pytest.approx(float(v.tags["test_acc"]), abs=1e-4)


def test_registry_list_and_pull(tiny_pipeline, tmp_path):
    root, env = tiny_pipeline["root"], tiny_pipeline["env"]
    out = run(["nsp", "registry", "list", "nsp-tiny"], root, env).stdout
    assert "gen-2" in out and "champion" in out
    dest = tmp_path / "pulled"
    p = run(["nsp", "registry", "pull", "nsp-tiny@gen-1", "--out", str(dest)], root, env)
    assert "mlflow.pytorch.load_model" in p.stdout or "torch.load" in p.stdout
    cfg = json.loads((dest / "config.json").read_text())
    assert cfg["arch"] == tiny_pipeline["params"]["generations"]["g1"]["arch"]
    from nsp.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(dest / "model.pt"))
    x = torch.from_numpy(np.load(root / "data/prepared/test_x.npy")).permute(0, 3, 1, 2)
    y = np.load(root / "data/prepared/test_y.npy")
    with torch.inference_mode():
        acc = float((model(x).argmax(1).numpy() == y).mean())
    assert acc == pytest.approx(
        json.loads((root / "outputs/models/g1/metrics.json").read_text())["test_acc"], abs=1e-4
    )
    bad = run(
        ["nsp", "registry", "pull", "nsp-tiny@nope", "--out", str(tmp_path / "x")],
        root,
        env,
        check=False,
    )
    assert bad.returncode == 2 and "alias 'nope'" in bad.stderr and "gen-1" in bad.stderr
    bad = run(["nsp", "registry", "list", "no-such-model"], root, env, check=False)
    assert bad.returncode == 2 and "nsp-tiny" in bad.stderr


def test_rerunning_a_stage_does_not_duplicate_versions(tiny_pipeline):
    root, env = tiny_pipeline["root"], tiny_pipeline["env"]
    c = _client(root)
    before = len(c.search_model_versions("name='nsp-tiny'"))
    run(["dvc", "repro", "-f", "-s", "student@g1"], root, env)  # same seed -> same checkpoint bytes
    assert len(c.search_model_versions("name='nsp-tiny'")) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = dict(
        os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true"
    )
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2)
            break
        except Exception:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)

    yield {"uri": uri, "stop": stop}
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_stage_against_real_mlflow_server(tiny_pipeline, mlflow_server, tmp_path):
    """Re-run one stage of the tiny project against a real server: nested run + registered version."""
    import shutil

    root = tiny_pipeline["root"]
    proj = tmp_path / "proj"
    shutil.copytree(root, proj, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    env = dict(tiny_pipeline["env"], MLFLOW_TRACKING_URI=mlflow_server["uri"])
    run(["nsp", "train", "teacher", "--no-progress"], proj, env)
    run(["nsp", "pseudo-label", "--gen", "g1", "--no-progress"], proj, env)
    c = mlflow.MlflowClient(tracking_uri=mlflow_server["uri"])
    exp = c.get_experiment_by_name("nsp-tiny")
    runs = c.search_runs([exp.experiment_id])
    stages = {
        r.data.tags.get("nsp.stage"): r for r in runs if r.data.tags.get("nsp.kind") == "stage"
    }
    parent = [r for r in runs if r.data.tags.get("nsp.kind") == "pipeline"][0]
    assert set(stages) == {"teacher", "pseudo_label@g1"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in stages.values())
    assert c.get_registered_model("nsp-tiny").aliases["teacher"] == "1"


def test_unreachable_server_is_a_clear_error(tiny_pipeline, tmp_path):
    import shutil

    proj = tmp_path / "proj"
    shutil.copytree(
        tiny_pipeline["root"], proj, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts")
    )
    uri = f"http://127.0.0.1:{_free_port()}"
    env = dict(tiny_pipeline["env"], MLFLOW_TRACKING_URI=uri)
    before = (proj / "outputs/models/teacher/model.pt").read_bytes()
    p = run(["nsp", "train", "teacher", "--no-progress"], proj, env, check=False)
    assert p.returncode == 2
    assert uri in p.stderr and "unreachable" in p.stderr
    assert (
        proj / "outputs/models/teacher/model.pt"
    ).read_bytes() == before  # previous output intact


def test_server_down_mid_run_is_a_one_line_error_and_the_rerun_resumes(
    tiny_pipeline, mlflow_server, tmp_path
):
    """Kill the tracking server while `nsp train teacher` logs epochs: exit 2, one clear line, the
    previous model intact; the rerun (server back: here a sqlite store) resumes from the saved epoch."""
    import shutil

    import yaml

    proj = tmp_path / "proj"
    shutil.copytree(
        tiny_pipeline["root"], proj, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts")
    )
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["teacher"]["epochs"] = 400  # long enough to be killed mid-run
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = (proj / "outputs/models/teacher/model.pt").read_bytes()
    env = dict(
        tiny_pipeline["env"],
        MLFLOW_TRACKING_URI=mlflow_server["uri"],
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    nsp = str(Path(sys.executable).parent / "nsp")
    proc = subprocess.Popen(
        [nsp, "train", "teacher", "--no-progress"],
        cwd=proj,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    c = mlflow.MlflowClient(tracking_uri=mlflow_server["uri"])
    deadline = time.time() + 300
    logged = []
    while time.time() < deadline and proc.poll() is None and len(logged) < 2:
        time.sleep(0.5)
        exp = c.get_experiment_by_name("nsp-tiny")
        runs = c.search_runs([exp.experiment_id], "tags.`nsp.stage` = 'teacher'") if exp else []
        logged = c.get_metric_history(runs[0].info.run_id, "val_acc") if runs else []
    assert len(logged) >= 2, "the teacher never logged two epochs to the server"
    mlflow_server["stop"]()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-2000:]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith(f"nsp train: error: MLflow tracking at {mlflow_server['uri']}")
    assert "rerun" in lines[-1]
    assert (proj / "outputs/models/teacher/model.pt").read_bytes() == before
    state = proj / "outputs/models/teacher/train_state.pt"
    assert state.exists()
    saved = torch.load(state, map_location="cpu", weights_only=True)
    assert saved["step"] > 0

    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{proj / 'mlflow.db'}"
    run([nsp, "train", "teacher", "--no-progress"], proj, env)
    hist = (proj / "outputs/models/teacher/history.csv").read_text().splitlines()
    assert len(hist) == 1 + 400  # header + every epoch, the first ones taken from the saved state
    assert not state.exists()


def test_teacher_can_come_from_the_registry(tiny_pipeline, tmp_path):
    """`teacher.source: models:/NAME@ALIAS` takes the teacher from the registry instead of training."""
    import shutil

    import yaml

    proj = tmp_path / "proj"
    shutil.copytree(tiny_pipeline["root"], proj)
    env = dict(tiny_pipeline["env"], MLFLOW_TRACKING_URI=f"sqlite:///{proj / 'mlflow.db'}")
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["teacher"]["source"] = "models:/nsp-tiny@gen-1"
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["nsp", "train", "teacher", "--no-progress"], proj, env)
    got = json.loads((proj / "outputs/models/teacher/metrics.json").read_text())
    g1 = json.loads((proj / "outputs/models/g1/metrics.json").read_text())
    assert got["test_acc"] == pytest.approx(g1["test_acc"], abs=1e-4)
    cfg = json.loads((proj / "outputs/models/teacher/config.json").read_text())
    assert (
        cfg["config"]["arch"] == tiny_pipeline["params"]["generations"]["g1"]["arch"]
        and cfg["lineage"]["source"] == "models:/nsp-tiny@gen-1"
    )
    c = _client(proj)
    teacher_v = c.get_model_version_by_alias("nsp-tiny", "teacher")
    assert teacher_v.tags["checkpoint_sha256"] == got["checkpoint_sha256"]
    params["teacher"]["source"] = "models:/nsp-tiny@nope"
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bad = run(["nsp", "train", "teacher", "--no-progress"], proj, env, check=False)
    assert bad.returncode == 2 and "alias 'nope' not found" in bad.stderr
