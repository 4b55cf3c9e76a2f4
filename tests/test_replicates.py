"""Replicates and their statistics: worked examples for nsp.stats, the seed derivation, and a real
2-replicate run of a small tiny profile through `nsp replicates run` (DVC + MLflow), killed in
replicate 1 and resumed, then `nsp report --replicates` checked against the per-replicate metrics."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nsp import stats
from nsp.replicates import SEED_STRIDE, config_hash, offset_seeds, stage_seeds
from tests.pipeline_helpers import TINY_PARAMS, env_for, make_project, run

# ------------------------------------------------------------------------------ statistics


def test_describe_worked_example():
    """[1, 2, 4]: mean 7/3, s.d. sqrt(7/3) = 1.5275, CI 7/3 -+ t(0.975, 2) * s.d. / sqrt(3),
    t(0.975, 2) = 4.302653 (tables) -> [-1.4612, 6.1279]."""
    d = stats.describe([1.0, 2.0, 4.0])
    assert d["n"] == 3 and d["mean"] == pytest.approx(7 / 3)
    assert d["sd"] == pytest.approx(math.sqrt(7 / 3))
    half = 4.302653 * math.sqrt(7 / 3) / math.sqrt(3)
    assert d["ci95"] == pytest.approx([7 / 3 - half, 7 / 3 + half], abs=1e-5)
    assert stats.describe([0.5]) == {"mean": 0.5, "sd": None, "ci95": None, "n": 1}
    assert stats.describe([None, None])["n"] == 0


def test_paired_t_by_hand():
    """a = [0.80, 0.82, 0.85], b = [0.78, 0.81, 0.80]: d = [0.02, 0.01, 0.05], mean 0.02667,
    s.d. 0.020817, s.e. 0.012019, t = 2.2188 with 2 df; two-sided p = 0.1567 (t tables:
    p(|T_2| > 2.2188) = 0.15669); CI 0.02667 -+ 4.302653 * 0.012019 = [-0.02505, 0.07838]."""
    r = stats.paired([0.80, 0.82, 0.85], [0.78, 0.81, 0.80])
    assert r["n"] == 3 and r["diff"] == pytest.approx(0.0266667, abs=1e-6)
    assert r["sd"] == pytest.approx(0.0208167, abs=1e-6)
    assert r["p"] == pytest.approx(0.15669, abs=2e-4)
    assert r["ci95"] == pytest.approx([-0.02505, 0.07838], abs=1e-4)
    assert not r["zero_variance"]


def test_welch_by_hand():
    """a = [1, 2, 3], b = [4, 6, 8]: diff -4, var a 1, var b 4, s.e. sqrt(1/3 + 4/3) = 1.29099,
    t = -3.09839; Welch df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17 = 2.94118; CI -4 -+
    t(0.975, 50/17) * 1.29099."""
    from scipy import stats as st

    r = stats.welch([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])
    assert r["diff"] == pytest.approx(-4.0) and r["df"] == pytest.approx(50 / 17)
    se = math.sqrt(5 / 3)
    assert r["p"] == pytest.approx(2 * st.t.sf(4 / se, 50 / 17))
    half = st.t.ppf(0.975, 50 / 17) * se
    assert r["ci95"] == pytest.approx([-4 - half, -4 + half])
    assert (r["n_a"], r["n_b"]) == (3, 3)
    assert stats.welch([1.0], [2.0, 3.0])["p"] is None  # one run of A: not tested
    flat = stats.welch([0.5, 0.5], [0.4, 0.4])
    assert flat["zero_variance"] and flat["p"] == 0.0 and flat["ci95"] == pytest.approx([0.1, 0.1])


def test_compare_two_configurations():
    """Two replicate summaries (A: 3 replicates, B: 2): per model Welch on the values, and the
    final student's per-replicate gain over the baseline compared between the sets."""
    from nsp.replicate_report import compare_summaries, format_comparison, param_differences

    def summary(g2: list[float], base: list[float], h: str) -> dict:
        col = lambda v: {"test_acc": {"values": v}}  # noqa: E731
        return {"config_hash": h, "set_dir": f"replicates/{h}", "replicates": list(range(len(g2))),
                "models": {"g2": col(g2), "baseline": col(base)},
                "comparisons": {"g2 vs baseline": {"test_acc": {}}}}  # fmt: skip

    a = summary([0.86, 0.87, 0.88], [0.84, 0.84, 0.85], "aaa")
    b = summary([0.85, 0.86], [0.85, 0.86], "bbb")
    c = compare_summaries(a, b)
    g2 = c["models"]["g2"]["test_acc"]
    assert g2["diff"] == pytest.approx(0.87 - 0.855) and g2["n_a"] == 3 and g2["n_b"] == 2
    assert g2["p"] == pytest.approx(stats.welch([0.86, 0.87, 0.88], [0.85, 0.86])["p"])
    gain = c["gains"]["g2 vs baseline"]["test_acc"]  # A: +0.02, +0.03, +0.03; B: 0, 0
    assert gain["diff"] == pytest.approx(0.08 / 3) and gain["verdict"] in ("won", "tied")
    assert gain["p"] == pytest.approx(stats.welch([0.02, 0.03, 0.03], [0.0, 0.0])["p"])
    text = format_comparison(c, {"student.noise.recipe": ["official", "nsp"]})
    assert "+1.50" in text and "student.noise.recipe: A 'official', B 'nsp'" in text
    diff = param_differences(
        {"student": {"noise": {"recipe": "official"}, "lr": 0.1}, "tracking": {"uri": "x"}},
        {"student": {"noise": {"recipe": "nsp"}, "lr": 0.1}, "tracking": {"uri": "y"}},
    )
    assert diff == {"student.noise.recipe": ["official", "nsp"]}


