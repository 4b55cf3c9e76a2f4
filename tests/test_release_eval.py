"""The official releases: listing, class mapping, preprocessing and the published protocols, each
result compared with a hand computation from the same decoded pixels and logits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nsp.errors import NSPError
from nsp.robustness import metrics as M
from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS
from nsp.robustness.release_eval import evaluate_release, release_listing
from nsp.robustness.release_protocols import (
    BENCHMARK_PERTURBATIONS,
    CIFAR10_CLASSES,
    REQUIRED_PERTURBATION_FOLDERS,
    perturbation_group,
    release_summary,
    shared_classes,
)
from nsp.robustness.wnids import IMAGENET_A_INDICES, IMAGENET_WNIDS
from tests.release_fixtures import (
    ColourModel,
    logits_np,
    read_video_frames,
    write_cifar_c,
    write_cifar_p,
    write_imagenet_c,
    write_imagenet_p,
    write_jpeg_tree,
)

REF = Path(__file__).resolve().parents[2] / "shared" / "reference"
# three ImageNet-A subset classes (so the same wnids serve -C, -P and -A) and one more class
W = [IMAGENET_WNIDS[i] for i in IMAGENET_A_INDICES[:3]]
VALUES = {W[0]: 50.0, W[1]: 128.0, W[2]: 205.0}
EXTRA = IMAGENET_WNIDS[0]  # n01440764: not in ImageNet-A, not known to the subset model below


def full_model() -> ColourModel:
    """1000-way logits; only the three fixture classes have a colour centre."""
    return ColourModel(1000, {IMAGENET_WNIDS.index(w): v for w, v in VALUES.items()})


def rgb(path: Path, size: int | None = None) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(im)


@pytest.fixture(scope="module")
def imagenet_c(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rel") / "ImageNet-C"
    write_imagenet_c(root, {**VALUES, EXTRA: 90.0}, per_class=2, size=64)
    return root


def hand_c_errors(root: Path, *, columns: dict[str, int], model, size=None) -> dict[str, list]:
    """E[c, s] by hand: decode with Pillow, logits of the shared columns, argmax."""
    out = {}
    for c in BENCHMARK_CORRUPTIONS:
        for s in range(1, 6):
            wrong = n = 0
            for wnid, col in columns.items():
                for p in sorted((root / c / str(s) / wnid).glob("*.JPEG")):
                    lg = logits_np(model, rgb(p, size)[None])[0]
                    cols = list(columns.values())
                    wrong += int(cols[int(np.argmax(lg[cols]))] != col)
                    n += 1
            out.setdefault(c, []).append(wrong / n)
    return out


def test_imagenet_c_equals_hand_computation_with_alexnet_normalisation(imagenet_c):
    model = full_model()
    clean_x = np.concatenate([rgb(p)[None] for p in sorted(imagenet_c.glob("fog/1/*/*.JPEG"))])
    clean_y = np.array(
        [IMAGENET_WNIDS.index(p.parent.name) for p in sorted(imagenet_c.glob("fog/1/*/*.JPEG"))]
    )
    clean_logits = logits_np(model, clean_x)
    raw = evaluate_release(
        release="imagenet_c", root=imagenet_c, model=model, class_names=IMAGENET_WNIDS,
        image_size=64, channels=3, batch_size=5, workers=2,
        clean_logits=clean_logits, clean_labels=clean_y,
    )  # fmt: skip
    assert raw["classes"] == 1000 and raw["images"] == 15 * 5 * 8  # all 4 classes are ImageNet's
    hand = hand_c_errors(
        imagenet_c,
        columns={w: IMAGENET_WNIDS.index(w) for w in sorted([*VALUES, EXTRA])},
        model=model,
    )
    for c in BENCHMARK_CORRUPTIONS:
        assert raw["errors"][c] == pytest.approx(hand[c], abs=1e-12)
    e = np.array([hand[c] for c in BENCHMARK_CORRUPTIONS])
    assert 0 < e.mean() < 1  # the fixture is neither trivial nor hopeless
    clean_err = float(np.mean(clean_logits.argmax(1) != clean_y))
    alex = np.array([M.ALEXNET_ERR[c] for c in BENCHMARK_CORRUPTIONS])
    summ = release_summary("imagenet_c", raw, baseline=raw)
    assert summ["mce"] == pytest.approx(np.mean(e.mean(axis=1) / alex), abs=1e-12)
    assert summ["rel_mce"] == pytest.approx(
        np.mean((e.mean(axis=1) - clean_err) / (alex - 0.4348)), abs=1e-12
    )
    assert summ["mce_baseline"] == pytest.approx(1.0) and summ["mean_error"] == pytest.approx(
        e.mean()
    )
    assert (summ["classes"], summ["images"]) == (1000, 600)


def test_subset_model_maps_wnids_and_leaves_other_classes_out(imagenet_c):
    order = [W[2], W[0], W[1]]  # the model's own class order differs from the release's
    model = ColourModel(3, {i: VALUES[w] for i, w in enumerate(order)})
    raw = evaluate_release(
        release="imagenet_c", root=imagenet_c, model=model, class_names=order,
        image_size=32, channels=3, batch_size=7, workers=2,
    )  # fmt: skip
    assert raw["classes"] == 3 and raw["images"] == 15 * 5 * 6  # EXTRA's images left out
    assert sorted(raw["shared_class_names"]) == sorted(W)
    hand = hand_c_errors(
        imagenet_c, columns={w: order.index(w) for w in sorted(W)}, model=model, size=32
    )
    for c in BENCHMARK_CORRUPTIONS:
        assert raw["errors"][c] == pytest.approx(hand[c], abs=1e-12)


def test_no_shared_class_is_one_line(imagenet_c):
    fashion = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    with pytest.raises(NSPError) as e:
        evaluate_release(release="imagenet_c", root=imagenet_c, model=ColourModel(10, {}), class_names=fashion,
                         image_size=32, channels=1)  # fmt: skip
    msg = str(e.value)
    assert "\n" not in msg and "share no class" in msg and "T-shirt/top" in msg and "wnid" in msg


class Distracted(torch.nn.Module):
    """1000-way logits where a class outside ImageNet-A (column 0) always wins unmasked."""

    def __init__(self) -> None:
        super().__init__()
        self.base = full_model()

    def forward(self, x):
        lg = self.base(x).clone()
        lg[:, 0] = 1.0
        return lg


def test_imagenet_a_masks_logits_to_the_subset(tmp_path):
    root = tmp_path / "imagenet-a"
    write_jpeg_tree(root, VALUES, per_class=4, h=60, w=80, seed=3)
    model = Distracted()
    raw = evaluate_release(release="imagenet_a", root=root, model=model, class_names=IMAGENET_WNIDS,
                           image_size=32, channels=3, batch_size=5, workers=2, calib_bins=3)  # fmt: skip
    # by hand: shorter side 60 -> round(32 / 0.875) = 37 (80 -> 49), centre crop 32, subset columns
    x, y = [], []
    for w in sorted(VALUES):
        for p in sorted((root / w).glob("*.JPEG")):
            im = (
                Image.open(p)
                .convert("RGB")
                .resize((49, 37), Image.Resampling.BILINEAR, reducing_gap=None)
            )
            x.append(np.asarray(im.crop((8, 2, 40, 34))))
            y.append(IMAGENET_A_INDICES.index(IMAGENET_WNIDS.index(w)))
    lg = logits_np(model, np.stack(x))
    assert np.mean(lg.argmax(1) == 0) == 1.0  # unmasked: always the distractor, accuracy 0
    sub = lg[:, list(IMAGENET_A_INDICES)]
    acc = float(np.mean(sub.argmax(1) == np.array(y)))
    assert acc > 0.5 and raw["acc"] == pytest.approx(acc, abs=1e-12)
    p = np.exp(sub - sub.max(1, keepdims=True))
    conf = p.max(1) / p.sum(1)
    assert raw["calib_err"] == pytest.approx(
        M.adaptive_calibration_error(conf, sub.argmax(1) == np.array(y), bins=3), abs=1e-12
    )
    assert (raw["classes"], raw["images"]) == (200, 12)


def hand_fp(logits: np.ndarray, noise: bool) -> float:
    pred = logits.argmax(-1)
    pairs = (
        [(0, t) for t in range(1, len(pred))]
        if noise
        else [(t, t + 1) for t in range(len(pred) - 1)]
    )
    return float(np.mean([pred[a] != pred[b] for a, b in pairs]))


def test_imagenet_p_mp4_flip_and_top5_equal_hand_computation(tmp_path):
    root = tmp_path / "ImageNet-P"
    write_imagenet_p(root, VALUES, per_class=2, frames=5, size=64)
    model = full_model()
    raw = evaluate_release(release="imagenet_p", root=root, model=model, class_names=IMAGENET_WNIDS,
                           image_size=64, channels=3, workers=2)  # fmt: skip
    assert raw["classes"] == 1000 and raw["images"] == 14 * 6
    for folder in REQUIRED_PERTURBATION_FOLDERS:
        noise = "noise" in folder
        fps, t5s = [], []
        for v in sorted((root / folder).glob("*/*.mp4")):
            lg = logits_np(model, read_video_frames(v))
            fps.append(hand_fp(lg, noise))
            t5s.append(M.top5_distance(lg[None], noise=noise))
        assert raw["fp"][folder] == pytest.approx(np.mean(fps), abs=1e-12)
        assert raw["t5d"][folder] == pytest.approx(np.mean(t5s), abs=1e-12)
    assert np.mean(list(raw["fp"].values())) > 0  # frames do flip
    # AlexNet normalisation (values supplied): FR_p = sum_d FP[p, d] / sum_d FPa[p, d], mean of 10
    alex = {"fp": {f: 0.1 + 0.01 * i for i, f in enumerate(REQUIRED_PERTURBATION_FOLDERS)},
            "t5d": {f: 2.0 + i for i, f in enumerate(REQUIRED_PERTURBATION_FOLDERS)}}  # fmt: skip
    summ = release_summary("imagenet_p", raw, baseline=raw, alexnet_p=alex)
    fr = []
    for p in BENCHMARK_PERTURBATIONS:
        fs = [f for f in REQUIRED_PERTURBATION_FOLDERS if perturbation_group(f) == p]
        assert len(fs) == (3 if "noise" in p else 1)
        fr.append(sum(raw["fp"][f] for f in fs) / sum(alex["fp"][f] for f in fs))
    assert summ["mfr"] == pytest.approx(np.mean(fr), abs=1e-12)
    assert summ["mfr_baseline"] == pytest.approx(1.0) and summ["mt5d_baseline"] == pytest.approx(
        1.0
    )
    assert release_summary("imagenet_p", raw)["mfr"] is None  # no AlexNet values: not invented


def test_cifar10_c_and_p_map_by_class_name(tmp_path):
    values = np.array([30.0, 100.0, 170.0, 240.0] * 3)
    labels = np.array([0, 3, 5, 9] * 3)  # airplane, cat, dog, truck
    write_cifar_c(tmp_path / "CIFAR-10-C", values=values, labels=labels)
    write_cifar_p(tmp_path / "CIFAR-10-P", values=values[:4])
    names = ["Truck", "cat", "dog", "airplane", "unicorn"]  # a different order, case, one extra
    centres = {0: 240.0, 1: 100.0, 2: 170.0, 3: 30.0, 4: 60.0}
    model = ColourModel(5, centres)
    raw = evaluate_release(release="cifar10_c", root=tmp_path / "CIFAR-10-C", model=model,
                           class_names=names, image_size=32, channels=3, batch_size=5)  # fmt: skip
    assert raw["classes"] == 4 and raw["images"] == 15 * 5 * 12
    cols = [3, 1, 2, 0]  # shared classes in CIFAR-10 label order: airplane, cat, dog, truck
    local = {0: 0, 3: 1, 5: 2, 9: 3}
    for c in BENCHMARK_CORRUPTIONS:
        x = np.load(tmp_path / "CIFAR-10-C" / f"{c}.npy")
        pred = logits_np(model, x)[:, cols].argmax(1)
        y = np.array([local[v] for v in np.tile(labels, 5)])
        hand = [(pred[s * 12 : (s + 1) * 12] != y[s * 12 : (s + 1) * 12]).mean() for s in range(5)]
        assert raw["errors"][c] == pytest.approx(hand, abs=1e-12)
    summ = release_summary("cifar10_c", raw, baseline=raw)
    assert summ["mean_error"] == pytest.approx(
        np.mean([raw["errors"][c] for c in BENCHMARK_CORRUPTIONS])
    )
    rawp = evaluate_release(release="cifar10_p", root=tmp_path / "CIFAR-10-P", model=model,
                            class_names=names, image_size=32, channels=3)  # fmt: skip
    for f in REQUIRED_PERTURBATION_FOLDERS:
        seqs = np.load(tmp_path / "CIFAR-10-P" / f"{f}.npy")
        hand = np.mean([hand_fp(logits_np(model, s)[:, cols], "noise" in f) for s in seqs])
        assert rawp["fp"][f] == pytest.approx(hand, abs=1e-12)
    assert rawp["t5d"][REQUIRED_PERTURBATION_FOLDERS[0]] is None  # 4 shared classes < 5


def test_listing_is_cheap_complete_and_notices_changes(tmp_path):
    root = tmp_path / "ImageNet-C"
    write_imagenet_c(root, {W[0]: 50.0}, per_class=1, size=16)
    a = release_listing(release="imagenet_c", root=root)
    assert a["files"] == 75 and a == release_listing(release="imagenet_c", root=root)
    assert (
        a["groups"]["fog"]["files"] == 5
        and sum(g["bytes"] for g in a["groups"].values()) == a["bytes"]
    )
    f = next(iter(sorted(root.glob("fog/3/*/*.JPEG"))))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert release_listing(release="imagenet_c", root=root)["digest"] != a["digest"]
    missing = root / "snow" / "4"
    for p in missing.rglob("*.JPEG"):
        p.unlink()
    for d in sorted(missing.rglob("*"), reverse=True):
        d.rmdir()
    missing.rmdir()
    with pytest.raises(NSPError) as e:
        release_listing(release="imagenet_c", root=root)
    assert str(e.value).startswith(f"{missing} is missing: ImageNet-C snow severity 4;")
    assert "\n" not in str(e.value)


def test_truncated_jpeg_stops_the_evaluation_naming_the_file(tmp_path):
    root = tmp_path / "imagenet-r"
    write_jpeg_tree(root, VALUES, per_class=2, h=40, w=40, seed=1)
    bad = sorted((root / W[1]).glob("*.JPEG"))[1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(NSPError) as e:
        evaluate_release(release="imagenet_r", root=root, model=full_model(), class_names=IMAGENET_WNIDS,
                         image_size=32, channels=3, workers=2)  # fmt: skip
    msg = str(e.value)
    assert msg.startswith(f"{bad}: cannot decode") and "re-download" in msg and "\n" not in msg


def test_summary_matches_reference_ce_metrics():
    path = REF / "ce_metrics.npz"
    if not path.is_file():
        pytest.skip("../shared/reference/ce_metrics.npz not present")
    ref = np.load(path)
    names = [str(n) for n in ref["corruption_names"]]
    assert names == list(BENCHMARK_CORRUPTIONS)
    assert np.allclose([M.ALEXNET_ERR[c] for c in names], ref["alexnet_err"], atol=1e-12)
    raw = {"errors": dict(zip(names, ref["model_err"].tolist(), strict=True)), "clean_err": float(ref["model_clean_err"]),
           "alexnet": True, "classes": 1000, "images": 1}  # fmt: skip
    base = {"errors": dict(zip(names, ref["baseline_err"].tolist(), strict=True)),
            "clean_err": float(ref["baseline_clean_err"]), "classes": 1000, "images": 1}  # fmt: skip
    s = release_summary("imagenet_c", raw, baseline=base)
    assert s["mce"] == pytest.approx(float(ref["alexnet_mce"]), abs=1e-12)
    assert s["rel_mce"] == pytest.approx(float(ref["alexnet_rel_mce"]), abs=1e-12)
    assert s["mce_baseline"] == pytest.approx(float(ref["mce"]), abs=1e-12)
    assert s["rel_mce_baseline"] == pytest.approx(float(ref["rel_mce"]), abs=1e-12)
    assert [s["ce"][c] for c in names] == pytest.approx(ref["alexnet_ce"].tolist(), abs=1e-12)


def test_shared_classes_positions():
    cm = shared_classes(model_classes=["x", W[2], W[0]], release="imagenet_a")
    assert cm.names == (W[0], W[2]) and cm.columns.tolist() == [2, 1]
    lab = cm.labels(np.array([0, 1, 2]))
    assert lab.tolist() == [0, -1, 1]
    assert shared_classes(model_classes=list(CIFAR10_CLASSES), release="cifar10_p").classes == 10


def test_release_read_bench_row_is_the_ratio_of_its_rates():
    from nsp.robustness.release_bench import bench_release_read

    r = bench_release_read(arch="nsp_resnet_xs", images=8, batch=4, repeats=1, workers=2)
    assert r["release_read_ratio"] == pytest.approx(
        r["release_read_img_s"] / r["release_inmemory_img_s"]
    )
    assert r["release_read_img_s"] > 0 and r["release_read_setup"]["size"] == 224
