"""Run one model over an official robustness release: the library behind ``release_list`` and
``release_eval@<model>`` (runners in :mod:`nsp.robustness.release_stage`; protocols and class
mapping in :mod:`nsp.robustness.release_protocols`; file layouts in :mod:`nsp.robustness.releases`).

* :func:`release_listing` checks that a release folder is complete and lists it cheaply (names,
  sizes, mtimes -- no file is opened), with a digest of that listing: the DVC dependency of the
  evaluation stages, so ``dvc repro`` never re-hashes tens of GB and still re-evaluates when a file
  is added, removed, resized or touched.
* :func:`evaluate_release` streams the release through the model: files are decoded and
  preprocessed in a thread pool (Pillow and PyAV release the GIL) with at most two batches in
  flight, so memory stays flat in the release size, and only the numbers are kept.

Preprocessing per release (then the model's own input size ``S`` and channels; the model
normalises inside): ImageNet-C JPEGs and ImageNet-P frames are already 224-px centre crops and are
resized to ``S`` only when ``S != 224``; ImageNet-A/-R images are resized (shorter side to
``round(S / 0.875)``, bilinear: 256 for 224) and centre-cropped to ``S``; CIFAR-10-C/-P arrays are
resized only when ``S != 32``. Grey models see ITU-R 601 luma, as in training.

Corrupt files: **the evaluation stops** with one line naming the file and the fix (re-download
it). Skipping would change the denominator, and the numbers would no longer be the published
protocol's; the official releases hold no unreadable file, so one means a damaged copy.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsp.errors import NSPError, one_line
from nsp.robustness import metrics as M
from nsp.robustness import releases as R
from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS
from nsp.robustness.evaluate import calibration_or_none, predict
from nsp.robustness.release_protocols import (
    RELEASES,
    REQUIRED_PERTURBATION_FOLDERS,
    ClassMap,
    shared_classes,
)

RAW_FORMAT = "nsp-release-raw/1"
LISTING_FORMAT = "nsp-release-listing/1"

__all__ = [
    "LISTING_FORMAT",
    "RAW_FORMAT",
    "decode_image",
    "decoded_batches",
    "evaluate_release",
    "release_listing",
]


# ------------------------------------------------------------------------------------ listing


def _require(path: Path, *, what: str, fix: str) -> None:
    if not path.exists():
        raise NSPError(f"{path} is missing: {what}; {fix}")


def _check_complete(release: str, root: Path) -> None:
    """One line naming the first missing corruption / severity / perturbation / file."""
    if not root.is_dir():
        raise NSPError(
            f"robustness.releases.{release}: {root} is not a directory; point it at the "
            f"extracted {release} release or remove the entry"
        )
    fix = f"re-download or re-extract the {release} release there"
    if release == "imagenet_c":
        for c in BENCHMARK_CORRUPTIONS:
            for s in range(1, 6):
                _require(root / c / str(s), what=f"ImageNet-C {c} severity {s}", fix=fix)
    elif release == "imagenet_p":
        for p in REQUIRED_PERTURBATION_FOLDERS:
            _require(root / p, what=f"ImageNet-P perturbation {p}", fix=fix)
    elif release in ("imagenet_a", "imagenet_r"):
        if not any(e.is_dir() for e in os.scandir(root)):
            raise NSPError(f"{root} has no <wnid> class folders; {fix}")
    elif release == "cifar10_c":
        for name in (*BENCHMARK_CORRUPTIONS, "labels"):
            _require(root / f"{name}.npy", what=f"CIFAR-10-C {name}.npy", fix=fix)
    elif release == "cifar10_p":
        for p in REQUIRED_PERTURBATION_FOLDERS:
            _require(root / f"{p}.npy", what=f"CIFAR-10-P {p}.npy", fix=fix)
    else:
        raise NSPError(
            f"robustness.releases: unknown release {release!r}; choose from {list(RELEASES)}"
        )


def _walk(root: Path) -> Iterator[tuple[str, int, int]]:
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=True):
                stack.append(Path(e.path))
            else:
                st = e.stat(follow_symlinks=True)
                yield Path(e.path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns


def release_listing(*, release: str, root: str | os.PathLike) -> dict[str, Any]:
    """Check ``root`` holds a complete ``release`` and list it without opening a file.

    Returns ``{release, root, files, bytes, digest, groups}``: ``digest`` is the sha256 of the
    sorted ``path, size, mtime_ns`` lines, ``groups`` the files and bytes per top-level entry.
    """
    root = Path(root).expanduser().resolve()
    _check_complete(release, root)
    lines = sorted(_walk(root))
    h = hashlib.sha256()
    groups: dict[str, dict[str, int]] = {}
    for rel, size, mtime in lines:
        h.update(f"{rel}\t{size}\t{mtime}\n".encode())
        g = groups.setdefault(rel.split("/", 1)[0], {"files": 0, "bytes": 0})
        g["files"] += 1
        g["bytes"] += size
    return {
        "format": LISTING_FORMAT,
        "release": release,
        "root": str(root),
        "files": len(lines),
        "bytes": sum(s for _, s, _ in lines),
        "digest": h.hexdigest(),
        "groups": groups,
    }


# ----------------------------------------------------------------------------------- decoding


def _fit(img: Any, *, size: int, channels: int, resize_shorter: int) -> np.ndarray:
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = resize_shorter / min(w, h)
    nw, nh = max(resize_shorter, round(w * scale)), max(resize_shorter, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    if (nw, nh) != (size, size):
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_image(
    path: str | os.PathLike, *, size: int, channels: int, resize_shorter: int | None = None
) -> np.ndarray:
    """Decode one release image to uint8 ``(size, size, channels)``: shorter side to
    ``resize_shorter`` (default ``size``; bilinear), centre crop. A damaged file is a one-line
    NSPError naming it (a truncated JPEG included: Pillow's LOAD_TRUNCATED_IMAGES stays off)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return _fit(img, size=size, channels=channels, resize_shorter=resize_shorter or size)
    except (OSError, ValueError, SyntaxError) as exc:
        raise NSPError(
            f"{path}: cannot decode ({one_line(exc)}); the release copy is damaged: re-download "
            "this file (NSP stops rather than skip it: a smaller denominator would not be the "
            "published protocol)"
        ) from None


def _fit_array(x: np.ndarray, *, size: int, channels: int) -> np.ndarray:
    """uint8 (B, H, W, 3) release pixels -> (B, size, size, channels)."""
    if x.shape[1] == size and x.shape[2] == size and channels == 3:
        return np.ascontiguousarray(x)
    from PIL import Image

    return np.stack(
        [_fit(Image.fromarray(im), size=size, channels=channels, resize_shorter=size) for im in x]
    )


def decoded_batches(
    items: Sequence[Any],
    decode: Callable[[Any], np.ndarray],
    *,
    batch_size: int,
    workers: int,
) -> Iterator[np.ndarray]:
    """Yield ``np.stack([decode(i) for i in batch])`` per batch, decoding in ``workers`` threads
    while the caller runs the model on the previous batch (at most two batches in flight)."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        pending = None
        for s in range(0, len(items), batch_size):
            futures = [pool.submit(decode, it) for it in items[s : s + batch_size]]
            if pending is not None:
                yield np.stack([f.result() for f in pending])
            pending = futures
        yield np.stack([f.result() for f in pending])  # type: ignore[union-attr]


# --------------------------------------------------------------------------------- evaluation


def _restricted(model: torch.nn.Module, x: np.ndarray, cmap: ClassMap, bs: int) -> np.ndarray:
    return predict(model, x, batch_size=bs)[:, cmap.columns]


def _shared_files(files: list[tuple[Path, int]], cmap: ClassMap) -> list[tuple[Path, int]]:
    lab = cmap.labels(np.array([label for _, label in files], dtype=np.int64))
    return [(p, int(y)) for (p, _), y in zip(files, lab, strict=True) if y >= 0]


def _error_over_files(files, decode, ctx: dict[str, Any]) -> tuple[float, int]:
    keep = _shared_files(files, ctx["cmap"])
    if not keep:
        return float("nan"), 0
    y = np.array([label for _, label in keep], dtype=np.int64)
    wrong, s = 0, 0
    for x in decoded_batches(
        [p for p, _ in keep], decode, batch_size=ctx["batch_size"], workers=ctx["workers"]
    ):
        pred = _restricted(ctx["model"], x, ctx["cmap"], ctx["batch_size"]).argmax(axis=1)
        wrong += int((pred != y[s : s + len(x)]).sum())
        s += len(x)
    return wrong / len(keep), len(keep)


def _imagenet_c(root: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    size, ch = ctx["size"], ctx["channels"]
    corrs = [c for c in R.IMAGENET_C_CORRUPTIONS if (root / c).is_dir()]
    errors: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    for c in corrs:
        for s in range(1, 6):
            files = R.imagenet_c_files(root, corruption=c, severity=s)
            err, n = _error_over_files(
                files, lambda p: decode_image(p, size=size, channels=ch), ctx
            )
            if n == 0:
                raise NSPError(
                    f"{root / c / str(s)} holds no image of the model's {ctx['cmap'].classes} "
                    "classes; re-extract the release (every severity holds every class)"
                )
            errors.setdefault(c, []).append(err)
            counts.setdefault(c, []).append(n)
    clean = ctx.get("clean")
    return {
        "errors": errors,
        "counts": counts,
        "images": int(sum(sum(v) for v in counts.values())),
        "clean_err": None if clean is None else clean["err"],
        "clean_images": None if clean is None else clean["images"],
    }


def _sequence_metrics(logits: np.ndarray, *, noise: bool) -> tuple[float, float | None]:
    fp = M.flip_probability(logits[None].argmax(axis=-1), noise=noise)
    t5 = M.top5_distance(logits[None], noise=noise) if logits.shape[-1] >= 5 else None
    return fp, t5


def _perturbation_means(sequences: Iterator[np.ndarray], ctx: dict[str, Any], *, noise: bool):
    fp_sum, t5_sum, n = 0.0, 0.0, 0
    for frames in sequences:  # (T, S, S, C) uint8
        fp, t5 = _sequence_metrics(
            _restricted(ctx["model"], frames, ctx["cmap"], ctx["batch_size"]), noise=noise
        )
        fp_sum += fp
        t5_sum += 0.0 if t5 is None else t5
        n += 1
    if n == 0:
        return None, None, 0
    return fp_sum / n, (t5_sum / n if ctx["cmap"].classes >= 5 else None), n


def _imagenet_p(root: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    size, ch = ctx["size"], ctx["channels"]

    def decode(path: Path) -> np.ndarray:
        v = R.read_video(path)
        return _fit_array(v, size=size, channels=ch)

    fp: dict[str, float | None] = {}
    t5d: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for p in [p for p in R.IMAGENET_P_PERTURBATIONS if (root / p).is_dir()]:
        keep = _shared_files(R.imagenet_p_files(root, perturbation=p), ctx["cmap"])
        videos = [path for path, _ in keep]
        seqs = (v[0] for v in decoded_batches(videos, decode, batch_size=1, workers=ctx["workers"]))
        fp[p], t5d[p], counts[p] = _perturbation_means(seqs, ctx, noise=M.is_noise_perturbation(p))
        if counts[p] == 0:
            raise NSPError(
                f"{root / p} holds no video of the model's {ctx['cmap'].classes} classes; "
                "re-extract the release"
            )
    return {"fp": fp, "t5d": t5d, "counts": counts, "images": int(sum(counts.values()))}


def _imagenet_subset(root: Path, release: str, ctx: dict[str, Any]) -> dict[str, Any]:
    size, ch = ctx["size"], ctx["channels"]
    files = _shared_files(
        R.imagenet_subset_files(root, subset=release.replace("_", "-")), ctx["cmap"]
    )
    if not files:
        raise NSPError(f"{root} holds no image of the model's classes; check the release")
    short = round(size / 0.875)
    y = np.array([label for _, label in files], dtype=np.int64)
    logits = np.concatenate(
        [
            _restricted(ctx["model"], x, ctx["cmap"], ctx["batch_size"])
            for x in decoded_batches(
                [p for p, _ in files],
                lambda p: decode_image(p, size=size, channels=ch, resize_shorter=short),
                batch_size=ctx["batch_size"],
                workers=ctx["workers"],
            )
        ]
    )
    return {
        "acc": float(M.accuracy(logits.argmax(axis=1), y)),
        "calib_err": calibration_or_none(logits, y, bins=ctx["calib_bins"]),
        "images": len(y),
    }


def _cifar_c(root: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    errors: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    bs = ctx["batch_size"]
    for c in [c for c in R.CIFAR_C_CORRUPTIONS if (root / f"{c}.npy").is_file()]:
        for s in range(1, 6):
            images, labels = R.load_cifar_c(root, corruption=c, severity=s)
            y = ctx["cmap"].labels(np.asarray(labels, dtype=np.int64))
            idx = np.flatnonzero(y >= 0)
            wrong = 0
            for i in range(0, len(idx), bs):
                x = _fit_array(images[idx[i : i + bs]], size=ctx["size"], channels=ctx["channels"])
                pred = _restricted(ctx["model"], x, ctx["cmap"], bs).argmax(axis=1)
                wrong += int((pred != y[idx[i : i + bs]]).sum())
            errors.setdefault(c, []).append(wrong / max(1, len(idx)))
            counts.setdefault(c, []).append(len(idx))
    return {
        "errors": errors,
        "counts": counts,
        "images": int(sum(sum(v) for v in counts.values())),
        "clean_err": None if ctx.get("clean") is None else ctx["clean"]["err"],
    }


def _cifar_p(root: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    fp: dict[str, float | None] = {}
    t5d: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for p in [p for p in R.IMAGENET_P_PERTURBATIONS if (root / f"{p}.npy").is_file()]:
        frames, _ = R.load_cifar_p(root, perturbation=p)
        seqs = (
            _fit_array(frames[i], size=ctx["size"], channels=ctx["channels"])
            for i in range(len(frames))
        )
        fp[p], t5d[p], counts[p] = _perturbation_means(seqs, ctx, noise=M.is_noise_perturbation(p))
    return {"fp": fp, "t5d": t5d, "counts": counts, "images": int(sum(counts.values()))}


def clean_error(*, logits: np.ndarray, labels: np.ndarray, cmap: ClassMap) -> dict[str, Any] | None:
    """Clean top-1 error on the model's own test split restricted like the release: images of the
    shared classes only, logits restricted to them (the ``E_clean`` of relative mCE)."""
    local = np.full(logits.shape[1], -1, dtype=np.int64)
    local[cmap.columns] = np.arange(cmap.classes)
    y = local[np.asarray(labels, dtype=np.int64)]
    keep = y >= 0
    if not keep.any():
        return None
    pred = logits[keep][:, cmap.columns].argmax(axis=1)
    return {"err": float(M.error_rate(pred, y[keep])), "images": int(keep.sum())}


def evaluate_release(
    *,
    release: str,
    root: str | os.PathLike,
    model: torch.nn.Module,
    class_names: Sequence[str],
    image_size: int,
    channels: int,
    batch_size: int = 256,
    workers: int = 4,
    calib_bins: int = 15,
    clean_logits: np.ndarray | None = None,
    clean_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Raw numbers of ``model`` (uint8 NCHW in, logits over ``class_names`` out) on one release.

    ``clean_logits`` / ``clean_labels``: the model's clean test split (for relative mCE).
    Returns ``{format, release, classes, images, seconds, alexnet, ...}`` plus the per-release
    numbers (errors per corruption x severity, FP / T5D per perturbation, accuracy, calibration).
    """
    root = Path(root).expanduser().resolve()
    _check_complete(release, root)
    cmap = shared_classes(model_classes=class_names, release=release)
    ctx: dict[str, Any] = {
        "model": model,
        "cmap": cmap,
        "size": int(image_size),
        "channels": int(channels),
        "batch_size": int(batch_size),
        "workers": int(workers),
        "calib_bins": int(calib_bins),
        "clean": None
        if clean_logits is None
        else clean_error(logits=clean_logits, labels=clean_labels, cmap=cmap),
    }
    t0 = time.perf_counter()
    if release == "imagenet_c":
        body = _imagenet_c(root, ctx)
    elif release == "imagenet_p":
        body = _imagenet_p(root, ctx)
    elif release in ("imagenet_a", "imagenet_r"):
        body = _imagenet_subset(root, release, ctx)
    elif release == "cifar10_c":
        body = _cifar_c(root, ctx)
    else:
        body = _cifar_p(root, ctx)
    return {
        "format": RAW_FORMAT,
        "release": release,
        "root": str(root),
        "classes": cmap.classes,
        "shared_class_names": list(cmap.names),
        "alexnet": release in ("imagenet_c", "imagenet_p"),
        **body,
        "seconds": time.perf_counter() - t0,
    }
