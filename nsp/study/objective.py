"""One trial: params.yaml + sampled values -> pseudo labels from the fixed teacher -> noised student.

Per worker (:class:`TrialContext`): the prepared data, the teacher's logits on a fixed unlabeled
subset (computed once; every trial relabels from them with its own temperature / threshold /
balancing through :func:`nsp.pseudo.label.build_pseudo_label_set`), and the fixed -C proxy set.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsp import config as C
from nsp.errors import NSPError
from nsp.study.spec import StudySpec


class LogitTable(torch.nn.Module):
    """A stand-in "teacher" whose input is a batch of row indices (N,1,1,1) into cached logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.reshape(-1).long()]


def _index_batch(idx: np.ndarray) -> np.ndarray:
    return np.asarray(idx, dtype=np.int64).reshape(-1, 1, 1, 1)


def load_teacher(
    params: dict[str, Any], source: str
) -> tuple[torch.nn.Module, int, str, dict[str, Any] | None]:
    """(model in eval mode, parameter count, description, checkpoint or None) from a path or models:/ URI."""
    from nsp.checkpoint import load_checkpoint, model_from_checkpoint
    from nsp.io import sha256_file
    from nsp.models import count_params

    path: Path | None
    if source.startswith("models:/"):
        from nsp.tracking.studies import resolve_model_uri

        res = resolve_model_uri(params, source)
        path = res["path"]
        if path is None:
            model = res["model"]
            return model, count_params(model.net), f"{source} (v{res['version']}, mlflow)", None
    else:
        path = Path(source)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    n = ckpt.get("metrics", {}).get("params") or count_params(model.net)
    return model, int(n), f"{source} ({path}, sha256 {sha256_file(path)[:12]})", ckpt


@dataclass
class TrialContext:
    """What every trial of a worker shares (loaded once)."""

    params: dict[str, Any]
    spec: StudySpec
    data: dict[str, Any]
    unl_images: torch.Tensor  # uint8 NCHW, the fixed unlabeled subset
    unl_truth: np.ndarray | None
    teacher_logits: torch.Tensor
    teacher_params: int
    teacher_desc: str
    corrupted: dict[str, torch.Tensor]  # corruption -> uint8 NCHW val subset
    corrupted_y: torch.Tensor | None
    teacher_ckpt: dict[str, Any] | None = None  # for init_from_teacher, as in the pipeline


def build_context(params: dict[str, Any], spec: StudySpec) -> TrialContext:
    """Load data, run the teacher once over the unlabeled subset, build the -C proxy set."""
    from nsp.runtime import load_data
    from nsp.train.engine import predict_logits, to_nchw

    data = load_data(params, unlabeled=True)
    unl = data["unlabeled"]
    n = len(unl)
    sub = spec.budget.unlabeled_subset
    if sub is not None and sub < n:
        rng = np.random.default_rng(spec.budget.seed)
        idx = np.sort(rng.choice(n, size=sub, replace=False))
    else:
        idx = np.arange(n)
    images = to_nchw(unl.get_batch(idx))
    truth = data.get("unlabeled_truth")
    truth = None if truth is None else np.asarray(truth)[idx]
    model, t_params, desc, t_ckpt = load_teacher(params, spec.teacher)
    logits = predict_logits(model, images)
    corrupted: dict[str, torch.Tensor] = {}
    cy = None
    if "corruption_error" in spec.metric_names:
        from nsp.robustness.corruptions import corrupt

        r = spec.robustness
        m = min(r.images, len(data["val_x"]))
        rng = np.random.default_rng(r.seed)
        vi = np.sort(rng.choice(len(data["val_x"]), size=m, replace=False))
        nhwc = data["val_x"][vi].permute(0, 2, 3, 1).contiguous().numpy()
        for name in r.corruptions:
            out = corrupt(nhwc, name=name, severity=r.severity, seed=r.seed)
            corrupted[name] = to_nchw(out)
        cy = data["val_y"][vi]
    ctx = TrialContext(
        params=params,
        spec=spec,
        data=data,
        unl_images=images,
        unl_truth=truth,
        teacher_logits=logits,
        teacher_params=t_params,
        teacher_desc=desc,
        corrupted=corrupted,
        corrupted_y=cy,
        teacher_ckpt=t_ckpt,
    )
    check_student_sizes(ctx)
    return ctx


def check_student_sizes(ctx: TrialContext) -> None:
    """Students must not be smaller than the teacher (unless allow_smaller_student), as in the DAG."""
    from nsp.student import check_size

    spec, params = ctx.spec, ctx.params
    arch_dims = [p for p in spec.search_space if p.key.endswith(".arch")]
    variants = [(None, None)] + [(p, c) for p in arch_dims for c in p.choices or []]
    k, ch = ctx.data["num_classes"], ctx.data["labeled_x"].shape[1]
    for p, choice in variants:
        trial_params = params if p is None else spec.apply(params, {p.name: choice})
        cfg = C.student_config(trial_params, spec.generation)
        where = f"search_space.{p.name} choice {choice}" if p else f"student arch {cfg.arch}"
        check_size(cfg, num_classes=k, in_chans=ch, teacher_params=ctx.teacher_params,
                   what=f"{spec.where}: {where}")  # fmt: skip


