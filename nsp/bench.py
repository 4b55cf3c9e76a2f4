"""Benchmark suite (``nsp bench``): how close the real data paths run to the bare model.

Everything is measured in one process and one run, so ratios compare like with like: torch uses
all cores (unless ``threads``), warm-up iterations are excluded and every rate is the median over
repeats. Compared pipelines are interleaved (raw and noised training alternate step by step, the
PIL loaders and the pseudo-labeling passes block by block), so a load spike from another process
hits both sides; ``*_paired`` ratios are medians of per-repeat ratios.

Measured (images are synthetic smooth uint8 images of the default profile's size, made in memory):

* ``raw_train_img_s``: :meth:`nsp.train.step.TrainStep.step` of the default student on
  pre-normalised float batches (dropout and stochastic depth 0): forward, CE + soft-CE, backward,
  SGD, EMA update;
* ``train_img_s``: the training step itself, as ``train_model`` runs it:
  :meth:`~nsp.train.step.TrainStep.next_batch` (gather a uint8 labeled + unlabeled batch from the
  in-memory pool -> ``random_crop_flip`` + per-sample ``RandAugmentBatch``) then
  :meth:`~nsp.train.step.TrainStep.step` (model with dropout and stochastic depth, loss, SGD, EMA);
* ``pil_pipeline_img_s``: the same step fed by ``PILRandAugmentDataset`` (per-image PIL crop/flip +
  RandAugment) in a ``torch.utils.data.DataLoader`` with 0 and with 2 workers (the better one);
* ``pseudo_label_img_s``: :func:`nsp.pseudo.label.predict_shards` (softmax, top-k, parquet
  shards) vs ``raw_infer_img_s``: ``model(x)`` under ``inference_mode`` on the same batches;
* ``corruption_speedup``: :func:`nsp.robustness.corruptions.build_c_set` vs a per-image loop of
  :func:`~nsp.robustness.corruptions.corrupt_image`, both per image;
* FLOPs per image (``FlopCounterMode``; training = 3 x forward), achieved training GFLOP/s and the
  fraction of a measured fp32 ``torch.mm`` peak;
* ``repro_seconds``: the stage timings the pipeline recorded under ``outputs/`` (null if none).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nsp.config import NoiseConfig, PseudoConfig, TrainConfig

#: Targets from the issue "Fast data path and a benchmark suite" (metric -> minimum).
TARGETS: dict[str, float] = {
    "train_ratio_vs_raw": 0.90,
    "train_ratio_vs_pil": 1.4,
    "pseudo_label_ratio_vs_raw": 0.95,
    "corruption_speedup": 5.0,
    "train_frac_of_peak": 0.5,
    "release_read_ratio": 0.7,
}
#: Targets from the issue "Fast on every machine": precision auto, and the noise at ImageNet size
#: (``nsp bench --size 224 --channels 3``; the keys carry the size).
TARGETS_PRECISION: dict[str, float] = {"auto_vs_best_ratio": 0.95}
TARGETS_AT_SIZE: dict[str, float] = {"train_ratio_vs_raw": 0.90, "train_ratio_vs_pil": 1.4}


@dataclass(frozen=True)
class BenchSizes:
    """Everything that sets the amount of work (reported in the JSON as ``sizes``)."""

    arch: str = "nsp_resnet_l"
    release_arch: str = "efficientnet_b0"  # the 224-px JPEG release read (release_bench.py)
    release_images: int = 256
    labeled_batch: int = 64
    unlabeled_ratio: float = 3.0
    image_size: int = 32
    channels: int = 1
    num_classes: int = 10
    pool_images: int = 4096  # in-memory uint8 pool the training steps gather from
    labeled_images: int = 1000  # the first rows of the pool form the labeled split
    warmup_steps: int = 1  # per block (the first block of each pipeline gets one more)
    steps: int = 3  # timed steps per block
    repeats: int = 3
    pil_workers: tuple[int, ...] = (0, 2)
    infer_images: int = 2048
    infer_repeats: int = 5
    infer_batch: int = 1024
    c_images: int = 500
    c_loop_images: int = 20
    c_severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    matmul_n: int = 2048
    matmul_repeats: int = 5
    noise_repeats: int = 9  # calls per noise-breakdown timing

    @property
    def unlabeled_batch(self) -> int:
        return max(1, int(round(self.labeled_batch * self.unlabeled_ratio)))

    @property
    def batch(self) -> int:
        return self.labeled_batch + self.unlabeled_batch


QUICK = BenchSizes(
    arch="nsp_resnet_xs",
    release_arch="nsp_resnet_xs",
    release_images=16,
    labeled_batch=8,
    pool_images=256,
    labeled_images=64,
    warmup_steps=1,
    steps=2,
    repeats=1,
    infer_images=128,
    infer_batch=64,
    infer_repeats=1,
    c_images=4,
    c_loop_images=2,
    c_severities=(3,),
    matmul_n=512,
    matmul_repeats=3,
    noise_repeats=3,
)


def student_setup(
    *,
    params: dict[str, Any] | None,
    quick: bool = False,
    arch: str | None = None,
    batch: int | None = None,
) -> tuple[BenchSizes, TrainConfig, PseudoConfig]:
    """Sizes and configs of the default student (the last generation in ``params``).

    ``params=None`` uses the built-in defaults (``nsp_resnet_l``, batch 64 + 3 x 64, the paper's
    noise). ``batch`` overrides the labeled batch size (the unlabeled one stays ``ratio`` x it).
    """
    from nsp import config as C

    if params and C.generation_keys(params):
        gen = C.generation_keys(params)[-1]
        cfg = C.student_config(params, gen)
        pcfg = C.pseudo_config(params, gen)
    else:
        cfg = TrainConfig(
            name="student",
            arch="nsp_resnet_l",
            batch_size=64,
            unlabeled_ratio=3.0,
            noise=NoiseConfig(dropout=0.3, drop_path=0.2),
        )
        pcfg = PseudoConfig()
    if arch:
        cfg = replace(cfg, arch=arch)
    if batch:
        cfg = replace(cfg, batch_size=int(batch))
    prep = (params or {}).get("prepare") or {}
    base = QUICK if quick else BenchSizes()
    sizes = replace(
        base,
        arch=arch or (base.arch if quick else cfg.arch),
        labeled_batch=base.labeled_batch if quick and not batch else cfg.batch_size,
        unlabeled_ratio=float(cfg.unlabeled_ratio),
        image_size=int(prep.get("image_size") or 32),
        channels=int(prep.get("channels") or 1),
    )
    return sizes, cfg, pcfg


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, torch / numpy / Python versions, torch threads."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


def synthetic_images(*, n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (N, size, size, C): 8x8 noise upsampled plus fine grain."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, channels, 8, 8), generator=g) * 255.0
    up = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    up = up + 12.0 * torch.randn(up.shape, generator=g)
    return up.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _median_rate(samples: list[float]) -> float:
    return float(statistics.median(samples)) if samples else float("nan")


def _paired(a: list[float], b: list[float]) -> float:
    """Median over repeats of the per-repeat ratio a/b (robust to load drift between repeats)."""
    return float(statistics.median(x / y for x, y in zip(a, b, strict=True)))


def _rate(step: Callable[[], int], *, warmup: int, steps: int) -> float:
    """Images per second of ``steps`` calls of ``step`` (returns images done) after ``warmup``."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    done = sum(step() for _ in range(steps))
    return done / (time.perf_counter() - t0)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# ---------------------------------------------------------------------------------------------
