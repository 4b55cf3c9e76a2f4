"""Runtime helpers every stage runner shares: torch threads / process group, output paths, the
prepared data as tensors. Imports no tracking and no engine internals beyond ``to_nchw``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nsp.errors import NSPError
from nsp.io import sha256_file

OUT = Path("outputs")


def prepared_dir(params: dict[str, Any]) -> Path:
    """Where ``nsp prepare`` wrote the splits (``prepare.out_dir``, default ``data/prepared``)."""
    return Path((params.get("prepare") or {}).get("out_dir", "data/prepared"))


def model_dir(name: str, out: Path = OUT) -> Path:
    """``<out>/models/<name>``: a model's checkpoint, metrics, history, confusion matrix."""
    return out / "models" / name


def pseudo_dir(gen: str, out: Path = OUT) -> Path:
    """``<out>/pseudo/<gen>``: generation ``gen``'s pseudo-label set."""
    return out / "pseudo" / gen


def state_path(name: str, out: Path = OUT) -> Path:
    """Per-epoch training state (resume after a kill); not a DVC output, removed after success."""
    return model_dir(name, out) / "train_state.pt"


def setup_threads() -> tuple[int, int]:
    """Torch threads = usable cores (``NSP_NUM_THREADS`` overrides; oversubscription is very slow).

    Under torchrun (``WORLD_SIZE`` > 1) also joins the process group (gloo on CPU, nccl on GPU) and
    returns (rank, world_size); only rank 0 logs to MLflow and writes outputs.
    """
    import torch  # here, not at module level: torch-free stages (no release configured) start fast

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
    """The prepared splits as uint8 NCHW tensors (+ labels, class names, manifest hash).

    ``unlabeled=True`` adds the unlabeled split (lazy, ``get_batch``) and its hidden truth.
    """
    import torch

    from nsp.data.splits import load_split, load_unlabeled_truth, read_manifest
    from nsp.train.engine import to_nchw

    root = prepared_dir(params)
    if not (root / "manifest.json").exists():
        raise NSPError(
            f"{root}/manifest.json not found; run `nsp prepare` (dvc repro prepare) first"
        )
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
