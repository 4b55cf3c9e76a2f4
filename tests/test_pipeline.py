"""End-to-end: the real `dvc repro` of a tiny profile in a temporary git repo."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from nsp.replicate_report import flat_params
from tests.pipeline_helpers import REPO, TINY_PARAMS, run

# what shrinking may change; every other key of params.yaml keeps the default's value in the tiny profile
SIZE_KEYS = {
    "prepare.labeled_per_class", "prepare.val_per_class", "prepare.a_pool_per_class",
    "tracking.experiment", "tracking.registered_model",
    *(f"{s}.{k}" for s in ("teacher", "student", "baseline")
      for k in ("epochs", "warmup_epochs", "batch_size", "ema_decay", "noise.ra_num_ops",
                "noise.ra_magnitude")),
    "student.pseudo.per_class", "baseline.arch", "baseline.match",
    "robustness.c_images", "robustness.p_images",
    *(f"robustness.a_reference.{k}" for k in ("epochs", "warmup_epochs", "batch_size", "ema_decay",
                                               "seed")),
    "evaluate.models", "evaluate.batch_size", "evaluate.calib_bins",
}  # fmt: skip


def test_the_tiny_profile_is_the_default_shrunk():
    """Tests run the default recipe: the tiny profile sets every key params.yaml sets, and all but
    the size keys (and the dropped generations) keep the default's values."""
    default, tiny = (
        flat_params(yaml.safe_load((REPO / "params.yaml").read_text())),
        flat_params(TINY_PARAMS),
    )
    gens = [k for k in default if k.startswith("generations.")]
    assert set(tiny) == set(default) - {k for k in gens if k not in tiny}
    assert {k for k in tiny if k.startswith("generations.")} == {
        k for k in gens if k.split(".")[1] in TINY_PARAMS["generations"]
    }
    changed = {k for k in tiny if tiny[k] != default[k]}
    assert changed <= SIZE_KEYS, changed - SIZE_KEYS
    assert tiny["student.init_from_teacher"] is True and tiny["teacher.precision"] == "auto"
    # g2 is grown from g1 (a deeper arch), as in the default chain
    assert TINY_PARAMS["generations"]["g2"]["arch"] != TINY_PARAMS["generations"]["g1"]["arch"]


def test_repro_writes_every_output(tiny_pipeline):
    root = tiny_pipeline["root"]
    test_counts = np.bincount(np.load(root / "data/prepared/test_y.npy"), minlength=10)
    assert test_counts.sum() == 200  # the learnable test split: 20 per class
    for name in ("teacher", "g1", "g2", "baseline"):
        d = root / "outputs/models" / name
        for f in ("model.pt", "metrics.json", "history.csv", "config.json", "confusion.json"):
            assert (d / f).exists(), d / f
        hist = pd.read_csv(d / "history.csv")
        assert list(hist["epoch"]) == list(range(1, len(hist) + 1))
        # each confusion row sums to that class's test count; the diagonal is the test accuracy
        conf = json.loads((d / "confusion.json").read_text())
        matrix = np.asarray(conf["matrix"])
        assert matrix.sum(axis=1).tolist() == test_counts.tolist() and len(conf["labels"]) == 10
        acc = json.loads((d / "metrics.json").read_text())["test_acc"]
        assert np.trace(matrix) / matrix.sum() == pytest.approx(acc)
    for gen in ("g1", "g2"):
        assert (root / "outputs/pseudo" / gen / "stats.json").exists()
        assert list((root / "outputs/pseudo" / gen).glob("shard-*.parquet"))
    assert (root / "dvc.lock").exists()


