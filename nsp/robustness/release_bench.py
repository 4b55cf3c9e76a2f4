"""``nsp bench`` row: reading a 224-px JPEG release (decode + preprocess + forward, through the
same :func:`~nsp.robustness.release_eval.decoded_batches` / ``decode_image`` path as
``release_eval``) against the same model's inference on in-memory uint8 tensors."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_release_read"]


def _write_jpegs(folder: Path, *, n: int, size: int, seed: int = 0) -> list[Path]:
    """Smooth synthetic 224-px photos (upsampled noise + grain) saved at JPEG quality 85."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        big = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
        img = (big + rng.integers(-12, 13, big.shape)).clip(0, 255).astype(np.uint8)
        p = folder / f"ILSVRC2012_val_{i:08d}.JPEG"
        Image.fromarray(img).save(p, quality=85)
        paths.append(p)
    return paths


def bench_release_read(
    *,
    arch: str = "efficientnet_b0",
    images: int = 256,
    batch: int = 64,
    size: int = 224,
    workers: int | None = None,
    repeats: int = 3,
    precision: str = "auto",
) -> dict[str, Any]:
    """img/s of one model over a JPEG release vs over the same pixels already in memory.

    Interleaved repeats (median of each); ``release_read_ratio`` = release / in-memory (target
    >= 0.7). Decoding runs in ``workers`` threads (default: the usable cores) while the model runs
    the previous batch; at most two batches are in memory whatever the release size.
    """
    import os

    from nsp.robustness.evaluate import optimise_for_inference, predict
    from nsp.robustness.release_eval import decode_image, decoded_batches
    from nsp.train.engine import default_device, make_classifier

    workers = workers or len(os.sched_getaffinity(0))
    device = default_device()
    net = make_classifier(arch=arch, num_classes=1000, in_chans=3).to(device).eval()
    with tempfile.TemporaryDirectory(prefix="nsp-release-bench-") as tmp:
        paths = _write_jpegs(Path(tmp), n=images, size=size)
        pixels = np.stack([decode_image(p, size=size, channels=3) for p in paths])
        if precision == "auto":  # measured, as the evaluation stages choose it (cached per machine)
            from nsp.train import precision as P

            def probe() -> dict[str, float]:
                runs = {}
                for p in P.PRECISIONS_PROBED:
                    m = optimise_for_inference(net, pixels[:2], bf16=p == "bf16")
                    runs[p] = lambda m=m: len(predict(m, pixels[:batch], batch_size=batch))
                return P.measure(runs, warmup=3, steps=2)

            shape = (batch, 3, size, size)
            key = P.cache_key(kind="eval", device=device, arch=arch, batch_shape=shape)
            precision = P.decide(key=key, probe=probe)["precision"]
        bf16 = precision == "bf16"
        model = optimise_for_inference(net, pixels[:2], bf16=bf16)
        predict(model, pixels[:batch], batch_size=batch)  # warm-up (tracing, allocator)

        def in_memory() -> float:
            t0 = time.perf_counter()
            predict(model, pixels, batch_size=batch)
            return images / (time.perf_counter() - t0)

        def from_release() -> float:
            t0 = time.perf_counter()
            for x in decoded_batches(
                paths,
                lambda p: decode_image(p, size=size, channels=3),
                batch_size=batch,
                workers=workers,
            ):
                predict(model, x, batch_size=batch)
            return images / (time.perf_counter() - t0)

        mem, rel = [], []
        for _ in range(repeats):
            mem.append(in_memory())
            rel.append(from_release())
    return {
        "release_read_img_s": statistics.median(rel),
        "release_inmemory_img_s": statistics.median(mem),
        "release_read_ratio": statistics.median(rel) / statistics.median(mem),
        "release_read_ratio_paired": statistics.median(
            r / m for r, m in zip(rel, mem, strict=True)
        ),
        "release_read_setup": {
            "arch": arch,
            "images": images,
            "batch": batch,
            "size": size,
            "decode_workers": workers,
            "precision": "bf16" if bf16 else "fp32",
            "jpeg_quality": 85,
        },
    }
