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
import torch

from nsp import config as C
from nsp.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from nsp.errors import NSPError
from nsp.io import atomic_path, sha256_file, write_json
from nsp.models import count_params

OUT = Path("outputs")
# wall-clock fields stay out of checkpoints so equal training gives byte-equal files
TIMING_KEYS = ("train_seconds", "train_img_per_s")


def prepared_dir(params: dict[str, Any]) -> Path:
    return Path((params.get("prepare") or {}).get("out_dir", "data/prepared"))


def model_dir(name: str, out: Path = OUT) -> Path:
    return out / "models" / name


def pseudo_dir(gen: str, out: Path = OUT) -> Path:
    return out / "pseudo" / gen


def _threads() -> tuple[int, int]:
    """Torch threads = usable cores (``NSP_NUM_THREADS`` overrides; oversubscription is very slow).

    Under torchrun (``WORLD_SIZE`` > 1) also joins the process group (gloo on CPU, nccl on GPU) and
    returns (rank, world_size); only rank 0 logs to MLflow and writes outputs.
    """
    import os

    n = os.environ.get("NSP_NUM_THREADS")
    torch.set_num_threads(int(n) if n else max(1, len(os.sched_getaffinity(0))))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), world
    return 0, 1


def load_data(params: dict[str, Any], *, unlabeled: bool = False) -> dict[str, Any]:
    from nsp.data.splits import load_split, load_unlabeled_truth, read_manifest

    root = prepared_dir(params)
    if not (root / "manifest.json").exists():
        raise NSPError(
            f"{root}/manifest.json not found; run `nsp prepare` (dvc repro prepare) first"
        )
    from nsp.train.engine import to_nchw

    data: dict[str, Any] = {"manifest": read_manifest(str(root)), "root": root}
    for split in ("labeled", "val", "test"):
        s = load_split(str(root), split)
        data[f"{split}_x"] = to_nchw(np.asarray(s.images))
        data[f"{split}_y"] = torch.from_numpy(np.asarray(s.labels, dtype=np.int64))
        data["num_classes"] = s.num_classes
        data["class_names"] = list(s.class_names)
    if unlabeled:
        s = load_split(str(root), "unlabeled")
        data["unlabeled"] = s
        data["unlabeled_truth"] = load_unlabeled_truth(str(root))
    data["manifest_hash"] = sha256_file(root / "manifest.json")
    return data


def _state_path(name: str, out: Path) -> Path:
    """Per-epoch training state (resume after a kill); not a DVC output, removed after success."""
    return model_dir(name, out) / "train_state.pt"


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
        metrics, artifacts=[d / "config.json", d / "confusion.json", d / "history.csv"]
    )
    tracker.log_model(
        model=model,
        checkpoint_sha256=metrics["checkpoint_sha256"],
        input_example=data["test_x"][:2].numpy(),
        metrics=metrics,
        config=C.to_dict(cfg),
    )
    # only once tracking has it too: a rerun after a tracking failure resumes instead of retraining
    _state_path(name, out).unlink(missing_ok=True)
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

    rank, _world = _threads()
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
            state_path=_state_path(name, out),
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

    rank, _world = _threads()
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
    from nsp.train.engine import PseudoBatchSource, make_classifier, to_nchw, train_model

    rank, _world = _threads()
    cfg = C.student_config(params, gen)
    src, ckpt_path = _teacher_checkpoint(params, gen, out)
    teacher = load_checkpoint(ckpt_path)
    data = load_data(params, unlabeled=True)
    k = data["num_classes"]
    # equal-or-larger student
    t_params = teacher["metrics"].get("params")
    s_params = count_params(
        make_classifier(arch=cfg.arch, num_classes=k, in_chans=data["labeled_x"].shape[1]).net
    )
    if t_params is not None and s_params < t_params and not cfg.allow_smaller_student:
        raise NSPError(
            f"params.yaml: generations.{gen}.arch={cfg.arch} ({s_params:,} params) is smaller than its teacher "
            f"{src} ({teacher['arch']}, {t_params:,}); choose an equal-or-larger arch or set allow_smaller_student: true"
        )
    ps = load_pseudo_label_set(pseudo_dir(gen, out), k)
    pseudo = PseudoBatchSource(
        images=to_nchw(np.asarray(data["unlabeled"].images)),
        index=torch.from_numpy(ps["index"]),
        targets=torch.from_numpy(ps["targets"]),
        counts=torch.from_numpy(ps["counts"]),
    )
    init = None
    if cfg.init_from_teacher:
        init = _inherit(
            teacher,
            arch=cfg.arch,
            num_classes=k,
            in_chans=data["labeled_x"].shape[1],
            gen=gen,
            seed=cfg.seed,
        )
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
        result = train_model(
            cfg=cfg,
            labeled_x=data["labeled_x"],
            labeled_y=data["labeled_y"],
            val_x=data["val_x"],
            val_y=data["val_y"],
            num_classes=k,
            pseudo=pseudo,
            init_state=init,
            on_epoch=tr.log_epoch,
            progress=progress,
            state_path=_state_path(gen, out),
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


def _inherit(
    teacher: dict[str, Any], *, arch: str, num_classes: int, in_chans: int, gen: str, seed: int
) -> dict[str, Any]:
    """Student initial weights from its teacher: the same arch, or a deeper one of the same widths
    (new residual blocks start as identity, so the student starts with the teacher's function; their
    other weights are drawn from ``seed``, so the same seed gives the same student in any process)."""
    from nsp.models.resnet import grow_state_dict
    from nsp.train.engine import make_classifier

    if teacher["arch"] == arch:
        return teacher["state_dict"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = make_classifier(arch=arch, num_classes=num_classes, in_chans=in_chans).state_dict()
    try:
        return grow_state_dict(
            teacher["state_dict"],
            teacher_arch=teacher["arch"],
            student_state=fresh,
            student_arch=arch,
            prefix="net.",
        )
    except ValueError:
        raise NSPError(
            f"params.yaml: generations.{gen}.init_from_teacher cannot map {teacher['arch']} onto {arch}; "
            "use the same arch or a deeper nsp_resnet of equal widths (s -> m -> l), or set it to false"
        ) from None


def baseline_match(params: dict[str, Any]) -> str:
    """The model whose optimizer steps the baseline matches: ``baseline.match``, else the last generation."""
    gens = C.generation_keys(params)
    return (params.get("baseline") or {}).get("match", gens[-1] if gens else "teacher")


def run_baseline(
    params: dict[str, Any], *, out: Path = OUT, progress: bool = True
) -> dict[str, Any]:
    """Supervised-only baseline: the final student's arch and noise on ``labeled``, >= the student's steps."""

    rank, _world = _threads()
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
