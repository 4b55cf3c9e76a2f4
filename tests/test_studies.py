"""Optuna studies (``nsp study``): real Optuna storages (sqlite, journal file), real MLflow (sqlite).

A module fixture builds a tiny learnable dataset (the class is a bright square's position), prepares
it with ``prepare_splits`` and trains a tiny teacher with ``run_teacher``; every study trains
``nsp_resnet_xs`` students for a few steps on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from ruamel.yaml import YAML

from nsp.cli import main
from nsp.errors import NSPError
from nsp.study import load_spec, parse_spec, run_study, tally
from nsp.study.spec import check_against_params
from nsp.study.storage import load_study_readonly, open_study

REPO = Path(__file__).resolve().parents[1]


def _square_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28x28 images: noise plus a bright 7x7 square whose position encodes the class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 4)
        x[i, 2 + 9 * r : 9 + 9 * r, 1 + 7 * q : 8 + 7 * q] = 230
    return x


def _tiny_params(tracking_uri: str) -> str:
    """The repo's params.yaml (comments kept) shrunk to a seconds-long pipeline."""
    from nsp.study.results import _represent_null

    yml = YAML()
    yml.representer.add_representer(type(None), _represent_null)
    doc = yml.load((REPO / "params.yaml").read_text())
    doc["prepare"]["image_size"] = 16
    doc["tracking"]["enabled"] = True
    doc["tracking"]["uri"] = tracking_uri
    doc["tracking"]["register"] = False
    for stage in (
        "teacher",
        "student",
        "baseline",
    ):  # fp32 trajectories (bf16 is tested in test_core)
        doc[stage]["precision"] = "fp32"
    t = doc["teacher"]
    t.update(arch="nsp_resnet_xs", epochs=6, batch_size=32, warmup_epochs=0, lr=0.1)
    t["noise"].update(randaugment=False, crop_flip=False, dropout=0.0, drop_path=0.0)
    s = doc["student"]
    s.update(epochs=2, batch_size=16, unlabeled_ratio=1, warmup_epochs=0, lr=0.05)
    s["noise"].update(randaugment=False, crop_flip=False, dropout=0.1, drop_path=0.1)
    s["pseudo"].update(per_class=20)
    doc["generations"]["g1"]["arch"] = "nsp_resnet_xs"
    import io

    buf = io.StringIO()
    yml.dump(doc, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from nsp.data.idx import write_idx
    from nsp.data.prepare import prepare_splits
    from nsp.stages import run_teacher

    root = tmp_path_factory.mktemp("nsp_study")
    raw = root / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for stem, per, seed in (("train", 42, 1), ("t10k", 5, 2)):
        y = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per))
        write_idx(raw / f"{stem}-images-idx3-ubyte", _square_images(y, seed))
        write_idx(raw / f"{stem}-labels-idx1-ubyte", y)
    prepare_splits(
        dataset="fashion_mnist", data_dir=str(raw), out_dir=str(root / "data" / "prepared"),
        labeled_per_class=10, val_per_class=12, seed=0, image_size=16, channels=1, fit="resize",
        progress=False,
    )  # fmt: skip
    uri = f"sqlite:///{root / 'mlflow.db'}"
    (root / "params.yaml").write_text(_tiny_params(uri))
    params = yaml.safe_load((root / "params.yaml").read_text())
    cwd = os.getcwd()
    os.chdir(root)
    try:
        quiet = {**params, "tracking": {**params["tracking"], "enabled": False}}
        run_teacher(quiet, out=root / "outputs", progress=False)
    finally:
        os.chdir(cwd)
    (root / "studies").mkdir()
    return root


@pytest.fixture(autouse=True)
def _in_project(request, monkeypatch):
    if "project" in request.fixturenames:
        root = request.getfixturevalue("project")
        monkeypatch.chdir(root)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        monkeypatch.setenv("PYTHONPATH", str(REPO))


