"""``dvc repro`` through the release stages: a tiny model trained on a wnid-named ImageFolder,
evaluated on miniature ImageNet-C (JPEG tree), ImageNet-P (.mp4) and ImageNet-A releases."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nsp.checkpoint import load_checkpoint, model_from_checkpoint
from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS
from nsp.robustness.metrics import ALEXNET_ERR
from nsp.robustness.wnids import IMAGENET_A_INDICES, IMAGENET_WNIDS
from tests.pipeline_helpers import TINY_PARAMS, env_for, make_project, run
from tests.release_fixtures import write_imagenet_c, write_imagenet_p, write_jpeg_tree

W = [IMAGENET_WNIDS[i] for i in IMAGENET_A_INDICES[:3]]
VALUES = {W[0]: 50.0, W[1]: 128.0, W[2]: 205.0}
MODELS = ["teacher", "g1", "baseline"]
TARGETS = [f"release_metrics@{m}" for m in MODELS]


def wnid_params(tmp: Path) -> dict:
    p = copy.deepcopy(TINY_PARAMS)
    p["prepare"].update(
        dataset="imagefolder", data_dir=str(tmp / "tree"), image_size=32, channels=3,
        labeled_per_class=8, val_per_class=4, a_pool_per_class=0,
    )  # fmt: skip
    p["teacher"]["epochs"] = 6
    p["student"]["epochs"] = 2
    p["student"]["pseudo"]["per_class"] = 12
    p["generations"] = {"g1": {"teacher": "teacher", "arch": p["teacher"]["arch"]}}
    p["baseline"].update(arch=p["teacher"]["arch"], match="g1", epochs=2)
    p["evaluate"].update(models=MODELS, precision="fp32", calib_bins=2)
    p["robustness"]["releases"] = {
        "imagenet_c": str(tmp / "ImageNet-C"),
        "imagenet_p": str(tmp / "ImageNet-P"),
        "imagenet_a": str(tmp / "imagenet-a"),
    }
    return p


def _raw(proj: Path, model: str, release: str) -> dict:
    return json.loads((proj / "outputs/releases/raw" / model / f"{release}.json").read_text())


@pytest.mark.slow
def test_release_stages_through_dvc_repro(tmp_path):
    write_jpeg_tree(tmp_path / "tree" / "train", VALUES, per_class=30, h=40, w=40, seed=1)
    write_jpeg_tree(tmp_path / "tree" / "val", VALUES, per_class=6, h=40, w=40, seed=2)
    write_imagenet_c(tmp_path / "ImageNet-C", VALUES, per_class=1, size=64)
    write_imagenet_p(tmp_path / "ImageNet-P", VALUES, per_class=1, frames=4, size=64)
    write_jpeg_tree(tmp_path / "imagenet-a", VALUES, per_class=3, h=50, w=70, seed=5)
    proj = make_project(tmp_path / "proj", wnid_params(tmp_path))
    env = env_for(proj, tmp_path / "unused")
    run(["dvc", "repro", *TARGETS], proj, env, timeout=1500)

    # the release metrics equal a hand computation from the same model's logits
    net = model_from_checkpoint(load_checkpoint(proj / "outputs/models/g1/model.pt"))
    ckpt = load_checkpoint(proj / "outputs/models/g1/model.pt")
    cols = [ckpt["class_names"].index(w) for w in sorted(VALUES)]
    e = []
    for c in BENCHMARK_CORRUPTIONS:
        row = []
        for s in range(1, 6):
            wrong = 0
            for k, w in enumerate(sorted(VALUES)):
                p = next((tmp_path / "ImageNet-C" / c / str(s) / w).glob("*.JPEG"))
                im = (
                    Image.open(p)
                    .convert("RGB")
                    .resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=None)
                )
                with torch.no_grad():
                    lg = net(
                        torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None]
                    ).numpy()[0]
                wrong += int(np.argmax(lg[cols]) != k)
            row.append(wrong / 3)
        e.append(row)
    e = np.array(e)
    m = json.loads((proj / "outputs/releases/g1.metrics.json").read_text())
    alex = np.array([ALEXNET_ERR[c] for c in BENCHMARK_CORRUPTIONS])
    assert m["imagenet_c_mce"] == pytest.approx(np.mean(e.mean(1) / alex), abs=1e-12)
    assert m["imagenet_c_classes"] == 3 and m["imagenet_c_images"] == 225
    assert m["imagenet_a_classes"] == 3 and m["imagenet_a_images"] == 9
    assert m["imagenet_p_images"] == 14 * 3 and m["imagenet_p_mfr"] is None  # no AlexNet values
    base = json.loads((proj / "outputs/releases/baseline.metrics.json").read_text())
    assert base["imagenet_c_mce_baseline"] == pytest.approx(1.0)

    # MLflow has them on the model's nested run; nsp report shows the columns
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.mlflow.runName = 'releases@g1'"
    )
    assert len(runs) == 1 and runs["metrics.imagenet_c_mce"][0] == pytest.approx(
        m["imagenet_c_mce"]
    )
    rep = run(["nsp", "report", "--json"], proj, env)
    rows = {r["model"]: r for r in json.loads(rep.stdout)}
    assert (
        rows["g1"]["imagenet_a_acc"] == m["imagenet_a_acc"]
        and "imagenet_c_rel_mce" in rows["teacher"]
    )

    # a second repro evaluates nothing and reads no release file: same-size garbage with the old
    # mtimes would fail any decode, yet nothing changes
    files = sorted((tmp_path / "ImageNet-C").rglob("*.JPEG"))
    saved = {f: (f.read_bytes(), f.stat()) for f in files}
    for f, (data, st) in saved.items():
        f.write_bytes(b"\0" * len(data))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = run(["dvc", "repro", *TARGETS], proj, env)
    assert "Running stage 'release_eval@" not in second.stdout
    assert "Running stage 'release_metrics@" not in second.stdout
    assert json.loads((proj / "outputs/releases/g1.metrics.json").read_text()) == m
    for f, (data, st) in saved.items():
        f.write_bytes(data)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))

    # a release changed on disk: an evaluation refuses the stale listing (one line); listed again
    # (`dvc repro -f release_list`), one more image re-evaluates ImageNet-C only (-A, -P kept)
    a_before = _raw(proj, "g1", "imagenet_a")
    extra = tmp_path / "ImageNet-C" / "fog" / "2" / W[0] / "extra.JPEG"
    extra.write_bytes(files[0].read_bytes())
    bad = run(["nsp", "releases", "evaluate", "g1"], proj, env, check=False)
    assert bad.returncode == 2 and "changed since release_list listed it" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    run(["dvc", "repro", "-f", "release_list"], proj, env)
    third = run(["dvc", "repro", *TARGETS], proj, env)
    assert "Running stage 'release_eval@g1'" in third.stdout
    assert _raw(proj, "g1", "imagenet_c")["images"] == 226
    assert _raw(proj, "g1", "imagenet_a") == a_before


@pytest.mark.slow
def test_imagenet_format_chain_at_224_px_with_timm(tmp_path):
    """The ImageNet-format chain end to end at miniature scale: a wnid ImageFolder prepared at
    224 px, timm teacher -> larger timm student with per-sample noise on 224-px batches, pseudo
    labels streamed into shards, and ``dvc repro`` through the release evaluation."""
    write_jpeg_tree(tmp_path / "tree" / "train", VALUES, per_class=16, h=256, w=300, seed=1)
    write_jpeg_tree(tmp_path / "tree" / "val", VALUES, per_class=4, h=256, w=300, seed=2)
    write_imagenet_c(tmp_path / "ImageNet-C", VALUES, per_class=1, size=224)
    write_jpeg_tree(tmp_path / "imagenet-a", VALUES, per_class=2, h=300, w=260, seed=5)
    p = wnid_params(tmp_path)
    p["prepare"].update(image_size=224, labeled_per_class=6, val_per_class=2)
    p["teacher"].update(arch="mobilenetv3_small_050", epochs=2, batch_size=8)
    p["student"].update(epochs=1, batch_size=8, init_from_teacher=False)  # timm: no growing
    p["generations"] = {"g1": {"teacher": "teacher", "arch": "mobilenetv3_small_075"}}
    p["baseline"].update(arch="mobilenetv3_small_075", epochs=1, batch_size=8)
    p["robustness"]["releases"] = {
        k: p["robustness"]["releases"][k] for k in ("imagenet_c", "imagenet_a")
    }
    proj = make_project(tmp_path / "proj", p)
    env = env_for(proj, tmp_path / "unused")
    run(["dvc", "repro", *TARGETS], proj, env, timeout=3000)
    manifest = json.loads((proj / "data/prepared/manifest.json").read_text())
    assert manifest["image_shape"] == [224, 224, 3]
    assert list((proj / "outputs/pseudo/g1").glob("*.parquet"))  # streamed shards
    cfg = json.loads((proj / "outputs/models/g1/config.json").read_text())["config"]
    assert cfg["arch"] == "mobilenetv3_small_075" and cfg["noise"]["randaugment"] is True
    for model in MODELS:
        m = json.loads((proj / f"outputs/releases/{model}.metrics.json").read_text())
        assert (m["imagenet_c_classes"], m["imagenet_c_images"]) == (3, 225)
        assert 0 <= m["imagenet_c_mean_error"] <= 1 and m["imagenet_c_mce"] > 0
        assert (m["imagenet_a_classes"], m["imagenet_a_images"]) == (3, 6)
