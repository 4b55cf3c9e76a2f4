"""The tracked DVC-stage runners of the robustness benchmark: ``robustness`` and
``evaluate_raw@<model>`` (``evaluate@<model>``, torch-free, is :mod:`nsp.robustness.normalise`).

They resolve params.yaml (:func:`sets_config`, the ``evaluate:`` section), own the outputs layout
(``outputs/robustness/sets``, ``outputs/robustness/raw/<model>.json``), load the prepared data and checkpoints, log to MLflow through
:mod:`nsp.tracking` and write the stage outputs. The computations themselves are the library
functions of :mod:`nsp.robustness.build` (the sets) and :mod:`nsp.robustness.evaluate` (predictions).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsp.config import NoiseConfig, TrainConfig
from nsp.errors import NSPError
from nsp.io import sha256_file, write_json
from nsp.robustness.build import SUMMARY, SetsConfig, build_sets, load_summary, reference_config
from nsp.robustness.evaluate import evaluate_raw, optimise_for_inference
from nsp.robustness.normalise import check_model, eval_settings, raw_path
from nsp.runtime import OUT, model_dir, prepared_dir, setup_threads
from nsp.train.engine import default_device

__all__ = [
    "SETS_SUBDIR",
    "run_evaluate_raw",
    "run_robustness",
    "sets_config",
    "sets_dir",
]

# ----------------------------------------------------------------------------------- robustness


def sets_config(params: dict[str, Any]) -> SetsConfig:
    """Resolve ``robustness:`` (keys seed, c_images, p_images, a_reference: {TrainConfig keys})."""
    from nsp.config import build_config

    sec = dict(params.get("robustness") or {})
    ref_sec = sec.pop("a_reference", None) or {}
    for key in ("releases", "releases_alexnet_p"):  # the official releases: release_stage.py
        sec.pop(key, None)
    known = {"seed", "c_images", "p_images"}
    unknown = sorted(set(sec) - known)
    if unknown:
        raise NSPError(
            f"params.yaml: unknown key robustness.{unknown[0]}; valid keys: "
            f"{sorted(known | {'a_reference', 'releases', 'releases_alexnet_p'})}"
        )
    if not isinstance(ref_sec, dict):
        raise NSPError("params.yaml: robustness.a_reference must be a mapping of training keys")
    ref_sec = dict(ref_sec)  # never mutate the caller's params
    default = reference_config()
    ref_noise = {f: getattr(default.noise, f) for f in NoiseConfig.__dataclass_fields__}
    ref_noise.update(ref_sec.pop("noise", None) or {})
    merged = {
        f: getattr(default, f) for f in TrainConfig.__dataclass_fields__ if f not in ("noise",)
    }
    merged.update(ref_sec)
    merged["name"] = "robustness.a_reference"
    ref = build_config(TrainConfig, {**merged, "noise": ref_noise}, "robustness.a_reference")
    cfg = SetsConfig(reference=ref, **sec)
    cfg.validate()
    return cfg


SETS_SUBDIR = Path("robustness") / "sets"


def sets_dir(out: Path = OUT) -> Path:
    """Where the ``robustness`` stage writes the sets (``outputs/robustness/sets``)."""
    return out / SETS_SUBDIR


def _all_images(split: Any) -> np.ndarray:
    return split.get_batch(np.arange(len(split)))


def run_robustness(
    params: dict[str, Any], *, out: Path = OUT, progress: bool = True
) -> dict[str, Any]:
    """The ``robustness`` stage: build the sets, write ``robustness/sets_metrics.json``, track it."""
    from nsp import config as C
    from nsp import tracking
    from nsp.data.splits import load_split, load_unlabeled_truth, read_manifest

    setup_threads()
    cfg = sets_config(params)
    root = prepared_dir(params)
    if not (root / "manifest.json").exists():
        raise NSPError(
            f"{root}/manifest.json not found; run `nsp prepare` (dvc repro prepare) first"
        )
    manifest = read_manifest(root)
    if "apool" not in manifest["splits"]:
        raise NSPError(
            f"{root} has no -A pool (prepare.a_pool_per_class is 0); set prepare.a_pool_per_class "
            "> 0 in params.yaml and re-run `nsp prepare`"
        )
    split = {s: load_split(root, s) for s in ("labeled", "val", "unlabeled", "test", "apool")}
    truth = load_unlabeled_truth(root)
    if truth is None:
        raise NSPError(f"{root}: unlabeled_truth.npy is missing; re-run `nsp prepare`")
    train_x = np.concatenate([_all_images(split[s]) for s in ("labeled", "val", "unlabeled")])
    train_y = np.concatenate([split["labeled"].labels, split["val"].labels, truth])
    manifest_hash = sha256_file(root / "manifest.json")
    tags = {"data_manifest_sha256": manifest_hash, "dvc_stage": "robustness"}
    config = {
        "seed": cfg.seed,
        "c_images": cfg.c_images,
        "p_images": cfg.p_images,
        "a_reference": C.to_dict(cfg.reference),
    }
    t0 = time.perf_counter()
    with tracking.stage_run(
        params=params, stage="robustness", generation=-1, config=config, tags=tags
    ) as tr:
        summary = build_sets(
            out_dir=sets_dir(out),
            cfg=cfg,
            test_x=_all_images(split["test"]),
            test_y=split["test"].labels,
            pool_x=_all_images(split["apool"]),
            pool_y=split["apool"].labels,
            train_x=train_x,
            train_y=train_y,
            val_x=_all_images(split["val"]),
            val_y=split["val"].labels,
            class_names=list(manifest["class_names"]),
            progress=progress,
        )
        a = summary["a"]
        metrics = {
            "c_images": summary["c"]["images"],
            "p_images": summary["p"]["images"],
            "a_pool_size": a["pool_size"],
            "a_kept": a["kept"],
            "a_reference_pool_acc": a["reference_pool_acc"],
            **summary["timings"],
            "build_seconds": time.perf_counter() - t0,
        }
        write_json(out / "robustness" / "sets_metrics.json", metrics)
        summary_hash = sha256_file(sets_dir(out) / SUMMARY)
        tr.log_final(
            metrics,
            artifacts=[sets_dir(out) / SUMMARY],
            tags={"robustness_sets_sha256": summary_hash},
        )
    return metrics


# ------------------------------------------------------------------------ evaluate_raw / evaluate


def run_evaluate_raw(
    params: dict[str, Any], model: str, *, out: Path = OUT, progress: bool = True
) -> dict[str, Any]:
    """``evaluate_raw@<model>``: the model over every set -> ``robustness/raw/<model>.json``."""
    from nsp.checkpoint import load_checkpoint, model_from_checkpoint
    from nsp.data.splits import load_split

    check_model(params, model)
    s = eval_settings(params)
    sdir = sets_dir(out)
    load_summary(sdir)  # a clear error before loading anything else
    setup_threads()
    ckpt_path = model_dir(model, out) / "model.pt"
    device = default_device()
    net = model_from_checkpoint(load_checkpoint(ckpt_path)).to(device)
    test = load_split(prepared_dir(params), "test")
    test_x = test.get_batch(np.arange(len(test)))
    exact = optimise_for_inference(net, test_x)
    decision = eval_precision(params, s=s, device=device, net=net, example=test_x)
    bf16 = decision["precision"] == "bf16"
    raw = evaluate_raw(
        model=optimise_for_inference(net, test_x, bf16=True) if bf16 else exact,
        exact_model=exact if bf16 else None,
        test_x=test_x,
        test_y=test.labels,
        sets=sdir,
        batch_size=s["batch_size"],
        calib_bins=s["calib_bins"],
        progress=progress,
    )
    raw["model"] = model
    raw["precision"] = "bf16" if bf16 else "fp32"
    if "fp32_img_per_s" in decision:  # precision: auto; the rates are the baseline arch's
        raw["precision_probe"] = decision
    raw["checkpoint_sha256"] = sha256_file(ckpt_path)
    raw["sets_sha256"] = sha256_file(sdir / "summary.json")
    write_json(raw_path(model, out), raw)
    return raw


def eval_precision(
    params: dict[str, Any],
    *,
    s: dict[str, Any],
    device: torch.device,
    net: torch.nn.Module,
    example: np.ndarray,
) -> dict[str, Any]:
    """``evaluate.precision``; ``auto`` times the frozen inference step of the *baseline's* arch at
    the real batch shape in fp32 and bf16 (:mod:`nsp.train.precision`, cached per machine), so every
    model and its baseline get the same precision (they are never normalised across precisions)."""
    from nsp import config as C
    from nsp.train import precision as P
    from nsp.train.engine import make_classifier

    if s["precision"] != "auto":
        return {"precision": s["precision"]}
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return {"precision": "fp32", "source": "no bf16 on this GPU"}
    base = s["baseline"]
    cfgs = {"teacher": C.teacher_config, "baseline": C.baseline_config}
    cfg = cfgs[base](params) if base in cfgs else C.student_config(params, base)
    n, h, w, c = (s["batch_size"], *example.shape[1:])
    key = P.cache_key(kind="eval", device=device, arch=cfg.arch, batch_shape=(n, c, h, w))

    def probe() -> dict[str, float]:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            num_classes = int(
                net(torch.zeros((1, c, h, w), dtype=torch.uint8, device=device)).shape[1]
            )
            model = make_classifier(arch=cfg.arch, num_classes=num_classes, in_chans=c).to(device)
        idx = np.arange(n) % len(example)
        xb = torch.from_numpy(np.array(example[idx], copy=True)).permute(0, 3, 1, 2).to(device)
        runs = {}
        for p in P.PRECISIONS_PROBED:
            m = optimise_for_inference(model, example, bf16=p == "bf16")

            def run(m: torch.nn.Module = m) -> int:
                with torch.inference_mode():
                    m(xb).float().cpu()
                return n

            runs[p] = run
        return P.measure(runs, warmup=3, steps=2)  # TorchScript optimises after its first calls

    return P.decide(key=key, probe=probe)
