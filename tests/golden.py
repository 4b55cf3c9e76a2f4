"""Digests of the tiny profile's stage outputs (fp32, one thread), for the byte-identity check.

``python tests/golden.py --record`` runs every stage (prepare -> teacher -> pseudo-label / student per
generation -> baseline -> robustness sets -> evaluate) through the ``nsp`` command line in a temp dir
with tracking off, and writes ``tests/data/golden_digests.json``: one sha256 per output file. JSON files
are digested without wall-clock fields, ``history.csv`` without its ``seconds`` column; every other file
(checkpoints, parquet shards, ``.npy`` sets) byte for byte. The test in ``tests/test_structure.py``
recomputes them and compares, so a refactor that changes what a stage writes fails.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RECORD = HERE / "data" / "golden_digests.json"
PARAMS = HERE / "data" / "golden_params.yaml"
TIMING = ("seconds", "img_per_s", "img_s", "elapsed")


def golden_params() -> dict[str, Any]:
    """The frozen tiny profile (``tests/data/golden_params.yaml``), every trained model in fp32."""
    return yaml.safe_load(PARAMS.read_text())


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
    elif path.name == "history.csv":
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        data = json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in rows]).encode()
    return hashlib.sha256(data).hexdigest()


def run_profile(root: Path, data_dir: Path) -> dict[str, str]:
    """Run every stage in ``root``; returns {relative path: digest} of everything written."""
    params = golden_params()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "NSP_DATA_DIR": str(data_dir), "NSP_NUM_THREADS": "1"}
    env["OMP_NUM_THREADS"] = "1"
    env["NSP_DEVICE"] = "cpu"
    nsp = str(Path(sys.executable).parent / "nsp")
    cmds = [["prepare"], ["train", "teacher"]]
    for g in params["generations"]:
        cmds += [["pseudo-label", "--gen", g], ["train", "student", "--gen", g]]
    cmds += [["train", "baseline"], ["robustness"]]
    for m in params["evaluate"]["models"]:
        cmds.append(["evaluate", m, "--raw"])
    for m in params["evaluate"]["models"]:
        cmds.append(["evaluate", m, "--metrics"])
    for c in cmds:
        extra = [] if c[0] == "prepare" else ["--no-progress"]
        p = subprocess.run([nsp, *c, *extra], cwd=root, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"nsp {' '.join(c)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    out = {}
    for top in ("data", "outputs"):
        for f in sorted((root / top).rglob("*")):
            if f.is_file():
                out[f.relative_to(root).as_posix()] = digest(f)
    return out


def write_dataset(root: Path) -> Path:
    """A deterministic 10-class 28x28 IDX dataset (same bytes on every machine) at ``root``.

    The prepared manifest records the source folder, so the path must be the same on every run:
    written once into a temp folder and renamed into place (concurrent runs agree on the bytes).
    """
    import shutil

    import numpy as np

    from nsp.data.idx import write_idx

    if (root / "t10k-labels-idx1-ubyte.gz").exists():
        return root
    final, root = root, Path(tempfile.mkdtemp(prefix=root.name + "-", dir=root.parent))
    rng = np.random.default_rng(123)
    for stem, per in (("train", 60), ("t10k", 12)):
        y = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per))
        base = rng.integers(0, 256, size=(10, 28, 28)).astype(np.float32)
        x = 0.8 * base[y] + 0.2 * rng.integers(0, 256, size=(len(y), 28, 28))
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", x.astype(np.uint8), compress=True)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", y, compress=True)
    try:
        root.rename(final)
    except OSError:  # another run put it there first
        shutil.rmtree(root)
    return final


def machine_key() -> str:
    """CPU model + torch version: fp32 kernels (and so the bytes) may differ on another CPU."""
    import torch

    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} / torch {torch.__version__.split('+')[0]}"


def compute() -> dict[str, str]:
    data = write_dataset(Path(tempfile.gettempdir()) / "nsp-golden-idx-v1")
    with tempfile.TemporaryDirectory(prefix="nsp-golden-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        return run_profile(work, data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--record", action="store_true", help=f"write {RECORD}")
    args = ap.parse_args()
    digests = compute()
    if args.record:
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(
            json.dumps({"machine": machine_key(), "digests": digests}, indent=1) + "\n"
        )
    print(json.dumps(digests, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