SPACE: dict[str, Any] = {
    "ra_magnitude": {"key": "student.noise.ra_magnitude", "type": "int", "low": 3, "high": 15},
    "dropout": {"key": "student.noise.dropout", "type": "float", "low": 0.0, "high": 0.5},
    "threshold": {"key": "student.pseudo.threshold", "type": "float", "low": 0.1, "high": 0.5},
    "balance": {"key": "student.pseudo.balance", "type": "bool"},
    "per_class": {
        "key": "student.pseudo.per_class", "type": "int", "low": 5, "high": 40,
        "when": {"balance": True},
    },
}  # fmt: skip


def write_spec(name: str, **over: Any) -> Path:
    spec = {
        "name": name,
        "teacher": "outputs/models/teacher/model.pt",
        "objectives": ["maximize val_acc"],
        "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 3},
        "pruner": "none",
        "n_trials": 4,
        "heartbeat": {"interval": 1, "grace_period": 4, "max_retry": 2},
        "budget": {"epochs": 2, "max_steps": 8, "unlabeled_subset": 150},
        "search_space": SPACE,
        **over,
    }
    path = Path("studies") / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def params() -> dict[str, Any]:
    return yaml.safe_load(Path("params.yaml").read_text())


def baseline_values() -> dict[str, Any]:
    p = params()
    return {
        "ra_magnitude": p["student"]["noise"]["ra_magnitude"],
        "dropout": p["student"]["noise"]["dropout"],
        "threshold": p["student"]["pseudo"]["threshold"],
        "balance": p["student"]["pseudo"]["balance"],
        "per_class": p["student"]["pseudo"]["per_class"],
    }


def check_mlflow(study: optuna.Study) -> None:
    """Parent run per study; one nested run per started trial, cross-referenced both ways."""
    from nsp.tracking.studies import trial_runs

    parent = study.user_attrs["mlflow_parent_run_id"]
    runs = {r.info.run_id: r for r in trial_runs(params(), parent_run_id=parent)}
    trials = study.get_trials(deepcopy=False)
    assert len(runs) == len(trials)
    for t in trials:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna_trial_number"] == str(t.number)
        assert run.data.tags["optuna_trial_state"] == t.state.name
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[t.state.name]
        assert run.info.status == status
        assert float(run.data.params["search.student.noise.dropout"]) == t.params["dropout"]
        if t.state == TrialState.COMPLETE:
            assert run.data.metrics["final_val_acc"] == pytest.approx(t.values[0])


# ------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "change,match",
    [
        ({"search_space": {"x": {"key": "student.noise.bogus", "type": "int", "low": 1, "high": 2}}},
         r"search_space\.x: key 'student\.noise\.bogus'"),
        ({"search_space": {"x": {"key": "teacher.lr", "type": "float", "low": 0.1, "high": 0.2}}},
         r"search_space\.x: key 'teacher\.lr' does not affect"),
        ({"search_space": {"d": {"key": "student.noise.dropout", "type": "float", "low": 0.5,
                                 "high": 0.1}}}, r"search_space\.d: bad range"),
        ({"search_space": {"t": {"key": "student.pseudo.threshold", "type": "float", "low": 0.2,
                                 "high": 1.5}}}, r"search_space\.t: value 1\.5 .*threshold"),
        ({"search_space": {"t": {"key": "student.pseudo.threshold", "type": "float", "low": 0.5,
                                 "high": 0.9}}}, r"search_space\.t: the params\.yaml value"),
        ({"search_space": {"a": {"key": "generations.g1.arch", "choices": ["nsp_resnet_zz"]}}},
         r"search_space\.a: value 'nsp_resnet_zz'"),
        ({"objectives": ["maximise val_acc"]}, r"objectives\[0\]: unknown direction 'maximise'"),
        ({"objectives": ["maximize test_acc"]}, r"objectives\[0\]: unknown metric 'test_acc'"),
        ({"objectives": ["maximize val_acc", "minimize corruption_error"], "pruner": "median"},
         r"pruner: multi-objective studies cannot prune"),
        ({"budgett": {}}, r"unknown key\(s\) \['budgett'\]"),
        ({"storage": "studies/x.db"}, r"storage 'studies/x.db' must be"),
    ],
)  # fmt: skip
def test_invalid_spec_names_the_key(project, change, match):
    with pytest.raises(NSPError, match=match):
        spec = load_spec(write_spec("bad", **change))
        check_against_params(spec, params())


