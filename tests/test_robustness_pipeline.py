"""The robustness stages: building -C / -P / -A, evaluating a model, normalising by the baseline."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nsp.cli import main
from nsp.errors import NSPError
from nsp.robustness.build import (
    SetsConfig,
    adversarial_filter,
    build_sets,
    load_summary,
    reference_config,
    subset_indices,
)
from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS, CORRUPTIONS, corrupt
from nsp.robustness.evaluate import evaluate_raw
from nsp.robustness.normalise import errors_table_rows, robustness_metrics
from nsp.robustness.perturbations import (
    NOISE_PERTURBATIONS,
    PERTURBATIONS,
    TEST_PERTURBATIONS,
    num_frames,
    perturb_sequence,
)
from nsp.robustness.stage import sets_config

REPO = Path(__file__).resolve().parents[1]

K = 10


def brightness_images(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 32, 32, 1) images of random brightness; label = brightness decile, 20 % relabelled."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0, 255, size=n)
    x = level[:, None, None] + rng.normal(0, 25, size=(n, 32, 32))
    y = np.minimum((level / 25.6).astype(np.int64), K - 1)
    flip = rng.random(n) < 0.2
    y[flip] = rng.integers(0, K, size=int(flip.sum()))
    return x.clip(0, 255).astype(np.uint8)[..., None], y


class Brightness(torch.nn.Module):
    """A fixed classifier: logits = -(feature - class centre)^2 with feature = scaled mean brightness
    + ``texture`` x mean absolute horizontal pixel difference (so blur, noise, contrast matter)."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0, texture: float = 0.0) -> None:
        super().__init__()
        self.scale, self.shift, self.texture = scale, shift, texture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        m = x.mean(dim=(1, 2, 3)) / 25.6 * self.scale + self.shift
        m = m + self.texture * (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3)) / 25.6
        centres = torch.arange(K, dtype=torch.float32) + 0.5
        return -((m[:, None] - centres[None, :]) ** 2)


def logits_of(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.array(x, copy=True)).permute(0, 3, 1, 2)).numpy()


TINY_REF = reference_config(arch="nsp_resnet_xs", epochs=1, batch_size=32, warmup_epochs=0.0)


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    test_x, test_y = brightness_images(40, seed=1)
    pool_x, pool_y = brightness_images(30, seed=2)
    train_x, train_y = brightness_images(160, seed=3)
    return {
        "test_x": test_x,
        "test_y": test_y,
        "pool_x": pool_x,
        "pool_y": pool_y,
        "train_x": train_x,
        "train_y": train_y,
        "val_x": train_x[:20],
        "val_y": train_y[:20],
    }


def _build(out: Path, arrays: dict[str, np.ndarray], seed: int = 3) -> dict:
    cfg = SetsConfig(seed=seed, c_images=12, p_images=6, reference=TINY_REF)
    return build_sets(
        out_dir=out, cfg=cfg, class_names=[str(i) for i in range(K)], progress=False, **arrays
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory, arrays) -> tuple[Path, dict]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sets") / "sets"
    return out, _build(out, arrays)


# ------------------------------------------------------------------------------ building


def test_subset_indices_seeded_sorted_distinct():
    a = subset_indices(100, 30, seed=5, stream=0)
    assert a.dtype == np.int64 and len(np.unique(a)) == 30 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, subset_indices(100, 30, seed=5, stream=0))
    assert not np.array_equal(a, subset_indices(100, 30, seed=5, stream=1))
    assert not np.array_equal(a, subset_indices(100, 30, seed=6, stream=0))
    np.testing.assert_array_equal(subset_indices(7, 50, seed=0, stream=0), np.arange(7))


def test_adversarial_filter_keeps_exactly_the_misclassified():
    pred = np.array([3, 1, 4, 1, 5, 9, 2])
    lab = np.array([3, 0, 4, 1, 6, 9, 0])
    np.testing.assert_array_equal(adversarial_filter(pred, lab), [1, 4, 6])
    assert adversarial_filter(lab, lab).size == 0
    with pytest.raises(NSPError, match="must be equal 1-D"):
        adversarial_filter(pred[:3], lab)


