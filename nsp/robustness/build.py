"""Build the -C, -P and -A robustness sets: the library behind the ``robustness`` DVC stage
(its runner, which reads params.yaml and the prepared data and logs to MLflow, is
:func:`nsp.robustness.stage.run_robustness`).

* **-C**: ``c_images`` seeded test images, every corruption of :data:`CORRUPTIONS` at severities 1..5
  (``c_<corruption>.npy``: uint8 ``(5, N, H, W, C)``, severity ``s`` at row ``s - 1``).
* **-P**: ``p_images`` seeded test images, every perturbation of :data:`PERTURBATIONS`
  (``p_<perturbation>.npy``: uint8 ``(N, T, H, W, C)``, frame 0 first).
* **-A** (adversarial filtration, as ImageNet-A was built with a fixed ResNet-50): a reference
  classifier independent of the Noisy Student chain (own arch and seed) is trained on every training
  label (labeled + val + unlabeled with its true labels); the pool images of ``prepare``'s ``apool``
  split (disjoint from every training and test image) that it **misclassifies** form the -A set
  (``a_x.npy``, ``a_y.npy``, ``a_pool_index.npy``).

``summary.json`` records sizes, seeds, the reference model's pool accuracy and every file's sha256.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsp.config import NoiseConfig, TrainConfig
from nsp.errors import NSPError
from nsp.io import sha256_file, write_json
from nsp.robustness.corruptions import (
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    HELDOUT_CORRUPTIONS,
    SEVERITIES,
    corrupt,
)
from nsp.robustness.perturbations import (
    PERTURBATIONS,
    TEST_PERTURBATIONS,
    num_frames,
    perturb_sequence,
)

FORMAT = "nsp-robustness-sets/1"
SUMMARY = "summary.json"
REFERENCE_CKPT = "a_reference.pt"

__all__ = [
    "FORMAT",
    "SetsConfig",
    "adversarial_filter",
    "build_sets",
    "load_summary",
    "reference_config",
    "subset_indices",
    "train_reference",
]


def reference_config(**overrides: Any) -> TrainConfig:
    """Default -A reference training: 2 epochs, light noise (dropout 0.1), its own seed.

    On Fashion-MNIST (57,000 training labels) this reaches ~89 % pool accuracy in ~115 s on one
    core; crop/flip or EMA lower the accuracy reached in so few epochs.
    """
    base = TrainConfig(
        name="a_reference",
        arch="nsp_resnet_xs",
        epochs=2,
        batch_size=128,
        lr=0.05,
        warmup_epochs=0.1,
        ema_decay=0.0,
        seed=1234,
        noise=NoiseConfig(
            randaugment=False, crop_flip=False, flip=False, dropout=0.1, drop_path=0.0
        ),
    )
    for k, v in overrides.items():
        setattr(base, k, v)
    return base


@dataclass
class SetsConfig:
    """The ``robustness:`` section of params.yaml (see :func:`nsp.robustness.stage.sets_config`)."""

    seed: int = 0
    c_images: int = 2000
    p_images: int = 1000
    reference: TrainConfig = field(default_factory=reference_config)

    def validate(self) -> None:
        for key in ("c_images", "p_images"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise NSPError(
                    f"params.yaml: robustness.{key} must be an integer >= 1 (got {v!r}); fix it"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise NSPError(
                f"params.yaml: robustness.seed must be an integer >= 0 (got {self.seed!r}); fix it"
            )
        self.reference.validate()


# --------------------------------------------------------------------------------- pure parts


def subset_indices(n: int, k: int, *, seed: int, stream: int) -> np.ndarray:
    """Sorted seeded choice of ``min(k, n)`` distinct indices of ``range(n)``.

    ``stream`` separates independent draws of one seed (0: -C images, 1: -P images).
    """
    k = min(int(k), int(n))
    rng = np.random.default_rng([int(seed), int(stream)])
    return np.sort(rng.choice(int(n), size=k, replace=False)).astype(np.int64)


def adversarial_filter(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the pool images the reference model misclassifies: the -A set."""
    pred = np.asarray(predictions)
    lab = np.asarray(labels)
    if pred.shape != lab.shape or pred.ndim != 1:
        raise NSPError(
            f"adversarial_filter: predictions {pred.shape} and labels {lab.shape} must be equal 1-D"
        )
    return np.flatnonzero(pred != lab).astype(np.int64)


