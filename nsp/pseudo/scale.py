"""Scale check for streamed pseudo-labeling: peak RSS must not grow with the unlabeled set size.

``python -m nsp.pseudo.scale --n 1000000`` labels ``n`` synthetic 32x32x1 images (generated from
their index on the fly, so the source itself holds nothing) with the smallest model and prints one
JSON line: ``n``, ``seconds``, ``img_s``, ``peak_rss_mb``. ``--compare 100000 1000000`` runs each
size in a fresh process and adds ``rss_ratio`` (largest / smallest peak RSS).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_batch(idx: np.ndarray, *, size: int = 32) -> np.ndarray:
    """Deterministic uint8 (B, size, size, 1) images computed from their indices (a hash per pixel)."""
    pix = np.arange(size * size, dtype=np.uint64)
    h = idx.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15) + pix * np.uint64(40503)
    h ^= h >> np.uint64(29)
    return (h & np.uint64(255)).astype(np.uint8).reshape(len(idx), size, size, 1)


def label_synthetic(
    *, n: int, arch: str = "nsp_resnet_xs", batch_size: int = 1024, shard_size: int = 65536
) -> dict[str, Any]:
    """Pseudo-label ``n`` synthetic images into a temporary set; returns timings and peak RSS."""
    import torch

    from nsp.config import PseudoConfig
    from nsp.pseudo.label import build_pseudo_label_set
    from nsp.train.engine import make_classifier

    torch.manual_seed(0)
    model = make_classifier(arch=arch, num_classes=10, in_chans=1).eval()
    cfg = PseudoConfig(batch_size=batch_size, shard_size=shard_size, per_class=max(1, n // 20))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = build_pseudo_label_set(
            model=model,
            get_batch=synthetic_batch,
            n=n,
            num_classes=10,
            cfg=cfg,
            out_dir=Path(tmp) / "set",
            progress=False,
        )
        seconds = time.perf_counter() - t0
        shards = len(list((Path(tmp) / "set").glob("shard-*.parquet")))
    return {
        "n": n,
        "arch": arch,
        "seconds": seconds,
        "img_s": n / seconds,
        "shards": shards,
        "labeled": stats["num_unlabeled"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def compare(sizes: list[int], *, arch: str, shard_size: int = 65536) -> dict[str, Any]:
    """Each size in its own fresh process (peak RSS is per process)."""
    runs = []
    for n in sizes:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "nsp.pseudo.scale",
                "--n",
                str(n),
                "--arch",
                arch,
                "--shard-size",
                str(shard_size),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    rss = [r["peak_rss_mb"] for r in runs]
    return {"runs": runs, "rss_ratio": max(rss) / min(rss)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nsp.pseudo.scale", description=__doc__)
    p.add_argument("--n", type=int, default=100_000, help="synthetic unlabeled images")
    p.add_argument("--arch", default="nsp_resnet_xs")
    p.add_argument("--shard-size", type=int, default=65536, help="rows per parquet shard")
    p.add_argument("--compare", type=int, nargs="+", help="sizes to run in fresh processes")
    a = p.parse_args(argv)
    if a.compare:
        res = compare(a.compare, arch=a.arch, shard_size=a.shard_size)
    else:
        res = label_synthetic(n=a.n, arch=a.arch, shard_size=a.shard_size)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