def test_c_and_p_sets_shapes_and_content(built, arrays):
    out, summary = built
    assert summary["c"]["images"] == 12 and summary["p"]["images"] == 6
    c_idx = np.load(out / "c_index.npy")
    np.testing.assert_array_equal(c_idx, subset_indices(40, 12, seed=3, stream=0))
    np.testing.assert_array_equal(np.load(out / "c_labels.npy"), arrays["test_y"][c_idx])
    clean = arrays["test_x"][c_idx]
    for name in CORRUPTIONS:
        arr = np.load(out / f"c_{name}.npy")
        assert arr.dtype == np.uint8 and arr.shape == (5, 12, 32, 32, 1), name
        for s in (1, 5):
            np.testing.assert_array_equal(arr[s - 1], corrupt(clean, name=name, severity=s, seed=3))
    p_idx = np.load(out / "p_index.npy")
    np.testing.assert_array_equal(p_idx, subset_indices(40, 6, seed=3, stream=1))
    for name in PERTURBATIONS:
        arr = np.load(out / f"p_{name}.npy")
        assert arr.shape == (6, num_frames(name), 32, 32, 1), name
    np.testing.assert_array_equal(
        np.load(out / "p_rotate.npy"),
        perturb_sequence(arrays["test_x"][p_idx], name="rotate", seed=3),
    )
    assert load_summary(out)["files"] == summary["files"]


def test_a_set_is_what_the_reference_misclassifies(built, arrays):
    from nsp.checkpoint import load_checkpoint, model_from_checkpoint

    out, summary = built
    ref = model_from_checkpoint(load_checkpoint(out / "a_reference.pt"))
    pred = logits_of(ref, arrays["pool_x"]).argmax(1)
    np.testing.assert_array_equal(pred, np.load(out / "a_reference_pool_pred.npy"))
    kept = np.flatnonzero(pred != arrays["pool_y"])
    np.testing.assert_array_equal(np.load(out / "a_pool_index.npy"), kept)
    np.testing.assert_array_equal(np.load(out / "a_x.npy"), arrays["pool_x"][kept])
    np.testing.assert_array_equal(np.load(out / "a_y.npy"), arrays["pool_y"][kept])
    a = summary["a"]
    assert a["pool_size"] == 30 and a["kept"] == len(kept)
    assert a["reference_pool_acc"] == pytest.approx(1 - len(kept) / 30)
    assert sum(a["kept_per_class"]) == len(kept)
    assert a["reference"]["train_images"] == 160 and a["reference"]["arch"] == "nsp_resnet_xs"
    # the reference trains on its val split: no accuracy on trained-on images passes as validation
    assert "val_acc" not in a["reference"]
    ckpt_metrics = load_checkpoint(out / "a_reference.pt")["metrics"]
    assert "val_acc" not in ckpt_metrics and 0 <= ckpt_metrics["seen_val_acc"] <= 1


def test_build_is_deterministic(tmp_path, built, arrays):
    out, summary = built
    again = _build(tmp_path / "again", arrays)
    assert again["files"] == summary["files"]  # sha256 of every file, reference model included
    other = _build(tmp_path / "other", arrays, seed=4)
    assert other["files"]["c_gaussian_noise.npy"] != summary["files"]["c_gaussian_noise.npy"]


def test_build_rejects_an_empty_pool(tmp_path, arrays):
    kw = {**arrays, "pool_x": arrays["pool_x"][:0], "pool_y": arrays["pool_y"][:0]}
    with pytest.raises(NSPError, match="a_pool_per_class") as e:
        build_sets(out_dir=tmp_path / "s", cfg=SetsConfig(reference=TINY_REF), progress=False,
                   class_names=[str(i) for i in range(K)], **kw)  # fmt: skip
    assert "\n" not in str(e.value) and not (tmp_path / "s").exists()


