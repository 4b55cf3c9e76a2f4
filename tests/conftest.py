"""Shared pytest fixtures. Data fixtures write small real dataset files (IDX, CIFAR pickles, images)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Tests run many small processes side by side: one torch thread each avoids oversubscription.
os.environ.setdefault("NSP_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _indexed_images(n: int, h: int, w: int, c: int | None, seed: int) -> np.ndarray:
    """Random uint8 images whose first two pixels encode the image index (i % 256, i // 256)."""
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    i = np.arange(n)
    x[:, 0, 0, ...] = (i % 256)[:, None] if c else i % 256
    x[:, 0, 1, ...] = (i // 256)[:, None] if c else i // 256
    return x


@pytest.fixture
def make_idx_dataset() -> Callable[..., dict[str, np.ndarray]]:
    """Factory: write the four MNIST-style IDX files into a dir; returns the arrays written."""
    from nsp.data.idx import write_idx

    def make(
        root: Path,
        *,
        train_per_class: int = 30,
        test_per_class: int = 5,
        classes: int = 10,
        gz: bool = True,
        hw: int = 28,
    ) -> dict[str, np.ndarray]:
        root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        out = {}
        for split, per, stem in (
            ("train", train_per_class, "train"),
            ("test", test_per_class, "t10k"),
        ):
            y = rng.permutation(np.repeat(np.arange(classes, dtype=np.uint8), per))
            x = _indexed_images(len(y), hw, hw, None, seed=2 if split == "train" else 3)
            sfx = ".gz" if gz else ""
            write_idx(root / f"{stem}-images-idx3-ubyte{sfx}", x, compress=gz)
            write_idx(root / f"{stem}-labels-idx1-ubyte{sfx}", y, compress=gz)
            out[f"{split}_x"], out[f"{split}_y"] = x, y
        return out

    return make


def _cifar_blob(x: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the CIFAR (N, 3072) channel-major row layout."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))


@pytest.fixture
def make_cifar() -> Callable[..., dict[str, np.ndarray]]:
    """Factory: write CIFAR-10 (``kind=10``) or CIFAR-100 (``kind=100``) python-version pickles."""

    def dump(path: Path, obj: object) -> None:
        path.write_bytes(pickle.dumps(obj, protocol=2))  # the official files are protocol-2 pickles

    def make(
        root: Path, *, kind: int = 10, train_per_class: int = 12, test_per_class: int = 3
    ) -> dict[str, np.ndarray]:
        root.mkdir(parents=True, exist_ok=True)
        classes = 10 if kind == 10 else 20  # a 20-class "CIFAR-100" keeps the fixture small
        rng = np.random.default_rng(4)
        train_y = rng.permutation(np.repeat(np.arange(classes), train_per_class))
        test_y = rng.permutation(np.repeat(np.arange(classes), test_per_class))
        train_x = _indexed_images(len(train_y), 32, 32, 3, seed=5)
        test_x = _indexed_images(len(test_y), 32, 32, 3, seed=6)
        names = [f"class_{i}".encode() for i in range(classes)]
        if kind == 10:
            dump(root / "batches.meta", {b"label_names": names, b"num_vis": 3072})
            for b, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
                dump(
                    root / f"data_batch_{b}",
                    {
                        b"batch_label": b"batch",
                        b"labels": train_y[part].tolist(),
                        b"data": _cifar_blob(train_x[part]),
                    },
                )
            dump(root / "test_batch", {b"labels": test_y.tolist(), b"data": _cifar_blob(test_x)})
        else:
            dump(root / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"]})
            for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
                dump(
                    root / name,
                    {
                        b"fine_labels": y.tolist(),
                        b"coarse_labels": [0] * len(y),
                        b"data": _cifar_blob(x),
                    },
                )
        return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}

    return make


@pytest.fixture
def make_imagefolder() -> Callable[..., dict[str, list[Path]]]:
    """Factory: an ImageFolder tree of PNG/JPEG files of mixed sizes; returns the files per split."""
    from PIL import Image

    def make(
        root: Path,
        *,
        classes: tuple[str, ...] = ("cat", "dog", "fox"),
        per_class: int = 6,
        test_per_class: int = 2,
        test_dir: str | None = "val",
    ) -> dict[str, list[Path]]:
        rng = np.random.default_rng(7)
        files: dict[str, list[Path]] = {"train": [], "test": []}
        splits = (
            [("train", per_class), (test_dir, test_per_class)] if test_dir else [(None, per_class)]
        )
        for split, n in splits:
            for c in classes:
                d = root / split / c if split else root / c
                d.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    w, h = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                    ext = "png" if i % 2 == 0 else "jpg"
                    p = d / f"img{i}.{ext}"
                    Image.fromarray(arr).save(p)
                    files["test" if split == test_dir and test_dir else "train"].append(p)
        return files

    return make


def learnable_images(labels: np.ndarray, *, hw: int = 28, seed: int = 0) -> np.ndarray:
    """Grey images a tiny CNN separates quickly, robust to RandAugment's geometry: class k is a ring
    of radius 2 + 1.2 k (rotation-invariant, little changed by small shifts), jittered, on noise."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    x = rng.normal(20, 10, size=(n, hw, hw))
    yy, xx = np.mgrid[0:hw, 0:hw]
    for i, k in enumerate(labels):
        cy, cx = hw / 2 + rng.uniform(-1, 1), hw / 2 + rng.uniform(-1, 1)
        r = np.hypot(yy - cy, xx - cx)
        x[i] += 220 * np.exp(-((r - (2 + 1.2 * int(k))) ** 2) / (2 * 0.7**2))
    return x.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def learnable_idx_dir(tmp_path_factory) -> Path:
    """A small MNIST-style IDX dataset (10 classes) in which classes are easy to learn."""
    from nsp.data.idx import write_idx

    root = tmp_path_factory.mktemp("learnable_idx")
    rng = np.random.default_rng(7)
    for stem, per, seed in (("train", 60, 1), ("t10k", 20, 2)):
        y = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per))
        write_idx(
            root / f"{stem}-images-idx3-ubyte.gz", learnable_images(y, seed=seed), compress=True
        )
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", y, compress=True)
    return root


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, learnable_idx_dir) -> dict:
    """Run the real `dvc repro` once on the tiny profile (2 generations) and share the result."""
    from tests.pipeline_helpers import TINY_PARAMS, env_for, make_project, run

    root = make_project(tmp_path_factory.mktemp("tiny_pipeline") / "proj", TINY_PARAMS)
    env = env_for(root, learnable_idx_dir)
    first = run(["dvc", "repro"], root, env)
    return {"root": root, "env": env, "first": first, "params": TINY_PARAMS}
