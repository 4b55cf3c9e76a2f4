"""Pseudo-label sets: the un-noised teacher labels the unlabeled split, streamed in shards.

Pass 1 runs the teacher (eval mode, no augmentation) batch by batch, writes prediction shards and
accumulates per-class confidence histograms (memory: classes x 100 bins, not N x classes).
Pass 2 derives per-class thresholds and copy counts and rewrites each shard with its ``count`` column.

Temperature, as the official code (google-research/noisystudent: the teacher's predictions are
filtered and balanced by ``filter_unlabel.py``, the softmax temperature only sharpens the training
targets): the ``label``, the ``confidence`` column, the threshold and the per-class balancing all use
the teacher's T = 1 probabilities; ``pseudo.temperature`` changes only the stored targets
(``softmax(logits / T)``, then hard / smoothed as configured). T therefore never changes which
images are kept or how often.
Output (a directory, one DVC output): ``shard-XXXXX.parquet`` + ``stats.json`` + ``provenance.json``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nsp.config import PseudoConfig
from nsp.errors import NSPError
from nsp.io import write_json
from nsp.pseudo.balance import class_histogram, class_thresholds, copy_counts, threshold_grid

GetBatch = Callable[[np.ndarray], np.ndarray]  # indices -> uint8 (B, H, W, C)


@torch.inference_mode()
def teacher_logits(model: torch.nn.Module, x_nhwc: np.ndarray) -> torch.Tensor:
    """float32 logits of the un-noised teacher (eval mode) for a uint8 NHWC batch."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2)
    return model(x).float()


def _softmax(logits: torch.Tensor, temperature: float) -> np.ndarray:
    """softmax(logits / T) as numpy (T = 1.0 divides exactly, so it equals softmax(logits))."""
    return F.softmax(logits / temperature, dim=1).cpu().numpy()


def soft_targets(probs: np.ndarray, *, soft: bool, label_smoothing: float) -> np.ndarray:
    """Training targets: the soft distribution, or one-hot argmax (optionally label-smoothed)."""
    if soft:
        return probs
    k = probs.shape[1]
    hard = np.eye(k, dtype=np.float32)[probs.argmax(1)]
    return hard * (1 - label_smoothing) + label_smoothing / k


def _shard_table(
    index: np.ndarray, label: np.ndarray, targets: np.ndarray, conf: np.ndarray, topk: int
) -> pa.Table:
    """``label`` / ``confidence``: the T = 1 argmax and max; ``class_j`` / ``prob_j``: top-k targets."""
    k = min(topk, targets.shape[1])
    order = np.argsort(-targets, axis=1, kind="stable")[:, :k]
    probs = np.take_along_axis(targets, order, axis=1)
    cols: dict[str, Any] = {
        "index": pa.array(index.astype(np.int64)),
        "label": pa.array(label.astype(np.int32)),
        "confidence": pa.array(conf.astype(np.float32)),
    }
    for j in range(k):
        cols[f"class_{j}"] = pa.array(order[:, j].astype(np.int32))
        cols[f"prob_{j}"] = pa.array(probs[:, j].astype(np.float32))
    return pa.table(cols)