def test_sets_config_from_params():
    params = {"robustness": {"c_images": 50, "a_reference": {"epochs": 3, "noise": {"dropout": 0}}}}
    cfg = sets_config(params)
    assert params["robustness"]["a_reference"] == {"epochs": 3, "noise": {"dropout": 0}}
    assert cfg.reference.noise.dropout == 0 and cfg.reference.noise.crop_flip is False
    cfg = sets_config({"robustness": {"c_images": 50, "a_reference": {"epochs": 3}}})
    assert (cfg.c_images, cfg.p_images, cfg.seed) == (50, 1000, 0)
    assert cfg.reference.epochs == 3 and cfg.reference.arch == "nsp_resnet_xs"
    assert cfg.reference.noise.randaugment is False and cfg.reference.noise.dropout == 0.1
    with pytest.raises(NSPError, match="robustness.c_imagez"):
        sets_config({"robustness": {"c_imagez": 5}})
    with pytest.raises(NSPError, match="robustness.p_images must be"):
        sets_config({"robustness": {"p_images": 0}})
    with pytest.raises(NSPError, match="a_reference.epochs"):
        sets_config({"robustness": {"a_reference": {"epochs": 0}}})


# ---------------------------------------------------------------------------- evaluation


def _hand_t5d(logits: np.ndarray, noise: bool) -> float:
    """ImageNet-P top-5 distance, one frame pair at a time."""
    n, t, _ = logits.shape
    pairs = [(0, b) for b in range(1, t)] if noise else [(a, a + 1) for a in range(t - 1)]
    per_seq = []
    for i in range(n):
        ds = []
        for a, b in pairs:
            top_a = list(np.argsort(-logits[i, a], kind="stable")[:5])
            order_b = list(np.argsort(-logits[i, b], kind="stable"))
            ds.append(sum(abs(j - min(order_b.index(c), 5)) for j, c in enumerate(top_a)))
        per_seq.append(np.mean(ds))
    return float(np.mean(per_seq))


def _hand_rms_calib(logits: np.ndarray, y: np.ndarray, bins: int) -> float:
    p = np.exp(logits - logits.max(1, keepdims=True))
    conf = p.max(1) / p.sum(1)
    correct = (logits.argmax(1) == y).astype(float)
    order = np.argsort(conf, kind="stable")
    conf, correct = conf[order], correct[order]
    n, total = len(y), 0.0
    beta = n // bins
    for b in range(bins):  # every bin counts; the last one takes the n % bins remainder
        sl = slice(b * beta, (b + 1) * beta if b < bins - 1 else n)
        total += len(conf[sl]) / n * (conf[sl].mean() - correct[sl].mean()) ** 2
    return float(np.sqrt(total))


def _raw(model, built, arrays):
    out, _ = built
    return evaluate_raw(model=model, test_x=arrays["test_x"], test_y=arrays["test_y"], sets=out,
                        batch_size=7, calib_bins=4, progress=False)  # fmt: skip


def test_evaluate_raw_equals_hand_computation(built, arrays):
    out, _ = built
    model = Brightness()
    raw = _raw(model, built, arrays)
    test_logits = logits_of(model, arrays["test_x"])
    assert raw["clean_err"] == pytest.approx(np.mean(test_logits.argmax(1) != arrays["test_y"]))
    assert raw["calib_err"] == pytest.approx(_hand_rms_calib(test_logits, arrays["test_y"], 4))
    c_idx, c_y = np.load(out / "c_index.npy"), np.load(out / "c_labels.npy")
    assert raw["c_clean_err"] == pytest.approx(np.mean(test_logits[c_idx].argmax(1) != c_y))
    for ci, name in enumerate(CORRUPTIONS):
        arr = np.load(out / f"c_{name}.npy")
        for s in range(5):
            want = np.mean(logits_of(model, arr[s]).argmax(1) != c_y)
            assert raw["c"]["err"][ci][s] == pytest.approx(want), (name, s + 1)
    for name in PERTURBATIONS:
        seq = np.load(out / f"p_{name}.npy")
        lg = logits_of(model, seq.reshape(-1, 32, 32, 1)).reshape(seq.shape[0], seq.shape[1], K)
        pred = lg.argmax(-1)
        noise = name in NOISE_PERTURBATIONS
        flips = pred[:, 1:] != (pred[:, :1] if noise else pred[:, :-1])
        assert raw["p"]["fp"][name] == pytest.approx(flips.mean()), name
        assert raw["p"]["t5d"][name] == pytest.approx(_hand_t5d(lg, noise)), name
    a_x, a_y = np.load(out / "a_x.npy"), np.load(out / "a_y.npy")
    assert raw["a"]["size"] == len(a_y) > 0
    assert raw["a"]["acc"] == pytest.approx(np.mean(logits_of(model, a_x).argmax(1) == a_y))
    assert raw["images_evaluated"] == 40 + 12 * 95 + sum(
        6 * num_frames(p) for p in PERTURBATIONS
    ) + len(a_y)


