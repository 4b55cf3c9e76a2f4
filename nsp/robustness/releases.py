"""Readers for the official robustness releases, yielding uint8 images (or frames) + labels.

Supported layouts (as distributed by Hendrycks et al.):

* ImageNet-C: ``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` (severity 1..5);
* CIFAR-10-C: ``<root>/<corruption>.npy`` (uint8 ``(5 * n, 32, 32, 3)``, severities 1..5 stacked)
  and ``<root>/labels.npy``;
* CIFAR-10-P: ``<root>/<perturbation>.npy`` (uint8 ``(n, T, 32, 32, 3)``), optional labels.npy;
* ImageNet-P: ``<root>/<perturbation>/<wnid>/*.mp4`` (decoded with PyAV, ``pip install av``);
* ImageNet-A / ImageNet-R: ``<root>/<wnid>/*`` with the 200 subset classes, plus
  :func:`mask_logits_to_subset` to restrict 1000-way logits to the subset before argmax/softmax.

Labels of ImageNet-C/-P are indices into the 1000 ImageNet classes
(:data:`nsp.robustness.wnids.IMAGENET_WNIDS`); ImageNet-A/-R labels are indices into the
200-class subset (its wnids in ascending order, which is also the folder order).
Everything is read lazily: the ``iter_*`` functions yield ``(images, labels)`` batches and the
``.npy`` releases are memory-mapped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from nsp.errors import NSPError
from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS, HELDOUT_CORRUPTIONS
from nsp.robustness.wnids import IMAGENET_A_INDICES, IMAGENET_R_INDICES, IMAGENET_WNIDS

__all__ = [
    "CIFAR_C_CORRUPTIONS",
    "IMAGENET_C_CORRUPTIONS",
    "IMAGENET_P_PERTURBATIONS",
    "SUBSETS",
    "cifar_c_corruptions",
    "imagenet_c_files",
    "imagenet_p_files",
    "imagenet_subset_files",
    "iter_cifar_c",
    "iter_cifar_p",
    "iter_imagenet_c",
    "iter_imagenet_p",
    "iter_imagenet_subset",
    "load_cifar_c",
    "load_cifar_p",
    "mask_logits_to_subset",
    "read_image",
    "read_video",
    "subset_indices",
    "subset_predictions",
    "subset_probabilities",
    "subset_wnids",
]

#: The 15 benchmark corruptions followed by the 4 extra ones shipped with the releases.
IMAGENET_C_CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + HELDOUT_CORRUPTIONS
CIFAR_C_CORRUPTIONS: tuple[str, ...] = IMAGENET_C_CORRUPTIONS
#: ImageNet-P / CIFAR-10-P perturbation folders (noise ones come in 3 difficulties).
IMAGENET_P_PERTURBATIONS: tuple[str, ...] = (
    "gaussian_noise",
    "gaussian_noise_2",
    "gaussian_noise_3",
    "shot_noise",
    "shot_noise_2",
    "shot_noise_3",
    "motion_blur",
    "zoom_blur",
    "snow",
    "brightness",
    "translate",
    "rotate",
    "tilt",
    "scale",
    "speckle_noise",
    "speckle_noise_2",
    "speckle_noise_3",
    "gaussian_blur",
    "spatter",
    "shear",
)
SUBSETS: tuple[str, ...] = ("imagenet-a", "imagenet-r")

_WNID_INDEX = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
_WNID_RE = re.compile(r"^n\d{8}$")
_IMAGE_EXT = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}
_VIDEO_EXT = {".mp4", ".avi", ".mkv", ".webm", ".mov"}


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _root_dir(root: str | os.PathLike, *, what: str, layout: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise NSPError(f"{what} root {path} is not a directory; pass the folder holding {layout}")
    return path


def _check_name(name: str, valid: Sequence[str], *, kind: str) -> None:
    if name not in valid:
        raise NSPError(f"unknown {kind} {name!r}; choose one of {list(valid)}")


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise NSPError(f"batch_size={batch_size}: use a positive integer")
    return int(batch_size)


def _class_dirs(parent: Path, *, layout: str) -> list[tuple[Path, str]]:
    if not parent.is_dir():
        raise NSPError(f"{parent} is missing; expected the layout {layout}")
    dirs = sorted(p for p in parent.iterdir() if p.is_dir())
    if not dirs:
        raise NSPError(f"{parent} has no class folders; expected the layout {layout}")
    for d in dirs:
        if not _WNID_RE.match(d.name):
            raise NSPError(
                f"{d} is not a wnid folder (like n01440764); expected the layout {layout}"
            )
    return [(d, d.name) for d in dirs]


def _files(folder: Path, exts: set[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def _wnid_label(wnid: str, folder: Path) -> int:
    if wnid not in _WNID_INDEX:
        raise NSPError(f"{folder}: {wnid} is not one of the 1000 ImageNet classes; remove it")
    return _WNID_INDEX[wnid]


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike, *, size: int | None = None) -> np.ndarray:
    """Decode an image file to uint8 RGB ``(H, W, 3)``.

    With ``size``, apply the standard ImageNet evaluation transform: resize the shorter side to
    ``round(size / 0.875)`` (bilinear), then take the centred ``size x size`` crop (256 -> 224).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                short = round(int(size) / 0.875)
                w, h = im.size
                scale = short / min(w, h)
                im = im.resize(
                    (max(size, round(w * scale)), max(size, round(h * scale))),
                    Image.Resampling.BILINEAR,
                )
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).copy()
    except OSError as exc:
        raise NSPError(f"{path}: cannot decode image ({exc}); re-download or delete it") from exc


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video file to uint8 RGB ``(T, H, W, 3)`` with PyAV."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise NSPError(
            "reading ImageNet-P videos needs PyAV; install it with `pip install av`"
        ) from exc
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise NSPError(f"{path}: cannot decode video ({exc}); re-download or delete it") from exc
    if not frames:
        raise NSPError(f"{path}: video has no frames; re-download or delete it")
    return np.stack(frames).astype(np.uint8, copy=False)


