"""Model checkpoints: weights + the resolved config that made them (nanoGPT style)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from nsp.errors import NSPError
from nsp.io import write_bytes

FORMAT = "nsp-checkpoint-v1"


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