def _pseudo_source(
    ctx: TrialContext, pcfg: C.PseudoConfig, cfg: C.TrainConfig, work: Path
) -> tuple[Any, dict[str, Any]]:
    """Relabel the subset with this trial's pseudo config; cap the stream to the step budget."""
    from nsp.pseudo.label import build_pseudo_label_set, load_pseudo_label_set
    from nsp.student import pseudo_source

    k = ctx.data["num_classes"]
    stats = build_pseudo_label_set(
        model=LogitTable(ctx.teacher_logits),
        get_batch=_index_batch,
        n=len(ctx.unl_images),
        num_classes=k,
        cfg=pcfg,
        out_dir=work / "pseudo",
        truth=ctx.unl_truth,
        progress=False,
    )
    ps = load_pseudo_label_set(work / "pseudo", k)
    if len(ps["index"]) == 0:
        raise NSPError(
            f"trial keeps no pseudo-labeled image (threshold {pcfg.threshold}); lower the range"
        )
    src = pseudo_source(ps, ctx.unl_images)
    index, targets, counts = src.index, src.targets, src.counts
    b = ctx.spec.budget
    ub = max(1, int(round(cfg.batch_size * cfg.unlabeled_ratio)))
    stream = int(counts.sum())
    if b.max_steps is not None:
        per_epoch = max(1, b.max_steps // cfg.epochs)
        if math.ceil(stream / ub) > per_epoch:
            # seeded uniform subsample of the (balanced, duplicated) stream: same class mix
            rows = torch.repeat_interleave(torch.arange(len(index)), counts)
            g = torch.Generator().manual_seed(cfg.seed)
            keep = rows[torch.randperm(len(rows), generator=g)[: per_epoch * ub]]
            index, targets, counts = (
                index[keep],
                targets[keep],
                torch.ones(len(keep), dtype=torch.int64),
            )
            src = replace(src, index=index, targets=targets, counts=counts)
    info = {
        "pseudo_label_acc": stats.get("pseudo_label_acc"),
        "num_kept_unique": stats["num_kept_unique"],
        "stream_size": stats["stream_size"],
        "stream_used": int(counts.sum()),
    }
    return src, info


def corruption_error(ctx: TrialContext, model: torch.nn.Module) -> float:
    """Mean top-1 error over the fixed corrupted val subset (a cheap mCE proxy)."""
    from nsp.train.engine import predict_logits

    errs = []
    for x in ctx.corrupted.values():
        pred = predict_logits(model, x).argmax(1)
        errs.append(float((pred != ctx.corrupted_y).float().mean()))
    return float(np.mean(errs))


def run_trial(
    ctx: TrialContext,
    *,
    values: dict[str, Any],
    on_epoch: Any,
) -> dict[str, Any]:
    """Train ``spec.repeats`` students for ``values`` (repeat j: student and pseudo seeds + j x
    ``SEED_STRIDE``; only repeat 0 reports epochs, so pruning sees one curve). Returns the mean of each
    metric, ``<metric>_se`` (s.e. of the mean, None for one repeat), ``<metric>_values`` and
    ``repeats``; with one repeat the metrics of that single run, as before."""
    from nsp.replicates import SEED_STRIDE

    runs = [
        _train_once(
            ctx, values=values, offset=j * SEED_STRIDE, on_epoch=on_epoch if j == 0 else None
        )
        for j in range(ctx.spec.repeats)
    ]
    if len(runs) == 1:
        return {**runs[0], "repeats": 1}
    out: dict[str, Any] = {"repeats": len(runs)}
    for key in runs[0]:
        vals = [r.get(key) for r in runs]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            arr = np.asarray(vals, dtype=float)
            out[key] = float(arr.mean())
            out[f"{key}_se"] = float(arr.std(ddof=1) / math.sqrt(len(arr)))
            out[f"{key}_values"] = [float(v) for v in vals]
        else:
            out[key] = vals[0]
    out["trial_seconds"] = float(sum(r["trial_seconds"] for r in runs))
    return out


def _train_once(
    ctx: TrialContext, *, values: dict[str, Any], offset: int, on_epoch: Any
) -> dict[str, Any]:
    """One student for ``values`` with every seed of the trial moved by ``offset``."""
    from nsp.student import train_student

    spec = ctx.spec
    params = spec.apply(ctx.params, values)
    gen = spec.generation
    cfg = C.student_config(params, gen)
    pcfg = C.pseudo_config(params, gen)
    cfg.seed += offset
    pcfg.seed += offset
    if spec.budget.epochs is not None:
        cfg.epochs = spec.budget.epochs
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nsp-trial-") as tmp:
        pseudo, info = _pseudo_source(ctx, pcfg, cfg, Path(tmp))
    result = train_student(
        cfg=cfg,
        data=ctx.data,
        pseudo=pseudo,
        teacher=ctx.teacher_ckpt,
        where=f"params.yaml: generations.{gen}",
        on_epoch=on_epoch,
        progress=False,
    )
    metrics = {**result["metrics"], **{k: v for k, v in info.items() if v is not None}}
    if ctx.corrupted:
        metrics["corruption_error"] = corruption_error(ctx, result["model"])
    metrics["trial_seconds"] = time.perf_counter() - t0
    return metrics


def trial_config(ctx: TrialContext, values: dict[str, Any]) -> dict[str, Any]:
    """The resolved student + pseudo configs of a trial (logged as MLflow params)."""
    params = ctx.spec.apply(ctx.params, values)
    cfg = C.student_config(params, ctx.spec.generation)
    if ctx.spec.budget.epochs is not None:
        cfg.epochs = ctx.spec.budget.epochs
    return {
        "student": C.to_dict(cfg),
        "pseudo": C.to_dict(C.pseudo_config(params, ctx.spec.generation)),
        "budget": {
            "epochs": cfg.epochs,
            "max_steps": ctx.spec.budget.max_steps,
            "unlabeled_subset": len(ctx.unl_images),
        },
        "teacher": ctx.spec.teacher,
    }