def _stack(arrays: list[np.ndarray], paths: list[Path], *, hint: str) -> np.ndarray:
    shape = arrays[0].shape
    for a, p in zip(arrays, paths, strict=True):
        if a.shape != shape:
            raise NSPError(f"{p}: shape {a.shape} differs from {paths[0]} {shape}; {hint}")
    return np.stack(arrays)


def _batches(
    files: list[tuple[Path, int]], *, batch_size: int, decode, hint: str
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for s in range(0, len(files), batch_size):
        chunk = files[s : s + batch_size]
        paths = [p for p, _ in chunk]
        data = _stack([decode(p) for p in paths], paths, hint=hint)
        yield data, np.array([lab for _, lab in chunk], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# ImageNet-C
# --------------------------------------------------------------------------------------------

_IMAGENET_C_LAYOUT = "<root>/<corruption>/<severity>/<wnid>/*.JPEG"


def imagenet_c_files(
    root: str | os.PathLike, *, corruption: str, severity: int
) -> list[tuple[Path, int]]:
    """Sorted ``(path, label)`` pairs of one ImageNet-C corruption and severity."""
    _check_name(corruption, IMAGENET_C_CORRUPTIONS, kind="ImageNet-C corruption")
    if int(severity) not in (1, 2, 3, 4, 5):
        raise NSPError(f"severity={severity}: ImageNet-C severities are 1..5")
    base = _root_dir(root, what="ImageNet-C", layout=_IMAGENET_C_LAYOUT)
    sev_dir = base / corruption / str(int(severity))
    out: list[tuple[Path, int]] = []
    for folder, wnid in _class_dirs(sev_dir, layout=_IMAGENET_C_LAYOUT):
        label = _wnid_label(wnid, folder)
        out.extend((p, label) for p in _files(folder, _IMAGE_EXT))
    if not out:
        raise NSPError(f"{sev_dir} holds no images; expected the layout {_IMAGENET_C_LAYOUT}")
    return out


def iter_imagenet_c(
    root: str | os.PathLike,
    *,
    corruption: str,
    severity: int,
    batch_size: int = 64,
    size: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images uint8 (B, H, W, 3), labels int64 (B,))`` batches of ImageNet-C.

    The release's JPEGs are already 224x224; ``size`` applies :func:`read_image`'s resize + crop.
    """
    bs = _check_batch_size(batch_size)
    files = imagenet_c_files(root, corruption=corruption, severity=severity)
    return _batches(
        files,
        batch_size=bs,
        decode=lambda p: read_image(p, size=size),
        hint="pass size=224 to resize images to one shape",
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10-C / CIFAR-10-P (.npy)
# --------------------------------------------------------------------------------------------


def _load_npy(path: Path, *, what: str) -> np.ndarray:
    if not path.is_file():
        raise NSPError(f"{path} is missing; {what}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise NSPError(f"{path}: not a readable .npy file ({exc}); re-download it") from exc


def cifar_c_corruptions(root: str | os.PathLike) -> list[str]:
    """Names of the known corruptions present as ``<root>/<name>.npy`` (release order)."""
    base = _root_dir(root, what="CIFAR-10-C", layout="<corruption>.npy and labels.npy")
    return [c for c in CIFAR_C_CORRUPTIONS if (base / f"{c}.npy").is_file()]


def load_cifar_c(
    root: str | os.PathLike, *, corruption: str, severity: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped ``(images, labels)`` of one CIFAR-10(0)-C corruption.

    The release stacks severities 1..5 along axis 0; ``severity`` selects one block of
    ``len / 5`` images, ``None`` returns all of them.
    """
    _check_name(corruption, CIFAR_C_CORRUPTIONS, kind="CIFAR-C corruption")
    base = _root_dir(root, what="CIFAR-10-C", layout="<corruption>.npy and labels.npy")
    images = _load_npy(base / f"{corruption}.npy", what="download the CIFAR-10-C release there")
    labels = _load_npy(base / "labels.npy", what="the CIFAR-10-C release ships labels.npy")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise NSPError(
            f"{base / f'{corruption}.npy'}: expected uint8 (N, H, W, 3), got "
            f"{images.dtype} {images.shape}; is this a CIFAR-10-C file?"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or images.shape[0] % 5:
        raise NSPError(
            f"{base / 'labels.npy'}: {labels.shape} labels for {images.shape[0]} images; "
            "both must hold 5 equal severity blocks of the same length"
        )
    if severity is None:
        return images, labels
    if int(severity) not in (1, 2, 3, 4, 5):
        raise NSPError(f"severity={severity}: CIFAR-10-C severities are 1..5")
    n = images.shape[0] // 5
    block = slice((int(severity) - 1) * n, int(severity) * n)
    return images[block], labels[block]


def _iter_arrays(
    images: np.ndarray, labels: np.ndarray | None, *, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    bs = _check_batch_size(batch_size)
    for s in range(0, images.shape[0], bs):
        lab = None if labels is None else np.asarray(labels[s : s + bs], dtype=np.int64)
        yield np.ascontiguousarray(images[s : s + bs]), lab


def iter_cifar_c(
    root: str | os.PathLike, *, corruption: str, severity: int, batch_size: int = 1000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images uint8 (B, 32, 32, 3), labels int64 (B,))`` batches of one severity."""
    _check_batch_size(batch_size)
    images, labels = load_cifar_c(root, corruption=corruption, severity=severity)
    return _iter_arrays(images, labels, batch_size=batch_size)  # type: ignore[return-value]


def load_cifar_p(
    root: str | os.PathLike, *, perturbation: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Memory-mapped ``(frames uint8 (N, T, H, W, 3), labels or None)`` of a CIFAR-10-P file."""
    _check_name(perturbation, IMAGENET_P_PERTURBATIONS, kind="CIFAR-10-P perturbation")
    base = _root_dir(root, what="CIFAR-10-P", layout="<perturbation>.npy")
    frames = _load_npy(base / f"{perturbation}.npy", what="download the CIFAR-10-P release there")
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise NSPError(
            f"{base / f'{perturbation}.npy'}: expected uint8 (N, T, H, W, 3), got "
            f"{frames.dtype} {frames.shape}; is this a CIFAR-10-P file?"
        )
    labels = None
    if (base / "labels.npy").is_file():
        labels = _load_npy(base / "labels.npy", what="")
        if labels.ndim != 1 or labels.shape[0] != frames.shape[0]:
            raise NSPError(
                f"{base / 'labels.npy'}: {labels.shape} labels for {frames.shape[0]} sequences; "
                "remove it or supply one label per sequence"
            )
    return frames, labels


def iter_cifar_p(
    root: str | os.PathLike, *, perturbation: str, batch_size: int = 100
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield ``(frames uint8 (B, T, H, W, 3), labels int64 (B,) or None)`` batches."""
    _check_batch_size(batch_size)
    frames, labels = load_cifar_p(root, perturbation=perturbation)
    return _iter_arrays(frames, labels, batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# ImageNet-P (.mp4)
# --------------------------------------------------------------------------------------------

_IMAGENET_P_LAYOUT = "<root>/<perturbation>/<wnid>/*.mp4"


def imagenet_p_files(root: str | os.PathLike, *, perturbation: str) -> list[tuple[Path, int]]:
    """Sorted ``(video path, label)`` pairs of one ImageNet-P perturbation."""
    _check_name(perturbation, IMAGENET_P_PERTURBATIONS, kind="ImageNet-P perturbation")
    base = _root_dir(root, what="ImageNet-P", layout=_IMAGENET_P_LAYOUT)
    pdir = base / perturbation
    out: list[tuple[Path, int]] = []
    for folder, wnid in _class_dirs(pdir, layout=_IMAGENET_P_LAYOUT):
        label = _wnid_label(wnid, folder)
        out.extend((p, label) for p in _files(folder, _VIDEO_EXT))
    if not out:
        raise NSPError(f"{pdir} holds no videos; expected the layout {_IMAGENET_P_LAYOUT}")
    return out


def iter_imagenet_p(
    root: str | os.PathLike, *, perturbation: str, batch_size: int = 8
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frames uint8 (B, T, H, W, 3), labels int64 (B,))`` batches of ImageNet-P."""
    bs = _check_batch_size(batch_size)
    files = imagenet_p_files(root, perturbation=perturbation)
    return _batches(
        files, batch_size=bs, decode=read_video, hint="use batch_size=1 for unequal videos"
    )


# --------------------------------------------------------------------------------------------
# ImageNet-A / ImageNet-R
# --------------------------------------------------------------------------------------------


def subset_indices(subset: str) -> np.ndarray:
    """Positions (ascending) of the subset's 200 classes among the 1000 ImageNet classes."""
    _check_name(subset, SUBSETS, kind="ImageNet subset")
    idx = IMAGENET_A_INDICES if subset == "imagenet-a" else IMAGENET_R_INDICES
    return np.asarray(idx, dtype=np.int64)


def subset_wnids(subset: str) -> tuple[str, ...]:
    """The subset's 200 wnids in label order (= sorted = the release's folder order)."""
    return tuple(IMAGENET_WNIDS[i] for i in subset_indices(subset))


def mask_logits_to_subset(logits: np.ndarray, *, subset: str) -> np.ndarray:
    """Keep only the subset's 200 columns of 1000-way logits: ``(..., 1000) -> (..., 200)``.

    Argmax / softmax of the result are the subset-restricted prediction / probabilities used by
    the ImageNet-A and ImageNet-R evaluations (``output[:, indices_in_1k]``).
    """
    lg = np.asarray(logits)
    if lg.ndim < 1 or lg.shape[-1] != len(IMAGENET_WNIDS):
        raise NSPError(f"logits shape {lg.shape}: expected 1000 ImageNet classes on the last axis")
    return lg[..., subset_indices(subset)]


def subset_predictions(logits: np.ndarray, *, subset: str) -> np.ndarray:
    """Argmax over the subset's classes; values are subset labels 0..199."""
    return mask_logits_to_subset(logits, subset=subset).argmax(axis=-1)


def subset_probabilities(logits: np.ndarray, *, subset: str) -> np.ndarray:
    """Softmax over the subset's 200 classes only (float64)."""
    z = mask_logits_to_subset(logits, subset=subset).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def imagenet_subset_files(root: str | os.PathLike, *, subset: str) -> list[tuple[Path, int]]:
    """Sorted ``(path, subset label)`` pairs of an ImageNet-A / -R tree ``<root>/<wnid>/*``."""
    wnids = subset_wnids(subset)
    label_of = {w: i for i, w in enumerate(wnids)}
    layout = "<root>/<wnid>/*.jpg with the subset's 200 wnids"
    base = _root_dir(root, what=subset, layout=layout)
    out: list[tuple[Path, int]] = []
    for folder, wnid in _class_dirs(base, layout=layout):
        if wnid not in label_of:
            raise NSPError(f"{folder}: {wnid} is not one of the 200 {subset} classes; remove it")
        out.extend((p, label_of[wnid]) for p in _files(folder, _IMAGE_EXT))
    if not out:
        raise NSPError(f"{base} holds no images; expected the layout {layout}")
    return out


def iter_imagenet_subset(
    root: str | os.PathLike, *, subset: str, batch_size: int = 64, size: int | None = 224
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images uint8 (B, size, size, 3), subset labels int64 (B,))`` batches.

    The releases hold images of many sizes, hence the default resize + centre crop to 224
    (:func:`read_image`); ``size=None`` keeps the original sizes (batches must then agree).
    """
    bs = _check_batch_size(batch_size)
    files = imagenet_subset_files(root, subset=subset)
    return _batches(
        files,
        batch_size=bs,
        decode=lambda p: read_image(p, size=size),
        hint="pass size=224 to resize images to one shape",
    )