def test_normalised_metrics_equal_hand_computation(built, arrays):
    raw = _raw(Brightness(scale=0.8, shift=0.5), built, arrays)
    base = _raw(Brightness(texture=1.0, shift=-1.0), built, arrays)
    # 6 -P images rarely flip a brightness model: give the baseline non-zero FP / T5D values
    # (normalising is arithmetic on the raw numbers; evaluate_raw is checked above)
    for i, p in enumerate(PERTURBATIONS):
        base["p"]["fp"][p] = 0.05 + 0.01 * i
        base["p"]["t5d"][p] = 0.5 + 0.1 * i
    m = robustness_metrics(raw, base)
    e, eb = np.array(raw["c"]["err"]), np.array(base["c"]["err"])
    bench = [CORRUPTIONS.index(c) for c in BENCHMARK_CORRUPTIONS]
    ce = {c: e[i].sum() / eb[i].sum() for i, c in enumerate(CORRUPTIONS) if eb[i].sum() > 0}
    for c, v in ce.items():
        assert m["ce"][c] == pytest.approx(v), c
    assert m["mce"] == pytest.approx(np.mean([ce[CORRUPTIONS[i]] for i in bench]))
    den = [(eb[i] - base["c_clean_err"]).sum() for i in bench]
    assert min(den) > 5 * 0.01  # the worked example's precondition: no corruption is excluded
    rel = [(e[i] - raw["c_clean_err"]).sum() / d for i, d in zip(bench, den, strict=True)]
    assert [m["rel_ce"][CORRUPTIONS[i]] for i in bench] == pytest.approx(rel)
    assert m["rel_mce"] == pytest.approx(np.mean(rel)) and m["rel_ce_excluded"] == []
    assert m["rel_mce_corruptions"] == 15
    assert m["rel_ce_baseline_degradation"]["fog"] == pytest.approx(
        eb[CORRUPTIONS.index("fog")].mean() - base["c_clean_err"]
    )
    assert m["mean_corruption_error"] == pytest.approx(e[bench].mean())
    fr = [raw["p"]["fp"][p] / base["p"]["fp"][p] for p in TEST_PERTURBATIONS]
    assert m["mfr"] == pytest.approx(np.mean(fr))
    t5 = [raw["p"]["t5d"][p] / base["p"]["t5d"][p] for p in TEST_PERTURBATIONS]
    assert m["mt5d"] == pytest.approx(np.mean(t5))
    assert m["fr"]["shear"] == pytest.approx(raw["p"]["fp"]["shear"] / base["p"]["fp"]["shear"])
    assert (m["clean_err"], m["calib_err"], m["a_acc"]) == (
        raw["clean_err"], raw["calib_err"], raw["a"]["acc"],
    )  # fmt: skip
    # a corruption that barely hurts the baseline is listed, not averaged into relative mCE
    fog, snow = CORRUPTIONS.index("fog"), CORRUPTIONS.index("snow")
    base["c"]["err"][fog] = [base["c_clean_err"] + 0.004] * 5  # degradation 0.004 < 0.01
    base["c"]["err"][snow] = [base["c_clean_err"] - 0.02] * 5  # the corruption helps the baseline
    m2 = robustness_metrics(raw, base)
    assert m2["rel_ce_excluded"] == ["snow", "fog"] and m2["rel_mce_corruptions"] == 13
    assert m2["rel_ce"]["fog"] is None and m2["rel_ce"]["snow"] is None
    kept = [r for i, r in zip(bench, rel, strict=True) if i not in (fog, snow)]
    assert m2["rel_mce"] == pytest.approx(np.mean(kept))
    assert m2["rel_ce_baseline_degradation"]["fog"] == pytest.approx(0.004)
    assert m2["rel_ce_baseline_degradation"]["snow"] == pytest.approx(-0.02)
    m3 = robustness_metrics(raw, base, rel_ce_min_degradation=-0.05)  # epsilon below both
    assert m3["rel_ce_excluded"] == [] and m3["rel_ce"]["fog"] == pytest.approx(
        (e[fog] - raw["c_clean_err"]).sum() / (5 * 0.004)
    )
    rows = {r["corruption"]: r for r in errors_table_rows(raw, m2)}
    assert rows["fog"]["rel_ce"] is None and rows["fog"]["baseline_degradation"] == pytest.approx(
        0.004
    )