def test_pseudo_label_stats_are_consistent(tiny_pipeline):
    root = tiny_pipeline["root"]
    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    n_unl = manifest["splits"]["unlabeled"]["count"]
    for gen in ("g1", "g2"):
        d = root / "outputs/pseudo" / gen
        stats = json.loads((d / "stats.json").read_text())
        prov = json.loads((d / "provenance.json").read_text())
        shards = pd.concat([pd.read_parquet(p) for p in sorted(d.glob("shard-*.parquet"))])
        assert stats["num_unlabeled"] == len(shards) == n_unl
        assert sorted(shards["index"]) == list(range(n_unl))
        assert stats["stream_size"] == shards["count"].sum() == sum(stats["class_hist_after"])
        assert sum(stats["confidence_hist"]["counts"]) == n_unl
        assert (shards.loc[shards["count"] > 0, "confidence"] >= 0.3 - 1e-6).all()
        assert 0.0 <= stats["pseudo_label_acc"] <= 1.0
        assert prov["teacher"] == ("teacher" if gen == "g1" else "g1")
        assert len(prov["teacher_checkpoint_sha256"]) == 64


def test_accuracy_above_chance_and_report(tiny_pipeline):
    root, env = tiny_pipeline["root"], tiny_pipeline["env"]
    rows = json.loads(run(["nsp", "report", "--json"], root, env).stdout)
    assert [r["model"] for r in rows] == ["teacher", "g1", "g2", "baseline"]
    for r in rows:
        assert r["test_acc"] > 0.3, r  # 10 classes: chance is 0.1
        assert set(r) >= {
            "model",
            "arch",
            "params",
            "test_acc",
            "val_acc",
            "pseudo_label_acc",
            "train_seconds",
        }
    assert rows[0]["pseudo_label_acc"] is None and rows[1]["pseudo_label_acc"] is not None
    g2 = json.loads((root / "outputs/models/g2/metrics.json").read_text())
    base = json.loads((root / "outputs/models/baseline/metrics.json").read_text())
    assert base["steps"] >= g2["steps"]  # the baseline gets at least the student's optimizer steps


def test_second_repro_is_noop_and_gen2_change_reruns_only_its_stages(tiny_pipeline):
    root, env = tiny_pipeline["root"], tiny_pipeline["env"]
    second = run(["dvc", "repro"], root, env)
    ran = [line for line in second.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == [], second.stdout
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root, env).stdout
    params = yaml.safe_load((root / "params.yaml").read_text())
    original = (root / "params.yaml").read_text()
    params["generations"]["g2"]["seed"] = 99
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(run(["dvc", "status", "--json"], root, env).stdout or "{}")
    finally:
        (root / "params.yaml").write_text(original)
    changed = set(status)
    assert {"pseudo_label@g2", "student@g2"} <= changed, changed
    assert not changed & {"prepare", "teacher", "pseudo_label@g1", "student@g1"}, changed


# ------------------------------------------------------------------------------ robustness


def test_robustness_sets_are_built_from_the_held_out_pool(tiny_pipeline):
    import numpy as np

    root = tiny_pipeline["root"]
    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    assert manifest["splits"]["apool"]["count"] == 100  # a_pool_per_class 10 x 10 classes
    assert manifest["splits"]["unlabeled"]["count"] == 600 - 100 - 200
    sets = root / "outputs/robustness/sets"
    summary = json.loads((sets / "summary.json").read_text())
    assert summary["c"]["images"] == 50 and summary["p"]["images"] == 20
    assert np.load(sets / "c_fog.npy", mmap_mode="r").shape == (5, 50, 32, 32, 1)
    assert np.load(sets / "p_translate.npy", mmap_mode="r").shape == (20, 16, 32, 32, 1)
    pool_x = np.load(root / "data/prepared/apool_x.npy")
    pool_y = np.load(root / "data/prepared/apool_y.npy")
    pred = np.load(sets / "a_reference_pool_pred.npy")
    kept = np.load(sets / "a_pool_index.npy")
    np.testing.assert_array_equal(kept, np.flatnonzero(pred != pool_y))
    np.testing.assert_array_equal(np.load(sets / "a_x.npy"), pool_x[kept])
    m = json.loads((root / "outputs/robustness/sets_metrics.json").read_text())
    assert m["a_pool_size"] == 100 and m["a_kept"] == len(kept)
    assert m["a_reference_pool_acc"] == pytest.approx(1 - len(kept) / 100)
    assert summary["a"]["reference"]["train_images"] == 500  # labeled + val + unlabeled


