"""ImageFolder trees: scanning, image decoding/preprocessing and lazy manifest-backed images.

Layouts: ``root/<split>/<class>/<image>`` (with ``train`` plus ``test`` or ``val``) or a single
``root/<class>/<image>`` (a test split is then held out by the caller). Images of any size are
resized (shorter side) and center-cropped to a square ``image_size``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from nsp.errors import NSPError, one_line

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
CSV_FIELDS = ("path", "label", "width", "height", "sha256")


@dataclass
class FolderScan:
    """File listing of an ImageFolder tree (paths relative to ``root``, POSIX separators)."""

    root: Path
    layout: str  # "split" (train + test/val folders) or "single"
    class_names: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]] | None  # None for the single layout
    test_dir: str | None = None
    skipped: list[str] = field(default_factory=list)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_dirs(base: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))


def _list_class(root: Path, class_dir: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        out.extend(f"{rel_dir}/{f}" for f in sorted(filenames) if _is_image(f))
    return out


def scan_imagefolder(root: str | os.PathLike, *, progress: bool = True) -> FolderScan:
    """List the images of an ImageFolder tree and their class indices (sorted class folder names)."""
    from tqdm import tqdm

    root = Path(root)
    if not root.is_dir():
        raise NSPError(
            f"ImageFolder root {root} is not a directory; pass --data-dir pointing at it"
        )
    test_name = next((n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_name is not None:
        train_base, layout = root / "train", "split"
    elif (root / "train").is_dir():
        train_base, layout, test_name = root / "train", "single", None
    else:
        train_base, layout, test_name = root, "single", None
    class_names = _class_dirs(train_base)
    if not class_names:
        raise NSPError(
            f"no class folders in {train_base}; expected {train_base}/<class>/<image> "
            "(or root/train/<class> with root/test or root/val)"
        )
    index = {c: i for i, c in enumerate(class_names)}
    train: list[tuple[str, int]] = []
    for c in tqdm(
        class_names, desc="scanning classes", unit="class", disable=None if progress else True
    ):
        files = _list_class(root, train_base / c)
        if not files:
            raise NSPError(f"class folder {train_base / c} has no images; add images or remove it")
        train.extend((f, index[c]) for f in files)
    test: list[tuple[str, int]] | None = None
    if test_name is not None:
        test = []
        for c in _class_dirs(root / test_name):
            if c not in index:
                raise NSPError(
                    f"class folder {root / test_name / c} has no counterpart in {train_base}; "
                    "rename or remove it"
                )
            files = _list_class(root, root / test_name / c)
            if not files:
                raise NSPError(
                    f"class folder {root / test_name / c} has no images; add images or remove it"
                )
            test.extend((f, index[c]) for f in files)
        if not test:
            raise NSPError(
                f"{root / test_name} has no class folders with images; add them or remove it"
            )
    return FolderScan(
        root=root,
        layout=layout,
        class_names=class_names,
        train=train,
        test=test,
        test_dir=test_name,
    )


def preprocess_pil(
    img: Any, *, image_size: int, channels: int, resize_shorter: int | None = None
) -> np.ndarray:
    """PIL image -> uint8 (image_size, image_size, channels): shorter side to ``resize_shorter``
    (default ``image_size``, bilinear), then a center crop. Grey uses PIL's ITU-R 601 luma."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    short = resize_shorter or image_size
    w, h = img.size
    scale = short / min(w, h)
    nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
    if getattr(img, "format", None) == "JPEG" and min(w, h) > 2 * short:
        img.draft(mode, (nw, nh))  # DCT-domain downscale: much faster decoding of large JPEGs
    img = img.convert(mode)
    w, h = img.size
    if (w, h) != (nw, nh):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (nw - image_size) // 2, (nh - image_size) // 2
    if (nw, nh) != (image_size, image_size):
        img = img.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _open_bytes(data: bytes) -> Any:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    return img


def decode_file(
    path: Path,
    *,
    image_size: int,
    channels: int,
    resize_shorter: int | None = None,
    sha256: str | None = None,
) -> np.ndarray:
    """Decode and preprocess one image file; raises (PIL/OS errors) on a corrupt file."""
    data = path.read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError("sha256 differs from the manifest (file changed since `nsp prepare`)")
    with _open_bytes(data) as img:  # pixels are decoded (and corruption detected) in preprocess_pil
        return preprocess_pil(
            img, image_size=image_size, channels=channels, resize_shorter=resize_shorter
        )


