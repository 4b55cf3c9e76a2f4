"""CIFAR-10 / CIFAR-100 "python version" batches, unpickled with a restricted unpickler.

The official files are Python-2 pickles of dicts with bytes keys; the pixel block is a numpy array
(N, 3072) uint8 in channel-major order (1024 R, 1024 G, 1024 B). Only numpy array reconstruction is
allowed as a global; anything else in a pickle is rejected, so a malicious file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from nsp.errors import NSPError, one_line

# (module, name) pairs a CIFAR pickle may reference: numpy array/dtype reconstruction only.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}


def _latin1_encode(obj: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` limited to the latin-1 text->bytes use that protocol-2 pickles make."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 text")
    return obj.encode("latin1")


def _allowed() -> dict[tuple[str, str], Any]:
    if not _ALLOWED_GLOBALS:
        from numpy._core import multiarray, numeric

        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            _ALLOWED_GLOBALS[(mod, "_reconstruct")] = multiarray._reconstruct
            _ALLOWED_GLOBALS[(mod, "scalar")] = multiarray.scalar
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            _ALLOWED_GLOBALS[(mod, "_frombuffer")] = numeric._frombuffer
        _ALLOWED_GLOBALS[("_codecs", "encode")] = _latin1_encode  # bytes in protocol-2 pickles
        _ALLOWED_GLOBALS[("numpy", "ndarray")] = np.ndarray
        _ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype
    return _ALLOWED_GLOBALS


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction globals."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401
        try:
            return _allowed()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def safe_unpickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with bytes-decoding and only numpy globals allowed; NSPError on failure."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NSPError(f"cannot read CIFAR file {path}: {exc.strerror}; check the file") from exc
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # pickle raises many types on garbage input
        raise NSPError(
            f"unreadable CIFAR pickle {path} ({one_line(exc)}); "
            "re-download the 'python version' of the dataset"
        ) from exc


def _get(d: Any, key: str, path: Path) -> Any:
    if not isinstance(d, dict):
        raise NSPError(f"CIFAR file {path} does not hold a dict; re-download the 'python version'")
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise NSPError(f"CIFAR file {path} has no '{key}' entry; re-download the 'python version'")


def _decode_names(names: Any, path: Path) -> list[str]:
    if not isinstance(names, list) or not names:
        raise NSPError(f"CIFAR meta file {path} has no class-name list; re-download the dataset")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def read_cifar_batch(
    path: str | os.PathLike, *, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file -> (images uint8 (N, 32, 32, 3), labels int64 (N,)), validated."""
    path = Path(path)
    d = safe_unpickle(path)
    data = _get(d, "data", path)
    labels = _get(d, label_key, path)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        shape = getattr(data, "shape", None)
        raise NSPError(
            f"CIFAR file {path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}; "
            "re-download the 'python version'"
        )
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise NSPError(
            f"CIFAR file {path}: '{label_key}' is not a list of integers; re-download it"
        ) from exc
    if len(y) != len(data):
        raise NSPError(
            f"CIFAR file {path}: {len(data)} images but {len(y)} labels in '{label_key}'; re-download it"
        )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise NSPError(f"CIFAR file {path}: labels outside 0..{num_classes - 1}; re-download it")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


def _find_root(data_dir: Path, subdir: str, marker: str) -> Path:
    """Accept either the extracted batch folder itself or its parent."""
    if (data_dir / marker).exists():
        return data_dir
    if (data_dir / subdir / marker).exists():
        return data_dir / subdir
    raise NSPError(
        f"{data_dir / marker} not found; pass --data-dir pointing at the extracted '{subdir}' folder "
        "(python version) or its parent"
    )


def load_cifar10(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Load CIFAR-10 -> dict(train_x, train_y, test_x, test_y, class_names, files)."""
    root = _find_root(Path(data_dir), "cifar-10-batches-py", "batches.meta")
    names = _decode_names(
        _get(safe_unpickle(root / "batches.meta"), "label_names", root / "batches.meta"), root
    )
    files = [root / f"data_batch_{i}" for i in range(1, 6)] + [root / "test_batch"]
    for f in files:
        if not f.exists():
            raise NSPError(f"CIFAR-10 file {f} is missing; re-extract cifar-10-python.tar.gz there")
    parts = [read_cifar_batch(f, label_key="labels", num_classes=len(names)) for f in files[:5]]
    test_x, test_y = read_cifar_batch(files[5], label_key="labels", num_classes=len(names))
    return {
        "root": root,
        "train_x": np.concatenate([p[0] for p in parts]),
        "train_y": np.concatenate([p[1] for p in parts]),
        "test_x": test_x,
        "test_y": test_y,
        "class_names": names,
        "files": [root / "batches.meta", *files],
    }


def load_cifar100(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Load CIFAR-100 (fine labels) -> dict(train_x, train_y, test_x, test_y, class_names, files)."""
    root = _find_root(Path(data_dir), "cifar-100-python", "meta")
    names = _decode_names(
        _get(safe_unpickle(root / "meta"), "fine_label_names", root / "meta"), root
    )
    for f in (root / "train", root / "test"):
        if not f.exists():
            raise NSPError(
                f"CIFAR-100 file {f} is missing; re-extract cifar-100-python.tar.gz there"
            )
    train_x, train_y = read_cifar_batch(
        root / "train", label_key="fine_labels", num_classes=len(names)
    )
    test_x, test_y = read_cifar_batch(
        root / "test", label_key="fine_labels", num_classes=len(names)
    )
    return {
        "root": root,
        "train_x": train_x,
        "train_y": train_y,
        "test_x": test_x,
        "test_y": test_y,
        "class_names": names,
        "files": [root / "meta", root / "train", root / "test"],
    }
