"""End-to-end: the real `dvc repro` of a tiny profile in a temporary git repo."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from tests.pipeline_helpers import run


def test_repro_writes_every_output(tiny_pipeline):
    root = tiny_pipeline["root"]
    assert (root / "data/prepared/manifest.json").exists()
    for name in ("teacher", "g1", "g2", "baseline"):
        d = root / "outputs/models" / name
        for f in ("model.pt", "metrics.json", "history.csv", "config.json", "confusion.json"):
            assert (d / f).exists(), d / f
        hist = pd.read_csv(d / "history.csv")
        assert list(hist["epoch"]) == list(range(1, len(hist) + 1))
    for gen in ("g1", "g2"):
        assert (root / "outputs/pseudo" / gen / "stats.json").exists()
        assert list((root / "outputs/pseudo" / gen).glob("shard-*.parquet"))
    assert (root / "dvc.lock").exists()


def test_pseudo_label_stats_are_consistent(tiny_pipeline):
    root = tiny_pipeline["root"]
    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    n_unl = (
        sum(manifest["counts"]["unlabeled"].values())
        if isinstance(manifest["counts"]["unlabeled"], dict)
        else manifest["counts"]["unlabeled"]
    )
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
    assert "Running stage" not in second.stdout, second.stdout
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