def test_holm_on_known_pvalues():
    """p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005 = 0.02,
    3*0.01 = 0.03, 2*0.03 = 0.06, max(1*0.04, 0.06) = 0.06 (monotone); None stays None."""
    adj = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": None})
    assert adj == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02, "e": None})
    assert stats.holm({"x": 0.6, "y": 0.5}) == pytest.approx({"x": 1.0, "y": 1.0})  # capped at 1


def test_zero_variance_columns_and_direction_aware_verdicts():
    # the baseline normalises mCE: 1.0 in every replicate -> s.d. 0, CI [1, 1]
    assert stats.describe([1.0, 1.0, 1.0]) == {"mean": 1.0, "sd": 0.0, "ci95": [1.0, 1.0], "n": 3}
    same = stats.paired([0.9, 0.9], [0.9, 0.9])
    assert same["zero_variance"] and same["p"] == 1.0 and same["ci95"] == [0.0, 0.0]
    const = stats.paired([0.92, 0.95], [0.90, 0.93])  # the same +0.02 in both replicates
    assert const["zero_variance"] and const["p"] == 0.0
    assert const["ci95"] == pytest.approx([0.02, 0.02])
    a = {"test_acc": [0.86, 0.87, 0.88], "mce": [0.90, 0.91, 0.92], "mfr": [1.10, 1.12, 1.14]}
    b = {"test_acc": [0.84, 0.85, 0.86], "mce": [1.0, 1.0, 1.0], "mfr": [1.0, 1.0, 1.0]}
    out = stats.compare_columns(a, b)
    # test_acc: +0.02 in every replicate (zero variance, p 0); mce: d = -0.10, -0.09, -0.08,
    # t = -0.09 / (0.01 / sqrt 3) = -15.59, p = 0.0041; mfr: d = 0.10, 0.12, 0.14, t = 10.39, p = 0.0091
    assert out["test_acc"]["verdict"] == "won" and out["test_acc"]["better"] == "higher"
    assert out["mce"]["diff"] == pytest.approx(-0.09) and out["mce"]["verdict"] == "won"
    assert out["mfr"]["diff"] == pytest.approx(0.12) and out["mfr"]["verdict"] == "lost"
    assert out["mce"]["p"] == pytest.approx(0.0041, abs=1e-4)
    assert out["mfr"]["p"] == pytest.approx(0.0091, abs=1e-4)
    # Holm over 3 columns: sorted 0, 0.0041, 0.0091 -> 0, 2 * 0.0041, max(0.0091, 0.0082)
    assert out["mce"]["p_holm"] == pytest.approx(2 * out["mce"]["p"])
    assert out["mfr"]["p_holm"] == pytest.approx(out["mfr"]["p"])
    tie = stats.compare_columns({"a_acc": [0.3, 0.35, 0.31]}, {"a_acc": [0.32, 0.30, 0.33]})
    assert tie["a_acc"]["verdict"] == "tied" and tie["a_acc"]["p_holm"] > 0.05
    one = stats.compare_columns({"test_acc": [0.9]}, {"test_acc": [0.8]})
    assert one["test_acc"]["verdict"] == "untested" and one["test_acc"]["p"] is None


