"""``prepare_splits``: a seeded, stratified labeled / val / unlabeled / test split, written atomically.

Output (``out_dir``): per split either ``<split>_x.npy`` (+ ``<split>_y.npy``) for in-memory datasets or
``<split>.csv`` manifests (lazy ImageFolder); the unlabeled split's true labels go only to
``unlabeled_truth.npy`` (for reporting pseudo-label accuracy); ``manifest.json`` records the source,
parameters, class names, per-class counts, shapes and the sha256 of every file.

With ``a_pool_per_class > 0`` that many training images per class are held out first (before the
labeled / val / unlabeled draw) as the ``apool`` split (``apool_x.npy`` / ``apool_y.npy``): the
candidate pool from which the robustness stage filters its natural-adversarial (-A) set. With 0 no
pool is drawn and every output is byte-identical to a prepare without the option.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nsp.errors import NSPError

FORMAT = "nsp-prepared/1"
SPLITS: tuple[str, ...] = ("labeled", "val", "unlabeled", "test")
POOL_SPLIT = "apool"
MATERIALIZE_LIMIT_BYTES = 2_000_000_000


def stratified_split(
    labels: np.ndarray,
    *,
    class_names: list[str],
    labeled_per_class: int,
    val_per_class: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Indices (sorted, int64) into ``labels`` for ``labeled``, ``val`` and ``unlabeled``.

    Per class (in class order) one seeded permutation: the first ``labeled_per_class`` go to labeled,
    the next ``val_per_class`` to val, the rest to unlabeled.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"labeled": [], "val": [], "unlabeled": []}
    need = labeled_per_class + val_per_class
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise NSPError(
                f"class {name!r} (index {c}) has no training images; add images or drop the class"
            )
        if len(idx) < need:
            raise NSPError(
                f"class {name!r} has {len(idx)} training images, fewer than labeled_per_class + "
                f"val_per_class = {need}; lower --labeled-per-class / --val-per-class"
            )
        perm = idx[rng.permutation(len(idx))]
        parts["labeled"].append(perm[:labeled_per_class])
        parts["val"].append(perm[labeled_per_class:need])
        parts["unlabeled"].append(perm[need:])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


def pool_split(
    labels: np.ndarray, *, class_names: list[str], per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 ``(rest, pool)`` indices: ``per_class`` images of every class go to the pool.

    Per class one seeded permutation (``default_rng([seed, 2])``, independent of the labeled/val
    draw); its first ``per_class`` indices form the pool. ``per_class == 0``: empty pool.
    """
    labels = np.asarray(labels, dtype=np.int64)
    per_class = int(per_class)
    if per_class <= 0:
        return np.arange(len(labels), dtype=np.int64), np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 2])
    pool = []
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise NSPError(
                f"class {name!r} has {len(idx)} training images, too few to hold out "
                f"a_pool_per_class = {per_class} and keep training images; lower prepare.a_pool_per_class"
            )
        pool.append(idx[rng.permutation(len(idx))[:per_class]])
    pool_idx = np.sort(np.concatenate(pool)).astype(np.int64)
    rest = np.setdiff1d(np.arange(len(labels), dtype=np.int64), pool_idx, assume_unique=True)
    return rest, pool_idx