def train_reference(
    *,
    cfg: TrainConfig,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the fixed -A reference classifier (uint8 NCHW inputs); returns train_model's dict."""
    from nsp.train.engine import train_model

    return train_model(
        cfg=cfg,
        labeled_x=train_x,
        labeled_y=train_y,
        val_x=val_x,
        val_y=val_y,
        num_classes=num_classes,
        progress=progress,
    )


def _save_reference(
    path: Path,
    *,
    model: torch.nn.Module,
    cfg: TrainConfig,
    metrics: dict[str, Any],
    in_chans: int,
    class_names: list[str],
) -> None:
    """An NSP checkpoint of the reference model (no wall-clock fields: equal training, equal bytes)."""
    from nsp import config as C
    from nsp.checkpoint import save_checkpoint

    save_checkpoint(
        path,
        model=model,
        arch=cfg.arch,
        num_classes=len(class_names),
        in_chans=in_chans,
        config=C.to_dict(cfg),
        metrics=_reference_metrics(metrics),
        class_names=class_names,
    )


def _reference_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The reference's training metrics without wall-clock fields. Its ``val`` split is part of its
    training data, so train_model's ``val_acc`` is an accuracy on trained-on images: it is kept only
    as ``seen_val_acc`` (a fit diagnostic). The held-out number is the pool accuracy in the summary."""
    out = {k: v for k, v in metrics.items() if "seconds" not in k and "per_s" not in k}
    out["seen_val_acc"] = out.pop("val_acc")
    return out


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def _nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x, copy=True)).permute(0, 3, 1, 2)


def build_sets(
    *,
    out_dir: str | os.PathLike,
    cfg: SetsConfig,
    test_x: np.ndarray,
    test_y: np.ndarray,
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    class_names: list[str],
    progress: bool = True,
) -> dict[str, Any]:
    """Write the -C, -P and -A sets into ``out_dir`` (replaced only when complete); return the summary.

    Images are uint8 ``(N, H, W, C)`` numpy arrays; labels int. ``train_*`` is every training label
    (for the -A reference), ``val_*`` its model-selection split, ``pool_*`` the held-out pool.
    """
    from tqdm.auto import tqdm

    from nsp.train.engine import predict_logits

    out = Path(out_dir)
    test_x = np.asarray(test_x)
    test_y = np.asarray(test_y, dtype=np.int64)
    if test_x.dtype != np.uint8 or test_x.ndim != 4 or len(test_x) != len(test_y):
        raise NSPError(
            f"build_sets: test images must be uint8 (N, H, W, C) with one label each, got "
            f"{test_x.dtype} {test_x.shape} and {len(test_y)} labels"
        )
    if len(pool_y) == 0:
        raise NSPError(
            "the -A pool is empty (prepare.a_pool_per_class is 0); set prepare.a_pool_per_class > 0 "
            "and re-run `nsp prepare`"
        )
    timings: dict[str, float] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed build
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        # ---- -C
        t0 = time.perf_counter()
        c_idx = subset_indices(len(test_y), cfg.c_images, seed=cfg.seed, stream=0)
        c_images = test_x[c_idx]
        _save(tmp / "c_index.npy", c_idx)
        _save(tmp / "c_labels.npy", test_y[c_idx])
        for name in tqdm(CORRUPTIONS, desc="-C", disable=not progress, unit="corruption"):
            arr = np.stack(
                [corrupt(c_images, name=name, severity=s, seed=cfg.seed) for s in SEVERITIES]
            )
            _save(tmp / f"c_{name}.npy", arr)
        timings["c_seconds"] = time.perf_counter() - t0
        # ---- -P
        t0 = time.perf_counter()
        p_idx = subset_indices(len(test_y), cfg.p_images, seed=cfg.seed, stream=1)
        p_images = test_x[p_idx]
        _save(tmp / "p_index.npy", p_idx)
        _save(tmp / "p_labels.npy", test_y[p_idx])
        for name in tqdm(PERTURBATIONS, desc="-P", disable=not progress, unit="perturbation"):
            _save(tmp / f"p_{name}.npy", perturb_sequence(p_images, name=name, seed=cfg.seed))
        timings["p_seconds"] = time.perf_counter() - t0
        # ---- -A
        t0 = time.perf_counter()
        pool_x = np.asarray(pool_x)
        pool_y = np.asarray(pool_y, dtype=np.int64)
        result = train_reference(
            cfg=cfg.reference,
            train_x=_nhwc_to_nchw(train_x),
            train_y=torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
            val_x=_nhwc_to_nchw(val_x),
            val_y=torch.from_numpy(np.asarray(val_y, dtype=np.int64)),
            num_classes=len(class_names),
            progress=progress,
        )
        ref = result["model"]
        pool_pred = predict_logits(ref, _nhwc_to_nchw(pool_x)).argmax(1).numpy().astype(np.int64)
        kept = adversarial_filter(pool_pred, pool_y)
        _save(tmp / "a_x.npy", pool_x[kept])
        _save(tmp / "a_y.npy", pool_y[kept])
        _save(tmp / "a_pool_index.npy", kept)
        _save(tmp / "a_reference_pool_pred.npy", pool_pred)
        _save_reference(
            tmp / REFERENCE_CKPT,
            model=ref,
            cfg=cfg.reference,
            metrics=result["metrics"],
            in_chans=int(test_x.shape[3]),
            class_names=class_names,
        )
        timings["a_seconds"] = time.perf_counter() - t0
        k = len(class_names)
        summary: dict[str, Any] = {
            "format": FORMAT,
            "seed": cfg.seed,
            "image_shape": list(test_x.shape[1:]),
            "class_names": list(class_names),
            "num_classes": k,
            "c": {
                "images": len(c_idx),
                "corruptions": list(CORRUPTIONS),
                "benchmark": list(BENCHMARK_CORRUPTIONS),
                "heldout": list(HELDOUT_CORRUPTIONS),
                "severities": list(SEVERITIES),
            },
            "p": {
                "images": len(p_idx),
                "perturbations": list(PERTURBATIONS),
                "test": list(TEST_PERTURBATIONS),
                "frames": {nm: num_frames(nm) for nm in PERTURBATIONS},
            },
            "a": {
                "pool_size": len(pool_y),
                "kept": len(kept),
                "reference_pool_acc": float(np.mean(pool_pred == pool_y)),
                "kept_per_class": np.bincount(pool_y[kept], minlength=k).tolist(),
                "reference": {
                    "arch": cfg.reference.arch,
                    "epochs": cfg.reference.epochs,
                    "seed": cfg.reference.seed,
                    "train_images": len(train_y),
                    "steps": result["metrics"]["steps"],
                },
            },
        }
        summary["files"] = {
            f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.name != SUMMARY
        }
        write_json(tmp / SUMMARY, summary)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "timings": timings}


def _publish(tmp: Path, out: Path) -> None:
    """Swap the complete ``tmp`` in as ``out`` (the previous ``out`` is removed afterwards)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_summary(sets_dir: str | os.PathLike) -> dict[str, Any]:
    """``summary.json`` of a built sets directory (one-line NSPError when missing or foreign)."""
    import json

    path = Path(sets_dir) / SUMMARY
    if not path.is_file():
        raise NSPError(
            f"{path} not found: the robustness sets are not built; run `nsp robustness` "
            "(dvc repro robustness) first"
        )
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        raise NSPError(f"{path} is unreadable; re-run `nsp robustness`") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise NSPError(f"{path} is not an NSP robustness-sets summary ({FORMAT}); re-run it")
    for name in summary.get("files", {}):
        if not (Path(sets_dir) / name).is_file():
            raise NSPError(
                f"{Path(sets_dir) / name} is missing; re-run `nsp robustness` to rebuild the sets"
            )
    return summary