def predict_shards(
    *,
    model: torch.nn.Module,
    get_batch: GetBatch,
    n: int,
    num_classes: int,
    cfg: PseudoConfig,
    out_dir: Path,
    start: int = 0,
    stop: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Pass 1 over rows [start, stop): write raw shards, return the per-class confidence histogram."""
    stop = n if stop is None else stop
    grid = threshold_grid(cfg.threshold)
    hist = np.zeros((num_classes, len(grid)), dtype=np.int64)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=stop - start, desc="pseudo-label", disable=not progress, leave=False, unit="img"
    )
    for s0 in range(start, stop, cfg.shard_size):
        s1 = min(s0 + cfg.shard_size, stop)
        idx_parts, lab_parts, tgt_parts, conf_parts = [], [], [], []
        for b0 in range(s0, s1, cfg.batch_size):
            idx = np.arange(b0, min(b0 + cfg.batch_size, s1))
            logits = teacher_logits(model, get_batch(idx))
            probs = _softmax(logits, 1.0)  # filter and balance on T = 1 (official)
            conf = probs.max(1)
            sharp = probs
            if cfg.soft and cfg.temperature != 1.0:  # T sharpens soft targets only
                sharp = _softmax(logits, cfg.temperature)
            tgt = soft_targets(sharp, soft=cfg.soft, label_smoothing=cfg.label_smoothing)
            idx_parts.append(idx)
            lab_parts.append(probs.argmax(1))
            tgt_parts.append(tgt)
            conf_parts.append(conf)
            hist += class_histogram(probs.argmax(1), conf, grid, num_classes)
            bar.update(len(idx))
        table = _shard_table(
            np.concatenate(idx_parts),
            np.concatenate(lab_parts),
            np.concatenate(tgt_parts),
            np.concatenate(conf_parts),
            cfg.topk,
        )
        pq.write_table(table, out_dir / f"raw-{s0:012d}.parquet")
    bar.close()
    return hist


def finalize_shards(
    *, raw_dir: Path, out_dir: Path, hist: np.ndarray, cfg: PseudoConfig, truth: np.ndarray | None
) -> dict[str, Any]:
    """Pass 2: per-class thresholds + copy counts; write final shards and return stats."""
    grid = threshold_grid(cfg.threshold)
    thr, above = class_thresholds(hist, grid, cfg.per_class)
    k = hist.shape[0]
    before = np.zeros(k, np.int64)
    after = np.zeros(k, np.int64)
    conf_hist = np.zeros(20, np.int64)
    n_total = correct_all = correct_kept = kept_w = kept_unique = 0
    per_class_correct = np.zeros(k, np.int64)
    per_class_n = np.zeros(k, np.int64)
    raws = sorted(raw_dir.glob("raw-*.parquet"))
    for i, raw in enumerate(raws):
        t = pq.read_table(raw)
        index = t["index"].to_numpy()
        label = t["label"].to_numpy().astype(np.int64)
        conf = t["confidence"].to_numpy()
        counts = copy_counts(
            index=index,
            labels=label,
            conf=conf,
            thresholds=thr,
            counts_above=above,
            per_class=cfg.per_class,
            seed=cfg.seed,
            balance=cfg.balance,
            threshold=cfg.threshold,
        )
        t = t.append_column("count", pa.array(counts.astype(np.int32)))
        pq.write_table(t, out_dir / f"shard-{i:05d}.parquet")
        before += np.bincount(label[conf >= cfg.threshold], minlength=k)
        after += np.bincount(label, weights=counts, minlength=k).astype(np.int64)
        conf_hist += np.histogram(conf, bins=20, range=(0.0, 1.0))[0]
        n_total += len(index)
        kept_unique += int((counts > 0).sum())
        if truth is not None:
            ok = truth[index] == label
            correct_all += int(ok.sum())
            correct_kept += int((ok * counts).sum())
            kept_w += int(counts.sum())
            per_class_correct += np.bincount(
                label[counts > 0], weights=ok[counts > 0], minlength=k
            ).astype(np.int64)
            per_class_n += np.bincount(label[counts > 0], minlength=k)
    stats: dict[str, Any] = {
        "num_unlabeled": int(n_total),
        "num_kept_unique": int(kept_unique),
        "class_hist_before": before.tolist(),
        "class_hist_after": after.tolist(),
        "class_thresholds": [float(x) for x in thr],
        "confidence_hist": {
            "edges": np.linspace(0, 1, 21).round(3).tolist(),
            "counts": conf_hist.tolist(),
        },
        "stream_size": int(after.sum()),
        "pseudo_label_acc_all": (correct_all / n_total) if truth is not None and n_total else None,
        "pseudo_label_acc": (correct_kept / kept_w) if truth is not None and kept_w else None,
        "per_class_pseudo_label_acc": (
            (per_class_correct / np.maximum(per_class_n, 1)).round(6).tolist()
            if truth is not None
            else None
        ),
    }
    return stats


def build_pseudo_label_set(
    *,
    model: torch.nn.Module,
    get_batch: GetBatch,
    n: int,
    num_classes: int,
    cfg: PseudoConfig,
    out_dir: str | Path,
    truth: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """Label ``n`` unlabeled images and write the set atomically into ``out_dir``; returns stats.

    With ``world > 1`` (torchrun) rank r labels shards r, r + world, ... into a shared work dir; the
    per-class histograms are summed across ranks and rank 0 balances and publishes the set, which is
    identical to the single-process result (balancing randomness is keyed by sample index).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.work"
    try:
        if rank == 0:
            shutil.rmtree(work, ignore_errors=True)
            (work / "set").mkdir(parents=True)
        _barrier(world)
        grid_len = len(threshold_grid(cfg.threshold))
        hist = np.zeros((num_classes, grid_len), dtype=np.int64)
        for k, s0 in enumerate(range(0, n, cfg.shard_size)):
            if k % world == rank:
                hist += predict_shards(
                    model=model,
                    get_batch=get_batch,
                    n=n,
                    num_classes=num_classes,
                    cfg=cfg,
                    out_dir=work / "raw",
                    start=s0,
                    stop=min(s0 + cfg.shard_size, n),
                    progress=progress and rank == 0,
                )
        hist = _sum_across_ranks(hist, world)
        stats: dict[str, Any] = {}
        if rank == 0:
            final = work / "set"
            stats = finalize_shards(
                raw_dir=work / "raw", out_dir=final, hist=hist, cfg=cfg, truth=truth
            )
            write_json(final / "stats.json", stats)
            write_json(final / "provenance.json", provenance or {})
            old = out_dir.parent / f".{out_dir.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            if out_dir.exists():
                out_dir.rename(old)
            final.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        _barrier(world)
        return stats
    except OSError as exc:
        raise NSPError(
            f"{out_dir}: cannot write the pseudo-label set ({exc.strerror or exc}); free disk space "
            "and re-run the stage (the previous set is untouched)"
        ) from None
    finally:
        if rank == 0:
            shutil.rmtree(work, ignore_errors=True)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _sum_across_ranks(hist: np.ndarray, world: int) -> np.ndarray:
    if world == 1:
        return hist
    import torch.distributed as dist

    t = torch.from_numpy(hist)
    dist.all_reduce(t)
    return t.numpy()


def load_pseudo_label_set(path: str | Path, num_classes: int) -> dict[str, np.ndarray]:
    """Rows with count > 0: ``index``, ``targets`` (M, K) re-normalised from top-k, ``counts``."""
    parts = []
    for shard in sorted(Path(path).glob("shard-*.parquet")):
        t = pq.read_table(shard)
        parts.append(t.filter(pa.compute.greater(t["count"], 0)))
    t = pa.concat_tables(parts)
    kcols = sorted(c for c in t.column_names if c.startswith("class_"))
    targets = np.zeros((t.num_rows, num_classes), np.float32)
    rows = np.arange(t.num_rows)
    for j in range(len(kcols)):
        targets[rows, t[f"class_{j}"].to_numpy()] = t[f"prob_{j}"].to_numpy()
    targets /= np.maximum(targets.sum(1, keepdims=True), 1e-12)
    return {
        "index": t["index"].to_numpy().astype(np.int64),
        "targets": targets,
        "counts": t["count"].to_numpy().astype(np.int64),
    }
