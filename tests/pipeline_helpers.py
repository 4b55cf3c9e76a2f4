"""Helpers to run the real DVC pipeline on a tiny profile in a temporary git repo."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def shrink(params: dict) -> dict:
    """The default ``params.yaml`` shrunk to a ~1-minute pipeline on the learnable test images: every
    key the default sets stays set (the same recipe: init_from_teacher, precision auto, the noise
    keys, the pseudo-label rule); only sizes, epochs and the number of generations shrink."""
    p = copy.deepcopy(params)
    p["prepare"].update(labeled_per_class=10, val_per_class=10, a_pool_per_class=10)
    p["tracking"].update(experiment="nsp-tiny", registered_model="nsp-tiny")
    small = {"batch_size": 32, "ema_decay": 0.9}
    p["teacher"].update(epochs=30, warmup_epochs=1, **small)
    p["student"].update(epochs=10, warmup_epochs=0.2, **small)
    p["student"]["pseudo"].update(per_class=40)
    for stage in (
        "teacher",
        "student",
        "baseline",
    ):  # geometry-robust ring images: mild RandAugment
        p[stage]["noise"].update(ra_num_ops=1, ra_magnitude=2)
    gens = dict(list(p["generations"].items())[:2])  # g1 (same arch), g2 (grown from g1)
    p["generations"] = gens
    last = list(gens)[-1]
    p["baseline"].update(arch=gens[last]["arch"], match=last, epochs=30, warmup_epochs=1, **small)
    p["robustness"].update(c_images=50, p_images=20)
    p["robustness"]["a_reference"].update(epochs=2, warmup_epochs=0.5, seed=7, **small)
    p["evaluate"].update(models=["teacher", *gens, p["evaluate"]["baseline"]], batch_size=512,
                         calib_bins=10)  # fmt: skip
    return p


TINY_PARAMS = shrink(yaml.safe_load((REPO / "params.yaml").read_text()))


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
    # the stages run the project's copy of nsp/ (not whatever clone the shared venv links to)
    env["PYTHONPATH"] = str(root)
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