def split_with_pool(
    labels: np.ndarray,
    *,
    class_names: list[str],
    labeled_per_class: int,
    val_per_class: int,
    a_pool_per_class: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """:func:`pool_split` then :func:`stratified_split` of the rest; indices into ``labels``.

    Returns ``labeled``, ``val``, ``unlabeled`` (+ ``apool`` when ``a_pool_per_class > 0``). With no
    pool the result equals ``stratified_split(labels, ...)``.
    """
    rest, pool = pool_split(labels, class_names=class_names, per_class=a_pool_per_class, seed=seed)
    idx = stratified_split(
        np.asarray(labels, dtype=np.int64)[rest],
        class_names=class_names,
        labeled_per_class=labeled_per_class,
        val_per_class=val_per_class,
        seed=seed,
    )
    out = {k: rest[v] for k, v in idx.items()}
    if len(pool):
        out[POOL_SPLIT] = pool
    return out


def holdout_split(
    labels: np.ndarray, *, num_classes: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train_idx, test_idx) holding out ``fraction`` of each class (at least one image)."""
    rng = np.random.default_rng([seed, 1])
    train, test = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        perm = idx[rng.permutation(len(idx))]
        test.append(perm[:k])
        train.append(perm[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _check_params(
    *,
    labeled_per_class: int,
    val_per_class: int,
    image_size: int,
    channels: int,
    test_fraction: float,
    a_pool_per_class: int = 0,
) -> None:
    if int(a_pool_per_class) < 0:
        raise NSPError(
            f"a_pool_per_class must be >= 0 (got {a_pool_per_class}); fix prepare.a_pool_per_class"
        )
    if int(labeled_per_class) < 1:
        raise NSPError(
            f"labeled_per_class must be >= 1 (got {labeled_per_class}); fix --labeled-per-class"
        )
    if int(val_per_class) < 0:
        raise NSPError(f"val_per_class must be >= 0 (got {val_per_class}); fix --val-per-class")
    if not 4 <= int(image_size) <= 4096:
        raise NSPError(f"image_size must be in 4..4096 (got {image_size}); fix --image-size")
    if int(channels) not in (1, 3):
        raise NSPError(f"channels must be 1 or 3 (got {channels}); fix --channels")
    if not 0.0 < float(test_fraction) < 1.0:
        raise NSPError(
            f"test_fraction must be in (0, 1) (got {test_fraction}); fix prepare.test_fraction"
        )


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise NSPError(f"output path {out} is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise NSPError(
            f"output directory {out} is not empty and holds no manifest.json (not an nsp prepared dir); "
            "choose another --out or empty it"
        )


def _per_class(labels: np.ndarray, num_classes: int) -> list[int]:
    return (
        np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(int).tolist()
    )


def _save(tmp: Path, name: str, array: np.ndarray) -> None:
    with open(tmp / name, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _publish(tmp: Path, out: Path) -> None:
    """Swap ``tmp`` in as ``out``; an existing ``out`` is replaced only once ``tmp`` is complete."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_splits(
    *,
    dataset: str = "fashion_mnist",
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = "data/prepared",
    labeled_per_class: int = 100,
    val_per_class: int = 100,
    seed: int = 0,
    image_size: int = 32,
    channels: int = 1,
    fit: str = "pad",
    materialize: str | bool = "auto",
    skip_corrupt: bool = False,
    test_fraction: float = 0.2,
    resize_shorter: int | None = None,
    verify_images: str = "full",
    hash_images: bool = False,
    workers: int | None = None,
    a_pool_per_class: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Split ``dataset`` into labeled / val / unlabeled / test under ``out_dir``; return the manifest.

    ``fit`` ('pad' | 'resize') maps array datasets to ``image_size``; ImageFolder images are always
    resized (shorter side to ``resize_shorter`` or ``image_size``) and centre-cropped. ``materialize``
    ('auto' | 'always' | 'never', or a bool) decides whether an ImageFolder tree is decoded into arrays
    ('auto': when the output is under ~2 GB) or kept lazy behind CSV manifests. ``test_fraction`` is
    held out per class when an ImageFolder tree has no test/val folder. ``skip_corrupt`` skips (and
    counts) undecodable images instead of failing. ``verify_images`` ('full' | 'header') is how lazy
    scans check files; ``hash_images`` records each file's sha256 in lazy manifests.
    ``a_pool_per_class`` training images per class are held out as the ``apool`` split (-A pool).
    """
    from nsp.data.sources import check_dataset, resolve_data_dir

    check_dataset(dataset)
    _check_params(
        labeled_per_class=labeled_per_class,
        val_per_class=val_per_class,
        image_size=image_size,
        channels=channels,
        test_fraction=test_fraction,
        a_pool_per_class=a_pool_per_class,
    )
    if fit not in ("pad", "resize"):
        raise NSPError(f"unknown fit {fit!r} (prepare.fit); use 'pad' or 'resize'")
    if verify_images not in ("full", "header"):
        raise NSPError(
            f"unknown verify_images {verify_images!r} (prepare.verify_images); use 'full' or 'header'"
        )
    if isinstance(materialize, bool):
        mat = "always" if materialize else "never"
    else:
        mat = str(materialize)
    if mat not in ("auto", "always", "never"):
        raise NSPError(
            f"unknown materialize {materialize!r} (prepare.materialize); use auto, always or never"
        )
    if resize_shorter is not None and int(resize_shorter) < int(image_size):
        raise NSPError(
            f"resize_shorter ({resize_shorter}) must be >= image_size ({image_size}); fix prepare.resize_shorter"
        )
    out = Path(out_dir).resolve()
    _check_out_dir(out)
    root = resolve_data_dir(dataset, data_dir)

    params = {
        "dataset": dataset,
        "labeled_per_class": int(labeled_per_class),
        "val_per_class": int(val_per_class),
        "seed": int(seed),
        "image_size": int(image_size),
        "channels": int(channels),
    }
    if int(a_pool_per_class) > 0:  # absent when 0: the manifest stays byte-identical
        params["a_pool_per_class"] = int(a_pool_per_class)
    if dataset == "imagefolder":
        params.update(
            materialize=mat,
            skip_corrupt=bool(skip_corrupt),
            test_fraction=float(test_fraction),
            resize_shorter=None if resize_shorter is None else int(resize_shorter),
            verify_images=verify_images,
            hash_images=bool(hash_images),
        )
        staged = _stage_imagefolder(root, params=params, workers=workers, progress=progress)
    else:
        params["fit"] = fit
        staged = _stage_arrays(dataset, root, params=params)

    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        manifest = _write(tmp, staged)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # innermost first: remove only the now-empty parents we made
            try:
                p.rmdir()
            except OSError:
                break
        raise
    return manifest


def _stage_arrays(dataset: str, root: Path, *, params: dict[str, Any]) -> dict[str, Any]:
    """Load an array dataset, split it and canonicalise the pixels (nothing written yet)."""
    from nsp.data.sources import canonicalize, load_array_source
    from nsp.io import sha256_file

    src = load_array_source(dataset, root)
    idx = split_with_pool(
        src.train_y,
        class_names=src.class_names,
        labeled_per_class=params["labeled_per_class"],
        val_per_class=params["val_per_class"],
        a_pool_per_class=params.get("a_pool_per_class", 0),
        seed=params["seed"],
    )
    kw = dict(image_size=params["image_size"], channels=params["channels"], fit=params["fit"])
    arrays = {s: (canonicalize(src.train_x[i], **kw), src.train_y[i]) for s, i in idx.items()}
    arrays["test"] = (canonicalize(src.test_x, **kw), src.test_y)
    return {
        "storage": "array",
        "dataset": dataset,
        "source_dir": str(src.root.resolve()),
        "source_files": {
            p.name: {"bytes": int(p.stat().st_size), "sha256": sha256_file(p)} for p in src.files
        },
        "class_names": src.class_names,
        "params": params,
        "arrays": arrays,
        "source_counts": {"train": len(src.train_y), "test": len(src.test_y)},
    }


def _stage_imagefolder(
    root: Path, *, params: dict[str, Any], workers: int | None, progress: bool
) -> dict[str, Any]:
    """Scan an ImageFolder tree, split it, then decode (materialise) or probe (lazy) its images."""
    from nsp.data.imagefolder import decode_file, map_files, probe_file, scan_imagefolder

    scan = scan_imagefolder(root, progress=progress)
    names = scan.class_names
    s, c = params["image_size"], params["channels"]
    items = {"train": scan.train, "test": scan.test or []}
    total = len(items["train"]) + len(items["test"])
    mat = params["materialize"]
    in_memory = mat == "always" or (mat == "auto" and total * s * s * c < MATERIALIZE_LIMIT_BYTES)
    skip = params["skip_corrupt"]

    # decode / probe every file first, so corrupt files are known before splitting
    results: dict[str, list[Any]] = {}
    skipped: list[str] = []
    for part, rows in items.items():
        rels = [r for r, _ in rows]
        if in_memory:
            fn = lambda p: decode_file(  # noqa: E731
                p, image_size=s, channels=c, resize_shorter=params["resize_shorter"]
            )
        else:
            fn = lambda p: probe_file(  # noqa: E731
                p, verify=params["verify_images"], hash_image=params["hash_images"]
            )
        res, sk = map_files(
            scan.root,
            rels,
            fn,
            skip_corrupt=skip,
            workers=workers,
            desc=f"{part} images",
            progress=progress,
        )
        results[part] = res
        skipped.extend(sk)

    def kept(part: str) -> tuple[list[str], np.ndarray, list[Any]]:
        keep = [i for i, r in enumerate(results[part]) if r is not None]
        rows = items[part]
        return (
            [rows[i][0] for i in keep],
            np.asarray([rows[i][1] for i in keep], dtype=np.int64),
            [results[part][i] for i in keep],
        )

    train_rel, train_y, train_res = kept("train")
    if scan.test is not None:
        test_rel, test_y, test_res = kept("test")
        if len(test_y) == 0:
            raise NSPError(
                f"every image under {scan.root / scan.test_dir} was skipped as corrupt; fix the files"
            )
    else:  # single layout: hold out a stratified test split
        for ci, name in enumerate(names):
            if np.count_nonzero(train_y == ci) < 2:
                raise NSPError(
                    f"class {name!r} has fewer than 2 usable images, too few to hold out a test split; "
                    "add images or provide a test/ or val/ folder"
                )
        tr, te = holdout_split(
            train_y, num_classes=len(names), fraction=params["test_fraction"], seed=params["seed"]
        )
        test_rel, test_y, test_res = (
            [train_rel[i] for i in te],
            train_y[te],
            [train_res[i] for i in te],
        )
        train_rel, train_y, train_res = (
            [train_rel[i] for i in tr],
            train_y[tr],
            [train_res[i] for i in tr],
        )

    idx = split_with_pool(
        train_y,
        class_names=names,
        labeled_per_class=params["labeled_per_class"],
        val_per_class=params["val_per_class"],
        a_pool_per_class=params.get("a_pool_per_class", 0),
        seed=params["seed"],
    )
    staged: dict[str, Any] = {
        "dataset": "imagefolder",
        "source_dir": str(scan.root.resolve()),
        "source_files": {},
        "class_names": names,
        "params": params,
        "layout": scan.layout,
        "test_source": scan.test_dir or f"held out ({params['test_fraction']} per class)",
        "skipped_corrupt": sorted(skipped),
        "source_counts": {"train": len(scan.train), "test": len(scan.test or [])},
    }
    shape = (s, s, c)
    if in_memory:

        def stack(res: list[np.ndarray]) -> np.ndarray:
            return np.stack(res) if res else np.zeros((0, *shape), np.uint8)

        staged["storage"] = "array"
        staged["arrays"] = {
            k: (stack([train_res[j] for j in i]), train_y[i]) for k, i in idx.items()
        }
        staged["arrays"]["test"] = (stack(test_res), test_y)
    else:
        staged["storage"] = "lazy"
        rows: dict[str, tuple[list[tuple[str, int, int, int, str]], np.ndarray]] = {}
        for k, i in idx.items():
            rows[k] = ([(train_rel[j], int(train_y[j]), *train_res[j]) for j in i], train_y[i])
        rows["test"] = (
            [(r, int(y), *res) for r, y, res in zip(test_rel, test_y, test_res, strict=True)],
            test_y,
        )
        staged["rows"] = rows
    return staged


def _write(tmp: Path, staged: dict[str, Any]) -> dict[str, Any]:
    """Write the staged splits and manifest.json into ``tmp``; return the manifest dict."""
    from nsp.data.imagefolder import write_manifest_csv
    from nsp.io import sha256_file

    names = staged["class_names"]
    p = staged["params"]
    splits: dict[str, Any] = {}
    store = staged["arrays"] if staged["storage"] == "array" else staged["rows"]
    for split in SPLITS + ((POOL_SPLIT,) if POOL_SPLIT in store else ()):
        files: dict[str, str] = {}
        if staged["storage"] == "array":
            x, y = staged["arrays"][split]
            _save(tmp, f"{split}_x.npy", x)
            files["x"] = f"{split}_x.npy"
            shape = list(x.shape)
        else:
            rows, y = staged["rows"][split]
            if split == "unlabeled":
                rows = [(r[0], None, *r[2:]) for r in rows]
            write_manifest_csv(tmp / f"{split}.csv", rows)
            files["csv"] = f"{split}.csv"
            shape = [len(rows), p["image_size"], p["image_size"], p["channels"]]
        if split == "unlabeled":
            _save(tmp, "unlabeled_truth.npy", y.astype(np.int64))
            files["truth"] = "unlabeled_truth.npy"
        elif staged["storage"] == "array":
            _save(tmp, f"{split}_y.npy", y.astype(np.int64))
            files["y"] = f"{split}_y.npy"
        splits[split] = {
            "count": int(len(y)),
            "per_class": _per_class(y, len(names)),
            "shape": shape,
            "files": files,
        }
    file_list = sorted(f.name for f in tmp.iterdir())
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "storage": staged["storage"],
        "dataset": staged["dataset"],
        "source_dir": staged["source_dir"],
        "source_files": staged["source_files"],
        "source_counts": staged["source_counts"],
        "params": p,
        "class_names": names,
        "num_classes": len(names),
        "image_shape": [p["image_size"], p["image_size"], p["channels"]],
        "splits": splits,
        "files": {name: sha256_file(tmp / name) for name in file_list},
    }
    for key in ("layout", "test_source"):
        if key in staged:
            manifest[key] = staged[key]
    if "skipped_corrupt" in staged:
        manifest["skipped_corrupt"] = {
            "count": len(staged["skipped_corrupt"]),
            "paths": staged["skipped_corrupt"],
        }
    import json

    with open(tmp / "manifest.json", "w", encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return manifest
