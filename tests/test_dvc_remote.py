"""DVC as a lab uses it: the committed DVC project files keep a fresh clone clean, and a colleague
`dvc pull`s a finished run (prepared data, pseudo-label sets, models) from the default remote and
sees `dvc status` clean, without recomputing anything."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DVC_FILES = (".dvc/config", ".dvc/.gitignore", ".dvcignore")
GIT_ID = ["-c", "user.email=t@t", "-c", "user.name=t"]


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def digests(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for top in ("data", "outputs")
        for f in sorted((root / top).rglob("*"))
        if f.is_file()
    }


def test_dvc_setup_leaves_a_fresh_clone_clean(tmp_path: Path) -> None:
    """`make run`'s DVC setup on a clone that has the committed project files changes nothing."""
    origin = tmp_path / "origin"
    for f in (*DVC_FILES, ".ci/dvc-setup.sh"):
        (origin / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, origin / f)
    sh(["git", "init", "-q"], origin)
    sh(["git", "add", "-A"], origin)
    sh(["git", *GIT_ID, "commit", "-q", "-m", "init"], origin)
    sh(["git", "clone", "-q", str(origin), "clone"], tmp_path)
    clone = tmp_path / "clone"
    sh(["bash", ".ci/dvc-setup.sh"], clone)
    assert sh(["git", "status", "--porcelain", "--untracked-files=all"], clone) == ""
    assert sh(["dvc", "config", "core.analytics"], clone).strip() == "false"
    # the default remote is a folder beside the clone (relative to .dvc/config)
    remote = sh(["dvc", "remote", "list"], clone).split()
    assert remote[:2] == ["lab", str(tmp_path / "nsp-dvc-remote")]


def test_a_colleague_pulls_a_finished_run_and_sees_dvc_status_clean(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    env = tiny_pipeline["env"]
    a = tmp_path / "a"  # a copy of the finished tiny run, with this repository's DVC files
    shutil.copytree(tiny_pipeline["root"], a, symlinks=True)
    for f in DVC_FILES:
        shutil.copy(REPO / f, a / f)
    sh(["git", "add", "-A"], a)
    sh(["git", *GIT_ID, "commit", "-q", "-m", "finished run"], a)
    sh(["dvc", "push"], a, env)
    remote = tmp_path / "nsp-dvc-remote"  # the committed default: ../nsp-dvc-remote

    def objects(root: Path) -> set[str]:
        return {
            str(f.relative_to(root)) for f in (root / "files" / "md5").rglob("*") if f.is_file()
        }

    # push sends what dvc.lock references; the cache may also hold superseded versions of outputs
    # that a stage rewrote (the pull + clean `dvc status` below proves the pushed set is complete)
    assert len(objects(remote)) > 10 and objects(remote) <= objects(a / ".dvc" / "cache")

    sh(["git", "clone", "-q", str(a), "b"], tmp_path)
    b = tmp_path / "b"
    # git brings the uncached metrics (metrics.json, history.csv); the models and data come by pull
    assert not (b / "outputs/models/g2/model.pt").exists() and not (b / "data/prepared").exists()
    sh(["dvc", "pull"], b, env)
    assert "Data and pipelines are up to date." in sh(["dvc", "status"], b, env)
    assert sh(["git", "status", "--porcelain"], b) == ""
    got, want = digests(b), digests(a)
    # everything DVC caches came back byte for byte: prepared data, pseudo-label sets, models
    assert set(got) <= set(want) and {k: want[k] for k in got} == got
    for part in ("data/prepared", "outputs/pseudo", "outputs/models/g2/model.pt"):
        assert any(k.startswith(part) for k in got), part