def test_evaluate_stages_write_normalised_metrics_and_report(tiny_pipeline):
    from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS
    from nsp.robustness.normalise import robustness_metrics
    from nsp.robustness.perturbations import TEST_PERTURBATIONS

    root, env = tiny_pipeline["root"], tiny_pipeline["env"]
    raw = {
        n: json.loads((root / f"outputs/robustness/raw/{n}.json").read_text())
        for n in ("teacher", "g1", "g2", "baseline")
    }
    for name in raw:
        m = json.loads((root / f"outputs/robustness/{name}.metrics.json").read_text())
        want = robustness_metrics(raw[name], raw["baseline"])
        for key in ("mce", "rel_mce", "mean_corruption_error", "mfr", "mt5d", "calib_err"):
            assert m[key] == (None if want[key] is None else pytest.approx(want[key])), key
        assert m["clean_acc"] == pytest.approx(
            json.loads((root / f"outputs/models/{name}/metrics.json").read_text())["test_acc"]
        )
        errors = pd.read_csv(root / f"outputs/robustness/{name}.errors.csv")
        assert len(errors) == 19 and errors["benchmark"].sum() == 15
        assert errors["severity_5"].tolist() == pytest.approx([r[4] for r in raw[name]["c"]["err"]])
    base = json.loads((root / "outputs/robustness/baseline.metrics.json").read_text())
    assert base["normalised_by"] == "baseline"
    # g2's normalised numbers by hand from the raw error tables (not through robustness_metrics)
    g2 = json.loads((root / "outputs/robustness/g2.metrics.json").read_text())
    names = raw["g2"]["c"]["corruptions"]
    bench = [i for i, n in enumerate(names) if n in BENCHMARK_CORRUPTIONS]
    e, eb = np.asarray(raw["g2"]["c"]["err"]), np.asarray(raw["baseline"]["c"]["err"])
    assert len(bench) == 15 and e.shape == (19, 5)
    ce = [e[i].sum() / eb[i].sum() for i in bench]
    assert g2["mce"] == pytest.approx(sum(ce) / 15)
    assert g2["mean_corruption_error"] == pytest.approx(e[bench].mean())
    fr = [raw["g2"]["p"]["fp"][n] / raw["baseline"]["p"]["fp"][n] for n in TEST_PERTURBATIONS]
    assert g2["mfr"] == pytest.approx(sum(fr) / len(fr)) and len(fr) == 11
    assert g2["mce"] != pytest.approx(1.0)  # a model other than the baseline: not 1 by construction
    rows = {r["model"]: r for r in json.loads(run(["nsp", "report", "--json"], root, env).stdout)}
    for name in ("teacher", "g1", "g2", "baseline"):
        assert {"a_acc", "mce", "rel_mce", "mean_corruption_error", "mfr", "mt5d", "calib_err",
                "a_calib_err"} <= set(rows[name])  # fmt: skip
        assert rows[name]["mce"] is not None and rows[name]["mean_corruption_error"] > 0
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert {"robustness", "evaluate_raw@g1", "evaluate@g1", "evaluate@baseline"} <= set(lock)


def test_evaluate_runs_are_tracked_per_model(tiny_pipeline):
    import mlflow

    root = tiny_pipeline["root"]
    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = c.get_experiment_by_name("nsp-tiny")
    runs = c.search_runs([exp.experiment_id], max_results=500)
    stages = {
        r.data.tags.get("nsp.stage"): r for r in runs if r.data.tags.get("nsp.kind") == "stage"
    }
    ev = stages["evaluate@g2"]
    assert ev.data.tags["generation"] == "2" and ev.data.tags["model"] == "g2"
    assert stages["evaluate@teacher"].data.tags["generation"] == "0"
    m = json.loads((root / "outputs/robustness/g2.metrics.json").read_text())
    assert ev.data.metrics["mce"] == pytest.approx(m["mce"])
    assert "g2.errors.csv" in {a.path for a in c.list_artifacts(ev.info.run_id)}
    rb = stages["robustness"].data.metrics
    assert (
        rb["a_kept"]
        == json.loads((root / "outputs/robustness/sets_metrics.json").read_text())["a_kept"]
    )


