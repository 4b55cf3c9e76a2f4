"""The student recipe, in one place: equal-or-larger check, initialisation from the teacher, the
pseudo-labeled batch source, and the noised training call.

The ``student@gN`` DVC stage (:func:`nsp.stages.run_student`), the Optuna objective
(:func:`nsp.study.objective.run_trial`) and ``benchmarks/student_ablation.py`` all train students
through :func:`train_student`; they differ only in the arguments (where the pseudo labels come from,
the step budget, tracking). Never imports mlflow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsp.config import TrainConfig
from nsp.errors import NSPError
from nsp.models import count_params
from nsp.train.engine import make_classifier, train_model
from nsp.train.step import PseudoBatchSource


def arch_params(*, arch: str, num_classes: int, in_chans: int) -> int:
    """Parameter count of ``arch``'s backbone for this data."""
    return count_params(make_classifier(arch=arch, num_classes=num_classes, in_chans=in_chans).net)


def check_size(
    cfg: TrainConfig,
    *,
    num_classes: int,
    in_chans: int,
    teacher_params: int | None,
    what: str,
    teacher_desc: str = "",
) -> None:
    """Raise unless the student is at least as large as its teacher (or ``allow_smaller_student``).

    ``what`` names the setting in the error, e.g. ``params.yaml: generations.g2.arch=nsp_resnet_s``.
    """
    if teacher_params is None or cfg.allow_smaller_student:
        return
    n = arch_params(arch=cfg.arch, num_classes=num_classes, in_chans=in_chans)
    if n < teacher_params:
        raise NSPError(
            f"{what} ({n:,} params) is smaller than its teacher {teacher_desc}"
            f"({teacher_params:,} params); "
            "choose an equal-or-larger arch or set allow_smaller_student: true"
        )


def init_from_teacher(
    teacher: dict[str, Any], *, arch: str, num_classes: int, in_chans: int, seed: int, where: str
) -> dict[str, Any]:
    """Student initial weights from its teacher checkpoint: the same arch, or a deeper one of the same
    widths (new residual blocks start as identity, so the student starts with the teacher's function;
    their other weights are drawn from ``seed``, so the same seed gives the same student in any process).
    ``where`` names the setting in errors (``params.yaml: generations.g2``)."""
    from nsp.models.resnet import grow_state_dict

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
            f"{where}.init_from_teacher cannot map {teacher['arch']} onto {arch}; use the same arch "
            "or a deeper nsp_resnet of equal widths (s -> m -> l), or set it to false"
        ) from None


def pseudo_source(pseudo_set: dict[str, np.ndarray], images: torch.Tensor) -> PseudoBatchSource:
    """The training stream of a loaded pseudo-label set (``index``, ``targets``, ``counts``) over
    ``images`` (uint8 NCHW, the unlabeled split or the subset the set indexes)."""
    return PseudoBatchSource(
        images=images,
        index=torch.from_numpy(np.asarray(pseudo_set["index"])),
        targets=torch.from_numpy(np.asarray(pseudo_set["targets"])),
        counts=torch.from_numpy(np.asarray(pseudo_set["counts"])),
    )


def train_student(
    *,
    cfg: TrainConfig,
    data: dict[str, Any],
    pseudo: PseudoBatchSource,
    teacher: dict[str, Any] | None,
    where: str,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    state_path: Path | None = None,
) -> dict[str, Any]:
    """Train a noised student on ``data``'s labeled split + ``pseudo``; returns :func:`train_model`'s dict.

    ``teacher``: the teacher's checkpoint (``arch``, ``state_dict``, ``metrics.params``), needed when
    ``cfg.init_from_teacher``; ``None`` when the teacher is not a checkpoint (a registry model), in
    which case the size was checked by the caller. ``where``: the params section, for error messages.
    """
    k, ch = data["num_classes"], data["labeled_x"].shape[1]
    if teacher is not None:
        t_params = (teacher.get("metrics") or {}).get("params")
        check_size(cfg, num_classes=k, in_chans=ch, teacher_params=t_params,
                   what=f"{where}.arch={cfg.arch}", teacher_desc=f"{teacher['arch']} ")  # fmt: skip
    init = None
    if cfg.init_from_teacher:
        if teacher is None:
            raise NSPError(f"{where}: init_from_teacher needs the teacher as a checkpoint file")
        init = init_from_teacher(
            teacher, arch=cfg.arch, num_classes=k, in_chans=ch, seed=cfg.seed, where=where
        )
    return train_model(
        cfg=cfg,
        labeled_x=data["labeled_x"],
        labeled_y=data["labeled_y"],
        val_x=data["val_x"],
        val_y=data["val_y"],
        num_classes=k,
        pseudo=pseudo,
        init_state=init,
        on_epoch=on_epoch,
        progress=progress,
        state_path=state_path,
    )
