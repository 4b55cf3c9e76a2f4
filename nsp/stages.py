"""Stage runners: read params + DVC inputs, call the pure engine, write DVC outputs, report to tracking.

Each ``run_*`` is what one DVC stage executes (through ``nsp train`` / ``nsp pseudo-label``).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from nsp import config as C
from nsp.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from nsp.errors import NSPError
from nsp.io import atomic_path, sha256_file, write_json
from nsp.models import count_params
from nsp.runtime import OUT, load_data, model_dir, pseudo_dir, setup_threads, state_path

# wall-clock fields stay out of checkpoints so equal training gives byte-equal files
TIMING_KEYS = (
    "train_seconds",
    "train_img_per_s",
    "precision_source",  # precision: auto's probe (or its cache) and its rates vary run to run
    "precision_fp32_img_per_s",
    "precision_bf16_img_per_s",
)


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    keys = list(history[0].keys()) if history else ["epoch"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for rec in history:
            w.writerow({k: ("" if v is None else v) for k, v in rec.items()})


def _confusion(pred: np.ndarray, y: np.ndarray, k: int) -> list[list[int]]:
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm.tolist()


def _finish_model(
    *,
    name: str,
    result: dict[str, Any],
    cfg: C.TrainConfig,
    data: dict[str, Any],
    tracker: Any,
    extra_metrics: dict[str, Any],
    lineage: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
        return dict(result["metrics"])  # only rank 0 writes outputs
    from nsp.train.engine import predict_logits

    model = result["model"]
    pred = predict_logits(model, data["test_x"]).argmax(1).numpy()
    test_y = data["test_y"].numpy()
    metrics = {
        **result["metrics"],
        "test_acc": float((pred == test_y).mean()),
        "params": count_params(model.net),
        **extra_metrics,
    }
    d = model_dir(name, out)
    d.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        d / "model.pt",
        model=model,
        arch=cfg.arch,
        num_classes=data["num_classes"],
        in_chans=data["labeled_x"].shape[1],
        config=C.to_dict(cfg),
        metrics={k: v for k, v in metrics.items() if k not in TIMING_KEYS},
        class_names=data["class_names"],
    )
    metrics["checkpoint_sha256"] = sha256_file(d / "model.pt")
    _write_history(d / "history.csv", result["history"])
    write_json(
        d / "confusion.json",
        {"labels": data["class_names"], "matrix": _confusion(pred, test_y, data["num_classes"])},
    )
    write_json(d / "config.json", {"stage": name, "config": C.to_dict(cfg), "lineage": lineage})
    write_json(d / "metrics.json", metrics)
    tracker.log_final(
        metrics,
        artifacts=[d / "config.json", d / "confusion.json", d / "history.csv"],
        tags={"precision": metrics["precision"]} if "precision" in metrics else None,
    )
    tracker.log_model(
        model=model,
        checkpoint_sha256=metrics["checkpoint_sha256"],
        input_example=data["test_x"][:2].numpy(),
        metrics=metrics,
        config=C.to_dict(cfg),
        class_names=data["class_names"],
    )
    # only once tracking has it too: a rerun after a tracking failure resumes instead of retraining
    state_path(name, out).unlink(missing_ok=True)
    return metrics


def _tracker(
    params: dict[str, Any],
    *,
    stage: str,
    generation: int,
    config: dict[str, Any],
    tags: dict[str, Any],
    rank: int = 0,
):
    from nsp import tracking

    if rank > 0:
        return tracking.null_run()
    return tracking.stage_run(
        params=params, stage=stage, generation=generation, config=config, tags=tags
    )


def run_teacher(
    params: dict[str, Any], *, out: Path = OUT, progress: bool = True
) -> dict[str, Any]:
    """Generation 0: train the teacher on ``labeled`` (with noise), select on ``val``."""

    rank, _world = setup_threads()
    cfg = C.teacher_config(params)
    data = load_data(params)
    tags = {"generation": 0, "data_manifest_sha256": data["manifest_hash"], "dvc_stage": "teacher"}
    source = (params.get("teacher") or {}).get("source")
    if source:
        return _teacher_from_registry(params, source=source, cfg=cfg, data=data, tags=tags, out=out)
    return _train_supervised(
        params,
        name="teacher",
        generation=0,
        cfg=cfg,
        data=data,
        tags=tags,
        rank=rank,
        out=out,
        progress=progress,
    )


def _train_supervised(
    params: dict[str, Any],
    *,
    name: str,
    generation: int,
    cfg: C.TrainConfig,
    data: dict[str, Any],
    tags: dict[str, Any],
    rank: int,
    out: Path,
    progress: bool,
) -> dict[str, Any]:
    """Labeled-only training (the teacher and the baseline), tracked and written like every stage."""
    from nsp.train.engine import train_model

    with _tracker(
        params, stage=name, generation=generation, config=C.to_dict(cfg), tags=tags, rank=rank
    ) as tr:
        result = train_model(
            cfg=cfg,
            labeled_x=data["labeled_x"],
            labeled_y=data["labeled_y"],
            val_x=data["val_x"],
            val_y=data["val_y"],
            num_classes=data["num_classes"],
            on_epoch=tr.log_epoch,
            progress=progress,
            state_path=state_path(name, out),
        )
        return _finish_model(
            name=name,
            result=result,
            cfg=cfg,
            data=data,
            tracker=tr,
            extra_metrics={},
            lineage={"data_manifest_sha256": data["manifest_hash"]},
            out=out,
        )


def _teacher_from_registry(
    params: dict[str, Any],
    *,
    source: str,
    cfg: C.TrainConfig,
    data: dict[str, Any],
    tags: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    """``teacher.source: models:/NAME@ALIAS``: take the teacher from the registry instead of training."""
    from nsp import tracking
    from nsp.train.engine import accuracy

    if not str(source).startswith("models:/"):
        raise NSPError(
            f"params.yaml: teacher.source={source!r} must be a registry URI models:/NAME@ALIAS or null"
        )
    model, mv = tracking.teacher_from_registry(ref=source, params=params)
    model.eval()
    cfg.arch = mv.tags.get("arch", cfg.arch)
    tags = {**tags, "teacher_source": source, "source_version": mv.version}
    with _tracker(params, stage="teacher", generation=0, config=C.to_dict(cfg), tags=tags) as tr:
        val_acc = accuracy(model, data["val_x"], data["val_y"])
        result = {
            "model": model,
            "history": [],
            "metrics": {"val_acc": val_acc, "steps": 0, "train_seconds": 0.0, "source": source},
        }
        return _finish_model(
            name="teacher",
            result=result,
            cfg=cfg,
            data=data,
            tracker=tr,
            extra_metrics={},
            lineage={"data_manifest_sha256": data["manifest_hash"], "source": source},
            out=out,
        )


def _teacher_checkpoint(params: dict[str, Any], gen: str, out: Path) -> tuple[str, Path]:
    src = C.teacher_of(params, gen)
    return src, model_dir(src, out) / "model.pt"


def run_pseudo_label(
    params: dict[str, Any], gen: str, *, out: Path = OUT, progress: bool = True
) -> dict[str, Any]:
    """Label the unlabeled split with generation ``gen``'s teacher (un-noised, un-augmented inputs)."""
    from nsp.pseudo.label import build_pseudo_label_set

    rank, _world = setup_threads()
    cfg = C.pseudo_config(params, gen)
    src, ckpt_path = _teacher_checkpoint(params, gen, out)
    ckpt = load_checkpoint(ckpt_path)
    from nsp.train.engine import default_device

    model = model_from_checkpoint(ckpt).to(default_device())
    data = load_data(params, unlabeled=True)
    unl = data["unlabeled"]
    ckpt_hash = sha256_file(ckpt_path)
    gidx = C.generation_keys(params).index(gen) + 1
    provenance = {
        "generation": gidx,
        "teacher": src,
        "teacher_checkpoint_sha256": ckpt_hash,
        "params": C.to_dict(cfg),
        "data_manifest_sha256": data["manifest_hash"],
    }
    tags = {
        "generation": gidx,
        "teacher_checkpoint_sha256": ckpt_hash,
        "teacher_model": src,
        "data_manifest_sha256": data["manifest_hash"],
        "dvc_stage": f"pseudo_label@{gen}",
    }
    with _tracker(
        params,
        stage=f"pseudo_label@{gen}",
        generation=gidx,
        config=C.to_dict(cfg),
        tags=tags,
        rank=rank,
    ) as tr:
        stats = build_pseudo_label_set(
            model=model,
            get_batch=unl.get_batch,
            n=len(unl),
            num_classes=data["num_classes"],
            cfg=cfg,
            out_dir=pseudo_dir(gen, out),
            truth=data["unlabeled_truth"],
            provenance=provenance,
            progress=progress,
            rank=rank,
            world=_world,
        )
        if rank > 0:
            return {}
        set_hash = _dir_hash(pseudo_dir(gen, out))
        summary = {
            "pseudo_label_acc": stats["pseudo_label_acc"],
            "pseudo_label_acc_all": stats["pseudo_label_acc_all"],
            "stream_size": stats["stream_size"],
            "num_kept_unique": stats["num_kept_unique"],
            "num_unlabeled": stats["num_unlabeled"],
            "pseudo_set_sha256": set_hash,
        }
        write_json(out / "pseudo" / f"{gen}.metrics.json", summary)
        tr.log_final(
            {k: v for k, v in summary.items() if isinstance(v, (int, float))},
            artifacts=[pseudo_dir(gen, out) / "stats.json"],
            tags={"pseudo_set_sha256": set_hash},
        )
    return summary


