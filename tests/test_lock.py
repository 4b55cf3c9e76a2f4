"""The lock files: every pyproject.toml dependency pinned within its range, every transitive
dependency present, every pin hashed; and (slow) the setup installs exactly them in a clean venv."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = (REPO / "requirements.lock", REPO / "requirements-frost.lock")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile / uv lock file."""
    out: dict[str, tuple[str, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            name = canonicalize_name(m.group(1))
            out[name] = (m.group(2), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            out[name] = (out[name][0], out[name][1] + 1)
    return out


def project_requirements() -> list[Requirement]:
    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"])
    for extra in proj.get("optional-dependencies", {}).values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_pyproject_dependency_is_pinned_in_range_and_every_pin_hashed() -> None:
    lock = pins(LOCKS[0])
    assert len(lock) > 150  # the whole stack, not the direct dependencies
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is not in requirements.lock; run `bash .ci/lock.sh`"
        assert req.specifier.contains(lock[name][0], prereleases=True), (req, lock[name][0])
    for path in LOCKS:
        for name, (version, n_hashes) in pins(path).items():
            assert n_hashes >= 1, f"{path.name}: {name}=={version} has no --hash"
    assert pins(LOCKS[0])["torch"][0] == "2.14.1" and pins(LOCKS[1]) == {
        "imagecorruptions": ("1.1.2", 2)
    }


def test_the_lock_is_closed_under_the_dependencies_of_what_it_pins() -> None:
    """Each locked package's own requirements (from the installed metadata) are locked too, within
    their ranges: nothing is left for the installer to resolve."""
    lock = pins(LOCKS[0])
    env = default_environment()
    checked = 0
    for name, (version, _) in lock.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue  # the venv differs from the lock here; the slow test covers a fresh install
        checked += 1
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker and not req.marker.evaluate({**env, "extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            assert dep in lock, f"{name} needs {req}, which requirements.lock does not pin"
            assert req.specifier.contains(lock[dep][0], prereleases=True), (name, req)
    assert checked > 150


@pytest.mark.slow
def test_bootstrap_installs_exactly_the_lock_in_a_clean_venv(tmp_path: Path) -> None:
    """`.ci/bootstrap.sh` into a throwaway venv (~6.6 GB, minutes): `pip freeze` equals the locks."""
    venv = tmp_path / "venv"
    env = {**os.environ, "NSP_VENV": str(venv), "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
    p = subprocess.run(["bash", str(REPO / ".ci/bootstrap.sh")], env=env, capture_output=True,
                       text=True, timeout=1800)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == str(venv)
    freeze = subprocess.run([str(venv / "bin/python"), "-m", "pip", "freeze", "--all"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    got = {
        canonicalize_name(m.group(1)): m.group(2) for m in map(PIN.match, freeze.splitlines()) if m
    }
    want = {k: v for path in LOCKS for k, (v, _) in pins(path).items()}
    assert {k: got.get(k) for k in want} == want
    assert set(got) - set(want) <= {"pip"}  # nothing beyond the locks (and venv's own pip)
    code = "import torch, timm, mlflow, dvc, optuna, streamlit, nsp; print(torch.__version__)"
    out = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("2.14.1"), out.stderr[-2000:]
    assert sys.version_info >= (3, 11)
