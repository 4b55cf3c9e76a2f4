"""The published protocols of the official robustness releases, on plain numbers (no torch, no
tracking): which folders a complete release holds, which classes a model shares with it, and the
summary metrics of one model (normalised by AlexNet and by the pipeline's own baseline).

Releases (``robustness.releases`` keys): ``imagenet_c``, ``imagenet_p``, ``imagenet_a``,
``imagenet_r``, ``cifar10_c``, ``cifar10_p``.

Formulas (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions
and Perturbations", ICLR 2019, and the evaluation scripts of hendrycks/robustness and
hendrycks/natural-adv-examples, read for facts only):

* ImageNet-C: ``E[c, s]`` top-1 error per corruption and severity; ``CE_c = mean_s E[c, s] / A_c``
  with AlexNet's errors ``A_c`` (:data:`nsp.robustness.metrics.ALEXNET_ERR`, checked against
  ``ce_metrics.npz``); mCE = mean over the 15 benchmark corruptions (Noisy Student L2: 0.283);
  relative ``CE_c = (mean_s E[c, s] - E_clean) / (A_c - 0.4348)``. The same two with the
  pipeline's baseline ``Eb`` in place of AlexNet (``*_baseline``).
* ImageNet-P / CIFAR-10-P: flip probability FP and top-5 distance T5D per perturbation folder
  (:func:`nsp.robustness.metrics.flip_probability` / ``top5_distance``: noise folders against
  frame 0, the others between consecutive frames, difficulty 1, checked against ``pmetrics.npz``).
  The noise perturbations ship in three difficulties (``gaussian_noise``, ``_2``, ``_3``); like
  the severities of CE they are summed: ``FR_p = sum_d FP[p, d] / sum_d FPn[p, d]`` for the
  normaliser ``n``; mFR / mT5D = mean over the 10 benchmark perturbations. AlexNet's ImageNet-P
  values are not shipped with NSP (no verified copy was at hand): pass them as ``alexnet_p``
  (``{"fp": {folder: v}, "t5d": {folder: v}}``, ``robustness.releases_alexnet_p`` in params.yaml);
  without them the AlexNet-normalised mFR / mT5D are ``None`` and only the baseline-normalised
  and raw means are reported.
* ImageNet-A / -R: top-1 over the 200-class subset with the 1000-way logits restricted to the
  subset's columns (``output[:, indices_in_1k]``); RMS calibration error of the restricted
  softmax (adaptive bins, ``calib_err`` with p='2').
* CIFAR-10-C: error per corruption x severity and its unnormalised mean over the 15 benchmark
  corruptions; CIFAR-10-P: FP and T5D (as ImageNet-P; no AlexNet constants exist).

Class mapping: a model is evaluated on the classes it shares with a release (ImageNet wnids, or
CIFAR-10 class names): logits restricted to the shared classes, other images left out, and the
number of shared classes and images reported beside every number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nsp.errors import NSPError
from nsp.robustness import metrics as M
from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS
from nsp.robustness.releases import IMAGENET_C_CORRUPTIONS, IMAGENET_P_PERTURBATIONS, subset_wnids
from nsp.robustness.wnids import IMAGENET_WNIDS

__all__ = [
    "BENCHMARK_PERTURBATIONS",
    "CIFAR10_CLASSES",
    "PROTOCOL",
    "RELEASES",
    "REQUIRED_PERTURBATION_FOLDERS",
    "ClassMap",
    "perturbation_group",
    "release_label_names",
    "release_summary",
    "shared_classes",
]

RELEASES: tuple[str, ...] = (
    "imagenet_c",
    "imagenet_p",
    "imagenet_a",
    "imagenet_r",
    "cifar10_c",
    "cifar10_p",
)
#: One line per release: the protocol and its normaliser (shown by the report and dashboard).
PROTOCOL: dict[str, str] = {
    "imagenet_c": "ImageNet-C: top-1 error per corruption x severity; mCE and relative mCE "
    "normalised by AlexNet (mCE_baseline: by the pipeline's baseline)",
    "imagenet_p": "ImageNet-P: flip probability and top-5 distance (noise vs frame 0, others "
    "consecutive frames); mFR / mT5D normalised by AlexNet when its values are supplied, "
    "else by the pipeline's baseline",
    "imagenet_a": "ImageNet-A: top-1 over the 200-class subset (logits restricted to it); "
    "RMS calibration error; no normaliser",
    "imagenet_r": "ImageNet-R: top-1 over the 200-class subset (logits restricted to it); "
    "RMS calibration error; no normaliser",
    "cifar10_c": "CIFAR-10-C: unnormalised mean error over 15 corruptions x 5 severities "
    "(mCE_baseline: by the pipeline's baseline)",
    "cifar10_p": "CIFAR-10-P: flip probability and top-5 distance; mFR / mT5D normalised by "
    "the pipeline's baseline",
}
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: The 10 ImageNet-P benchmark perturbations over which mFR and mT5D are averaged.
BENCHMARK_PERTURBATIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "motion_blur",
    "zoom_blur",
    "snow",
    "brightness",
    "translate",
    "rotate",
    "tilt",
    "scale",
)


def perturbation_group(folder: str) -> str:
    """``gaussian_noise_3`` -> ``gaussian_noise``: the perturbation a difficulty folder belongs to."""
    for suffix in ("_2", "_3"):
        if folder.endswith(suffix):
            return folder[: -len(suffix)]
    return folder


#: Folders (ImageNet-P) / ``.npy`` files (CIFAR-10-P) a complete release must hold: the 10
#: benchmark perturbations, the noise ones in their three difficulties (14).
REQUIRED_PERTURBATION_FOLDERS: tuple[str, ...] = tuple(
    p for p in IMAGENET_P_PERTURBATIONS if perturbation_group(p) in BENCHMARK_PERTURBATIONS
)


def release_label_names(release: str) -> tuple[str, ...]:
    """The label space of a release: 1000 wnids (-C/-P), the 200 subset wnids (-A/-R), CIFAR-10."""
    if release in ("imagenet_c", "imagenet_p"):
        return tuple(IMAGENET_WNIDS)
    if release in ("imagenet_a", "imagenet_r"):
        return subset_wnids(release.replace("_", "-"))
    if release in ("cifar10_c", "cifar10_p"):
        return CIFAR10_CLASSES
    raise NSPError(f"unknown release {release!r}; choose one of {list(RELEASES)}")


@dataclass(frozen=True)
class ClassMap:
    """Shared classes of a model and a release.

    ``columns[j]``: the model's logit column of shared class ``j``; ``local[r]``: the shared index of
    release label ``r`` (``-1``: not shared, the image is left out).
    """

    names: tuple[str, ...]
    columns: np.ndarray
    local: np.ndarray

    @property
    def classes(self) -> int:
        return len(self.names)

    def labels(self, release_labels: np.ndarray) -> np.ndarray:
        """Release labels -> shared labels (``-1`` for images of classes the model lacks)."""
        return self.local[np.asarray(release_labels, dtype=np.int64)]


def shared_classes(*, model_classes: Sequence[str], release: str) -> ClassMap:
    """The classes a model (its checkpoint's ``class_names``) shares with ``release``.

    ImageNet releases match wnid folder names (``n01440764``); CIFAR-10 ones match class names,
    case-insensitively. No shared class is a one-line error naming the mismatch.
    """
    names = release_label_names(release)
    key = (lambda s: s.lower()) if release.startswith("cifar") else (lambda s: s)
    col_of = {key(str(c)): i for i, c in enumerate(model_classes)}
    shared = [(r, n) for r, n in enumerate(names) if key(n) in col_of]
    if not shared:
        kind = "CIFAR-10 class names" if release.startswith("cifar") else "ImageNet wnids"
        sample = ", ".join(str(c) for c in list(model_classes)[:3])
        raise NSPError(
            f"release {release}: the model's {len(model_classes)} classes ({sample}, ...) share "
            f"no class with it (it uses {kind}, e.g. {names[0]}); evaluate a model trained on "
            f"an ImageFolder whose class folders are {kind}, or remove {release} from "
            "robustness.releases"
        )
    local = np.full(len(names), -1, dtype=np.int64)
    for j, (r, _) in enumerate(shared):
        local[r] = j
    return ClassMap(
        names=tuple(n for _, n in shared),
        columns=np.array([col_of[key(n)] for _, n in shared], dtype=np.int64),
        local=local,
    )


# ------------------------------------------------------------------------------------ summaries


def _ratio_or_none(fn, *args, **kwargs) -> M.CorruptionErrors | None:
    try:
        return fn(*args, **kwargs)
    except NSPError:  # a zero denominator (e.g. a perfect baseline): the ratio is undefined
        return None


def _c_summary(raw: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    names = list(BENCHMARK_CORRUPTIONS)
    e = np.array([raw["errors"][c] for c in names], dtype=np.float64)
    out: dict[str, Any] = {"mean_error": float(e.mean())}
    extra = [c for c in IMAGENET_C_CORRUPTIONS if c not in names and c in raw["errors"]]
    out["extra_mean_error"] = float(np.mean([raw["errors"][c] for c in extra])) if extra else None
    if raw.get("alexnet", False):
        ce = M.alexnet_corruption_errors(e, corruption_names=names)
        out["mce"], out["ce"] = ce.mce, dict(zip(names, ce.ce.tolist(), strict=True))
        clean = raw.get("clean_err")
        rel = (
            None
            if clean is None
            else M.alexnet_relative_corruption_errors(
                e, model_clean_err=clean, corruption_names=names
            )
        )
        out["rel_mce"] = None if rel is None else rel.mce
    if base is not None:
        b = np.array([base["errors"][c] for c in names], dtype=np.float64)
        ce_b = _ratio_or_none(M.corruption_errors, e, b)
        out["mce_baseline"] = None if ce_b is None else ce_b.mce
        if raw.get("clean_err") is not None and base.get("clean_err") is not None:
            rel_b = _ratio_or_none(
                M.relative_corruption_errors,
                e,
                b,
                model_clean_err=raw["clean_err"],
                baseline_clean_err=base["clean_err"],
            )
            out["rel_mce_baseline"] = None if rel_b is None else rel_b.mce
    return out


def _grouped(values: Mapping[str, float | None]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for folder in values:
        groups.setdefault(perturbation_group(folder), []).append(folder)
    return groups


def _rate(model: Mapping[str, Any], norm: Mapping[str, Any], *, metric: str) -> float | None:
    """mean over the benchmark perturbations of ``sum_d model[p, d] / sum_d norm[p, d]``."""
    rates = []
    groups = _grouped(model[metric])
    for p in BENCHMARK_PERTURBATIONS:
        folders = groups.get(p, [])
        vals = [model[metric][f] for f in folders]
        den_vals = [norm[metric].get(f) for f in folders]
        if not folders or None in vals or None in den_vals:
            return None
        den = float(np.sum(den_vals))
        if den == 0:
            return None
        rates.append(float(np.sum(vals)) / den)
    return float(np.mean(rates))


def _p_summary(
    raw: Mapping[str, Any],
    base: Mapping[str, Any] | None,
    alexnet_p: Mapping[str, Mapping[str, float]] | None,
) -> dict[str, Any]:
    bench = [f for f in raw["fp"] if perturbation_group(f) in BENCHMARK_PERTURBATIONS]
    t5 = [raw["t5d"][f] for f in bench]
    out: dict[str, Any] = {
        "mean_fp": float(np.mean([raw["fp"][f] for f in bench])),
        "mean_t5d": None if None in t5 else float(np.mean(t5)),
    }
    if raw.get("alexnet", False):
        out["mfr"] = None if not alexnet_p else _rate(raw, alexnet_p, metric="fp")
        out["mt5d"] = None if not alexnet_p else _rate(raw, alexnet_p, metric="t5d")
    if base is not None:
        out["mfr_baseline"] = _rate(raw, base, metric="fp")
        out["mt5d_baseline"] = _rate(raw, base, metric="t5d")
    return out


def release_summary(
    release: str,
    raw: Mapping[str, Any],
    *,
    baseline: Mapping[str, Any] | None = None,
    alexnet_p: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Summary metrics of one model's raw release numbers (see the module docstring).

    ``raw`` is what :func:`nsp.robustness.release_eval.evaluate_release` returns; ``baseline``
    the baseline model's raw numbers on the same release (``None``: no baseline-normalised keys).
    Every summary carries ``classes`` and ``images`` (shared classes / images evaluated).
    """
    if baseline is not None and baseline.get("classes") != raw.get("classes"):
        raise NSPError(
            f"release {release}: the model shares {raw.get('classes')} classes and the baseline "
            f"{baseline.get('classes')}; normalising needs the same class set (train both on "
            "the same data)"
        )
    common = {"classes": raw["classes"], "images": raw["images"]}
    if release in ("imagenet_c", "cifar10_c"):
        return {**_c_summary(raw, baseline), **common}
    if release in ("imagenet_p", "cifar10_p"):
        return {**_p_summary(raw, baseline, alexnet_p), **common}
    if release in ("imagenet_a", "imagenet_r"):
        return {"acc": raw["acc"], "calib_err": raw["calib_err"], **common}
    raise NSPError(f"unknown release {release!r}; choose one of {list(RELEASES)}")