def _dir_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(path).as_posix().encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def run_student(
    params: dict[str, Any], gen: str, *, out: Path = OUT, progress: bool = True
) -> dict[str, Any]:
    """Train generation ``gen``'s noised student on labeled + its pseudo-label set."""
    from nsp.pseudo.label import load_pseudo_label_set
    from nsp.student import pseudo_source, train_student
    from nsp.train.engine import to_nchw

    rank, _world = setup_threads()
    cfg = C.student_config(params, gen)
    src, ckpt_path = _teacher_checkpoint(params, gen, out)
    teacher = load_checkpoint(ckpt_path)
    data = load_data(params, unlabeled=True)
    ps = load_pseudo_label_set(pseudo_dir(gen, out), data["num_classes"])
    pseudo = pseudo_source(ps, to_nchw(np.asarray(data["unlabeled"].images)))
    pmetrics = json.loads((out / "pseudo" / f"{gen}.metrics.json").read_text())
    gidx = C.generation_keys(params).index(gen) + 1
    tags = {
        "generation": gidx,
        "teacher_model": src,
        "teacher_checkpoint_sha256": sha256_file(ckpt_path),
        "pseudo_set_sha256": pmetrics["pseudo_set_sha256"],
        "data_manifest_sha256": data["manifest_hash"],
        "dvc_stage": f"student@{gen}",
    }
    with _tracker(
        params,
        stage=f"student@{gen}",
        generation=gidx,
        config=C.to_dict(cfg),
        tags=tags,
        rank=rank,
    ) as tr:
        result = train_student(
            cfg=cfg,
            data=data,
            pseudo=pseudo,
            teacher=teacher,
            where=f"params.yaml: generations.{gen}",
            on_epoch=tr.log_epoch,
            progress=progress,
            state_path=state_path(gen, out),
        )
        return _finish_model(
            name=gen,
            result=result,
            cfg=cfg,
            data=data,
            tracker=tr,
            extra_metrics={"pseudo_label_acc": pmetrics["pseudo_label_acc"], "generation": gidx},
            lineage={k2: v for k2, v in tags.items() if k2 != "dvc_stage"},
            out=out,
        )


