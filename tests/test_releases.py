"""Readers for ImageNet-C/-P, CIFAR-10-C/-P and ImageNet-A/-R, on tiny trees in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsp.errors import NSPError
from nsp.robustness import releases as R
from nsp.robustness.wnids import IMAGENET_WNIDS

GOLDFISH, TENCH, WHITE_SHARK = "n01443537", "n01440764", "n01484850"


def _save(path: Path, arr: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def _flat(value: int, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.full(size + (3,), value, dtype=np.uint8)


# ------------------------------------------------------------------------------------------
# ImageNet-C
# ------------------------------------------------------------------------------------------


@pytest.fixture
def imagenet_c(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet-c"
    sev = root / "gaussian_noise" / "3"
    _save(sev / TENCH / "b.JPEG", _flat(20), quality=100)
    _save(sev / TENCH / "a.JPEG", _flat(10), quality=100)
    _save(sev / GOLDFISH / "c.JPEG", _flat(200), quality=100)
    (sev / GOLDFISH / "notes.txt").write_text("not an image")
    return root


def test_imagenet_c_reader_yields_sorted_batches_with_imagenet_labels(imagenet_c):
    files = R.imagenet_c_files(imagenet_c, corruption="gaussian_noise", severity=3)
    assert [p.name for p, _ in files] == ["a.JPEG", "b.JPEG", "c.JPEG"]
    batches = list(
        R.iter_imagenet_c(imagenet_c, corruption="gaussian_noise", severity=3, batch_size=2)
    )
    assert [b[0].shape for b in batches] == [(2, 8, 8, 3), (1, 8, 8, 3)]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert labels.tolist() == [0, 0, 1]  # tench is class 0, goldfish class 1
    assert IMAGENET_WNIDS[0] == TENCH and IMAGENET_WNIDS[1] == GOLDFISH
    np.testing.assert_allclose(images.reshape(3, -1).mean(1), [10, 20, 200], atol=2)


def test_imagenet_c_reader_errors(imagenet_c, tmp_path):
    with pytest.raises(NSPError, match="is not a directory"):
        R.imagenet_c_files(tmp_path / "nope", corruption="gaussian_noise", severity=3)
    with pytest.raises(NSPError, match="unknown ImageNet-C corruption 'gauss'"):
        R.imagenet_c_files(imagenet_c, corruption="gauss", severity=3)
    with pytest.raises(NSPError, match="severities are 1..5"):
        R.imagenet_c_files(imagenet_c, corruption="gaussian_noise", severity=6)
    with pytest.raises(NSPError, match=r"gaussian_noise/2 is missing"):
        R.imagenet_c_files(imagenet_c, corruption="gaussian_noise", severity=2)
    (imagenet_c / "gaussian_noise" / "3" / "cats").mkdir()
    with pytest.raises(NSPError, match="not a wnid folder"):
        R.imagenet_c_files(imagenet_c, corruption="gaussian_noise", severity=3)
    (imagenet_c / "gaussian_noise" / "3" / "cats").rmdir()
    _save(imagenet_c / "gaussian_noise" / "3" / "n00000001" / "x.JPEG", _flat(5))
    with pytest.raises(NSPError, match="not one of the 1000 ImageNet classes"):
        R.imagenet_c_files(imagenet_c, corruption="gaussian_noise", severity=3)


def test_imagenet_c_mixed_sizes_need_size(imagenet_c):
    _save(imagenet_c / "gaussian_noise" / "3" / WHITE_SHARK / "d.JPEG", _flat(90, (12, 10)))
    with pytest.raises(NSPError, match="pass size=224"):
        list(R.iter_imagenet_c(imagenet_c, corruption="gaussian_noise", severity=3, batch_size=8))
    (imgs, labels) = next(
        R.iter_imagenet_c(imagenet_c, corruption="gaussian_noise", severity=3, batch_size=8, size=6)
    )
    assert imgs.shape == (4, 6, 6, 3) and labels.tolist() == [0, 0, 1, 2]


def test_read_image_resize_and_centre_crop(tmp_path):
    img = np.zeros((40, 80, 3), dtype=np.uint8)
    img[:, 20:60] = 255  # white centre band, black sides
    _save(tmp_path / "wide.png", img)
    out = R.read_image(tmp_path / "wide.png", size=28)
    # shorter side 40 -> round(28 / 0.875) = 32, width 64; centre 28x28 crop lies in the band
    assert out.shape == (28, 28, 3)
    assert out.min() >= 250
    (tmp_path / "broken.png").write_bytes(b"garbage")
    with pytest.raises(NSPError, match="cannot decode image"):
        R.read_image(tmp_path / "broken.png")


# ------------------------------------------------------------------------------------------
# CIFAR-10-C / CIFAR-10-P
# ------------------------------------------------------------------------------------------


@pytest.fixture
def cifar_c(tmp_path: Path) -> Path:
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    n = 4
    images = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
    for s in range(5):
        for i in range(n):
            images[s * n + i] = 10 * (s + 1) + i  # severity and index encoded in the pixels
    np.save(root / "fog.npy", images)
    np.save(root / "labels.npy", np.tile(np.arange(n, dtype=np.int64), 5))
    return root


def test_cifar_c_severity_blocks_and_batches(cifar_c):
    assert R.cifar_c_corruptions(cifar_c) == ["fog"]
    imgs, labels = R.load_cifar_c(cifar_c, corruption="fog", severity=3)
    assert imgs.shape == (4, 32, 32, 3)
    assert imgs[:, 0, 0, 0].tolist() == [30, 31, 32, 33]
    assert labels.tolist() == [0, 1, 2, 3]
    all_imgs, all_labels = R.load_cifar_c(cifar_c, corruption="fog")
    assert all_imgs.shape[0] == 20 and all_labels.shape == (20,)
    batches = list(R.iter_cifar_c(cifar_c, corruption="fog", severity=5, batch_size=3))
    assert [b[0].shape[0] for b in batches] == [3, 1]
    assert batches[0][0][:, 0, 0, 0].tolist() == [50, 51, 52]
    assert batches[1][1].dtype == np.int64 and batches[1][1].tolist() == [3]


def test_cifar_c_errors(cifar_c, tmp_path):
    with pytest.raises(NSPError, match="is not a directory"):
        R.load_cifar_c(tmp_path / "missing", corruption="fog", severity=1)
    with pytest.raises(NSPError, match="unknown CIFAR-C corruption 'smog'"):
        R.load_cifar_c(cifar_c, corruption="smog", severity=1)
    with pytest.raises(NSPError, match=r"snow\.npy is missing"):
        R.load_cifar_c(cifar_c, corruption="snow", severity=1)
    with pytest.raises(NSPError, match="severities are 1..5"):
        R.load_cifar_c(cifar_c, corruption="fog", severity=0)
    np.save(cifar_c / "labels.npy", np.arange(7))
    with pytest.raises(NSPError, match="5 equal severity blocks"):
        R.load_cifar_c(cifar_c, corruption="fog", severity=1)
    np.save(cifar_c / "frost.npy", np.zeros((5, 32, 32), dtype=np.float32))
    with pytest.raises(NSPError, match="expected uint8"):
        R.load_cifar_c(cifar_c, corruption="frost", severity=1)


def test_cifar_p_frames_with_and_without_labels(tmp_path):
    root = tmp_path / "CIFAR-10-P"
    root.mkdir()
    frames = np.arange(3 * 5).reshape(3, 5, 1, 1, 1) * np.ones((1, 1, 8, 8, 3))
    np.save(root / "translate.npy", frames.astype(np.uint8))
    seq, labels = R.load_cifar_p(root, perturbation="translate")
    assert seq.shape == (3, 5, 8, 8, 3) and labels is None
    np.save(root / "labels.npy", np.array([7, 8, 9]))
    batches = list(R.iter_cifar_p(root, perturbation="translate", batch_size=2))
    assert [b[0].shape for b in batches] == [(2, 5, 8, 8, 3), (1, 5, 8, 8, 3)]
    assert batches[1][0][0, :, 0, 0, 0].tolist() == [10, 11, 12, 13, 14]
    assert batches[0][1].tolist() == [7, 8]
    with pytest.raises(NSPError, match="unknown CIFAR-10-P perturbation"):
        R.load_cifar_p(root, perturbation="frost")
    np.save(root / "rotate.npy", np.zeros((3, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(NSPError, match=r"\(N, T, H, W, 3\)"):
        R.load_cifar_p(root, perturbation="rotate")


# ------------------------------------------------------------------------------------------
# ImageNet-P (.mp4 through PyAV)
# ------------------------------------------------------------------------------------------


def _write_mp4(path: Path, frames: np.ndarray) -> None:
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _ramp_video(t: int, offset: int) -> np.ndarray:
    yy, xx = np.mgrid[0:16, 0:16]
    base = (xx * 4 + yy * 2).astype(np.int64)
    return (
        np.stack([np.clip(base + offset + 12 * i, 0, 255) for i in range(t)])
        .astype(np.uint8)[..., None]
        .repeat(3, axis=-1)
    )


def test_imagenet_p_reads_mp4_sequences(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "imagenet-p"
    v1, v2 = _ramp_video(6, 0), _ramp_video(6, 50)
    _write_mp4(root / "translate" / TENCH / "v1.mp4", v1)
    _write_mp4(root / "translate" / GOLDFISH / "v2.mp4", v2)
    decoded = R.read_video(root / "translate" / TENCH / "v1.mp4")
    assert decoded.shape == (6, 16, 16, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - v1).mean() < 2.0  # lossless-ish H.264, yuv420p rounding
    means = decoded.reshape(6, -1).mean(1)
    assert np.all(np.diff(means) > 8)  # frame order preserved
    batches = list(R.iter_imagenet_p(root, perturbation="translate", batch_size=2))
    assert len(batches) == 1
    frames, labels = batches[0]
    assert frames.shape == (2, 6, 16, 16, 3) and labels.tolist() == [0, 1]
    assert np.abs(frames[1].astype(int) - v2).mean() < 2.0


def test_imagenet_p_errors(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "imagenet-p"
    with pytest.raises(NSPError, match="is not a directory"):
        R.imagenet_p_files(root, perturbation="translate")
    (root / "translate").mkdir(parents=True)
    with pytest.raises(NSPError, match="unknown ImageNet-P perturbation 'fog'"):
        R.imagenet_p_files(root, perturbation="fog")
    with pytest.raises(NSPError, match="no class folders"):
        R.imagenet_p_files(root, perturbation="translate")
    bad = root / "translate" / TENCH / "bad.mp4"
    bad.parent.mkdir()
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(NSPError, match="cannot decode video"):
        list(R.iter_imagenet_p(root, perturbation="translate"))
    _write_mp4(root / "translate" / TENCH / "bad.mp4", _ramp_video(4, 0))
    _write_mp4(root / "translate" / TENCH / "long.mp4", _ramp_video(6, 0))
    with pytest.raises(NSPError, match="batch_size=1"):
        list(R.iter_imagenet_p(root, perturbation="translate", batch_size=2))
    shapes = [f.shape for f, _ in R.iter_imagenet_p(root, perturbation="translate", batch_size=1)]
    assert shapes == [(1, 4, 16, 16, 3), (1, 6, 16, 16, 3)]


# ------------------------------------------------------------------------------------------
# ImageNet-A / ImageNet-R subsets
# ------------------------------------------------------------------------------------------


def test_subset_tables():
    for subset in R.SUBSETS:
        idx = R.subset_indices(subset)
        assert idx.shape == (200,) and np.all(np.diff(idx) > 0)
        assert idx.min() >= 0 and idx.max() < 1000
        wn = R.subset_wnids(subset)
        assert list(wn) == sorted(wn) and len(set(wn)) == 200
    # spot checks against the released class lists
    a = R.subset_indices("imagenet-a")
    assert a[:5].tolist() == [6, 11, 13, 15, 17] and a[-1] == 988
    assert R.subset_wnids("imagenet-a")[0] == "n01498041"
    r = R.subset_indices("imagenet-r")
    assert r[:5].tolist() == [1, 2, 4, 6, 8] and r[-1] == 988
    assert R.subset_wnids("imagenet-r")[0] == GOLDFISH
    assert len(set(a) & set(r)) < 200
    with pytest.raises(NSPError, match="unknown ImageNet subset"):
        R.subset_indices("imagenet-o")


def test_mask_logits_to_subset_before_argmax_and_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 1000))
    a = R.subset_indices("imagenet-a")
    outside = np.setdiff1d(np.arange(1000), a)
    logits[:, outside[0]] = 50.0  # global argmax outside the subset
    logits[0, a[7]] = 10.0
    logits[1, a[199]] = 10.0
    logits[2, a[0]] = 10.0
    masked = R.mask_logits_to_subset(logits, subset="imagenet-a")
    assert masked.shape == (3, 200)
    assert logits.argmax(1).tolist() == [outside[0]] * 3
    assert R.subset_predictions(logits, subset="imagenet-a").tolist() == [7, 199, 0]
    probs = R.subset_probabilities(logits, subset="imagenet-a")
    np.testing.assert_allclose(probs.sum(1), 1.0)
    manual = np.exp(logits[:, a]) / np.exp(logits[:, a]).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, manual, rtol=1e-12)
    with pytest.raises(NSPError, match="1000 ImageNet classes"):
        R.mask_logits_to_subset(logits[:, :200], subset="imagenet-a")


def test_imagenet_subset_tree(tmp_path):
    root = tmp_path / "imagenet-r"
    wn = R.subset_wnids("imagenet-r")
    _save(root / wn[3] / "x.jpg", _flat(100, (50, 30)), quality=100)
    _save(root / wn[0] / "y.png", _flat(30, (20, 40)))
    files = R.imagenet_subset_files(root, subset="imagenet-r")
    assert [(p.name, lab) for p, lab in files] == [("y.png", 0), ("x.jpg", 3)]
    imgs, labels = next(R.iter_imagenet_subset(root, subset="imagenet-r", size=16))
    assert imgs.shape == (2, 16, 16, 3) and labels.tolist() == [0, 3]
    np.testing.assert_allclose(imgs.reshape(2, -1).mean(1), [30, 100], atol=2)
    _save(root / TENCH / "z.png", _flat(1))  # tench is not an ImageNet-R class
    with pytest.raises(NSPError, match="not one of the 200 imagenet-r classes"):
        R.imagenet_subset_files(root, subset="imagenet-r")
    with pytest.raises(NSPError, match="batch_size=0"):
        R.iter_imagenet_subset(root, subset="imagenet-a", batch_size=0)
