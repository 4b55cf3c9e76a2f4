"""Stage configs (one dataclass per stage) and their resolution from ``params.yaml``.

A parameter travels params.yaml -> dvc.yaml (listed as a dep) -> ``nsp <stage>`` -> dataclass -> pure
function. Students resolve ``student:`` defaults overlaid by ``generations.<gN>:``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from nsp.errors import NSPError

# training and evaluation precision: "auto" = bf16 where the hardware runs it natively
PRECISIONS = ("fp32", "bf16", "auto")
# input-noise recipes (nsp.train.step.InputNoise): "nsp" = crop/flip, then RandAugment over 15 ops
# (fill 0); "official" = the official 32-px recipe: RandAugment over 16 ops (Cutout included, fill
# 128), then an always-on cutout of side image_size // 2 (16 px at 32 px), then crop/flip
NOISE_RECIPES = ("nsp", "official")


@dataclass
class NoiseConfig:
    """Student/teacher noise (each switchable): RandAugment, crop+flip, dropout, stochastic depth."""

    recipe: str = "nsp"
    randaugment: bool = True
    ra_num_ops: int = 2
    ra_magnitude: float = 9.0
    crop_flip: bool = True
    flip: bool = True
    dropout: float = 0.2
    drop_path: float = 0.2


@dataclass
class TrainConfig:
    """One training run (teacher, student of generation g, or the supervised baseline)."""

    name: str = "teacher"
    arch: str = "nsp_resnet_s"
    epochs: int = 50
    batch_size: int = 64
    unlabeled_ratio: float = 0.0
    # weight of the unlabeled loss: a number (1.0 = the paper's equation, mean CE + mean CE), or
    # "ratio" = unlabeled_ratio, as the official main.py
    unlabeled_weight: float | str = 1.0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    # on the labeled CE; with smooth_pseudo_labels also on hard (one-hot) pseudo targets (official 0.1)
    label_smoothing: float = 0.0
    smooth_pseudo_labels: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    init_from_teacher: bool = False
    allow_smaller_student: bool = False
    min_steps: int = 0
    eval_batch_size: int = 1024
    # "bf16": autocast the training forward to bfloat16 (fp32 weights, optimizer and loss);
    # "auto": bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AMX / AVX512-BF16)
    precision: str = "fp32"
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def validate(self) -> None:
        _check(self.epochs > 0, f"{self.name}.epochs", "must be > 0")
        _check(self.batch_size > 0, f"{self.name}.batch_size", "must be > 0")
        _check(
            self.precision in PRECISIONS,
            f"{self.name}.precision",
            "must be fp32, bf16 or auto",
        )
        _check(self.lr > 0, f"{self.name}.lr", "must be > 0")
        _check(0 <= self.ema_decay < 1, f"{self.name}.ema_decay", "must be in [0, 1)")
        _check(0 <= self.noise.dropout < 1, f"{self.name}.dropout", "must be in [0, 1)")
        _check(0 <= self.noise.drop_path < 1, f"{self.name}.drop_path", "must be in [0, 1)")
        _check(self.noise.ra_num_ops >= 0, f"{self.name}.ra_num_ops", "must be >= 0")
        _check(
            0 <= self.noise.ra_magnitude <= 30, f"{self.name}.ra_magnitude", "must be in [0, 30]"
        )
        _check(
            self.noise.recipe in NOISE_RECIPES,
            f"{self.name}.noise.recipe",
            f"must be one of {', '.join(NOISE_RECIPES)}",
        )
        self.unlabeled_weight_value()
        _check(0 <= self.label_smoothing < 1, f"{self.name}.label_smoothing", "must be in [0, 1)")
        _check(
            not self.smooth_pseudo_labels or self.label_smoothing > 0,
            f"{self.name}.smooth_pseudo_labels",
            "needs label_smoothing > 0 (e.g. 0.1, official)",
        )

    def unlabeled_weight_value(self) -> float:
        """The unlabeled loss weight as a number ("ratio" resolves to ``unlabeled_ratio``)."""
        w = self.unlabeled_weight
        if w == "ratio":
            return float(self.unlabeled_ratio)
        ok = isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
        _check(ok, f"{self.name}.unlabeled_weight", "must be 'ratio' or a number >= 0")
        return float(w)


@dataclass
class PseudoConfig:
    """How a teacher labels the unlabeled split (official defaults: soft, T=1, threshold 0.3)."""

    soft: bool = True
    # softmax temperature of the stored soft targets only; filtering and balancing use T = 1 (official)
    temperature: float = 1.0
    label_smoothing: float = 0.0
    threshold: float = 0.3
    balance: bool = True
    per_class: int = 5000
    topk: int = 10
    batch_size: int = 1024
    shard_size: int = 65536
    seed: int = 0

    def validate(self, prefix: str = "pseudo_label") -> None:
        _check(0.0 <= self.threshold <= 1.0, f"{prefix}.threshold", "must be in [0, 1]")
        _check(self.temperature > 0, f"{prefix}.temperature", "must be > 0")
        _check(self.per_class > 0, f"{prefix}.per_class", "must be > 0")
        _check(self.topk > 0, f"{prefix}.topk", "must be > 0")
        _check(0 <= self.label_smoothing < 1, f"{prefix}.label_smoothing", "must be in [0, 1)")


def _check(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise NSPError(f"params.yaml: {key} {what}; fix the value in params.yaml")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise NSPError(f"{path}: params file not found; run from the project root or pass --params")
    with open(path) as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise NSPError(f"{path}: expected a mapping at top level")
    return params


def build_config(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a flat dict (noise keys are accepted flat or nested)."""
    names = {f.name for f in fields(cls)}
    noise_names = {f.name for f in fields(NoiseConfig)}
    kwargs: dict[str, Any] = {}
    noise_kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key == "noise" and cls is TrainConfig and isinstance(value, dict):
            for nk, nv in value.items():
                if nk not in noise_names:
                    raise NSPError(
                        f"params.yaml: unknown key {where}.noise.{nk}; valid: {sorted(noise_names)}"
                    )
                noise_kwargs[nk] = nv
        elif key in names:
            kwargs[key] = value
        elif cls is TrainConfig and key in noise_names:
            noise_kwargs[key] = value
        else:
            raise NSPError(
                f"params.yaml: unknown key {where}.{key}; valid keys: {sorted(names | noise_names) if cls is TrainConfig else sorted(names)}"
            )
    if cls is TrainConfig:
        kwargs["noise"] = NoiseConfig(**noise_kwargs)
    return cls(**kwargs)


