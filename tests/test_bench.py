"""``nsp bench``: the quick run prints every key with sane values; helpers give exact numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from nsp.bench import BenchSizes, model_flops_per_image, repro_seconds, synthetic_images
from nsp.cli import main

REPO = Path(__file__).resolve().parents[1]

RATE_KEYS = (
    "raw_train_img_s",
    "train_img_s",
    "train_ratio_vs_raw",
    "pil_pipeline_img_s",
    "train_ratio_vs_pil",
    "raw_infer_img_s",
    "pseudo_label_img_s",
    "pseudo_label_ratio_vs_raw",
    "matmul_gflops",
    "train_frac_of_peak",
    "corruption_speedup",
    "train_gflops",
    "forward_flops_per_image",
    "train_ratio_vs_raw_paired",
    "train_ratio_vs_pil_paired",
    "pseudo_label_ratio_vs_raw_paired",
    "c_set_ms_per_image",
    "c_loop_ms_per_image",
    "pseudo_overhead_ms_per_image",
    "pseudo_label_ratio_vs_raw_est",
    "raw_ratio_vs_pil",
)


def test_bench_quick_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NSP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "res" / "bench.json"
    rc = main(
        [
            "bench",
            "--quick",
            "--json",
            "--no-progress",
            "--threads",
            "1",  # robust and fast on a loaded CI box; the default is all cores
            "--out",
            str(out),
            "--params",
            str(REPO / "params.yaml"),
            "--outputs",
            str(tmp_path / "no-outputs"),
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out.strip()
    assert "\n" not in stdout  # one JSON object on one line
    res = json.loads(stdout)
    assert json.loads(out.read_text()) == res
    for key in RATE_KEYS:
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] > 0, key
    # ratios are the ratios of the reported rates (measured in the same run)
    assert res["train_ratio_vs_raw"] == pytest.approx(res["train_img_s"] / res["raw_train_img_s"])
    assert res["train_ratio_vs_pil"] == pytest.approx(
        res["train_img_s"] / res["pil_pipeline_img_s"]
    )
    assert res["raw_ratio_vs_pil"] == pytest.approx(
        res["raw_train_img_s"] / res["pil_pipeline_img_s"]
    )
    assert res["pil_pipeline_img_s"] == max(
        res["pil_pipeline_img_s_w0"], res["pil_pipeline_img_s_w2"]
    )
    assert res["pseudo_label_ratio_vs_raw"] == pytest.approx(
        res["pseudo_label_img_s"] / res["raw_infer_img_s"]
    )
    assert res["train_frac_of_peak"] == pytest.approx(res["train_gflops"] / res["matmul_gflops"])
    assert res["train_gflops"] == pytest.approx(
        res["train_img_s"] * 3 * res["forward_flops_per_image"] / 1e9
    )
    assert res["pseudo_label_ratio_vs_raw_est"] <= 1.0  # overhead can only slow it down
    assert set(res["noise_breakdown_ms"]) >= {"randaugment_ms", "crop_flip_ms", "pil_dataset_ms"}
    assert res["repro_seconds"] is None  # no pipeline outputs: reported as null, not a failure
    m = res["machine"]
    assert m["cores"] >= 1 and m["torch"] == torch.__version__ and m["cpu"]
    assert m["torch_threads"] == 1
    s = res["sizes"]
    student = yaml.safe_load((REPO / "params.yaml").read_text())["student"]
    unl = int(round(8 * student["unlabeled_ratio"]))  # sizes and noise come from params.yaml
    assert (s["arch"], s["labeled_batch"], s["unlabeled_batch"], s["batch"]) == (
        "nsp_resnet_xs",
        8,
        unl,
        8 + unl,
    )
    assert s["c_corruptions"] == 19
    assert res["c_set_images"] == s["c_images"] * 19 * len(s["c_severities"])
    assert len(res["c_per_corruption_ms_per_image"]) == 19
    assert res["noise"]["dropout"] == student["noise"]["dropout"]
    assert res["noise"]["drop_path"] == student["noise"]["drop_path"]
    assert set(res["meets_targets"]) == set(res["targets"])
    assert res["loadavg_start"] and res["bench_seconds"] > 0
    check_precision_keys(res)


def check_precision_keys(res: dict) -> None:
    """precision: auto's choice against the better of fp32 and bf16 measured in the same run."""
    assert res["auto_precision"] in ("fp32", "bf16")
    best = max(res["fp32_train_img_s"], res["bf16_train_img_s"])
    chosen = res[f"{res['auto_precision']}_train_img_s"]
    assert res["auto_vs_best_ratio"] == pytest.approx(chosen / best) and 0 < chosen <= best
    assert res["bf16_vs_fp32"] == pytest.approx(res["bf16_train_img_s"] / res["fp32_train_img_s"])
    probe = res["auto_probe_img_s"]  # the probe's own rates decide: bf16 only when >= 5 % faster
    assert res["auto_precision"] == ("bf16" if probe["bf16"] >= 1.05 * probe["fp32"] else "fp32")
    assert res["targets"]["auto_vs_best_ratio"] == 0.95