def test_ratio_with_zero_baseline_is_none(built, arrays):
    raw = _raw(Brightness(texture=1.0, shift=-1.0), built, arrays)
    for i, p in enumerate(PERTURBATIONS):
        raw["p"]["fp"][p], raw["p"]["t5d"][p] = 0.05 + 0.01 * i, 0.5 + 0.1 * i
    base = json.loads(json.dumps(raw))
    base["c"]["err"][0] = [0.0] * 5
    base["p"]["fp"]["rotate"] = 0.0
    m = robustness_metrics(raw, base)
    assert m["ce"][CORRUPTIONS[0]] is None and m["mce"] is None
    assert m["fr"]["rotate"] is None and m["mfr"] is None
    assert m["ce"][CORRUPTIONS[1]] == pytest.approx(1.0) and m["mt5d"] == pytest.approx(1.0)


# ------------------------------------------------------------------ stage runners and CLI


def _make_project(root: Path, monkeypatch, data_dir: Path, **sizes: int) -> dict:
    """A prepared IDX dataset with an -A pool, in a temporary project directory."""
    from nsp.data.prepare import prepare_splits

    monkeypatch.chdir(root)
    prepare_splits(dataset="mnist", data_dir=str(data_dir), out_dir="data/prepared", seed=0,
                   image_size=32, channels=1, progress=False, **sizes)  # fmt: skip
    params = {
        "prepare": {"dataset": "mnist", **sizes},
        "tracking": {"enabled": False},
        "generations": {"g1": {"teacher": "teacher"}},
        "robustness": {"seed": 0, "c_images": 8, "p_images": 10,
                       "a_reference": {"epochs": 1, "batch_size": 64, "warmup_epochs": 0}},
        "evaluate": {"models": ["teacher", "baseline"], "baseline": "baseline",
                     "batch_size": 64, "calib_bins": 10, "rel_ce_min_degradation": 0.01},
    }  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return {"root": root, "params": params}


@pytest.fixture
def project(tmp_path, monkeypatch, make_idx_dataset):
    """Random images that encode their source index (for disjointness checks)."""
    make_idx_dataset(tmp_path / "raw")
    return _make_project(tmp_path, monkeypatch, tmp_path / "raw", labeled_per_class=4,
                         val_per_class=3, a_pool_per_class=5)  # fmt: skip


@pytest.fixture
def learnable_project(tmp_path, monkeypatch, learnable_idx_dir):
    """Easy-to-learn ring images (60 training and 20 test images per class)."""
    return _make_project(tmp_path, monkeypatch, learnable_idx_dir, labeled_per_class=10,
                         val_per_class=5, a_pool_per_class=10)  # fmt: skip


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out.strip(), cap.err.strip()


def _save_model(name: str, seed: int) -> None:
    """A briefly trained nsp_resnet_xs checkpoint (input-dependent predictions) + metrics.json."""
    from nsp.checkpoint import save_checkpoint
    from nsp.config import NoiseConfig, TrainConfig, to_dict
    from nsp.data.splits import load_split
    from nsp.train.engine import to_nchw, train_model

    lab = load_split("data/prepared", "labeled")
    cfg = TrainConfig(arch="nsp_resnet_xs", epochs=8, batch_size=20, ema_decay=0.0, seed=seed,
                      warmup_epochs=0.0, noise=NoiseConfig(randaugment=False, crop_flip=False,
                                                           dropout=0.0, drop_path=0.0))  # fmt: skip
    x, y = to_nchw(np.asarray(lab.images)), torch.from_numpy(lab.labels)
    model = train_model(cfg=cfg, labeled_x=x, labeled_y=y, val_x=x, val_y=y, num_classes=K,
                        progress=False)["model"]  # fmt: skip
    save_checkpoint(f"outputs/models/{name}/model.pt", model=model, arch="nsp_resnet_xs",
                    num_classes=K, in_chans=1, config=to_dict(cfg), metrics={},
                    class_names=[str(i) for i in range(K)])  # fmt: skip
    Path(f"outputs/models/{name}/metrics.json").write_text(json.dumps({"test_acc": 0.1}))