# -------------------------------------------------------------------------------- seeds


def test_seed_derivation_replicate0_is_the_plain_run_and_every_stage_changes():
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert offset_seeds(params, offset=0) == params
    seeds = [stage_seeds(offset_seeds(params, offset=k * SEED_STRIDE)) for k in range(3)]
    assert seeds[0] == stage_seeds(params)
    for stage in seeds[0]:
        values = [s[stage] for s in seeds]
        if stage == "prepare":  # the split stays unless --vary-data
            assert len(set(values)) == 1
        else:
            assert len(set(values)) == 3, (stage, values)
    varied = stage_seeds(offset_seeds(params, offset=SEED_STRIDE, vary_data=True))
    assert varied["prepare"] == seeds[0]["prepare"] + SEED_STRIDE
    # seeds left to their defaults (no robustness.seed, no pseudo seed) are offset too
    bare = copy.deepcopy(params)
    del bare["robustness"]["seed"], bare["student"]["pseudo"]["seed"]
    r1 = stage_seeds(offset_seeds(bare, offset=SEED_STRIDE))
    assert r1["robustness"] == SEED_STRIDE and r1["pseudo_label@g1"] == SEED_STRIDE
    assert config_hash(params) != config_hash(params, vary_data=True)
    other = {**params, "tracking": {"enabled": False}}
    assert config_hash(other) == config_hash(params)  # tracking does not name a configuration


# ------------------------------------------------------------- a real replicate run (fast)