STUDENT_ONLY_KEYS = {"teacher", "pseudo"}


def teacher_config(params: dict[str, Any]) -> TrainConfig:
    sec = dict(params.get("teacher") or {})
    sec.pop("source", None)
    cfg = build_config(TrainConfig, {"name": "teacher", **sec}, "teacher")
    cfg.validate()
    return cfg


def generation_keys(params: dict[str, Any]) -> list[str]:
    return list((params.get("generations") or {}).keys())


def model_names(params: dict[str, Any]) -> list[str]:
    """Every model a pipeline trains: teacher, the generations in order, baseline."""
    return ["teacher", *generation_keys(params), "baseline"]


def generation_of(params: dict[str, Any], model: str) -> int:
    """Generation index from the model name: teacher 0, g_k its position + 1, baseline -1."""
    if model == "teacher":
        return 0
    gens = generation_keys(params)
    return gens.index(model) + 1 if model in gens else -1


def baseline_name(params: dict[str, Any]) -> str:
    """``evaluate.baseline``: the model robustness metrics are normalised by (default ``baseline``)."""
    return str((params.get("evaluate") or {}).get("baseline", "baseline"))


def generation_section(params: dict[str, Any], gen: str) -> dict[str, Any]:
    gens = params.get("generations") or {}
    if gen not in gens:
        raise NSPError(
            f"params.yaml: generation {gen!r} not found under generations:; known: {list(gens)}"
        )
    return dict(gens[gen] or {})


def student_config(params: dict[str, Any], gen: str) -> TrainConfig:
    merged = {k: v for k, v in (params.get("student") or {}).items() if k != "pseudo"}
    merged.update(
        {k: v for k, v in generation_section(params, gen).items() if k not in STUDENT_ONLY_KEYS}
    )
    cfg = build_config(TrainConfig, {"name": gen, **merged}, f"generations.{gen}")
    _check(
        cfg.unlabeled_ratio > 0, f"generations.{gen}.unlabeled_ratio", "must be > 0 for a student"
    )
    cfg.validate()
    return cfg


def pseudo_config(params: dict[str, Any], gen: str) -> PseudoConfig:
    merged = dict((params.get("student") or {}).get("pseudo") or {})
    merged.update(generation_section(params, gen).get("pseudo") or {})
    cfg = build_config(PseudoConfig, merged, f"generations.{gen}.pseudo")
    cfg.validate(f"generations.{gen}.pseudo")
    return cfg


def teacher_of(params: dict[str, Any], gen: str) -> str:
    """The model that labels data for generation ``gen`` (``teacher`` or a previous generation)."""
    gens = generation_keys(params)
    src = generation_section(params, gen).get("teacher")
    if src is None:
        i = gens.index(gen)
        src = "teacher" if i == 0 else gens[i - 1]
    if src != "teacher" and src not in gens[: gens.index(gen)]:
        raise NSPError(
            f"params.yaml: generations.{gen}.teacher={src!r} does not exist before {gen}; "
            f"use 'teacher' or one of {gens[: gens.index(gen)]}"
        )
    return src


def baseline_config(params: dict[str, Any]) -> TrainConfig:
    sec = dict(params.get("baseline") or {})
    sec.pop("match", None)
    cfg = build_config(TrainConfig, {"name": "baseline", **sec}, "baseline")
    cfg.validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