def probe_file(
    path: Path, *, verify: str = "full", hash_image: bool = False
) -> tuple[int, int, str]:
    """Return (width, height, sha256 or ''); ``verify='full'`` decodes all pixels to catch corruption,
    ``'header'`` only parses the header (fast, for very large trees)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest() if hash_image else ""
    with _open_bytes(data) as img:
        size = img.size
        if verify == "full":
            img.load()
    return int(size[0]), int(size[1]), digest


def map_files(
    root: Path,
    rels: Sequence[str],
    fn: Callable[[Path], Any],
    *,
    skip_corrupt: bool,
    workers: int | None = None,
    desc: str = "images",
    progress: bool = True,
) -> tuple[list[Any], list[str]]:
    """Apply ``fn`` to every ``root/rel`` in threads (with a progress bar).

    Returns (results with None for skipped files, skipped rel paths). A failing file raises NSPError
    naming it unless ``skip_corrupt``.
    """
    from tqdm import tqdm

    def one(rel: str) -> tuple[Any, str | None]:
        try:
            return fn(root / rel), None
        except Exception as exc:  # PIL raises many types for corrupt files
            return None, one_line(exc)

    workers = workers or min(8, os.cpu_count() or 1)
    results: list[Any] = []
    skipped: list[str] = []
    chunk = 256 * workers  # bounded number of pending futures, even for millions of files
    bar = tqdm(total=len(rels), desc=desc, unit="img", disable=None if progress else True)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for start in range(0, len(rels), chunk):
            part = rels[start : start + chunk]
            for rel, (res, err) in zip(part, pool.map(one, part), strict=True):
                if err is not None:
                    if not skip_corrupt:
                        raise NSPError(
                            f"corrupt image {root / rel} ({err}); "
                            "fix or delete it, or set skip_corrupt: true (--skip-corrupt) to skip "
                            "and count such files"
                        )
                    skipped.append(rel)
                results.append(res)
            bar.update(len(part))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return results, skipped


def check_relpath(rel: str, *, manifest: str | os.PathLike) -> str:
    """Reject absolute paths and ``..`` in a manifest path (paths must stay inside the data root)."""
    p = PurePosixPath(rel)
    if (
        not rel
        or p.is_absolute()
        or rel.startswith(("\\", "~"))
        or ".." in p.parts
        or ".." in rel.split("\\")
        or (len(rel) > 1 and rel[1] == ":")
    ):
        raise NSPError(
            f"manifest {manifest} has an unsafe path {rel!r} (absolute or with '..'); paths must be "
            "relative to the data root: re-run `nsp prepare`"
        )
    return rel


def write_manifest_csv(path: Path, rows: Sequence[tuple[str, int | None, int, int, str]]) -> None:
    """Write (path, label or None, width, height, sha256) rows as CSV with a header."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for rel, label, width, height, digest in rows:
            w.writerow((rel, "" if label is None else int(label), int(width), int(height), digest))


def read_manifest_csv(path: Path) -> dict[str, list[Any]]:
    """Read a split CSV -> dict of columns; paths are checked with :func:`check_relpath`."""
    cols: dict[str, list[Any]] = {k: [] for k in CSV_FIELDS}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != CSV_FIELDS:
                raise NSPError(
                    f"manifest {path} has columns {reader.fieldnames}, expected {list(CSV_FIELDS)}; re-run `nsp prepare`"
                )
            for row in reader:
                cols["path"].append(check_relpath(row["path"], manifest=path))
                cols["label"].append(int(row["label"]) if row["label"] != "" else None)
                cols["width"].append(int(row["width"]))
                cols["height"].append(int(row["height"]))
                cols["sha256"].append(row["sha256"] or None)
    except FileNotFoundError:
        raise NSPError(f"manifest {path} is missing; re-run `nsp prepare`") from None
    except (ValueError, KeyError, csv.Error) as exc:
        raise NSPError(
            f"manifest {path} is malformed ({one_line(exc)}); re-run `nsp prepare`"
        ) from exc
    return cols


class LazyImages:
    """Array-like view over image files: decoded and preprocessed on access, never all in memory."""

    def __init__(
        self,
        root: str | os.PathLike,
        paths: Sequence[str],
        *,
        image_size: int,
        channels: int,
        resize_shorter: int | None = None,
        sha256: Sequence[str | None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.resize_shorter = resize_shorter
        self.sha256 = list(sha256) if sha256 is not None else [None] * len(self.paths)
        self.dtype = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.image_size, self.image_size, self.channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        rel = self.paths[int(i)]
        path = self.root / rel
        try:
            return decode_file(
                path,
                image_size=self.image_size,
                channels=self.channels,
                resize_shorter=self.resize_shorter,
                sha256=self.sha256[int(i)],
            )
        except Exception as exc:
            raise NSPError(
                f"cannot decode image {path} ({one_line(exc)}); restore the file or re-run `nsp prepare`"
            ) from exc

    def get_batch(self, indices: np.ndarray) -> np.ndarray:
        """Decode ``indices`` -> uint8 (B, H, W, C)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), self.image_size, self.image_size, self.channels), dtype=np.uint8)
        for j, i in enumerate(idx):
            out[j] = self[i]
        return out
