"""Helpers to run the real DVC pipeline on a tiny profile in a temporary git repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_PARAMS = {
    "prepare": {
        "dataset": "fashion_mnist",
        "data_dir": None,
        "labeled_per_class": 10,
        "val_per_class": 10,
        "seed": 0,
        "image_size": 32,
        "channels": 1,
        "a_pool_per_class": 10,
    },
    "tracking": {
        "enabled": True,
        "uri": None,
        "experiment": "nsp-tiny",
        "registered_model": "nsp-tiny",
        "champion_metric": "val_acc",
        "register": True,
    },
    "teacher": {
        "arch": "nsp_resnet_xs",
        "epochs": 30,
        "batch_size": 32,
        "lr": 0.1,
        "warmup_epochs": 1,
        "ema_decay": 0.9,
        "seed": 0,
        "noise": {
            "randaugment": True,
            "ra_num_ops": 1,
            "ra_magnitude": 2,
            "crop_flip": False,
            "flip": False,
            "dropout": 0.1,
            "drop_path": 0.1,
        },
    },
    "student": {
        "epochs": 10,
        "batch_size": 32,
        "unlabeled_ratio": 2,
        "unlabeled_weight": 1.0,
        "lr": 0.1,
        "warmup_epochs": 0.2,
        "ema_decay": 0.9,
        "seed": 1,
        "noise": {
            "randaugment": True,
            "ra_num_ops": 1,
            "ra_magnitude": 2,
            "crop_flip": False,
            "flip": False,
            "dropout": 0.1,
            "drop_path": 0.1,
        },
        "pseudo": {
            "soft": True,
            "temperature": 1.0,
            "threshold": 0.3,
            "balance": True,
            "per_class": 40,
            "topk": 10,
            "seed": 0,
        },
    },
    "generations": {
        "g1": {"teacher": "teacher", "arch": "nsp_resnet_xs"},
        "g2": {"teacher": "g1", "arch": "nsp_resnet_s", "seed": 2},
    },
    "baseline": {
        "arch": "nsp_resnet_s",
        "match": "g2",
        "epochs": 4,
        "batch_size": 32,
        "lr": 0.1,
        "warmup_epochs": 1,
        "ema_decay": 0.9,
        "seed": 4,
        "noise": {
            "randaugment": True,
            "ra_num_ops": 1,
            "ra_magnitude": 2,
            "crop_flip": False,
            "flip": False,
            "dropout": 0.1,
            "drop_path": 0.1,
        },
    },
    "robustness": {
        "seed": 0,
        "c_images": 50,
        "p_images": 20,
        "a_reference": {
            "arch": "nsp_resnet_xs",
            "epochs": 2,
            "batch_size": 32,
            "lr": 0.1,
            "warmup_epochs": 0.5,
            "ema_decay": 0.9,
            "seed": 7,
        },
    },
    "evaluate": {
        "models": ["teacher", "g1", "g2", "baseline"],
        "baseline": "baseline",
        "batch_size": 512,
        "calib_bins": 10,
        "rel_ce_min_degradation": 0.01,
        "precision": "auto",
    },
}


def make_project(root: Path, params: dict) -> Path:
    """A temp git+DVC repo with this project's dvc.yaml, the given params and the code deps DVC hashes."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "nsp", root / "nsp", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    run(["git", "init", "-q"], root)
    run(
        [
            "git",
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        ],
        root,
    )
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    return root


def env_for(root: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NSP_DATA_DIR"] = str(data_dir)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra)
    return env


def run(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    if cmd[0] in ("dvc", "nsp"):
        cmd = [str(Path(sys.executable).parent / cmd[0]), *cmd[1:]]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
        )
    return p
