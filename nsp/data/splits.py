"""Reading side of ``nsp prepare``: ``load_split``, ``load_unlabeled_truth``, ``read_manifest``.

Training code reads images and labels only through :class:`Split`. The unlabeled split has no labels
(``Split.labels is None``); its true labels are read only by :func:`load_unlabeled_truth`, for
reporting pseudo-label accuracy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nsp.errors import NSPError, one_line

SPLITS: tuple[str, ...] = ("labeled", "val", "unlabeled", "test")
#: Optional split written by ``prepare`` with ``a_pool_per_class > 0``: the -A candidate pool.
POOL_SPLIT = "apool"


def read_manifest(prepared_dir: str | os.PathLike, *, verify: bool = False) -> dict[str, Any]:
    """Load ``manifest.json`` of a prepared dir; with ``verify`` re-hash every file it lists."""
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        raise NSPError(
            f"{path} not found; run `nsp prepare` first (or pass the right prepared dir)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NSPError(f"{path} is unreadable ({one_line(exc)}); re-run `nsp prepare`") from exc
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith(
        "nsp-prepared/"
    ):
        raise NSPError(f"{path} is not an nsp prepared-data manifest; re-run `nsp prepare`")
    if verify:
        from nsp.io import sha256_file

        for name, digest in manifest.get("files", {}).items():
            f = Path(prepared_dir) / name
            if not f.is_file() or sha256_file(f) != digest:
                raise NSPError(
                    f"{f} is missing or differs from its sha256 in {path}; re-run `nsp prepare`"
                )
    return manifest


@dataclass
class Split:
    """One split of a prepared dataset: uint8 images (N, H, W, C) and int64 labels (None if unlabeled)."""

    name: str
    images: Any  # np.ndarray (memory-mapped) or nsp.data.imagefolder.LazyImages
    labels: np.ndarray | None
    class_names: list[str]
    image_shape: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: np.ndarray) -> np.ndarray:
        """Images at ``indices`` as a uint8 array (B, H, W, C)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if isinstance(self.images, np.ndarray):
            return np.array(self.images[idx], dtype=np.uint8)
        return self.images.get_batch(idx)


def _load_npy(path: Path, *, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise NSPError(f"{path} is missing; re-run `nsp prepare`")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise NSPError(f"{path} is unreadable ({one_line(exc)}); re-run `nsp prepare`") from exc


def load_split(
    prepared_dir: str | os.PathLike, split: str, *, data_root: str | os.PathLike | None = None
) -> Split:
    """Open ``split`` (labeled | val | unlabeled | test, or apool when prepared) of a prepared dir.

    In-memory format: images are ``np.load(mmap_mode='r')``. Lazy ImageFolder format: images decode on
    access from ``data_root`` (default: the manifest's ``source_dir``).
    """
    if split not in (*SPLITS, POOL_SPLIT):
        raise NSPError(f"unknown split {split!r}; use one of {', '.join((*SPLITS, POOL_SPLIT))}")
    d = Path(prepared_dir)
    m = read_manifest(d)
    if split not in m["splits"]:
        raise NSPError(
            f"{d / 'manifest.json'} has no {split!r} split (prepare.a_pool_per_class is 0); "
            "set prepare.a_pool_per_class > 0 and re-run `nsp prepare`"
        )
    names = list(m["class_names"])
    shape = tuple(int(v) for v in m["image_shape"])
    info = m["splits"][split]
    labels: np.ndarray | None
    if m["storage"] == "array":
        images = _load_npy(d / info["files"]["x"], mmap=True)
        labels = (
            None
            if split == "unlabeled"
            else _load_npy(d / info["files"]["y"], mmap=False).astype(np.int64)
        )
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != shape:
            raise NSPError(
                f"{d / info['files']['x']} has {images.dtype} {images.shape}, manifest says {shape}; re-run `nsp prepare`"
            )
    elif m["storage"] == "lazy":
        from nsp.data.imagefolder import LazyImages, read_manifest_csv

        cols = read_manifest_csv(d / info["files"]["csv"])
        p = m["params"]
        images = LazyImages(
            data_root or m["source_dir"],
            cols["path"],
            image_size=p["image_size"],
            channels=p["channels"],
            resize_shorter=p.get("resize_shorter"),
            sha256=cols["sha256"],
        )
        if split == "unlabeled":
            labels = None
        else:
            if any(v is None for v in cols["label"]):
                raise NSPError(
                    f"{d / info['files']['csv']} has rows without a label; re-run `nsp prepare`"
                )
            labels = np.asarray(cols["label"], dtype=np.int64)
    else:
        raise NSPError(
            f"{d / 'manifest.json'} has unknown storage {m['storage']!r}; re-run `nsp prepare`"
        )
    if labels is not None and len(labels) != len(images):
        raise NSPError(
            f"split {split!r} in {d} has {len(images)} images but {len(labels)} labels; re-run `nsp prepare`"
        )
    if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise NSPError(
            f"split {split!r} in {d} has labels outside 0..{len(names) - 1}; re-run `nsp prepare`"
        )
    return Split(name=split, images=images, labels=labels, class_names=names, image_shape=shape)  # type: ignore[arg-type]


def load_unlabeled_truth(prepared_dir: str | os.PathLike) -> np.ndarray | None:
    """True labels of the unlabeled split (for reporting only), or None if not recorded."""
    d = Path(prepared_dir)
    m = read_manifest(d)
    name = m["splits"]["unlabeled"]["files"].get("truth")
    if not name or not (d / name).is_file():
        return None
    return _load_npy(d / name, mmap=False).astype(np.int64)
