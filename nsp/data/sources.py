"""Dataset sources: names, data-directory resolution, array loading and pixel canonicalisation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nsp.errors import NSPError

KNOWN_DATASETS: tuple[str, ...] = ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder")
ARRAY_DATASETS: frozenset[str] = frozenset({"fashion_mnist", "mnist", "cifar10", "cifar100"})

DEFAULT_DATA_DIRS: dict[str, str | None] = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": None,
    "cifar10": None,
    "cifar100": None,
    "imagefolder": None,
}

FASHION_MNIST_CLASSES: list[str] = [
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
MNIST_CLASSES: list[str] = [str(i) for i in range(10)]

# IDX file stems: (canonical, alternative spelling used by some MNIST mirrors)
IDX_FILES: dict[str, tuple[str, str]] = {
    "train_x": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_y": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_x": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_y": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


@dataclass
class ArraySource:
    """An in-memory dataset: uint8 images (N, H, W, C), int64 labels, class names."""

    dataset: str
    root: Path
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    files: list[Path] = field(default_factory=list)


def check_dataset(dataset: str) -> str:
    """Return ``dataset`` if known, else raise an NSPError listing the known names."""
    if dataset not in KNOWN_DATASETS:
        raise NSPError(
            f"unknown dataset {dataset!r} (--dataset / prepare.dataset); known: {', '.join(KNOWN_DATASETS)}"
        )
    return dataset


def resolve_data_dir(dataset: str, data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` if given, else ``$NSP_DATA_DIR``, else the dataset's default; must exist."""
    check_dataset(dataset)
    chosen = data_dir or os.environ.get("NSP_DATA_DIR") or DEFAULT_DATA_DIRS[dataset]
    if not chosen:
        raise NSPError(
            f"dataset {dataset!r} has no default directory; pass --data-dir DIR or set NSP_DATA_DIR"
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        how = "pass --data-dir DIR or set NSP_DATA_DIR"
        if dataset == "fashion_mnist":
            how = f"install it with `apt-get install dataset-fashion-mnist`, or {how}"
        raise NSPError(f"dataset directory {path} for {dataset!r} not found; {how}")
    return path


def _find_idx(root: Path, key: str) -> Path:
    for stem in IDX_FILES[key]:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
    raise NSPError(
        f"{root / IDX_FILES[key][0]}[.gz] not found; put the four IDX files in {root} "
        "or pass --data-dir pointing at them"
    )


def load_idx_source(dataset: str, root: Path) -> ArraySource:
    """Load an MNIST-style dataset (four IDX files) from ``root``."""
    from nsp.data.idx import read_idx

    paths = {k: _find_idx(root, k) for k in IDX_FILES}
    arrays = {k: read_idx(p) for k, p in paths.items()}
    names = FASHION_MNIST_CLASSES if dataset == "fashion_mnist" else MNIST_CLASSES
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        px, py = paths[f"{split}_x"], paths[f"{split}_y"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise NSPError(
                f"IDX image file {px} must hold uint8 (N, H, W) data, got {x.dtype} {x.shape}; re-download it"
            )
        if y.ndim != 1:
            raise NSPError(f"IDX label file {py} must be 1-D, got shape {y.shape}; re-download it")
        if len(x) != len(y):
            raise NSPError(
                f"{px} has {len(x)} images but {py} has {len(y)} labels; re-download both files"
            )
        y = y.astype(np.int64)
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise NSPError(
                f"IDX label file {py} has labels outside 0..{len(names) - 1}; re-download it"
            )
        out[f"{split}_x"] = x[..., None] if x.ndim == 3 else x
        out[f"{split}_y"] = y
    return ArraySource(
        dataset=dataset, root=root, class_names=list(names), files=list(paths.values()), **out
    )


def load_array_source(dataset: str, root: Path) -> ArraySource:
    """Load one of the in-memory datasets (``fashion_mnist``, ``mnist``, ``cifar10``, ``cifar100``)."""
    check_dataset(dataset)
    if dataset in ("fashion_mnist", "mnist"):
        return load_idx_source(dataset, root)
    from nsp.data.cifar import load_cifar10, load_cifar100

    d = load_cifar10(root) if dataset == "cifar10" else load_cifar100(root)
    return ArraySource(
        dataset=dataset,
        root=d["root"],
        train_x=d["train_x"],
        train_y=d["train_y"],
        test_x=d["test_x"],
        test_y=d["test_y"],
        class_names=d["class_names"],
        files=d["files"],
    )


def luma(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) -> grey uint8 (..., 1) with PIL's fixed-point ITU-R 601-2 luma."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    grey = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return grey.astype(np.uint8)[..., None]


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, H, W, channels): 1->3 replicates grey, 3->1 uses luma."""
    c = x.shape[-1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if c == 3 and channels == 1:
        return luma(x)
    raise NSPError(f"cannot convert {c}-channel images to channels={channels}; use channels 1 or 3")


def fit_size(x: np.ndarray, image_size: int, *, fit: str = "pad") -> np.ndarray:
    """(N, H, W, C) -> (N, S, S, C).

    ``fit='pad'``: zero-pad centred (extra pixel at the bottom/right) where smaller, centre-crop where
    larger (28x28 -> 32x32 pads 2 on each side). ``fit='resize'``: bilinear shorter side to S then a
    centre crop (PIL, per image).
    """
    n, h, w, c = x.shape
    s = int(image_size)
    if (h, w) == (s, s):
        return x
    if fit == "pad":
        out = np.zeros((n, s, s, c), dtype=x.dtype)
        # source window (crop) and destination window (pad) per axis
        sy, dy = max(0, (h - s) // 2), max(0, (s - h) // 2)
        sx, dx = max(0, (w - s) // 2), max(0, (s - w) // 2)
        hh, ww = min(h, s), min(w, s)
        out[:, dy : dy + hh, dx : dx + ww] = x[:, sy : sy + hh, sx : sx + ww]
        return out
    if fit == "resize":
        from PIL import Image

        from nsp.data.imagefolder import preprocess_pil

        out = np.empty((n, s, s, c), dtype=np.uint8)
        for i in range(n):
            img = Image.fromarray(x[i, :, :, 0] if c == 1 else x[i])
            out[i] = preprocess_pil(img, image_size=s, channels=c)
        return out
    raise NSPError(f"unknown fit {fit!r} (prepare.fit); use 'pad' or 'resize'")


def canonicalize(x: np.ndarray, *, image_size: int, channels: int, fit: str = "pad") -> np.ndarray:
    """Bring uint8 images (N, H, W, C) to the canonical (N, image_size, image_size, channels)."""
    if x.shape[-1] == 3 and channels == 1:
        x = convert_channels(x, 1)  # shrink first: less work for the resize
        return np.ascontiguousarray(fit_size(x, image_size, fit=fit))
    return np.ascontiguousarray(convert_channels(fit_size(x, image_size, fit=fit), channels))