def test_resume_with_other_direction_is_an_error(project, capsys):
    spec = parse_spec(
        yaml.safe_load(write_spec("dirs", storage="sqlite:///studies/dirs.db").read_text())
    )
    study, created = open_study(spec, params=params(), heartbeat=False)
    assert created and len(study.trials) == 1  # the enqueued baseline
    assert study.trials[0].state == TrialState.WAITING
    assert study.trials[0].system_attrs["fixed_params"] == baseline_values()
    again, created = open_study(spec, params=params(), heartbeat=False)
    assert not created and len(again.trials) == 1  # resumed: not enqueued twice
    path = write_spec("dirs", objectives=["minimize val_acc"])
    with pytest.raises(NSPError, match=r"created with objectives \[maximize val_acc\]"):
        open_study(load_spec(path), params=params(), heartbeat=False)
    assert main(["study", "run", str(path)]) == 2
    assert "resume with the original objectives" in capsys.readouterr().err


def test_registry_alias_resolves_to_the_dvc_checkpoint(project):
    import mlflow

    from nsp.io import sha256_file
    from nsp.tracking.studies import resolve_model_uri

    ckpt = Path("outputs/models/teacher/model.pt")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    client.create_registered_model("tiny")
    mv = client.create_model_version("tiny", source=ckpt.resolve().as_uri())
    client.set_model_version_tag("tiny", mv.version, "checkpoint_sha256", sha256_file(ckpt))
    client.set_model_version_tag("tiny", mv.version, "stage", "teacher")
    client.set_registered_model_alias("tiny", "teacher", mv.version)
    res = resolve_model_uri(params(), "models:/tiny@teacher")
    assert res["path"] == ckpt and res["version"] == mv.version
    with pytest.raises(NSPError, match="models:/tiny@nope: not found"):
        resolve_model_uri(params(), "models:/tiny@nope")


# ------------------------------------------------------------------------------------ studies


