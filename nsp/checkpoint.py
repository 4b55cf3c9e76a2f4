"""Model checkpoints: weights + the resolved config that made them (nanoGPT style).

Two on-disk forms, neither of which runs code when loaded:

* ``model.pt`` (the DVC outputs): a dict of tensors and plain values, loaded with
  ``torch.load(weights_only=True)`` (:func:`save_checkpoint`, :func:`load_checkpoint`);
* ``model.safetensors`` + ``nsp_model.json`` (what the model registry stores beside the MLflow
  model): the weights in the safetensors format (a JSON header and raw tensor bytes: nothing to
  unpickle) and the resolved config (arch, classes, input channels, normalisation, noise) the
  model is rebuilt from (:func:`save_safetensors`, :func:`load_safetensors`).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from nsp.errors import NSPError
from nsp.io import write_bytes, write_json

FORMAT = "nsp-checkpoint-v1"
SAFE_FORMAT = "nsp-safetensors-v1"
WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "nsp_model.json"


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    arch: str,
    num_classes: int,
    in_chans: int,
    config: dict[str, Any],
    metrics: dict[str, Any],
    class_names: list[str],
) -> None:
    payload = {
        "format": FORMAT,
        "arch": arch,
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "config": config,
        "metrics": metrics,
        "class_names": list(class_names),
    }
    # torch.save names the zip's root folder after the file: serialise in memory so the bytes do not
    # depend on the temp file's random name (equal training -> byte-equal checkpoint -> one registry version)
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.exists():
        raise NSPError(f"{path}: checkpoint not found; run the stage that produces it (dvc repro)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / truncated / foreign pickle
        raise NSPError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}); delete it and re-run its stage"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise NSPError(f"{path}: not an NSP checkpoint (format {FORMAT}); re-run its stage")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the classifier (eval mode) from a loaded checkpoint."""
    from nsp.train.engine import make_classifier

    cfg = ckpt["config"]
    noise = cfg.get("noise", {})
    model = make_classifier(
        arch=ckpt["arch"],
        num_classes=ckpt["num_classes"],
        in_chans=ckpt["in_chans"],
        dropout=noise.get("dropout", 0.0),
        drop_path=noise.get("drop_path", 0.0),
    )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise NSPError(
            f"checkpoint weights do not fit architecture {ckpt['arch']!r} ({first})"
        ) from None
    return model.eval()


def save_safetensors(
    out_dir: str | Path,
    *,
    model: torch.nn.Module,
    arch: str,
    num_classes: int,
    in_chans: int,
    config: dict[str, Any],
    class_names: list[str],
) -> list[Path]:
    """Write ``model.safetensors`` and ``nsp_model.json`` into ``out_dir``; returns both paths.

    ``model`` is an NSP classifier (normalisation buffers ``mean``/``std`` beside ``net.*``)."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state)
    noise = config.get("noise") or {}
    meta = {
        "format": SAFE_FORMAT,
        "arch": arch,
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
        "class_names": list(class_names),
        "normalisation": {"mean": float(state["mean"]), "std": float(state["std"])},
        "noise": {k: float(noise.get(k, 0.0)) for k in ("dropout", "drop_path")},
        "config": config,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    write_bytes(out_dir / WEIGHTS_FILE, data)
    write_json(out_dir / MODEL_CONFIG_FILE, meta)
    return [out_dir / WEIGHTS_FILE, out_dir / MODEL_CONFIG_FILE]


def load_safetensors(model_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the classifier (eval mode) from ``model.safetensors`` + ``nsp_model.json``.

    Nothing in either file is executed: the JSON names an NSP architecture, the weights are parsed
    as safetensors and must match its sha256 in the JSON. Anything else (a pickle in place of the
    weights, a foreign or edited file) is a one-line NSPError and nothing is loaded."""
    from safetensors.torch import load

    from nsp.train.engine import make_classifier

    model_dir = Path(model_dir)
    meta_path, weights = model_dir / MODEL_CONFIG_FILE, model_dir / WEIGHTS_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise NSPError(
            f"{model_dir}: no {WEIGHTS_FILE} + {MODEL_CONFIG_FILE} (a model registered before NSP "
            "stored safetensors weights); re-register it, or load the MLflow model yourself if you "
            "trust its source"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != SAFE_FORMAT:
        raise NSPError(f"{meta_path}: not an NSP model config ({SAFE_FORMAT}); nothing was loaded")
    data = weights.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
        raise NSPError(
            f"{weights}: sha256 differs from the one recorded in {MODEL_CONFIG_FILE} (altered or "
            "foreign weights); nothing was loaded"
        )
    try:
        state = load(data)
    except Exception as exc:  # a pickle, truncated bytes, another format
        raise NSPError(
            f"{weights}: not a safetensors file ({type(exc).__name__}); nothing was loaded"
        ) from None
    norm, noise = meta["normalisation"], meta.get("noise") or {}
    model = make_classifier(
        arch=meta["arch"],
        num_classes=meta["num_classes"],
        in_chans=meta["in_chans"],
        dropout=noise.get("dropout", 0.0),
        drop_path=noise.get("drop_path", 0.0),
        mean=norm["mean"],
        std=norm["std"],
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise NSPError(f"{weights}: weights do not fit {meta['arch']!r} ({first})") from None
    return model.eval(), meta
