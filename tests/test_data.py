"""Data layer: IDX / CIFAR / ImageFolder sources, prepare_splits, load_split and `nsp prepare`."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsp.cli import main
from nsp.data.idx import parse_idx, read_idx, write_idx
from nsp.data.imagefolder import preprocess_pil
from nsp.data.prepare import pool_split, prepare_splits, split_with_pool, stratified_split
from nsp.data.sources import luma
from nsp.data.splits import load_split, load_unlabeled_truth, read_manifest
from nsp.errors import NSPError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No params.yaml or NSP_DATA_DIR from the developer's environment leaks into these tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NSP_DATA_DIR", raising=False)


def cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["prepare", "--no-progress", *argv])
    return rc, capsys.readouterr().err.strip()


def orig_index(x: np.ndarray, y0: int = 0, x0: int = 0) -> np.ndarray:
    """Recover the source index the fixtures encode in the first two pixels of each image."""
    return x[:, y0, x0, 0].astype(np.int64) + 256 * x[:, y0, x0 + 1, 0].astype(np.int64)


# ----------------------------------------------------------------------------------------- IDX


def test_parse_idx_worked_examples():
    assert parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\xff").tolist() == [1, 2, 255]
    # int16 big-endian, shape (1, 2): 0x0100 = 256, 0xFFFE = -2
    arr = parse_idx(b"\x00\x00\x0b\x02\x00\x00\x00\x01\x00\x00\x00\x02\x01\x00\xff\xfe")
    assert arr.shape == (1, 2) and arr.tolist() == [[256, -2]]
    assert arr.dtype == np.int16 and arr.dtype.isnative


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_roundtrip(tmp_path, gz, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    write_idx(tmp_path / "a.idx", a, compress=gz)
    assert (tmp_path / "a.idx").read_bytes()[:2] == (b"\x1f\x8b" if gz else b"\x00\x00")
    b = read_idx(tmp_path / "a.idx")
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "blob,msg",
    [
        (b"\x08\x03\x00\x00\x00\x00\x00\x01", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "bad magic"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "longer than its header"),
        (b"\x00\x00\x08\x02\x00\x00", "header"),
    ],
)
def test_idx_rejects_bad_files(tmp_path, blob, msg):
    (tmp_path / "f").write_bytes(blob)
    with pytest.raises(NSPError, match=msg) as e:
        read_idx(tmp_path / "f")
    assert str(tmp_path / "f") in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------- prepare on IDX arrays


@pytest.mark.parametrize("gz", [True, False])
def test_prepare_idx_split_properties(tmp_path, make_idx_dataset, gz):
    src = make_idx_dataset(tmp_path / "raw", gz=gz)
    out = tmp_path / "prepared"
    m = prepare_splits(
        dataset="fashion_mnist", data_dir=str(tmp_path / "raw"), out_dir=str(out),
        labeled_per_class=4, val_per_class=3, seed=0, image_size=32, channels=1, progress=False,
    )  # fmt: skip
    assert m["splits"]["labeled"]["per_class"] == [4] * 10
    assert m["splits"]["val"]["per_class"] == [3] * 10
    assert m["splits"]["unlabeled"]["per_class"] == [23] * 10
    assert m["splits"]["test"]["per_class"] == [5] * 10
    assert m["class_names"][0] == "T-shirt/top" and m["image_shape"] == [32, 32, 1]

    seen = {}
    for split in ("labeled", "val", "unlabeled"):
        s = load_split(out, split)
        assert s.images.dtype == np.uint8 and s.images.shape == (len(s), 32, 32, 1)
        assert isinstance(s.images, np.memmap)
        idx = orig_index(np.asarray(s.images), 2, 2)  # padded by 2 on each side
        seen[split] = idx
        padded = np.pad(src["train_x"][idx], ((0, 0), (2, 2), (2, 2)))[..., None]
        np.testing.assert_array_equal(s.images, padded)
        if split == "unlabeled":
            assert s.labels is None
            np.testing.assert_array_equal(load_unlabeled_truth(out), src["train_y"][idx])
        else:
            assert s.labels.dtype == np.int64
            np.testing.assert_array_equal(s.labels, src["train_y"][idx])
    all_idx = np.concatenate(list(seen.values()))
    assert len(np.unique(all_idx)) == len(all_idx) == 300  # disjoint and covering
    test = load_split(out, "test")
    np.testing.assert_array_equal(orig_index(np.asarray(test.images), 2, 2), np.arange(50))
    np.testing.assert_array_equal(test.labels, src["test_y"])
    # unlabeled labels live only in unlabeled_truth.npy
    assert sorted(p.name for p in out.iterdir() if "unlabeled" in p.name) == [
        "unlabeled_truth.npy",
        "unlabeled_x.npy",
    ]
    assert m["splits"]["unlabeled"]["files"] == {
        "x": "unlabeled_x.npy",
        "truth": "unlabeled_truth.npy",
    }
    assert np.load(out / "unlabeled_x.npy").shape == (230, 32, 32, 1)
    # manifest hashes are right
    read_manifest(out, verify=True)
    assert json.loads((out / "manifest.json").read_text()) == m


def test_prepare_is_byte_deterministic(tmp_path, make_idx_dataset):
    make_idx_dataset(tmp_path / "raw")
    kw = dict(dataset="mnist", data_dir=str(tmp_path / "raw"), labeled_per_class=5, val_per_class=5,
              image_size=32, channels=1, progress=False)  # fmt: skip
    prepare_splits(out_dir=str(tmp_path / "a"), seed=3, **kw)
    prepare_splits(out_dir=str(tmp_path / "b"), seed=3, **kw)
    prepare_splits(out_dir=str(tmp_path / "c"), seed=4, **kw)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(names) == 9
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    assert (tmp_path / "a" / "labeled_x.npy").read_bytes() != (
        tmp_path / "c" / "labeled_x.npy"
    ).read_bytes()
    assert read_manifest(tmp_path / "a")["class_names"] == [str(i) for i in range(10)]


def test_stratified_split_worked_example():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2])
    idx = stratified_split(
        y, class_names=["a", "b", "c"], labeled_per_class=1, val_per_class=1, seed=0
    )
    for k in ("labeled", "val"):
        assert np.bincount(y[idx[k]], minlength=3).tolist() == [1, 1, 1]
    assert np.bincount(y[idx["unlabeled"]], minlength=3).tolist() == [2, 2, 1]
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(11))
    with pytest.raises(NSPError, match="class 'c' has 3 training images"):
        stratified_split(
            y, class_names=["a", "b", "c"], labeled_per_class=2, val_per_class=2, seed=0
        )


def test_pool_split_worked_example():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2])
    rest, pool = pool_split(y, class_names=["a", "b", "c"], per_class=1, seed=0)
    assert np.bincount(y[pool], minlength=3).tolist() == [1, 1, 1]
    assert sorted(np.concatenate([rest, pool]).tolist()) == list(range(11))
    np.testing.assert_array_equal(
        pool, pool_split(y, class_names=["a", "b", "c"], per_class=1, seed=0)[1]
    )
    rest0, pool0 = pool_split(y, class_names=["a", "b", "c"], per_class=0, seed=0)
    assert pool0.size == 0 and rest0.tolist() == list(range(11))
    with pytest.raises(NSPError, match="class 'c' has 3 training images.*a_pool_per_class"):
        pool_split(y, class_names=["a", "b", "c"], per_class=3, seed=0)
    # no pool: exactly the plain stratified split
    plain = stratified_split(
        y, class_names=["a", "b", "c"], labeled_per_class=1, val_per_class=1, seed=4
    )
    same = split_with_pool(y, class_names=["a", "b", "c"], labeled_per_class=1, val_per_class=1,
                           a_pool_per_class=0, seed=4)  # fmt: skip
    assert set(same) == set(plain) and all(np.array_equal(same[k], plain[k]) for k in plain)


def test_prepare_with_a_pool_holds_it_out_of_every_split(tmp_path, make_idx_dataset):
    src = make_idx_dataset(tmp_path / "raw")
    kw = dict(dataset="mnist", data_dir=str(tmp_path / "raw"), labeled_per_class=4, val_per_class=3,
              seed=0, image_size=32, channels=1, progress=False)  # fmt: skip
    m = prepare_splits(out_dir=str(tmp_path / "p"), a_pool_per_class=6, **kw)
    assert m["params"]["a_pool_per_class"] == 6
    assert m["splits"]["apool"]["per_class"] == [6] * 10 and m["splits"]["apool"]["count"] == 60
    assert m["splits"]["apool"]["files"] == {"x": "apool_x.npy", "y": "apool_y.npy"}
    assert m["splits"]["labeled"]["per_class"] == [4] * 10
    assert m["splits"]["unlabeled"]["per_class"] == [30 - 6 - 7] * 10
    seen = {s: orig_index(np.asarray(load_split(tmp_path / "p", s).images), 2, 2)
            for s in ("labeled", "val", "unlabeled", "apool")}  # fmt: skip
    all_idx = np.concatenate(list(seen.values()))
    assert len(np.unique(all_idx)) == len(all_idx) == 300  # disjoint and covering
    pool = load_split(tmp_path / "p", "apool")
    np.testing.assert_array_equal(pool.labels, src["train_y"][seen["apool"]])
    read_manifest(tmp_path / "p", verify=True)
    # a_pool_per_class=0 writes the same bytes as a prepare without the option
    prepare_splits(out_dir=str(tmp_path / "a"), **kw)
    prepare_splits(out_dir=str(tmp_path / "b"), a_pool_per_class=0, **kw)
    names = sorted(q.name for q in (tmp_path / "a").iterdir())
    assert (
        names == sorted(q.name for q in (tmp_path / "b").iterdir()) and "apool_x.npy" not in names
    )
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    with pytest.raises(NSPError, match="no 'apool' split") as e:
        load_split(tmp_path / "a", "apool")
    assert "a_pool_per_class" in str(e.value) and "\n" not in str(e.value)


def test_cli_a_pool_option_and_too_large_pool(tmp_path, capsys, make_idx_dataset):
    make_idx_dataset(tmp_path / "raw")
    rc, err = cli(capsys, "--dataset", "mnist", "--data-dir", str(tmp_path / "raw"), "--out",
                  str(tmp_path / "o"), "--labeled-per-class", "2", "--val-per-class", "2",
                  "--a-pool-per-class", "3")  # fmt: skip
    assert rc == 0, err
    assert read_manifest(tmp_path / "o")["splits"]["apool"]["count"] == 30
    rc, err = cli(capsys, "--dataset", "mnist", "--data-dir", str(tmp_path / "raw"), "--out",
                  str(tmp_path / "o2"), "--a-pool-per-class", "30")  # fmt: skip
    assert rc == 2 and "a_pool_per_class" in err and "\n" not in err


def test_channels_3_and_crop(tmp_path, make_idx_dataset):
    src = make_idx_dataset(tmp_path / "raw", train_per_class=3, test_per_class=1)
    prepare_splits(dataset="mnist", data_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "o"),
                   labeled_per_class=1, val_per_class=1, seed=0, image_size=24, channels=3,
                   progress=False)  # fmt: skip
    t = load_split(tmp_path / "o", "test")
    assert t.image_shape == (24, 24, 3) and t.num_classes == 10
    x = t.get_batch(np.arange(len(t)))
    np.testing.assert_array_equal(x[..., 0], src["test_x"][:, 2:26, 2:26])  # 28 -> 24 centre crop
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_luma_matches_pil():
    rgb = np.random.default_rng(0).integers(0, 256, size=(17, 19, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(luma(rgb)[..., 0], expected)
    assert luma(np.array([[255, 0, 0]], np.uint8))[0, 0] == 76  # 0.299 * 255


# ---------------------------------------------------------------------------------------- CIFAR


def test_prepare_cifar10(tmp_path, make_cifar):
    src = make_cifar(tmp_path / "dl" / "cifar-10-batches-py", kind=10)
    m = prepare_splits(dataset="cifar10", data_dir=str(tmp_path / "dl"), out_dir=str(tmp_path / "o"),
                       labeled_per_class=2, val_per_class=2, seed=0, image_size=32, channels=3,
                       progress=False)  # fmt: skip
    assert m["class_names"] == [f"class_{i}" for i in range(10)]
    assert m["splits"]["unlabeled"]["count"] == 80 and m["splits"]["test"]["count"] == 30
    lab = load_split(tmp_path / "o", "labeled")
    idx = orig_index(np.asarray(lab.images))
    np.testing.assert_array_equal(lab.images, src["train_x"][idx])
    np.testing.assert_array_equal(lab.labels, src["train_y"][idx])
    np.testing.assert_array_equal(load_split(tmp_path / "o", "test").images, src["test_x"])


def test_prepare_cifar100_fine_labels_to_grey(tmp_path, make_cifar):
    src = make_cifar(tmp_path / "c100", kind=100)
    prepare_splits(dataset="cifar100", data_dir=str(tmp_path / "c100"), out_dir=str(tmp_path / "o"),
                   labeled_per_class=1, val_per_class=1, seed=0, image_size=32, channels=1,
                   progress=False)  # fmt: skip
    t = load_split(tmp_path / "o", "test")
    assert t.num_classes == 20
    np.testing.assert_array_equal(t.labels, src["test_y"])
    np.testing.assert_array_equal(t.images, luma(src["test_x"]))


def test_cifar_restricted_unpickler_refuses_code(tmp_path, capsys, make_cifar):
    make_cifar(tmp_path / "c10", kind=10)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "c10" / "data_batch_2").write_bytes(
        pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    )
    rc, err = cli(capsys, "--dataset", "cifar10", "--data-dir", str(tmp_path / "c10"),
                  "--out", str(tmp_path / "o"))  # fmt: skip
    assert rc == 2 and "data_batch_2" in err and "not allowed" in err
    assert not marker.exists() and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- ImageFolder


def test_preprocess_worked_examples():
    same = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    out = preprocess_pil(Image.fromarray(same), image_size=16, channels=3)
    np.testing.assert_array_equal(out, same)
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 20:] = 255  # left half black, right half white; shorter side 20 -> 10, crop x 5..15
    out = preprocess_pil(Image.fromarray(wide), image_size=10, channels=3)
    assert out.shape == (10, 10, 3)
    assert (out[:, 0] == 0).all() and (out[:, -1] == 255).all() and (out == out[:1]).all()
    tall = np.full((40, 20), 50, np.uint8)
    tall[20:] = 200
    out = preprocess_pil(Image.fromarray(tall), image_size=10, channels=1)
    assert out.shape == (10, 10, 1) and (out[0] == 50).all() and (out[-1] == 200).all()
    out = preprocess_pil(Image.fromarray(tall), image_size=10, channels=3, resize_shorter=20)
    assert out.shape == (10, 10, 3) and (out[0] == 50).all() and (out[-1] == 200).all()


def test_imagefolder_materialized_and_lazy_agree(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "tree", per_class=6, test_per_class=2, test_dir="val")
    kw = dict(dataset="imagefolder", data_dir=str(tmp_path / "tree"), labeled_per_class=2,
              val_per_class=1, seed=0, image_size=16, channels=3, progress=False, workers=2)  # fmt: skip
    mm = prepare_splits(out_dir=str(tmp_path / "mem"), materialize="auto", **kw)
    ml = prepare_splits(out_dir=str(tmp_path / "lazy"), materialize="never", hash_images=True, **kw)
    assert mm["storage"] == "array" and ml["storage"] == "lazy"
    assert ml["class_names"] == ["cat", "dog", "fox"] and ml["layout"] == "split"
    assert (tmp_path / "lazy" / "labeled.csv").is_file() and not (
        tmp_path / "lazy" / "labeled_x.npy"
    ).exists()
    for split, n in (("labeled", 6), ("val", 3), ("unlabeled", 9), ("test", 6)):
        a, b = load_split(tmp_path / "mem", split), load_split(tmp_path / "lazy", split)
        assert len(a) == len(b) == n and b.image_shape == (16, 16, 3)
        np.testing.assert_array_equal(a.images, b.get_batch(np.arange(n)))
        if split == "unlabeled":
            assert a.labels is None and b.labels is None
        else:
            np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(
        load_unlabeled_truth(tmp_path / "lazy"), load_unlabeled_truth(tmp_path / "mem")
    )
    rows = (tmp_path / "lazy" / "unlabeled.csv").read_text().splitlines()
    assert rows[0] == "path,label,width,height,sha256"
    first = rows[1].split(",")
    assert first[0].startswith("train/") and first[1] == "" and len(first[4]) == 64
    w, h = Image.open(tmp_path / "tree" / first[0]).size
    assert (int(first[2]), int(first[3])) == (w, h)


def test_imagefolder_single_layout_holds_out_test(tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "flat", per_class=10, test_dir=None)
    m = prepare_splits(dataset="imagefolder", data_dir=str(tmp_path / "flat"), out_dir=str(tmp_path / "o"),
                       labeled_per_class=3, val_per_class=2, seed=1, image_size=8, channels=1,
                       test_fraction=0.2, progress=False)  # fmt: skip
    assert m["layout"] == "single"
    assert m["splits"]["test"]["per_class"] == [2, 2, 2]
    assert m["splits"]["unlabeled"]["per_class"] == [3, 3, 3]


def test_lazy_split_rejects_unsafe_and_changed_files(tmp_path, make_imagefolder):
    files = make_imagefolder(tmp_path / "tree")
    prepare_splits(dataset="imagefolder", data_dir=str(tmp_path / "tree"), out_dir=str(tmp_path / "o"),
                   labeled_per_class=1, val_per_class=1, seed=0, image_size=8, channels=1,
                   materialize="never", hash_images=True, progress=False)  # fmt: skip
    csv_path = tmp_path / "o" / "test.csv"
    good = csv_path.read_text()
    lines = good.splitlines()
    rel = lines[1].split(",")[0]
    for bad in ("../outside.png", "/etc/passwd", "train/../../x.png"):
        csv_path.write_text("\n".join([lines[0], lines[1].replace(rel, bad, 1), *lines[2:]]) + "\n")
        with pytest.raises(NSPError, match="unsafe path") as e:
            load_split(tmp_path / "o", "test")
        assert "test.csv" in str(e.value)
    csv_path.write_text(good)
    t = load_split(tmp_path / "o", "test")
    assert t.get_batch(np.array([0])).shape == (1, 8, 8, 1)
    Image.new("RGB", (9, 9)).save(tmp_path / "tree" / rel)  # file changed after prepare
    with pytest.raises(NSPError, match="sha256"):
        t.get_batch(np.array([0]))
    assert len(files["train"]) == 18


# --------------------------------------------------------------------------- bad input via CLI


def _corrupt_gz(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-200])


def _bad_magic(p: Path) -> None:
    data = bytearray(gzip.decompress(p.read_bytes()))
    data[0:4] = b"\x12\x34\x56\x78"
    p.write_bytes(gzip.compress(bytes(data)))


def _short_body(p: Path) -> None:
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-28]))


def _fewer_labels(p: Path) -> None:
    write_idx(p, read_idx(p)[:-1], compress=True)


@pytest.mark.parametrize(
    "fname,damage,expected",
    [
        ("train-images-idx3-ubyte.gz", _corrupt_gz, "corrupt or truncated gzip"),
        ("t10k-images-idx3-ubyte.gz", _bad_magic, "bad magic"),
        ("train-images-idx3-ubyte.gz", _short_body, "is truncated"),
        ("train-labels-idx1-ubyte.gz", _fewer_labels, "300 images but"),
    ],
)
def test_cli_rejects_corrupt_idx(tmp_path, capsys, make_idx_dataset, fname, damage, expected):
    make_idx_dataset(tmp_path / "raw")
    damage(tmp_path / "raw" / fname)
    out = tmp_path / "new" / "prepared"
    rc, err = cli(capsys, "--data-dir", str(tmp_path / "raw"), "--out", str(out))
    assert rc == 2, err
    assert expected in err and fname in err and len(err.splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_cli_missing_dataset_dir(tmp_path, capsys, monkeypatch):
    rc, err = cli(capsys, "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert rc == 2 and "apt-get install dataset-fashion-mnist" in err and "--data-dir" in err
    assert str(tmp_path / "nope") in err and len(err.splitlines()) == 1
    monkeypatch.setenv("NSP_DATA_DIR", str(tmp_path / "envdir"))
    rc, err = cli(capsys, "--out", str(tmp_path / "o"))
    assert rc == 2 and str(tmp_path / "envdir") in err and "NSP_DATA_DIR" in err
    rc, err = cli(
        capsys,
        "--dataset",
        "mnist",
        "--out",
        str(tmp_path / "o"),
        "--data-dir",
        str(tmp_path / "x"),
    )
    assert rc == 2 and "apt-get" not in err
    assert not (tmp_path / "o").exists()


def test_cli_unknown_dataset_and_too_many_per_class(tmp_path, capsys, make_idx_dataset):
    rc, err = cli(capsys, "--dataset", "imagenet21k", "--out", str(tmp_path / "o"))
    assert (
        rc == 2
        and "imagenet21k" in err
        and "fashion_mnist, mnist, cifar10, cifar100, imagefolder" in err
    )
    make_idx_dataset(tmp_path / "raw")
    rc, err = cli(capsys, "--data-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "o"),
                  "--labeled-per-class", "20", "--val-per-class", "11")  # fmt: skip
    assert rc == 2 and "'T-shirt/top'" in err and "30 training images" in err and "= 31" in err
    assert not (tmp_path / "o").exists()


def test_cli_unreadable_cifar_pickle(tmp_path, capsys, make_cifar):
    make_cifar(tmp_path / "c10", kind=10)
    (tmp_path / "c10" / "test_batch").write_bytes(b"this is not a pickle")
    rc, err = cli(
        capsys,
        "--dataset",
        "cifar10",
        "--data-dir",
        str(tmp_path / "c10"),
        "--out",
        str(tmp_path / "o"),
    )
    assert (
        rc == 2
        and "unreadable CIFAR pickle" in err
        and "test_batch" in err
        and len(err.splitlines()) == 1
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("materialize", ["auto", "never"])
@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_cli_corrupt_image(tmp_path, capsys, make_imagefolder, materialize, kind):
    make_imagefolder(tmp_path / "tree")
    bad = tmp_path / "tree" / "train" / "dog" / "zz_bad.png"
    if kind == "garbage":
        bad.write_bytes(b"\x89PNG not really")
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:300])
    base = ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "tree"), "--materialize", materialize,
            "--labeled-per-class", "2", "--val-per-class", "1", "--image-size", "8"]  # fmt: skip
    rc, err = cli(capsys, *base, "--out", str(tmp_path / "o"))
    assert rc == 2 and "corrupt image" in err and str(bad) in err and "skip_corrupt" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()
    rc, _ = cli(capsys, *base, "--out", str(tmp_path / "o"), "--skip-corrupt")
    assert rc == 0
    m = read_manifest(tmp_path / "o")
    assert m["skipped_corrupt"] == {"count": 1, "paths": ["train/dog/zz_bad.png"]}
    assert m["splits"]["unlabeled"]["per_class"] == [3, 3, 3]


def test_cli_empty_class(tmp_path, capsys, make_imagefolder):
    make_imagefolder(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "emu").mkdir()
    rc, err = cli(
        capsys,
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(tmp_path / "tree"),
        "--out",
        str(tmp_path / "o"),
    )
    assert rc == 2 and str(tmp_path / "tree" / "train" / "emu") in err and "no images" in err
    assert not (tmp_path / "o").exists()


def test_cli_failure_keeps_previous_output_and_params_file(tmp_path, capsys, make_idx_dataset):
    make_idx_dataset(tmp_path / "raw")
    (tmp_path / "p.yaml").write_text(
        "train: {epochs: 3}\nprepare:\n  dataset: fashion_mnist\n  data_dir: raw\n  labeled_per_class: 3\n"
        "  val_per_class: 2\n  seed: 5\n  image_size: 32\n  channels: 1\n"
    )
    rc, _ = cli(capsys, "--params", "p.yaml", "--out", "o", "--val-per-class", "4")
    out = capsys.readouterr().out
    assert rc == 0
    m = read_manifest(tmp_path / "o")
    assert (
        m["params"]["labeled_per_class"] == 3
        and m["params"]["val_per_class"] == 4
        and m["params"]["seed"] == 5
    )
    before = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()}
    rc, err = cli(capsys, "--params", "p.yaml", "--out", "o", "--labeled-per-class", "99")
    assert rc == 2 and "labeled_per_class" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.")] == []
    (tmp_path / "bad.yaml").write_text("prepare:\n  labelled_per_class: 3\n")
    rc, err = cli(capsys, "--params", "bad.yaml", "--out", "o2")
    assert rc == 2 and "labelled_per_class" in err and "bad.yaml" in err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "keep.txt").write_text("x")
    rc, err = cli(capsys, "--params", "p.yaml", "--out", "junk")
    assert (
        rc == 2 and "not an nsp prepared dir" in err and (tmp_path / "junk" / "keep.txt").exists()
    )
    del out


def test_load_split_errors(tmp_path, make_idx_dataset):
    with pytest.raises(NSPError, match="run `nsp prepare` first"):
        load_split(tmp_path / "none", "labeled")
    make_idx_dataset(tmp_path / "raw", train_per_class=3, test_per_class=1)
    prepare_splits(dataset="mnist", data_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "o"),
                   labeled_per_class=1, val_per_class=1, seed=0, image_size=32, channels=1,
                   progress=False)  # fmt: skip
    with pytest.raises(NSPError, match="unknown split 'train'"):
        load_split(tmp_path / "o", "train")
    arr = np.load(tmp_path / "o" / "val_y.npy")
    np.save(tmp_path / "o" / "val_y.npy", arr[::-1])
    with pytest.raises(NSPError, match="val_y.npy"):
        read_manifest(tmp_path / "o", verify=True)


# ------------------------------------------------------------------------------ help and real data


def _nsp_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("nsp")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nsp.cli"]


def test_help_via_console_script():
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    top = subprocess.run(
        [*_nsp_cmd(), "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert top.returncode == 0 and "prepare" in top.stdout
    sub = subprocess.run(
        [*_nsp_cmd(), "prepare", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert sub.returncode == 0
    for opt in ("--params", "--dataset", "--data-dir", "--out", "--labeled-per-class", "--val-per-class",
                "--seed", "--image-size", "--channels"):  # fmt: skip
        assert opt in sub.stdout


@pytest.mark.skipif(
    not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist(tmp_path, capsys):
    rc = main(["prepare", "--no-progress", "--out", str(tmp_path / "fm"), "--labeled-per-class", "100",
               "--val-per-class", "100", "--a-pool-per-class", "300"])  # fmt: skip
    line = capsys.readouterr().out.strip()
    assert rc == 0 and line.startswith("prepared fashion_mnist")
    m = read_manifest(tmp_path / "fm")
    counts = {s: m["splits"][s]["count"] for s in ("labeled", "val", "unlabeled", "test", "apool")}
    assert counts == {
        "labeled": 1000,
        "val": 1000,
        "unlabeled": 55000,
        "test": 10000,
        "apool": 3000,
    }
    assert m["splits"]["test"]["per_class"] == [1000] * 10
    assert m["splits"]["unlabeled"]["per_class"] == [5500] * 10
    t = load_split(tmp_path / "fm", "test")
    assert t.images.shape == (10000, 32, 32, 1) and t.image_shape == (32, 32, 1)
    assert not np.asarray(t.images[:, :2]).any() and not np.asarray(t.images[:, :, 30:]).any()
    raw = read_idx(FMNIST_DIR / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(t.images[:5, 2:30, 2:30, 0], raw[:5])
    shutil.rmtree(tmp_path / "fm")