def test_pruning_and_show(project, capsys):
    lr = {"lr": {"key": "student.lr", "type": "float", "low": 1e-6, "high": 0.2, "log": True}}
    spec = write_spec(
        "prune",
        search_space={**lr, "dropout": SPACE["dropout"]},
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        budget={"epochs": 3, "max_steps": 9, "unlabeled_subset": 150},
        sampler={"seed": 3, "n_startup_trials": 10},
    )
    counts = run_study(load_spec(spec), params(), n_trials=6, workers=1)
    assert counts["done"] == 6 and counts["RUNNING"] == counts["WAITING"] == 0
    study = load_study_readonly("sqlite:///studies/prune.db", "prune")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.state.name, t.params) for t in study.trials]
    for t in pruned:  # stopped before the last epoch, below the running median
        assert max(t.intermediate_values) < 3
    check_mlflow(study)
    # runs carry per-epoch metrics with step=epoch
    from nsp.tracking.studies import _client

    client, _ = _client(params())
    best = study.best_trial
    hist = client.get_metric_history(best.user_attrs["mlflow_run_id"], "val_acc")
    assert [m.step for m in hist] == [1, 2, 3]
    assert [m.value for m in hist] == [best.intermediate_values[e] for e in (1, 2, 3)]

    capsys.readouterr()
    assert main(["study", "show", "prune"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "study prune (sqlite:///studies/prune.db): maximize val_acc"
    assert f"best trial: {best.number} (val_acc={best.value:.4f})" in out
    row = next(
        line for line in out.splitlines() if line.split()[:2] == [str(best.number), "COMPLETE"]
    )
    assert row.split()[2] == f"{best.value:.4f}"

    Path("p2.yaml").write_text(Path("params.yaml").read_text())
    pruned_n = pruned[0].number
    assert main(["study", "apply", "prune", "--trial", str(pruned_n), "--params", "p2.yaml"]) == 2
    assert "is PRUNED; apply a COMPLETE trial" in capsys.readouterr().err


def test_multi_objective_pareto_front_and_apply(project, capsys):
    spec = write_spec(
        "pareto",
        objectives=["maximize val_acc", "minimize corruption_error"],
        robustness={"images": 24, "corruptions": ["gaussian_noise", "contrast"], "severity": 3},
        search_space={"dropout": SPACE["dropout"], "threshold": SPACE["threshold"]},
    )
    untracked = {**params(), "tracking": {**params()["tracking"], "enabled": False}}
    run_study(load_spec(spec), untracked, n_trials=4, workers=1)
    study = load_study_readonly("sqlite:///studies/pareto.db", "pareto")
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 4
    # resuming draws new points (the seed moves with the trial count), not a replay of trial 1
    run_study(load_spec(spec), untracked, n_trials=5, workers=1)
    study = load_study_readonly("sqlite:///studies/pareto.db", "pareto")
    assert len(study.trials) == 5 and study.trials[4].state == TrialState.COMPLETE
    assert study.trials[4].params not in [t.params for t in study.trials[:4]]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # tracking.enabled: false -> no MLflow parent run, no trial runs
    assert study.user_attrs["mlflow_parent_run_id"] == ""
    assert not any("mlflow_run_id" in t.user_attrs for t in study.trials)

    def dominated(a, b):  # b dominates a
        better = b.values[0] >= a.values[0] and b.values[1] <= a.values[1]
        return better and b.values != a.values

    front = {t.number for t in done if not any(dominated(t, o) for o in done)}
    assert {t.number for t in study.best_trials} == front
    for t in done:
        assert 0.0 <= t.values[1] <= 1.0 and len(t.intermediate_values) == 0
    capsys.readouterr()
    assert main(["study", "show", "pareto"]) == 0
    out = capsys.readouterr().out
    assert "maximize val_acc, minimize corruption_error" in out
    assert f"Pareto front ({len(front)} trial{'s' if len(front) > 1 else ''}):" in out
    # apply a Pareto trial other than the baseline (whose values equal params.yaml already)
    pick = min([t for t in study.best_trials if t.number > 0] or done[1:], key=lambda t: t.number)
    before = Path("params.yaml").read_text()
    Path("p2.yaml").write_text(before)
    assert (
        main(["study", "apply", "pareto", "--trial", str(pick.number), "--params", "p2.yaml"]) == 0
    )
    after = Path("p2.yaml").read_text()
    pairs = zip(before.splitlines(), after.splitlines(), strict=True)
    changed = [(a, b) for a, b in pairs if a != b]
    assert len(changed) == 2  # exactly the two search-space lines; comments and order intact
    assert {b.split(":")[0].strip() for _, b in changed} == {"threshold", "dropout"}
    for a, b in changed:  # the inline comment (if any) survives on the edited line
        assert a.partition("#")[2] == b.partition("#")[2]
    assert "  data_dir: null          # null: $NSP_DATA_DIR" in after
    p2 = yaml.safe_load(after)
    assert p2["student"]["pseudo"]["threshold"] == pick.params["threshold"]
    assert p2["student"]["noise"]["dropout"] == pick.params["dropout"]
    p2["student"]["pseudo"]["threshold"], p2["student"]["noise"]["dropout"] = 0.3, 0.1
    assert p2 == params()


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_workers_one_sigkilled_every_trial_accounted_for(project, storage):
    """`nsp study run --workers 2`; SIGKILL the worker of the first trial mid-trial.

    Its trial must become FAIL through the heartbeat and be retried by the surviving worker;
    every trial ends COMPLETE / PRUNED / FAIL and the baseline runs exactly once.
    """
    name = f"two_{storage}"
    url = f"sqlite:///studies/{name}.db" if storage == "sqlite" else f"journal:studies/{name}.log"
    spec = write_spec(
        name, storage=url, budget={"epochs": 3, "max_steps": 30, "unlabeled_subset": 150}
    )
    log = Path(f"{name}.out")
    with open(log, "w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "nsp.cli", "study", "run", str(spec), "--workers", "2",
             "--n-trials", "4"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        killed = victim = None
        deadline = time.time() + 120
        while killed is None and time.time() < deadline and run.poll() is None:
            time.sleep(0.2)
            try:
                study = load_study_readonly(url, name)
            except NSPError:
                continue
            for t in study.get_trials(deepcopy=False):
                if t.state == TrialState.RUNNING and t.intermediate_values:
                    victim, killed = t.user_attrs["worker_pid"], t.number
                    os.kill(victim, signal.SIGKILL)
                    break
        assert killed is not None, "no worker was caught mid-trial"
        rc = run.wait(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)  # the runner and any worker it left behind
        run.wait()
    text = log.read_text()
    assert rc == 1 and "1 worker(s) exited with codes [-9]" in text, text[-2000:]
    study = load_study_readonly(url, name)
    trials = study.get_trials(deepcopy=False)
    c = tally(trials)
    assert c["COMPLETE"] + c["PRUNED"] + c["FAIL"] == len(trials)  # none lost / left running
    assert c["RUNNING"] == 0 and c["WAITING"] == 0 and c["done"] == 4
    assert trials[killed].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == trials[killed].params
    assert retry[0].user_attrs["worker_pid"] not in (victim, run.pid)  # the other worker did it
    assert trials[0].params == baseline_values()  # the params.yaml baseline ran first ...
    fixed = [t for t in trials if "fixed_params" in t.system_attrs and t.number != retry[0].number]
    assert len(fixed) == 1  # ... and was enqueued only once
    check_mlflow(study)
    assert f"[study] trial {killed} lost its worker (no heartbeat); marked FAIL, re-queued" in text
    assert f"study {name} ({url}): maximize val_acc" in text
    assert f"trials: {len(trials)} (COMPLETE {c['COMPLETE']}, PRUNED 0, FAIL 1, RUNNING 0" in text


def test_a_lock_left_by_a_killed_journal_worker_can_be_broken(tmp_path, monkeypatch):
    """Optuna's journal lock is a symlink to the journal file; after a holder is SIGKILLed, the other
    workers stat the link to time its grace period out. With a relative journal path the link's
    target resolved against the link's folder, stat failed and they spun forever (seen under load)."""
    from nsp.study.storage import make_storage

    monkeypatch.chdir(tmp_path)
    storage = make_storage("journal:studies/locks.log")
    optuna.create_study(storage=storage, study_name="locks")
    journal = tmp_path / "studies" / "locks.log"
    lock = Path(str(journal) + ".lock")
    lock_obj = storage._backend._lock  # what a killed holder leaves behind: its symlink
    assert lock_obj.acquire()
    assert lock.is_symlink() and os.stat(lock).st_mtime == os.stat(journal).st_mtime
    lock_obj.release()
    assert not lock.exists()


def test_versus_trial0_worked_example():
    """Combined s.e. of 0.01 and 0.01 is 0.01414: +0.02 is beyond it, +0.01 within."""
    from nsp.study.results import versus_trial0

    t0 = {"val_acc": 0.78, "val_acc_se": 0.01}
    assert (
        versus_trial0({"val_acc": 0.80, "val_acc_se": 0.01}, t0, "val_acc", "maximize") == "better"
    )
    assert (
        versus_trial0({"val_acc": 0.80, "val_acc_se": 0.01}, t0, "val_acc", "minimize") == "worse"
    )
    assert versus_trial0({"val_acc": 0.79, "val_acc_se": 0.01}, t0, "val_acc", "maximize") == "~"
    assert versus_trial0({"val_acc": 0.90, "val_acc_se": None}, t0, "val_acc", "maximize") == "-"


def test_repeats_mean_se_and_show_marks(project, capsys):
    """repeats: 2 -> every trial trains two students (seeds s and s + 1000); objective = their mean,
    s.e. = |a - b| / 2 in the user attrs and MLflow; `nsp study show` marks trials against trial 0."""
    import math

    from nsp.study.results import versus_trial0
    from nsp.tracking.studies import trial_runs

    with pytest.raises(NSPError, match="repeats must be an integer >= 1"):
        parse_spec({**yaml.safe_load(write_spec("bad").read_text()), "repeats": 0})
    spec = write_spec(
        "rep",
        repeats=2,
        n_trials=3,
        search_space={"dropout": SPACE["dropout"]},
        budget={"epochs": 2, "max_steps": 8, "unlabeled_subset": 150},
    )
    counts = run_study(load_spec(spec), params(), n_trials=3, workers=1)
    assert counts["COMPLETE"] == 3
    study = load_study_readonly("sqlite:///studies/rep.db", "rep")
    trials = study.get_trials(deepcopy=False)
    assert trials[0].params["dropout"] == baseline_values()["dropout"]  # trial 0 = params.yaml
    runs = {
        r.info.run_id: r
        for r in trial_runs(params(), parent_run_id=study.user_attrs["mlflow_parent_run_id"])
    }
    for t in trials:
        a, b = t.user_attrs["val_acc_values"]
        assert t.user_attrs["repeats"] == 2
        assert t.values[0] == pytest.approx((a + b) / 2)
        assert t.user_attrs["val_acc_se"] == pytest.approx(abs(a - b) / 2)
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.data.metrics["final_val_acc_se"] == pytest.approx(t.user_attrs["val_acc_se"])
        assert run.data.metrics["final_val_acc"] == pytest.approx(t.values[0])
    # the two seeds train different students: the repeats differ in at least one trial
    assert any(len(set(t.user_attrs["val_acc_values"])) == 2 for t in trials)
    capsys.readouterr()
    assert main(["study", "show", "rep"]) == 0
    out = capsys.readouterr().out
    assert "val_acc vs t0" in out and "mean+-s.e." in out
    for t in trials:
        row = next(
            line for line in out.splitlines() if line.split()[:2] == [str(t.number), "COMPLETE"]
        )
        se = t.user_attrs["val_acc_se"]
        assert row.split()[2] == f"{t.values[0]:.4f}+-{se:.4f}"
        view = {"val_acc": t.values[0], "val_acc_se": se}
        t0 = {"val_acc": trials[0].values[0], "val_acc_se": trials[0].user_attrs["val_acc_se"]}
        mark = "trial" if t.number == 0 else versus_trial0(view, t0, "val_acc", "maximize")
        assert row.split()[4] == mark
        if t.number:
            beyond = abs(t.values[0] - t0["val_acc"]) > math.hypot(se, t0["val_acc_se"])
            assert (mark in ("better", "worse")) == beyond
    # the Studies page shows the same s.e. and marks
    from streamlit.testing.v1 import AppTest

    os.environ["NSP_PROJECT_ROOT"] = str(project)
    try:
        at = AppTest.from_file(str(REPO / "app/pages/6_Studies.py"), default_timeout=120).run()
        rep = next(
            o for o in at.selectbox(key="study_pick_storage").options if o.endswith("rep.db")
        )
        at.selectbox(key="study_pick_storage").set_value(rep).run()
    finally:
        del os.environ["NSP_PROJECT_ROOT"]
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value.set_index("trial")
    for t in trials:
        assert table.loc[t.number, "val_acc se"] == pytest.approx(t.user_attrs["val_acc_se"])
        row = next(
            line for line in out.splitlines() if line.split()[:2] == [str(t.number), "COMPLETE"]
        )
        mark = "trial 0" if t.number == 0 else row.split()[4]
        assert table.loc[t.number, "val_acc vs trial 0"] == mark