def _orig_index(x: np.ndarray) -> np.ndarray:
    """The fixture encodes each source image's index in its first two pixels (padded by 2)."""
    return x[:, 2, 2, 0].astype(np.int64) + 256 * x[:, 2, 3, 0].astype(np.int64)


def test_robustness_stage_uses_only_the_held_out_pool(project, capsys):
    from nsp.data.splits import load_split

    torch.set_num_threads(1)
    rc, out, err = _cli(capsys, "robustness", "--no-progress")
    assert rc == 0, err
    assert out.startswith("robustness sets: -C 8 images") and "of 50 pool images" in out
    metrics = json.loads(Path("outputs/robustness/sets_metrics.json").read_text())
    sets = Path("outputs/robustness/sets")
    a_idx = _orig_index(np.load(sets / "a_x.npy"))
    pool = _orig_index(np.asarray(load_split("data/prepared", "apool").images))
    train = np.concatenate(
        [_orig_index(np.asarray(load_split("data/prepared", s).images))
         for s in ("labeled", "val", "unlabeled")]
    )  # fmt: skip
    assert len(pool) == metrics["a_pool_size"] == 50 and len(a_idx) == metrics["a_kept"]
    assert set(a_idx) <= set(pool) and not set(pool) & set(train)
    assert len(train) == 300 - 50
    assert metrics["a_reference_pool_acc"] == pytest.approx(1 - len(a_idx) / 50)
    assert not any("val_acc" in k for k in metrics)  # only the held-out pool accuracy is reported
    summary = load_summary(sets)
    assert summary["a"]["reference"]["train_images"] == 250


