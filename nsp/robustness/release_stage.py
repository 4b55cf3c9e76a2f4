"""The tracked DVC-stage runners of the official releases: ``release_list``,
``release_eval@<model>`` and ``release_metrics@<model>`` (library code in
:mod:`nsp.robustness.release_eval` and :mod:`nsp.robustness.release_protocols`).

params.yaml (absent or empty by default, so the default profile is unchanged)::

    robustness:
      releases:                     # any subset, each mapped to its extracted folder
        imagenet_c: /data/ImageNet-C
        imagenet_a: /data/imagenet-a
      releases_alexnet_p: /data/alexnet_p.json   # optional: AlexNet's ImageNet-P FP/T5D values

Outputs: ``outputs/releases/listing.json`` (the cheap listing of every configured release: the
dependency of the evaluations), ``outputs/releases/raw/<model>/<release>.json`` (one file per model
and release; a release whose listing, checkpoint and settings are unchanged is not evaluated again,
so adding a release or resuming a killed stage only evaluates what is missing) and
``outputs/releases/<model>.metrics.json`` (flat ``<release>_<metric>`` keys, logged to MLflow in the
nested run ``releases@<model>`` beside ``evaluate@<model>``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from nsp.config import baseline_name, generation_of, model_names
from nsp.errors import NSPError
from nsp.io import sha256_file, write_json
from nsp.robustness.release_protocols import PROTOCOL, RELEASES, release_summary
from nsp.runtime import OUT, model_dir, prepared_dir

__all__ = [
    "configured_releases",
    "listing_path",
    "metrics_path",
    "raw_release_path",
    "run_release_eval",
    "run_release_list",
    "run_release_metrics",
]


def configured_releases(params: dict[str, Any]) -> dict[str, str]:
    """``robustness.releases`` checked: known names mapped to folder strings (``{}`` when unset)."""
    rel = (params.get("robustness") or {}).get("releases") or {}
    if not isinstance(rel, dict):
        raise NSPError(
            "params.yaml: robustness.releases must map release names to folders, e.g. "
            "{imagenet_c: /data/ImageNet-C}"
        )
    for name, folder in rel.items():
        if name not in RELEASES:
            raise NSPError(
                f"params.yaml: robustness.releases.{name} is not a release; use {list(RELEASES)}"
            )
        if not isinstance(folder, str) or not folder:
            raise NSPError(f"params.yaml: robustness.releases.{name} must be a folder path")
    return {k: rel[k] for k in RELEASES if k in rel}


def listing_path(out: Path = OUT) -> Path:
    return out / "releases" / "listing.json"


def raw_release_path(model: str, release: str, out: Path = OUT) -> Path:
    return out / "releases" / "raw" / model / f"{release}.json"


def metrics_path(model: str, out: Path = OUT) -> Path:
    return out / "releases" / f"{model}.metrics.json"


def _alexnet_p(params: dict[str, Any]) -> dict[str, Any] | None:
    path = (params.get("robustness") or {}).get("releases_alexnet_p")
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise NSPError(
            f"robustness.releases_alexnet_p: {path} is not readable JSON ({exc}); give a file "
            '{"fp": {folder: value}, "t5d": {folder: value}}'
        ) from None
    if not isinstance(data, dict) or not {"fp", "t5d"} <= set(data):
        raise NSPError(f'{path}: expected {{"fp": {{...}}, "t5d": {{...}}}} per ImageNet-P folder')
    return {"fp": dict(data["fp"]), "t5d": dict(data["t5d"])}


def run_release_list(params: dict[str, Any], *, out: Path = OUT) -> dict[str, Any]:
    """``release_list``: check and list every configured release (names, sizes, mtimes only)."""
    configured = configured_releases(params)
    listing = {}
    if configured:  # torch only when there is something to list (release_eval imports it)
        from nsp.robustness.release_eval import release_listing

        listing = {
            name: release_listing(release=name, root=folder) for name, folder in configured.items()
        }
    doc = {"releases": listing, "alexnet_p": _alexnet_p(params)}
    write_json(listing_path(out), doc)
    return doc


def _read_listing(out: Path) -> dict[str, Any]:
    p = listing_path(out)
    if not p.is_file():
        raise NSPError(f"{p} not found; run `nsp releases list` (dvc repro release_list) first")
    return json.loads(p.read_text())


def _workers() -> int:
    n = os.environ.get("NSP_DECODE_WORKERS")
    return int(n) if n else min(8, os.cpu_count() or 1)


def _clean_logits(
    model: Any, params: dict[str, Any], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    from nsp.data.splits import load_split
    from nsp.robustness.evaluate import predict

    test = load_split(prepared_dir(params), "test")
    parts = [
        predict(
            model,
            test.get_batch(np.arange(s, min(s + batch_size, len(test)))),
            batch_size=batch_size,
        )
        for s in range(0, len(test), batch_size)
    ]
    return np.concatenate(parts), np.asarray(test.labels, dtype=np.int64)


def run_release_eval(
    params: dict[str, Any], model: str, *, out: Path = OUT
) -> dict[str, dict[str, Any]]:
    """``release_eval@<model>``: the model over every listed release -> one raw file per release.

    With no release configured it writes the empty index without importing torch (the default
    profile runs this stage for every model: a second, not the ~10 s of a torch + timm start)."""
    if model not in model_names(params):
        raise NSPError(f"unknown model {model!r}; use one of {', '.join(model_names(params))}")
    listing = _read_listing(out)["releases"]
    rdir = out / "releases" / "raw" / model
    rdir.mkdir(parents=True, exist_ok=True)
    if not listing:
        write_json(rdir / "index.json", {"model": model, "releases": []})
        return {}
    from nsp.checkpoint import load_checkpoint, model_from_checkpoint
    from nsp.data.splits import read_manifest
    from nsp.robustness.evaluate import optimise_for_inference
    from nsp.robustness.normalise import eval_settings
    from nsp.robustness.release_eval import RAW_FORMAT, evaluate_release, release_listing
    from nsp.robustness.stage import eval_precision
    from nsp.runtime import setup_threads
    from nsp.train.engine import default_device

    s = eval_settings(params)
    ckpt_path = model_dir(model, out) / "model.pt"
    done: dict[str, dict[str, Any]] = {}
    net = ckpt = clean = None
    for release, lst in listing.items():
        if release_listing(release=release, root=lst["root"])["digest"] != lst["digest"]:
            raise NSPError(
                f"robustness.releases.{release}: {lst['root']} changed since release_list listed "
                "it; run `dvc repro -f release_list` (or `nsp releases list`), then repro again"
            )
        key = {
            "listing_digest": lst["digest"],
            "checkpoint_sha256": sha256_file(ckpt_path),
            "batch_size": s["batch_size"],
            "calib_bins": s["calib_bins"],
            "precision_setting": s["precision"],
        }
        path = raw_release_path(model, release, out)
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("format") == RAW_FORMAT and all(old.get(k) == v for k, v in key.items()):
                done[release] = old  # unchanged release and model: keep (resume / added release)
                continue
        if net is None:
            setup_threads()
            ckpt = load_checkpoint(ckpt_path)
            shape = read_manifest(prepared_dir(params))["image_shape"]
            device = default_device()
            eager = model_from_checkpoint(ckpt).to(device)
            example = np.zeros((2, *shape), dtype=np.uint8)
            decision = eval_precision(params, s=s, device=device, net=eager, example=example)
            bf16 = decision["precision"] == "bf16"  # auto: measured, as evaluate_raw does
            net = optimise_for_inference(eager, example, bf16=bf16)
        if release in ("imagenet_c", "cifar10_c") and clean is None:
            clean = _clean_logits(net, params, s["batch_size"])
        raw = evaluate_release(
            release=release,
            root=lst["root"],
            model=net,
            class_names=ckpt["class_names"],
            image_size=int(shape[0]),
            channels=int(shape[2]),
            batch_size=min(s["batch_size"], 256),
            workers=_workers(),
            calib_bins=s["calib_bins"],
            clean_logits=None if clean is None else clean[0],
            clean_labels=None if clean is None else clean[1],
        )
        raw.update(key, model=model, precision="bf16" if bf16 else "fp32")
        write_json(path, raw)
        done[release] = raw
    write_json(rdir / "index.json", {"model": model, "releases": sorted(done)})
    return done


def _read_raw(model: str, release: str, out: Path, digest: str) -> dict[str, Any]:
    from nsp.robustness.release_eval import RAW_FORMAT

    p = raw_release_path(model, release, out)
    if not p.is_file():
        raise NSPError(f"{p} not found; run `nsp releases evaluate {model}` first")
    raw = json.loads(p.read_text())
    if raw.get("format") != RAW_FORMAT or raw.get("listing_digest") != digest:
        raise NSPError(f"{p} is stale (the release listing changed); re-run release_eval@{model}")
    return raw


def _flat(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        f"{rel}_{k}": v
        for rel, summ in summaries.items()
        for k, v in summ.items()
        if not isinstance(v, dict)
    }


def run_release_metrics(params: dict[str, Any], model: str, *, out: Path = OUT) -> dict[str, Any]:
    """``release_metrics@<model>``: protocol summaries (AlexNet- and baseline-normalised) ->
    ``outputs/releases/<model>.metrics.json``; logged to MLflow when a release is configured."""
    doc = _read_listing(out)
    base_name = baseline_name(params)
    summaries: dict[str, dict[str, Any]] = {}
    for release, lst in doc["releases"].items():
        raw = _read_raw(model, release, out, lst["digest"])
        base = raw if base_name == model else _read_raw(base_name, release, out, lst["digest"])
        if raw.get("precision") != base.get("precision"):
            raise NSPError(
                f"{release}: {model} ran at {raw.get('precision')} and {base_name} at "
                f"{base.get('precision')}; re-run both with the same evaluate.precision"
            )
        summaries[release] = release_summary(
            release, raw, baseline=base, alexnet_p=doc.get("alexnet_p")
        )
    metrics = {
        "model": model,
        "normalised_by": base_name,
        "protocols": {r: PROTOCOL[r] for r in summaries},
        "releases": summaries,
        **_flat(summaries),
    }
    if not summaries:  # no release configured: nothing to log, no MLflow import
        write_json(metrics_path(model, out), metrics)
        return metrics
    from nsp import tracking

    gen = generation_of(params, model)
    numeric = {
        k: float(v)
        for k, v in _flat(summaries).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    tags = {"dvc_stage": f"release_metrics@{model}", "model": model, "generation": gen}
    with tracking.stage_run(
        params=params,
        stage=f"releases@{model}",
        generation=gen,
        config={"releases": list(summaries)},
        tags=tags,
    ) as tr:
        write_json(metrics_path(model, out), metrics)
        tr.log_final(numeric, artifacts=[metrics_path(model, out)])
    return metrics