def _teacher_only_project(root: Path) -> None:
    """This project's dvc.yaml cut to its first two stages (prepare, teacher), unchanged otherwise."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    keep = {k: stages[k] for k in ("prepare", "teacher")}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": keep}, sort_keys=False))


def test_two_replicates_of_prepare_and_teacher(tmp_path, learnable_idx_dir):
    """`nsp replicates run --r 2` through real DVC + MLflow on the first two stages (the full chain,
    killed and resumed, is the slow test below): distinct teacher seeds, one MLflow parent with two
    tagged pipeline runs, a rerun that skips both, and report means = mean of the replicates."""
    from mlflow import MlflowClient

    params = copy.deepcopy(SMALL)
    params["teacher"]["epochs"] = 3
    root = make_project(tmp_path / "proj", params)
    _teacher_only_project(root)
    env = {**env_for(root, learnable_idx_dir), "PYTHONPATH": str(root)}
    out = run(_nsp("replicates", "run", "--r", "2"), root, env).stdout
    assert "r0 (1/2) stage teacher" in out and "r1 (2/2) stage teacher" in out
    again = run(_nsp("replicates", "run", "--r", "2"), root, env).stdout
    assert "r0 (1/2) done earlier: skipped" in again and "r1 (2/2) done earlier: skipped" in again
    assert "stage teacher" not in again
    sdir = root / "replicates" / config_hash(params)
    cfgs = [
        json.loads((sdir / f"r{k}/outputs/models/teacher/config.json").read_text()) for k in (0, 1)
    ]
    assert [c["config"]["seed"] for c in cfgs] == [0, SEED_STRIDE]
    acc = [
        json.loads((sdir / f"r{k}/outputs/models/teacher/metrics.json").read_text())["test_acc"]
        for k in (0, 1)
    ]
    c = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    record = json.loads((sdir / "set.json").read_text())
    exp = c.get_experiment_by_name("nsp-tiny")
    kids = c.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{record['parent_run_id']}'"
    )
    assert sorted(r.data.tags["nsp.replicate"] for r in kids) == ["0", "1"]
    assert {r.data.tags["nsp.config_hash"] for r in kids} == {sdir.name}
    for r in kids:
        (t,) = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{r.info.run_id}'")
        k = int(r.data.tags["nsp.replicate"])
        assert t.data.tags["nsp.stage"] == "teacher" and t.data.metrics["test_acc"] == acc[k]
    rep = json.loads(run(_nsp("report", "--replicates", "--json"), root, env).stdout)
    e = rep["models"]["teacher"]["test_acc"]
    assert e["n"] == 2 and e["mean"] == pytest.approx(sum(acc) / 2) and e["values"] == acc
    assert rep["comparisons"] == {}


def test_parallel_workers_share_one_set(tmp_path, learnable_idx_dir):
    """`--only`: two workers started together on a fresh set (r0 and r1 of --r 2) open ONE MLflow
    parent and both land in set.json; a later `--only 2` of --r 3 adds r2 alone and, the set then
    complete, closes the parent FINISHED; an index outside 0..R-1 is one line, exit 2."""
    from mlflow import MlflowClient

    params = copy.deepcopy(SMALL)
    params["teacher"]["epochs"] = 2
    root = make_project(tmp_path / "proj", params)
    _teacher_only_project(root)
    env = {**env_for(root, learnable_idx_dir), "PYTHONPATH": str(root)}
    workers = [
        subprocess.Popen(
            _nsp("replicates", "run", "--r", "2", "--only", str(k)),
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for k in (0, 1)
    ]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    assert "r0 (1/2) stage teacher" in outs[0] and "r1 (" not in outs[0]
    assert "r1 (2/2) stage teacher" in outs[1] and "r0 (1/2)" not in outs[1]
    sdir = root / "replicates" / config_hash(params)
    record = json.loads((sdir / "set.json").read_text())
    assert sorted(record["replicates"]) == ["0", "1"] and record["count"] == 2
    c = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = c.get_experiment_by_name("nsp-tiny")
    parents = c.search_runs([exp.experiment_id], "tags.`nsp.kind` = 'replicates'")
    assert [p.info.run_id for p in parents] == [record["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"

    third = run(_nsp("replicates", "run", "--r", "3", "--only", "2"), root, env).stdout
    assert "r2 (3/3) stage teacher" in third and "r0 (" not in third and "r1 (" not in third
    record = json.loads((sdir / "set.json").read_text())
    assert sorted(record["replicates"]) == ["0", "1", "2"] and record["count"] == 3
    kids = c.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{record['parent_run_id']}'"
    )
    assert sorted(r.data.tags["nsp.replicate"] for r in kids) == ["0", "1", "2"]
    assert c.get_run(record["parent_run_id"]).info.status == "FINISHED"
    seeds = [
        json.loads((sdir / f"r{k}/outputs/models/teacher/config.json").read_text())["config"][
            "seed"
        ]
        for k in range(3)
    ]
    assert seeds == [0, SEED_STRIDE, 2 * SEED_STRIDE]

    bad = run(_nsp("replicates", "run", "--r", "3", "--only", "3"), root, env, check=False)
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith("--only 3: replicate indices run from 0 to --r - 1 = 2")
    )


# ------------------------------------------------------- the whole chain, killed and resumed

SMALL = copy.deepcopy(TINY_PARAMS)
SMALL["robustness"].update({"c_images": 20, "p_images": 10})


def _nsp(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "nsp"), *args]


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, learnable_idx_dir) -> dict:
    """`nsp replicates run --r 2`, SIGKILLed (whole process group) once replicate 1 has started its
    first student, then the same command again to resume."""
    root = make_project(tmp_path_factory.mktemp("replicates") / "proj", SMALL)
    env = env_for(root, learnable_idx_dir)
    env["PYTHONPATH"] = str(root)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        _nsp("replicates", "run", "--r", "2"), cwd=root, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    first, killed = [], False
    assert proc.stdout is not None
    for line in proc.stdout:
        first.append(line)
        if "r1 (2/2) stage student@g1" in line:
            time.sleep(3)  # inside the student's training
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.wait(timeout=60)
    assert killed, "".join(first)[-3000:]
    killed_at = time.perf_counter() - t0
    second = run(_nsp("replicates", "run", "--r", "2"), root, env, timeout=1200)
    return {
        "root": root,
        "env": env,
        "first": "".join(first),
        "second": second.stdout,
        "killed_at": killed_at,
        "seconds": time.perf_counter() - t0,
    }


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the module fixture runs the whole chain twice
def test_replicates_resume_after_kill(replicated):
    first, second = replicated["first"], replicated["second"]
    assert "r0 (1/2) stage teacher" in first and "r1 (2/2) stage teacher" in first
    assert "r0 (1/2) done earlier: skipped" in second
    assert "r0 (1/2) stage" not in second  # nothing of replicate 0 ran again
    assert "r1 (2/2) stage teacher" not in second  # finished stages of replicate 1 neither
    assert "r1 (2/2) stage student@g1" in second and "r1 (2/2) finished" in second


def _sets(root: Path) -> list[Path]:
    return sorted((root / "replicates").iterdir())


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the module fixture runs the whole chain twice
def test_replicates_have_distinct_seeds_and_replicate0_is_the_configuration(replicated):
    root = replicated["root"]
    (sdir,) = _sets(root)
    assert sdir.name == config_hash(SMALL)
    cfg = {
        k: {
            m: json.loads((sdir / f"r{k}/outputs/models/{m}/config.json").read_text())["config"]
            for m in ("teacher", "g1", "g2", "baseline")
        }
        for k in (0, 1)
    }
    assert [cfg[0][m]["seed"] for m in ("teacher", "g1", "g2", "baseline")] == [0, 1, 2, 4]
    assert [cfg[1][m]["seed"] for m in ("teacher", "g1", "g2", "baseline")] == [
        1000,
        1001,
        1002,
        1004,
    ]
    sets = [
        json.loads((sdir / f"r{k}/outputs/robustness/sets/summary.json").read_text())
        for k in (0, 1)
    ]
    assert sets[0]["seed"] == 0 and sets[1]["seed"] == 1000
    p0 = yaml.safe_load((sdir / "r0/params.yaml").read_text())
    strip = ("tracking", "replicate")
    assert {k: v for k, v in p0.items() if k not in strip} == {
        k: v for k, v in SMALL.items() if k not in strip
    }
    done = [json.loads((sdir / f"r{k}/done.json").read_text()) for k in (0, 1)]
    for stage, seed in done[0]["seeds"].items():
        assert (done[1]["seeds"][stage] == seed) == (stage == "prepare"), stage
    t0 = json.loads((sdir / "r0/outputs/models/teacher/metrics.json").read_text())["test_acc"]
    t1 = json.loads((sdir / "r1/outputs/models/teacher/metrics.json").read_text())["test_acc"]
    assert 0.3 < t0 <= 1 and 0.3 < t1 <= 1  # 10 classes: chance is 0.1


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the module fixture runs the whole chain twice
def test_replicates_grouped_in_mlflow(replicated):
    from mlflow import MlflowClient

    root = replicated["root"]
    (sdir,) = _sets(root)
    record = json.loads((sdir / "set.json").read_text())
    c = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = c.get_experiment_by_name("nsp-tiny")
    parent = c.get_run(record["parent_run_id"])
    assert parent.data.tags["nsp.kind"] == "replicates" and parent.info.status == "FINISHED"
    assert parent.data.tags["nsp.config_hash"] == sdir.name
    kids = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    pipes = sorted(kids, key=lambda r: r.data.tags["nsp.replicate"])
    assert [r.data.tags["nsp.replicate"] for r in pipes] == ["0", "1"]
    assert all(r.data.tags["nsp.kind"] == "pipeline" for r in pipes)
    assert all(r.data.tags["nsp.config_hash"] == sdir.name for r in pipes)
    for k, pipe in enumerate(pipes):
        run_file = json.loads((sdir / f"r{k}/outputs/pipeline_run.json").read_text())
        assert run_file["run_id"] == pipe.info.run_id
        stages = c.search_runs(
            [exp.experiment_id], f"tags.mlflow.parentRunId = '{pipe.info.run_id}'"
        )
        names = [s.data.tags["nsp.stage"] for s in stages]
        assert names.count("teacher") == 1  # resumed, not redone
        want = {"teacher", "pseudo_label@g1", "student@g1", "student@g2", "baseline"}
        assert want <= set(names)
        teacher = next(s for s in stages if s.data.tags["nsp.stage"] == "teacher")
        assert teacher.data.params["seed"] == str(k * SEED_STRIDE)
    versions = c.search_model_versions("name = 'nsp-tiny'")
    assert versions == []  # replicates leave the registry alone


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the module fixture runs the whole chain twice
def test_report_replicates_means_equal_per_replicate_metrics(replicated):
    root, env = replicated["root"], replicated["env"]
    (sdir,) = _sets(root)
    out = json.loads(run(_nsp("report", "--replicates", "--json"), root, env).stdout)
    assert out == json.loads((root / "outputs/replicates.json").read_text())
    assert out["replicates"] == [0, 1] and out["config_hash"] == sdir.name
    for model in ("teacher", "g1", "g2", "baseline"):
        per = [
            json.loads((sdir / f"r{k}/outputs/models/{model}/metrics.json").read_text())
            for k in (0, 1)
        ]
        e = out["models"][model]["test_acc"]
        assert e["n"] == 2 and e["values"] == [per[0]["test_acc"], per[1]["test_acc"]]
        assert e["mean"] == pytest.approx((per[0]["test_acc"] + per[1]["test_acc"]) / 2)
        rob = [
            json.loads((sdir / f"r{k}/outputs/robustness/{model}.metrics.json").read_text())
            for k in (0, 1)
        ]
        assert out["models"][model]["a_acc"]["mean"] == pytest.approx(
            (rob[0]["a_acc"] + rob[1]["a_acc"]) / 2
        )
    base_mce = out["models"]["baseline"]["mce"]
    assert base_mce["mean"] == 1.0 and base_mce["sd"] == 0.0  # normalised by itself: zero variance
    assert set(out["comparisons"]) == {"g2 vs baseline", "g1 vs teacher", "g2 vs g1"}
    cmp = out["comparisons"]["g2 vs baseline"]
    diffs = [
        json.loads((sdir / f"r{k}/outputs/models/g2/metrics.json").read_text())["test_acc"]
        - json.loads((sdir / f"r{k}/outputs/models/baseline/metrics.json").read_text())["test_acc"]
        for k in (0, 1)
    ]
    assert cmp["test_acc"]["diff"] == pytest.approx(sum(diffs) / 2)
    for comp in out["comparisons"].values():
        for col in comp.values():  # a column missing in a replicate (rel. mCE undefined) is n = 1
            if col["n"] < 2:
                assert col["verdict"] == "untested" and col["p"] is None is col["p_holm"]
            else:
                assert col["verdict"] in ("won", "tied", "lost") and col["p_holm"] >= col["p"]
    text = run(_nsp("report", "--replicates"), root, env).stdout
    assert "2 finished of 2 planned" in text and "g2 vs baseline" in text
    assert (
        run(
            _nsp("report", "--replicates", "--params", "missing.yaml"), root, env, check=False
        ).returncode
        == 2
    )


# ----------------------------------------------------------------------------------- dashboard


def _generations(root: Path, uri: str, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("NSP_PROJECT_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    page = Path(__file__).resolve().parents[1] / "app" / "pages" / "1_Generations.py"
    at = AppTest.from_file(str(page), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _array(v):
    """A plotly JSON array: a list, or the typed form {dtype, bdata (base64)}."""
    import base64

    import numpy as np

    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


def _figure(at, key: str) -> dict:
    for chart in at.get("plotly_chart"):
        if key in (chart.proto.id or ""):
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no chart {key}")


@pytest.mark.slow
def test_compare_command_on_a_real_set(replicated, tmp_path):
    """`nsp replicates compare A A`: the CLI over real set folders; a set against itself differs
    by 0 in every column (Welch p 1, tied) and lists no differing params."""
    root, env = replicated["root"], replicated["env"]
    (sdir,) = _sets(root)
    out = tmp_path / "cmp.json"
    p = run(_nsp("replicates", "compare", str(sdir), str(sdir), "--out", str(out)), root, env)
    assert "Welch t" in p.stdout and "g2" in p.stdout
    comp = json.loads(out.read_text())
    assert comp["params_differ"] == {} and comp["a"]["replicates"] == [0, 1]
    acc = comp["models"]["g2"]["test_acc"]
    assert acc["diff"] == 0.0 and acc["p"] == pytest.approx(1.0) and acc["verdict"] == "tied"
    assert comp["gains"]["g2 vs baseline"]["test_acc"]["diff"] == pytest.approx(0.0)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the module fixture runs the whole chain twice
def test_generations_page_error_bars_points_and_verdicts(replicated, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    root, env = replicated["root"], replicated["env"]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # a project without replicates: the page says plainly that it has no error bars
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text())
    single = _generations(tmp_path, uri, monkeypatch)
    assert any("Single run: no error bars" in i.value for i in single.info)
    assert not [c for c in single.get("plotly_chart") if "replicate_" in (c.proto.id or "")]

    run(_nsp("report", "--replicates"), root, env)
    summary = json.loads((root / "outputs/replicates.json").read_text())
    at = _generations(root, uri, monkeypatch)
    assert not any("Single run" in i.value for i in at.info) and not at.warning
    changed = (
        tmp_path / "changed"
    )  # params.yaml edited since: the page says whose replicates these are
    changed.mkdir()
    (changed / "outputs").mkdir()
    (changed / "outputs/replicates.json").write_text((root / "outputs/replicates.json").read_text())
    (changed / "params.yaml").write_text(
        yaml.safe_dump({**SMALL, "teacher": {**SMALL["teacher"], "epochs": 31}})
    )
    stale = _generations(changed, uri, monkeypatch)
    assert any(
        f"replicates are of config {summary['config_hash']}" in w.value for w in stale.warning
    )
    verdicts = next(d.value for d in at.dataframe if "comparison" in d.value.columns)
    assert list(verdicts["comparison"]) == list(summary["comparisons"])
    row = verdicts.set_index("comparison").loc["g2 vs baseline"]
    for col, e in summary["comparisons"]["g2 vs baseline"].items():
        assert row[col].startswith(e["verdict"] + " ("), (col, row[col])
    fig = _figure(at, "replicate_test_acc")
    assert len(fig["data"]) == 1  # means only until the points are asked for
    bars = fig["data"][0]
    models = list(summary["models"])
    assert list(bars["x"]) == models
    for i, m in enumerate(models):
        e = summary["models"][m]["test_acc"]
        assert _array(bars["y"])[i] == pytest.approx(e["mean"])
        assert _array(bars["error_y"]["array"])[i] == pytest.approx(e["ci95"][1] - e["mean"])
        assert _array(bars["error_y"]["arrayminus"])[i] == pytest.approx(e["mean"] - e["ci95"][0])
    at.checkbox(key="replicate_points").check().run()
    fig = _figure(at, "replicate_test_acc")
    pts = fig["data"][1]
    want = [(m, v) for m in models for v in summary["models"][m]["test_acc"]["values"]]
    assert list(pts["x"]) == [m for m, _ in want]
    assert list(_array(pts["y"])) == pytest.approx([v for _, v in want])


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_replicate0_is_byte_identical_to_the_plain_run(replicated):
    """Replicate 0 is the `make run` configuration: a plain `dvc repro` of the same params.yaml in the
    project itself writes byte-identical checkpoints (and the project's DVC ignores replicates/)."""
    root, env = replicated["root"], replicated["env"]
    (sdir,) = _sets(root)
    run(["dvc", "repro"], root, env, timeout=1200)
    for model in ("teacher", "g1", "g2", "baseline"):
        plain = json.loads((root / f"outputs/models/{model}/metrics.json").read_text())
        rep = json.loads((sdir / f"r0/outputs/models/{model}/metrics.json").read_text())
        assert plain["checkpoint_sha256"] == rep["checkpoint_sha256"], model
    teacher = json.loads((root / "outputs/models/teacher/metrics.json").read_text())
    r1 = json.loads((sdir / "r1/outputs/models/teacher/metrics.json").read_text())
    assert r1["checkpoint_sha256"] != teacher["checkpoint_sha256"]  # another seed, another model