def test_bench_quick_at_224_px(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nsp bench --quick --size 224`: RGB 224 px, a timm arch, the _224 ratios and precision auto."""
    monkeypatch.setenv("NSP_CACHE_DIR", str(tmp_path / "cache"))  # a fresh probe, not a cached one
    out = tmp_path / "b224.json"
    argv = ["bench", "--quick", "--size", "224", "--json", "--no-progress", "--threads", "1"]
    rc = main([*argv, "--out", str(out), "--params", str(REPO / "params.yaml")])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip())
    assert json.loads(out.read_text()) == res
    s = res["sizes"]
    assert (s["image_size"], s["channels"], s["num_classes"]) == (224, 3, 1000)
    assert s["arch"] == "mobilenetv3_small_050" and s["batch"] == 8
    for k in ("raw_train_img_s_224", "train_img_s_224", "pil_pipeline_img_s_224"):
        assert isinstance(res[k], float) and math.isfinite(res[k]) and res[k] > 0, k
    assert res["train_ratio_vs_raw_224"] == pytest.approx(
        res["train_img_s_224"] / res["raw_train_img_s_224"]
    )
    assert res["train_ratio_vs_pil_224"] == pytest.approx(
        res["train_img_s_224"] / res["pil_pipeline_img_s_224"]
    )
    assert set(res["targets"]) == {"train_ratio_vs_raw_224", "train_ratio_vs_pil_224",
                                   "auto_vs_best_ratio"}  # fmt: skip
    assert res["meets_targets"] == {k: res[k] >= v for k, v in res["targets"].items()}
    assert res["noise_breakdown_ms"]["randaugment_ms"] > 0
    check_precision_keys(res)
    # one probe for the run (the training section's step probed, the precision section read it)
    cached = list((tmp_path / "cache" / "precision").glob("train-*.json"))
    assert len(cached) == 1 and res["auto_source"] == "cache"
    rec = json.loads(cached[0].read_text())
    assert (
        rec["key"]["batch_shape"] == [8, 3, 224, 224] and rec["precision"] == res["auto_precision"]
    )
    assert res["auto_probe_img_s"] == {"fp32": rec["fp32_img_per_s"], "bf16": rec["bf16_img_per_s"]}


def test_bench_rejects_bad_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "--quick", "--batch", "0", "--out", str(tmp_path / "b.json")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "--batch 0" in err and "\n" not in err
    assert not (tmp_path / "b.json").exists()


def test_repro_seconds_sums_recorded_stage_timings(tmp_path: Path) -> None:
    assert repro_seconds(tmp_path / "missing") == {"repro_seconds": None, "repro_stages": {}}
    models = tmp_path / "models"
    for name, secs in (("teacher", 100.5), ("g1", 20.0)):
        (models / name).mkdir(parents=True)
        (models / name / "metrics.json").write_text(
            json.dumps({"train_seconds": secs, "val_acc": 0.9})
        )
    (models / "broken").mkdir()
    (models / "broken" / "metrics.json").write_text("{not json")
    (tmp_path / "pseudo").mkdir()
    (tmp_path / "pseudo" / "g1.metrics.json").write_text(
        json.dumps({"seconds": 4.0, "timing": {"write_seconds": 1.5}, "done": True, "n": 7})
    )
    (tmp_path / "pseudo" / "g2.metrics.json").write_text(json.dumps({"pseudo_label_acc": 0.8}))
    res = repro_seconds(tmp_path)
    assert res["repro_seconds"] == pytest.approx(126.0)
    assert res["repro_stages"] == {
        "models/teacher/metrics.json": 100.5,
        "models/g1/metrics.json": 20.0,
        "pseudo/g1.metrics.json": 5.5,
    }


def test_flops_per_image_of_a_known_conv() -> None:
    # 3x3 conv, 1 -> 2 channels, padding 1, on 4x4: 2 * (2*4*4 outputs) * 9 MACs = 576 FLOPs
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False))
    sizes = BenchSizes(image_size=4, channels=1)
    assert model_flops_per_image(model=model, sizes=sizes, batch=3) == 576.0
    assert model.training  # the mode is restored


def test_synthetic_images_are_deterministic_smooth_uint8() -> None:
    a = synthetic_images(n=6, size=32, channels=1, seed=3)
    b = synthetic_images(n=6, size=32, channels=1, seed=3)
    assert a.shape == (6, 32, 32, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synthetic_images(n=6, size=32, channels=1, seed=4))
    # smooth: neighbouring pixels differ far less than independent uniform pixels (~85)
    assert np.abs(np.diff(a.astype(int), axis=2)).mean() < 40