def test_student_ablation_retrains_beside_the_pipeline(tiny_pipeline, tmp_path):
    """benchmarks/student_ablation.py: a changed or oracle student in a scratch dir, outputs untouched."""
    import hashlib
    import sys
    from pathlib import Path

    root, env = tiny_pipeline["root"], tiny_pipeline["env"]
    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "student_ablation.py")
    watched = [root / "outputs/models/g2/model.pt", root / "outputs/pseudo/g2/stats.json"]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in watched]

    def ablation(*args: str) -> dict:
        p = run([sys.executable, script, "--gen", "g2", *args], root, env)
        return json.loads(p.stdout.strip().splitlines()[-1])

    oracle = ablation("--oracle", "--set", "epochs=12", "--scratch", str(tmp_path / "oracle"))
    assert oracle["oracle"] and oracle["overrides"] == {"epochs": 12}
    assert oracle["test_acc"] > 0.3 and oracle["steps"] > 0  # 10 classes: chance is 0.1
    cfg = json.loads((tmp_path / "oracle/models/g2/config.json").read_text())["config"]
    assert (
        cfg["epochs"] == 12 and cfg["arch"] == tiny_pipeline["params"]["generations"]["g2"]["arch"]
    )
    sharp = ablation("--set", "pseudo.temperature=0.5", "--scratch", str(tmp_path / "sharp"))
    assert sharp["overrides"] == {"pseudo.temperature": 0.5} and 0 < sharp["pseudo_label_acc"] <= 1
    new_set = tmp_path / "sharp/pseudo/g2"
    assert json.loads((new_set / "provenance.json").read_text())["params"]["temperature"] == 0.5
    stats = json.loads((new_set / "stats.json").read_text())
    assert stats["pseudo_label_acc"] == pytest.approx(sharp["pseudo_label_acc"])
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in watched] == before
    bad = run([sys.executable, script, "--gen", "g2", "--set", "epochs"], root, env, check=False)
    assert bad.returncode == 2 and "--set 'epochs': use KEY=VALUE" in bad.stderr
    bad = run([sys.executable, script, "--gen", "g9"], root, env, check=False)
    assert bad.returncode == 2 and "--gen g9: not a generation" in bad.stderr


def test_the_official_profile_is_the_default_with_the_official_knobs():
    """profiles/official.yaml (issue 17's A/B arm) differs from params.yaml only in the official-recipe
    keys, so a replicate comparison of the two measures the recipe and nothing else."""
    default = flat_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    official = flat_params(yaml.safe_load((REPO / "profiles/official.yaml").read_text()))
    knobs = {
        **{f"{s}.noise.{k}": v for s in ("teacher", "student", "baseline")
           for k, v in (("recipe", "official"), ("dropout", 0.5), ("drop_path", 0.2))},
        **{f"{s}.label_smoothing": 0.1 for s in ("teacher", "student", "baseline")},
        "student.smooth_pseudo_labels": True,
        "student.unlabeled_weight": "ratio",
    }  # fmt: skip
    assert {k: v for k, v in official.items() if default.get(k, object()) != v} == knobs
    assert set(default) <= set(official)


def test_the_labels50_profile_is_the_default_with_half_the_labels():
    """profiles/labels50.yaml (a candidate default of issue 16) changes exactly one key."""
    default = flat_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    cand = flat_params(yaml.safe_load((REPO / "profiles/labels50.yaml").read_text()))
    assert set(cand) == set(default)
    assert {k: v for k, v in cand.items() if default[k] != v} == {"prepare.labeled_per_class": 50}