# Training: raw vs noised vs per-image PIL DataLoader
# ---------------------------------------------------------------------------------------------


class _PILTrainDataset(torch.utils.data.Dataset):
    """Per-image public-style pipeline: PIL reflect-pad crop + flip, then PIL RandAugment.

    Wraps :class:`~nsp.noise.pil_reference.PILRandAugmentDataset`; the label it returns is the
    row index (the training step looks labels and soft targets up by it).
    """

    def __init__(self, images: np.ndarray, noise: NoiseConfig, seed: int) -> None:
        from torchvision import transforms as T

        from nsp.noise.pil_reference import PILRandAugmentDataset

        self.inner = PILRandAugmentDataset(
            images,
            np.arange(len(images)),
            num_ops=noise.ra_num_ops if noise.randaugment else 0,
            magnitude=noise.ra_magnitude,
            seed=seed,
        )
        size = images.shape[1]
        steps: list[Any] = []
        if noise.crop_flip:
            steps.append(T.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"))
            if noise.flip:
                steps.append(T.RandomHorizontalFlip())
        self.crop_flip = T.Compose(steps)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        from nsp.noise.pil_reference import pil_to_tensor

        arr = self.inner.images[i]
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        img = self.inner.augment(self.crop_flip(img))
        return pil_to_tensor(img), torch.tensor(i)


def bench_training(
    *, cfg: TrainConfig, sizes: BenchSizes, images: np.ndarray, progress: bool = True
) -> dict[str, Any]:
    """Raw vs noised vs PIL-DataLoader training img/s (medians over interleaved blocks)."""
    from nsp.train.engine import make_classifier, to_nchw
    from nsp.train.step import PseudoBatchSource, TrainStep

    gen = torch.Generator().manual_seed(0)
    pool = to_nchw(images)  # uint8 (N, C, H, W)
    n = len(pool)
    nl = min(sizes.labeled_images, n)
    labels = torch.randint(sizes.num_classes, (n,), generator=gen)
    soft = F.softmax(2.0 * torch.randn((n, sizes.num_classes), generator=gen), dim=1)
    pseudo = PseudoBatchSource(
        images=pool, index=torch.arange(n), targets=soft, counts=torch.ones(n, dtype=torch.int64)
    )

    def trainer(noised: bool) -> TrainStep:
        """The engine's training step (nsp.train.step) on the bench's pool; raw: no dropout / depth."""
        c = cfg if noised else replace(cfg, noise=replace(cfg.noise, dropout=0.0, drop_path=0.0))
        model = make_classifier(arch=c.arch, num_classes=sizes.num_classes, in_chans=sizes.channels,
                                dropout=c.noise.dropout, drop_path=c.noise.drop_path)  # fmt: skip
        c = replace(c, batch_size=sizes.labeled_batch, unlabeled_ratio=sizes.unlabeled_ratio)
        return TrainStep(cfg=c, model=model, labeled_x=pool[:nl], labeled_y=labels[:nl], gen=gen,
                         device=torch.device("cpu"), pseudo=pseudo, total=10_000, warmup=100)  # fmt: skip

    noised = trainer(True)
    raw = trainer(False)

    def noised_step() -> int:  # exactly what train_model does per step
        x, y, targets = noised.next_batch()
        noised.step(x, y, targets)
        return int(x.shape[0])

    # Raw: a few fixed, already-normalised float batches in the model's memory format.
    mean, std = float(pool.float().mean()), float(pool.float().std()) or 1.0
    raw_batches = []
    for _ in range(3):
        idx = torch.randint(n, (sizes.batch,), generator=gen)
        xf = ((pool[idx].float() - mean) / std).contiguous(memory_format=torch.channels_last)
        raw_batches.append(
            (xf, labels[idx[: sizes.labeled_batch]], soft[idx[sizes.labeled_batch :]])
        )
    raw_i = [0]

    def raw_step() -> int:
        xf, y, t = raw_batches[raw_i[0] % len(raw_batches)]
        raw_i[0] += 1
        raw.step(xf, y, t, net=raw.model.net)
        return int(xf.shape[0])

    pil_ds = _PILTrainDataset(images, cfg.noise, seed=0)
    per_block = sizes.warmup_steps + 1 + sizes.steps

    def pil_rate(workers: int, warmup: int) -> float:
        sampler = torch.utils.data.RandomSampler(
            pil_ds, replacement=True, num_samples=per_block * sizes.batch, generator=gen
        )
        loader = torch.utils.data.DataLoader(
            pil_ds, batch_size=sizes.batch, sampler=sampler, num_workers=workers, drop_last=True
        )
        it: Iterator[Any] = iter(loader)  # fresh workers: no batches prefetched during other blocks

        def step() -> int:
            x, i = next(it)
            noised.step(x, labels[i[: sizes.labeled_batch]], soft[i[sizes.labeled_batch :]])
            return int(x.shape[0])

        # the iterator (and its workers) goes away when this function returns
        return _rate(step, warmup=warmup, steps=sizes.steps)

    def paired_rates(warmup: int) -> tuple[float, float]:
        """Raw and noised steps alternate step by step, so load changes hit both alike."""
        for _ in range(warmup):
            raw_step()
            noised_step()
        t_raw = t_noised = 0.0
        n_raw = n_noised = 0
        for _ in range(sizes.steps):
            t0 = time.perf_counter()
            n_raw += raw_step()
            t1 = time.perf_counter()
            n_noised += noised_step()
            t2 = time.perf_counter()
            t_raw += t1 - t0
            t_noised += t2 - t1
        return n_raw / t_raw, n_noised / t_noised

    rates: dict[str, list[float]] = {"raw": [], "noised": []}
    rates.update({f"pil_w{w}": [] for w in sizes.pil_workers})
    bar = _progress(sizes.repeats * (1 + len(sizes.pil_workers)), "bench train", progress)
    for r in range(sizes.repeats):
        warm = sizes.warmup_steps + (1 if r == 0 else 0)
        raw_r, noised_r = paired_rates(warm if r == 0 else 0)
        rates["raw"].append(raw_r)
        rates["noised"].append(noised_r)
        bar.update(1)
        for w in sizes.pil_workers:
            rates[f"pil_w{w}"].append(pil_rate(w, warm))
            bar.update(1)
    bar.close()
    med = {k: _median_rate(v) for k, v in rates.items()}
    pil_best = max(sizes.pil_workers, key=lambda w: med[f"pil_w{w}"])
    pil = f"pil_w{pil_best}"
    out = {
        "train_bf16": noised.bf16,
        "raw_train_img_s": med["raw"],
        "train_img_s": med["noised"],
        "train_ratio_vs_raw": med["noised"] / med["raw"],
        "train_ratio_vs_raw_paired": _paired(rates["noised"], rates["raw"]),
        "pil_pipeline_img_s": med[pil],
        "pil_best_workers": pil_best,
        "train_ratio_vs_pil": med["noised"] / med[pil],
        "train_ratio_vs_pil_paired": _paired(rates["noised"], rates[pil]),
        # the ceiling of train_ratio_vs_pil: what a noise pipeline costing nothing would reach
        "raw_ratio_vs_pil": med["raw"] / med[pil],
        "samples_img_s": {k: [round(x, 2) for x in v] for k, v in rates.items()},
    }
    for w in sizes.pil_workers:
        out[f"pil_pipeline_img_s_w{w}"] = med[f"pil_w{w}"]
    return out


def bench_noise_breakdown(
    *, cfg: TrainConfig, sizes: BenchSizes, images: np.ndarray
) -> dict[str, float]:
    """Milliseconds per student batch of each input-noise piece, with all threads and with one."""
    from nsp.noise.randaugment import RandAugmentBatch, random_crop_flip
    from nsp.train.engine import to_nchw

    pool = to_nchw(images)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(len(pool), (sizes.batch,), generator=gen)
    x = pool[idx]
    pad = max(1, x.shape[-1] // 8)
    ra = RandAugmentBatch(num_ops=cfg.noise.ra_num_ops, magnitude=cfg.noise.ra_magnitude, fill=0)
    parts: dict[str, Callable[[], Any]] = {
        "gather": lambda: pool[torch.randint(len(pool), (sizes.batch,), generator=gen)],
        "crop_flip": lambda: random_crop_flip(x, pad=pad, flip=cfg.noise.flip, generator=gen),
        "randaugment": lambda: ra(x, generator=gen),
    }
    out: dict[str, float] = {}
    threads = torch.get_num_threads()
    for nthreads, suffix in ((threads, ""), (1, "_1thread")):
        torch.set_num_threads(nthreads)
        try:
            for name, fn in parts.items():
                fn()
                times = []
                for _ in range(sizes.noise_repeats):
                    t0 = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - t0) * 1e3)
                out[f"{name}_ms{suffix}"] = float(statistics.median(times))
        finally:
            torch.set_num_threads(threads)
    # the per-image PIL pipeline for the same batch (single-threaded by nature), for comparison
    ds = _PILTrainDataset(images, cfg.noise, seed=1)
    rows = idx.tolist()
    collate = torch.utils.data.default_collate
    times = []
    for _ in range(max(1, sizes.noise_repeats // 3)):
        t0 = time.perf_counter()
        collate([ds[i] for i in rows])
        times.append((time.perf_counter() - t0) * 1e3)
    out["pil_dataset_ms"] = float(statistics.median(times))
    return out


# ---------------------------------------------------------------------------------------------
# Pseudo-labeling vs raw inference
# ---------------------------------------------------------------------------------------------


def bench_pseudo_label(
    *,
    cfg: TrainConfig,
    pcfg: PseudoConfig,
    sizes: BenchSizes,
    images: np.ndarray,
    progress: bool = True,
) -> dict[str, Any]:
    """``predict_shards`` img/s vs ``model(x)`` img/s on the same batches (interleaved repeats)."""
    from nsp.pseudo.label import predict_shards
    from nsp.train.engine import make_classifier

    model = make_classifier(
        arch=cfg.arch, num_classes=sizes.num_classes, in_chans=sizes.channels
    ).eval()
    x = images[: sizes.infer_images]
    n = len(x)
    pcfg = replace(pcfg, batch_size=sizes.infer_batch)
    # the tensors teacher_probs builds from each batch, made up front
    batches = [
        torch.from_numpy(np.ascontiguousarray(x[i : i + sizes.infer_batch])).permute(0, 3, 1, 2)
        for i in range(0, n, sizes.infer_batch)
    ]

    def raw_pass() -> int:
        with torch.inference_mode():
            for b in batches:
                model(b)
        return n

    def pseudo_pass(root: Path) -> int:
        out_dir = Path(tempfile.mkdtemp(dir=root))
        predict_shards(
            model=model,
            get_batch=lambda idx: x[idx],
            n=n,
            num_classes=sizes.num_classes,
            cfg=pcfg,
            out_dir=out_dir,
            progress=False,
        )
        return n

    class _Stub(nn.Module):  # fixed logits at ~zero cost: predict_shards' own overhead
        def __init__(self) -> None:
            super().__init__()
            self.logits = torch.randn((sizes.infer_batch, sizes.num_classes))

        def forward(self, xb: torch.Tensor) -> torch.Tensor:
            return self.logits[: len(xb)]

    stub = _Stub()
    raw_r, pseudo_r = [], []
    with tempfile.TemporaryDirectory(prefix="nsp-bench-") as tmp:
        root = Path(tmp)
        overhead = []
        for _ in range(3):
            t0 = time.perf_counter()
            predict_shards(
                model=stub,
                get_batch=lambda idx: x[idx],
                n=n,
                num_classes=sizes.num_classes,
                cfg=pcfg,
                out_dir=Path(tempfile.mkdtemp(dir=root)),
                progress=False,
            )
            overhead.append(time.perf_counter() - t0)
        bar = _progress(2 * sizes.infer_repeats, "bench pseudo-label", progress)
        for r in range(sizes.infer_repeats):
            warm = 1 if r == 0 else 0
            raw_r.append(_rate(raw_pass, warmup=warm, steps=1))
            bar.update(1)
            pseudo_r.append(_rate(lambda: pseudo_pass(root), warmup=warm, steps=1))
            bar.update(1)
        bar.close()
    raw_med, pl_med = _median_rate(raw_r), _median_rate(pseudo_r)
    return {
        "raw_infer_img_s": raw_med,
        "pseudo_label_img_s": pl_med,
        "pseudo_label_ratio_vs_raw": pl_med / raw_med,
        "pseudo_label_ratio_vs_raw_paired": _paired(pseudo_r, raw_r),
        # predict_shards with a zero-cost model: its own cost per image, and the ratio it implies
        "pseudo_overhead_ms_per_image": statistics.median(overhead) / n * 1e3,
        "pseudo_label_ratio_vs_raw_est": (1.0 / raw_med)
        / (1.0 / raw_med + statistics.median(overhead) / n),
        "pseudo_samples_img_s": {
            "raw": [round(v, 2) for v in raw_r],
            "pseudo": [round(v, 2) for v in pseudo_r],
        },
    }


# ---------------------------------------------------------------------------------------------
# Corruptions: batched -C set vs per-image loop
# ---------------------------------------------------------------------------------------------


def bench_corruptions(
    *, sizes: BenchSizes, images: np.ndarray, progress: bool = True
) -> dict[str, Any]:
    """Seconds per corrupted image of ``build_c_set`` vs a per-image ``corrupt_image`` loop."""
    from nsp.robustness.corruptions import (
        CORRUPTIONS,
        build_c_set,
        corrupt,
        corrupt_image,
        image_rng,
    )

    sev = tuple(sizes.c_severities)
    big = images[: sizes.c_images]
    small = images[: sizes.c_loop_images]
    for name in CORRUPTIONS:  # warm-up: lazy tables, frost textures, first-call costs
        corrupt(images[:2], name=name, severity=sev[0])
        corrupt_image(images[0], name=name, severity=sev[0], rng=image_rng(0, 0, name, sev[0]))
    # build_c_set one corruption at a time (the same code path; gives a per-corruption split),
    # each followed by the per-image loop over the same corruption (interleaved against load)
    batched: dict[str, float] = {}
    loop: dict[str, float] = {}
    bar = _progress(len(CORRUPTIONS), "bench corruptions", progress)
    for nm in CORRUPTIONS:
        t0 = time.perf_counter()
        build_c_set(big, names=(nm,), severities=sev, seed=0, progress=False)
        batched[nm] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in sev:
            for i, im in enumerate(small):
                corrupt_image(im, name=nm, severity=s, rng=image_rng(0, i, nm, s))
        loop[nm] = time.perf_counter() - t0
        bar.update(1)
    bar.close()
    jobs = [(nm, s) for nm in CORRUPTIONS for s in sev]
    batched_s, loop_s = sum(batched.values()), sum(loop.values())
    per_batched = batched_s / (len(big) * len(jobs))
    per_loop = loop_s / (len(small) * len(jobs))
    return {
        "c_set_seconds": batched_s,
        "c_set_images": int(len(big) * len(jobs)),
        "c_set_ms_per_image": per_batched * 1e3,
        "c_loop_seconds": loop_s,
        "c_loop_images": int(len(small) * len(jobs)),
        "c_loop_ms_per_image": per_loop * 1e3,
        "corruption_speedup": per_loop / per_batched,
        "c_per_corruption_ms_per_image": {
            nm: {
                "batched": round(batched[nm] / (len(big) * len(sev)) * 1e3, 4),
                "loop": round(loop[nm] / (len(small) * len(sev)) * 1e3, 4),
            }
            for nm in CORRUPTIONS
        },
    }


# ---------------------------------------------------------------------------------------------
# FLOPs, matmul peak, recorded pipeline timings
# ---------------------------------------------------------------------------------------------


def model_flops_per_image(*, model: nn.Module, sizes: BenchSizes, batch: int = 8) -> float:
    """Forward FLOPs per image counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    x = torch.zeros((batch, sizes.channels, sizes.image_size, sizes.image_size))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was)
    return counter.get_total_flops() / batch


def matmul_gflops(*, n: int = 2048, repeats: int = 5) -> float:
    """Median fp32 GFLOP/s of ``torch.mm`` on two n x n matrices (all torch threads)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn((n, n), generator=g)
    b = torch.randn((n, n), generator=g)
    out = torch.empty((n, n))
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def _seconds_fields(obj: Any) -> float:
    """Sum of numeric ``seconds`` / ``*_seconds`` values in a (nested) metrics dict."""
    total = 0.0
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict):
                total += _seconds_fields(v)
            elif (
                (k == "seconds" or k.endswith("_seconds"))
                and isinstance(v, int | float)
                and not isinstance(v, bool)
                and math.isfinite(v)
            ):
                total += float(v)
    return total


def repro_seconds(outputs_dir: str | Path = "outputs") -> dict[str, Any]:
    """Wall time of the default ``dvc repro`` from the timings its stages recorded.

    Sums ``train_seconds`` of ``outputs/models/*/metrics.json`` and every ``seconds`` /
    ``*_seconds`` field of ``outputs/**/*.metrics.json``; ``repro_seconds`` is None when none exist.
    """
    import json

    root = Path(outputs_dir)
    stages: dict[str, float] = {}
    for p in sorted(root.glob("models/*/metrics.json")):
        try:
            v = json.loads(p.read_text()).get("train_seconds")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(v, int | float) and math.isfinite(v):
            stages[str(p.relative_to(root))] = float(v)
    for p in sorted(root.glob("**/*.metrics.json")):
        try:
            v = _seconds_fields(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
        if v > 0:
            stages[str(p.relative_to(root))] = v
    return {"repro_seconds": sum(stages.values()) if stages else None, "repro_stages": stages}


# ---------------------------------------------------------------------------------------------
# precision: auto, and the noise at a larger image size (ImageNet: 224 px RGB)
# ---------------------------------------------------------------------------------------------


def bench_precision(
    *, cfg: TrainConfig, sizes: BenchSizes, images: np.ndarray, progress: bool = True
) -> dict[str, Any]:
    """What ``precision: auto`` chose (its probe, :mod:`nsp.train.precision`, or its cache) against
    the noised training step timed here in fp32 and in bf16 (interleaved blocks, medians)."""
    from nsp.train.engine import make_classifier, to_nchw
    from nsp.train.step import PseudoBatchSource, TrainStep

    gen = torch.Generator().manual_seed(2)
    pool = to_nchw(images)
    n, nl = len(pool), min(sizes.labeled_images, len(pool))
    labels = torch.randint(sizes.num_classes, (n,), generator=gen)
    soft = F.softmax(torch.randn((n, sizes.num_classes), generator=gen), dim=1)
    pseudo = PseudoBatchSource(
        images=pool, index=torch.arange(n), targets=soft, counts=torch.ones(n, dtype=torch.int64)
    )
    c = replace(cfg, batch_size=sizes.labeled_batch, unlabeled_ratio=sizes.unlabeled_ratio)
    model = make_classifier(arch=c.arch, num_classes=sizes.num_classes, in_chans=sizes.channels,
                            dropout=c.noise.dropout, drop_path=c.noise.drop_path)  # fmt: skip

    def trainer(precision: str) -> TrainStep:
        return TrainStep(cfg=replace(c, precision=precision), model=model, labeled_x=pool[:nl],
                         labeled_y=labels[:nl], gen=gen, device=torch.device("cpu"),
                         pseudo=pseudo, total=10_000, warmup=100)  # fmt: skip

    t0 = time.perf_counter()
    auto = trainer("auto").precision  # the decision train_model would use on this machine
    probe_s = time.perf_counter() - t0
    steps = {p: trainer(p) for p in ("fp32", "bf16")}

    def block(ts: TrainStep) -> int:
        x, y, t = ts.next_batch()
        ts.step(x, y, t)
        return int(x.shape[0])

    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    bar = _progress(sizes.repeats * 2, "bench precision", progress)
    for r in range(sizes.repeats):
        for p, ts in steps.items():
            rates[p].append(_rate(lambda ts=ts: block(ts), warmup=sizes.warmup_steps + (r == 0),
                                  steps=sizes.steps))  # fmt: skip
            bar.update(1)
    bar.close()
    med = {p: _median_rate(v) for p, v in rates.items()}
    return {
        "auto_precision": auto["precision"],
        "auto_source": auto.get("source", "explicit"),
        "auto_probe_seconds": probe_s,
        "auto_probe_img_s": {p: auto.get(f"{p}_img_per_s") for p in ("fp32", "bf16")},
        "fp32_train_img_s": med["fp32"],
        "bf16_train_img_s": med["bf16"],
        "bf16_vs_fp32": med["bf16"] / med["fp32"],
        "auto_vs_best_ratio": med[auto["precision"]] / max(med.values()),
        "precision_samples_img_s": {k: [round(x, 2) for x in v] for k, v in rates.items()},
    }


def sizes_at(
    size: int, channels: int, *, quick: bool = False, arch: str | None = None
) -> BenchSizes:
    """Bench sizes for ``size`` px images: a timm arch (``resnet18``, built locally, no weights),
    1000 classes, a labeled batch of 16 (+ 3 x 16 unlabeled); with ``quick`` tiny batches of the
    tiny ``mobilenetv3_small_050`` (seconds: for tests)."""
    base = QUICK if quick else BenchSizes()
    return replace(
        base,
        arch=arch or ("mobilenetv3_small_050" if quick else "resnet18"),
        image_size=int(size),
        channels=int(channels),
        num_classes=1000,
        labeled_batch=2 if quick else 16,
        unlabeled_ratio=3.0,
        pool_images=16 if quick else 256,
        labeled_images=8 if quick else 64,
        steps=2 if quick else 3,
        pil_workers=(0, 1) if quick else (0, 1, 2),
        noise_repeats=3 if quick else 5,
    )


def run_bench_at_size(
    *, sizes: BenchSizes, cfg: TrainConfig, threads: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """``nsp bench --size N``: the noised step vs raw and vs the best PIL DataLoader, the noise
    pieces, and precision auto, on ``N`` px synthetic images (keys of the ratios end in ``_N``)."""
    cfg = replace(cfg, arch=sizes.arch, batch_size=sizes.labeled_batch)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads) if threads else len(os.sched_getaffinity(0)))
    t_start, load_start = time.perf_counter(), os.getloadavg()
    try:
        images = synthetic_images(n=sizes.pool_images, size=sizes.image_size,
                                  channels=sizes.channels)  # fmt: skip
        train = bench_training(cfg=cfg, sizes=sizes, images=images, progress=progress)
        res: dict[str, Any] = {"machine": machine_info()}
        size = sizes.image_size
        for k in ("raw_train_img_s", "train_img_s", "pil_pipeline_img_s", "train_bf16"):
            res[f"{k}_{size}"] = train[k]
        for k in (*TARGETS_AT_SIZE, "train_ratio_vs_raw_paired", "train_ratio_vs_pil_paired",
                  "raw_ratio_vs_pil"):  # fmt: skip
            res[f"{k}_{size}"] = train[k]
        res["pil_best_workers"] = train["pil_best_workers"]
        res["samples_img_s"] = train["samples_img_s"]
        res["noise_breakdown_ms"] = bench_noise_breakdown(cfg=cfg, sizes=sizes, images=images)
        res.update(bench_precision(cfg=cfg, sizes=sizes, images=images, progress=progress))
    finally:
        torch.set_num_threads(old_threads)
    res["bench_seconds"] = time.perf_counter() - t_start
    res["loadavg_start"] = [round(v, 2) for v in load_start]
    res["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    res["sizes"] = {**asdict(sizes), "unlabeled_batch": sizes.unlabeled_batch, "batch": sizes.batch}
    res["noise"] = asdict(cfg.noise)
    targets = {f"{k}_{size}": v for k, v in TARGETS_AT_SIZE.items()} | TARGETS_PRECISION
    res["targets"] = targets
    res["meets_targets"] = {k: bool(res[k] >= v) for k, v in targets.items()}
    return res


# ---------------------------------------------------------------------------------------------
# The whole suite
# ---------------------------------------------------------------------------------------------


def run_bench(
    *,
    sizes: BenchSizes,
    cfg: TrainConfig,
    pcfg: PseudoConfig,
    outputs_dir: str | Path = "outputs",
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every measurement once and return the flat result dict.

    ``threads`` sets torch's intra-op threads for the run (default: every usable core).
    """
    from nsp.robustness.corruptions import CORRUPTIONS
    from nsp.train.engine import make_classifier

    cfg = replace(cfg, arch=sizes.arch, batch_size=sizes.labeled_batch)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads) if threads else len(os.sched_getaffinity(0)))
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    try:
        images = synthetic_images(
            n=max(sizes.pool_images, sizes.infer_images, sizes.c_images),
            size=sizes.image_size,
            channels=sizes.channels,
        )
        res: dict[str, Any] = {"machine": machine_info()}
        sections: dict[str, float] = {}

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            t0 = time.perf_counter()
            out = fn()
            sections[name] = round(time.perf_counter() - t0, 2)
            return out

        res.update(
            timed(
                "train",
                lambda: bench_training(cfg=cfg, sizes=sizes, images=images, progress=progress),
            )
        )
        res["noise_breakdown_ms"] = timed(
            "noise_breakdown", lambda: bench_noise_breakdown(cfg=cfg, sizes=sizes, images=images)
        )
        res.update(
            timed(
                "pseudo_label",
                lambda: bench_pseudo_label(
                    cfg=cfg, pcfg=pcfg, sizes=sizes, images=images, progress=progress
                ),
            )
        )
        res.update(
            timed(
                "corruptions",
                lambda: bench_corruptions(sizes=sizes, images=images, progress=progress),
            )
        )
        res.update(timed("release_read", lambda: _release_read(sizes)))
        res["matmul_gflops"] = timed(
            "matmul", lambda: matmul_gflops(n=sizes.matmul_n, repeats=sizes.matmul_repeats)
        )
        res.update(
            timed(
                "precision",
                lambda: bench_precision(cfg=cfg, sizes=sizes, images=images, progress=progress),
            )
        )
        res["section_seconds"] = sections
        model = make_classifier(
            arch=sizes.arch, num_classes=sizes.num_classes, in_chans=sizes.channels
        )
        fwd = model_flops_per_image(model=model, sizes=sizes)
        res["forward_flops_per_image"] = fwd
        res["train_flops_per_image"] = 3.0 * fwd
        res["train_gflops"] = res["train_img_s"] * 3.0 * fwd / 1e9
        res["raw_train_gflops"] = res["raw_train_img_s"] * 3.0 * fwd / 1e9
        res["train_frac_of_peak"] = res["train_gflops"] / res["matmul_gflops"]
        res["raw_train_frac_of_peak"] = res["raw_train_gflops"] / res["matmul_gflops"]
        res.update(repro_seconds(outputs_dir))
    finally:
        torch.set_num_threads(old_threads)
    res["bench_seconds"] = time.perf_counter() - t_start
    res["loadavg_start"] = [round(v, 2) for v in load_start]
    res["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    res["sizes"] = {
        **asdict(sizes),
        "unlabeled_batch": sizes.unlabeled_batch,
        "batch": sizes.batch,
        "c_corruptions": len(CORRUPTIONS),
        "images": "synthetic smooth uint8 (8x8 noise upsampled + grain), in memory",
    }
    res["noise"] = asdict(cfg.noise)
    res["targets"] = dict(TARGETS) | TARGETS_PRECISION
    res["meets_targets"] = {k: bool(res[k] >= v) for k, v in res["targets"].items()}
    return res


def _release_read(sizes: BenchSizes) -> dict[str, Any]:
    from nsp.robustness.release_bench import bench_release_read

    quick = sizes.release_images < 64
    return bench_release_read(
        arch=sizes.release_arch,
        images=sizes.release_images,
        batch=16 if quick else 64,
        repeats=1 if quick else 3,
    )


def format_table(res: dict[str, Any]) -> str:
    """The result as one human-readable table (metric, value, target)."""
    s = res["sizes"]
    m = res["machine"]
    rows: list[tuple[str, str, str]] = []

    def add(key: str, fmt: str = "{:.1f}", note: str = "") -> None:
        v = res.get(key)
        txt = "null" if v is None else fmt.format(v)
        targets = res.get("targets", TARGETS)
        tgt = f">= {targets[key]:g}" if key in targets else ""
        if key in targets:
            tgt += "  ok" if res["meets_targets"][key] else "  MISS"
        rows.append((key + (f" ({note})" if note else ""), txt, tgt))

    add("raw_train_img_s", note=f"{s['arch']}, batch {s['labeled_batch']}+{s['unlabeled_batch']}")
    add("train_img_s", note="crop/flip + RandAugment + dropout + drop-path")
    add("train_ratio_vs_raw", "{:.3f}")
    add("train_ratio_vs_raw_paired", "{:.3f}", note="median of per-repeat ratios")
    for w in s["pil_workers"]:
        add(f"pil_pipeline_img_s_w{w}", note=f"PIL DataLoader, {w} workers")
    add("train_ratio_vs_pil", "{:.3f}", note=f"best PIL: {res['pil_best_workers']} workers")
    add("train_ratio_vs_pil_paired", "{:.3f}", note="median of per-repeat ratios")
    add("raw_ratio_vs_pil", "{:.3f}", note="ceiling of the ratio above: noise at zero cost")
    add("raw_infer_img_s", note=f"batch {s['infer_batch']}, {s['infer_images']} images")
    add("pseudo_label_img_s", note="predict_shards")
    add("pseudo_label_ratio_vs_raw", "{:.3f}")
    add("pseudo_label_ratio_vs_raw_paired", "{:.3f}", note="median of per-repeat ratios")
    add("pseudo_overhead_ms_per_image", "{:.4f}", note="predict_shards with a zero-cost model")
    add("pseudo_label_ratio_vs_raw_est", "{:.3f}", note="raw / (raw + overhead)")
    add(
        "c_set_ms_per_image", "{:.3f}", note=f"{s['c_images']} imgs x 19 x {len(s['c_severities'])}"
    )
    add("c_loop_ms_per_image", "{:.3f}", note=f"{s['c_loop_images']} imgs, per-image loop")
    add("corruption_speedup", "{:.1f}")
    rr = res.get("release_read_setup") or {}
    add("release_read_img_s", note=f"{rr.get('arch')} over 224-px JPEGs, decode+preprocess+forward")
    add("release_inmemory_img_s", note="same model, in-memory uint8")
    add("release_read_ratio", "{:.3f}")
    add("forward_flops_per_image", "{:.3e}")
    add("train_gflops", "{:.2f}")
    add("matmul_gflops", "{:.1f}", note=f"torch.mm {s['matmul_n']}^2 fp32")
    add("train_frac_of_peak", "{:.3f}")
    add("repro_seconds", "{:.0f}", note="recorded stage timings")
    if "auto_precision" in res:
        _precision_rows(res, rows)
    nb = res.get("noise_breakdown_ms", {})
    for k in ("gather", "crop_flip", "randaugment"):
        if f"{k}_ms" in nb:
            rows.append(
                (
                    f"noise: {k} ms/batch (all / 1 thread)",
                    f"{nb[k + '_ms']:.1f} / {nb[k + '_ms_1thread']:.1f}",
                    "",
                )
            )
    if "pil_dataset_ms" in nb:
        rows.append(
            ("noise: PIL crop/flip + RandAugment ms/batch", f"{nb['pil_dataset_ms']:.1f}", "")
        )
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    head = (
        f"nsp bench: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"load avg {res['loadavg_start'][0]:.2f} -> {res['loadavg_end'][0]:.2f}, "
        f"{res['bench_seconds']:.0f} s"
    )
    lines = [head, "-" * len(head)]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)


def _precision_rows(res: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    ok = res["meets_targets"].get("auto_vs_best_ratio")
    src = res["auto_source"]
    rows.append(("auto_precision (precision: auto's choice)", res["auto_precision"], f"({src})"))
    for p in ("fp32", "bf16"):
        rows.append((f"{p}_train_img_s (noised step)", f"{res[f'{p}_train_img_s']:.1f}", ""))
    rows.append(("auto_vs_best_ratio", f"{res['auto_vs_best_ratio']:.3f}",
                 ">= 0.95  " + ("ok" if ok else "MISS")))  # fmt: skip


def format_table_at_size(res: dict[str, Any]) -> str:
    """The ``nsp bench --size N`` result as a table (metric, value, target)."""
    s, m = res["sizes"], res["machine"]
    n = s["image_size"]
    rows: list[tuple[str, str, str]] = []
    for key, note in (
        (f"raw_train_img_s_{n}", f"{s['arch']}, {n}x{n}x{s['channels']}, batch {s['batch']}"),
        (f"train_img_s_{n}", "crop/flip + RandAugment + dropout + drop-path"),
        (f"pil_pipeline_img_s_{n}", f"best PIL DataLoader: {res['pil_best_workers']} workers"),
        (f"train_ratio_vs_raw_{n}", ""),
        (f"train_ratio_vs_pil_{n}", ""),
        (f"raw_ratio_vs_pil_{n}", "ceiling of the ratio above: noise at zero cost"),
    ):
        tgt = res["targets"].get(key)
        mark = (
            "" if tgt is None else f">= {tgt:g}  " + ("ok" if res["meets_targets"][key] else "MISS")
        )
        rows.append((key + (f" ({note})" if note else ""), f"{res[key]:.3f}", mark))
    for k, v in res["noise_breakdown_ms"].items():
        rows.append((f"noise: {k}", f"{v:.1f}", ""))
    _precision_rows(res, rows)
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    head = (f"nsp bench --size {n}: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
            f"{res['bench_seconds']:.0f} s")  # fmt: skip
    lines = [head, "-" * len(head)] + [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)