def baseline_match(params: dict[str, Any]) -> str:
    """The model whose optimizer steps the baseline matches: ``baseline.match``, else the last generation."""
    gens = C.generation_keys(params)
    return (params.get("baseline") or {}).get("match", gens[-1] if gens else "teacher")


def run_baseline(
    params: dict[str, Any], *, out: Path = OUT, progress: bool = True
) -> dict[str, Any]:
    """Supervised-only baseline: the final student's arch and noise on ``labeled``, >= the student's steps."""

    rank, _world = setup_threads()
    match = baseline_match(params)
    ref_path = model_dir(match, out) / "metrics.json"
    if not ref_path.exists():
        raise NSPError(
            f"{ref_path} not found: baseline.match={match!r} must name a trained model; run its stage first"
        )
    ref = json.loads(ref_path.read_text())
    cfg = C.baseline_config(params)
    cfg.min_steps = max(cfg.min_steps, int(ref.get("steps", 0)))
    data = load_data(params)
    tags = {
        "generation": -1,
        "data_manifest_sha256": data["manifest_hash"],
        "dvc_stage": "baseline",
        "matched_steps_of": match,
    }
    return _train_supervised(
        params,
        name="baseline",
        generation=-1,
        cfg=cfg,
        data=data,
        tags=tags,
        rank=rank,
        out=out,
        progress=progress,
    )