def test_evaluate_cli_writes_normalised_metrics(learnable_project, capsys):
    torch.set_num_threads(1)
    assert main(["robustness", "--no-progress"]) == 0
    _save_model("teacher", 0)
    _save_model("baseline", 1)
    capsys.readouterr()
    # the teacher needs the baseline's raw numbers first
    rc, _, err = _cli(capsys, "evaluate", "teacher", "--no-progress")
    assert rc == 2 and "raw/baseline.json not found" in err and "\n" not in err
    rc, out, err = _cli(capsys, "evaluate", "baseline", "--no-progress")
    assert rc == 0, err
    assert "mce=1.0000" in out and "rel_mce=1.0000" in out
    rc, out, err = _cli(capsys, "evaluate", "teacher", "--no-progress")
    assert rc == 0, err
    raw = json.loads(Path("outputs/robustness/raw/teacher.json").read_text())
    base = json.loads(Path("outputs/robustness/raw/baseline.json").read_text())
    m = json.loads(Path("outputs/robustness/teacher.metrics.json").read_text())
    want = robustness_metrics(raw, base)
    for key in ("mce", "rel_mce", "mean_corruption_error", "mfr", "mt5d", "calib_err", "a_acc"):
        assert want[key] is not None and m[key] == pytest.approx(want[key]), key
    assert m["model"] == "teacher" and m["normalised_by"] == "baseline"
    assert raw["c"]["images"] == 8 and raw["p"]["images"] == 10 and raw["test_images"] == 200
    assert raw["clean_acc"] > 0.3
    # the traced + frozen model used by the stage predicts like the eager checkpoint
    from nsp.checkpoint import load_checkpoint, model_from_checkpoint
    from nsp.data.splits import load_split

    test = load_split("data/prepared", "test")
    eager = model_from_checkpoint(load_checkpoint("outputs/models/teacher/model.pt"))
    acc = np.mean(logits_of(eager, np.asarray(test.images)).argmax(1) == test.labels)
    assert raw["clean_acc"] == pytest.approx(acc)
    with open("outputs/robustness/teacher.errors.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["corruption"] for r in rows] == list(CORRUPTIONS)
    r0 = rows[0]
    assert float(r0["severity_3"]) == pytest.approx(raw["c"]["err"][0][2])
    assert float(r0["ce"]) == pytest.approx(
        np.sum(raw["c"]["err"][0]) / np.sum(base["c"]["err"][0])
    )
    # --metrics alone re-normalises from the raw files
    rc, out2, _ = _cli(capsys, "evaluate", "teacher", "--metrics")
    assert rc == 0 and out2 == out.splitlines()[-1]
    # ... and, as the evaluate@ stage runs it (a fresh process), without importing torch or timm
    metrics_bytes = Path("outputs/robustness/teacher.metrics.json").read_bytes()
    child = (
        "import sys\nfrom nsp.cli import main\nrc = main(['evaluate', 'teacher', '--metrics'])\n"
        "print(rc, sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    res = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=300, env=env
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [out2, "0 []"]
    assert Path("outputs/robustness/teacher.metrics.json").read_bytes() == metrics_bytes
    # report rows gain the robustness columns
    rc, out, _ = _cli(capsys, "report", "--json")
    rows = {r["model"]: r for r in json.loads(out)}
    assert rows["teacher"]["mce"] == pytest.approx(m["mce"])
    assert rows["baseline"]["mce"] == pytest.approx(1.0)
    # evaluate.precision: bf16 raw results are recorded as such, agree with fp32 to rounding, and are
    # never normalised by an fp32 baseline
    assert raw["precision"] == "fp32" and m["eval_precision"] == "fp32"
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["evaluate"]["precision"] = "bf16"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    rc, _, err = _cli(capsys, "evaluate", "teacher", "--no-progress")
    assert rc == 2 and "different precisions" in err and "\n" not in err
    raw16 = json.loads(Path("outputs/robustness/raw/teacher.json").read_text())
    assert raw16["precision"] == "bf16"
    # the clean split and -A stay fp32 (clean accuracy = the training stage's); -C/-P within rounding
    for key in ("clean_acc", "calib_err"):
        assert raw16[key] == raw[key], key
    assert raw16["a"] == raw["a"]
    assert np.allclose(raw16["c"]["err"], raw["c"]["err"], atol=0.13)  # 8 images: one flip = 0.125
    assert raw16["images_evaluated"] == raw["images_evaluated"] + raw["c"]["images"]
    assert main(["evaluate", "baseline", "--no-progress"]) == 0
    assert main(["evaluate", "teacher", "--metrics"]) == 0
    m16 = json.loads(Path("outputs/robustness/teacher.metrics.json").read_text())
    assert m16["eval_precision"] == "bf16" and m16["mce"] == pytest.approx(m["mce"], abs=0.25)


def test_cli_bad_input_is_one_line(project, capsys):
    rc, _, err = _cli(capsys, "evaluate", "g7", "--no-progress")
    assert rc == 2 and "unknown model 'g7'" in err and "teacher, g1, baseline" in err
    assert "\n" not in err
    rc, _, err = _cli(capsys, "evaluate", "teacher", "--no-progress")
    assert rc == 2 and "sets/summary.json not found" in err and "nsp robustness" in err
    assert "\n" not in err
    rc, _, err = _cli(capsys, "evaluate", "teacher", "--metrics")
    assert rc == 2 and "raw/teacher.json not found" in err and "\n" not in err
    Path("params.yaml").write_text(
        yaml.safe_dump({**project["params"], "robustness": {"c_images": -1}})
    )
    rc, _, err = _cli(capsys, "robustness", "--no-progress")
    assert rc == 2 and "robustness.c_images must be" in err and "\n" not in err
    bad = {**project["params"], "evaluate": {**project["params"]["evaluate"], "precision": "fp16"}}
    Path("params.yaml").write_text(yaml.safe_dump(bad))
    rc, _, err = _cli(capsys, "evaluate", "teacher", "--metrics")
    assert rc == 2 and "evaluate.precision must be fp32, bf16 or auto" in err and "\n" not in err
