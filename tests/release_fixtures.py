"""Miniature official releases in their exact layouts (ImageNet-C JPEG trees, ImageNet-P ``.mp4``
written with PyAV, ImageNet-A/-R wnid folders, CIFAR-10-C/-P ``.npy`` + ``labels.npy``) and a
fixed colour classifier whose logits a test can recompute by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nsp.robustness.corruptions import BENCHMARK_CORRUPTIONS
from nsp.robustness.release_protocols import REQUIRED_PERTURBATION_FOLDERS


def colour_images(values: np.ndarray, *, h: int, w: int, seed: int, spread: float = 40.0):
    """uint8 (n, h, w, 3) images: red channel = value + a random offset, green/blue noise."""
    rng = np.random.default_rng(seed)
    n = len(values)
    x = rng.integers(0, 256, size=(n, h, w, 3)).astype(np.float64)
    x[..., 0] = np.asarray(values)[:, None, None] + rng.normal(0, spread, size=(n, 1, 1))
    x[..., 0] += rng.normal(0, 8, size=(n, h, w))
    return x.clip(0, 255).astype(np.uint8)


def write_jpeg_tree(
    base: Path, classes: dict[str, float], *, per_class: int, h: int, w: int, seed: int
):
    for k, (wnid, value) in enumerate(sorted(classes.items())):
        d = base / wnid
        d.mkdir(parents=True, exist_ok=True)
        imgs = colour_images(np.full(per_class, value), h=h, w=w, seed=seed * 1000 + k)
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(
                d / f"ILSVRC2012_val_{seed:03d}{k:03d}{i:02d}.JPEG", quality=90
            )


def write_imagenet_c(
    root: Path, classes: dict[str, float], *, per_class: int = 2, size: int = 64, corruptions=None
) -> None:
    """``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` (the official release is 224 px)."""
    for ci, c in enumerate(corruptions or BENCHMARK_CORRUPTIONS):
        for s in range(1, 6):
            write_jpeg_tree(
                root / c / str(s), classes, per_class=per_class, h=size, w=size, seed=ci * 10 + s
            )


def write_video(path: Path, frames: np.ndarray, *, fps: int = 10) -> None:
    """uint8 (T, H, W, 3) -> an H.264 ``.mp4`` (yuv420p), as the ImageNet-P release ships."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for fr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_imagenet_p(
    root: Path, classes: dict[str, float], *, per_class: int = 1, frames: int = 5, size: int = 64
) -> None:
    """``<root>/<perturbation>/<wnid>/*.mp4``: sequences whose red level drifts frame to frame."""
    for pi, p in enumerate(REQUIRED_PERTURBATION_FOLDERS):
        for k, (wnid, value) in enumerate(sorted(classes.items())):
            for i in range(per_class):
                rng = np.random.default_rng(100 * pi + 10 * k + i)
                drift = value + np.cumsum(rng.normal(0, 30, size=frames))
                seq = colour_images(drift, h=size, w=size, seed=pi * 97 + k * 7 + i, spread=10)
                write_video(root / p / wnid / f"{wnid}_{i}.mp4", seq)


def read_video_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def write_cifar_c(root: Path, *, values: np.ndarray, labels: np.ndarray, corruptions=None) -> None:
    """``<root>/<corruption>.npy`` (5 severity blocks of n images) + ``labels.npy``."""
    root.mkdir(parents=True, exist_ok=True)
    for ci, c in enumerate(corruptions or BENCHMARK_CORRUPTIONS):
        blocks = [colour_images(values, h=32, w=32, seed=500 + ci * 5 + s) for s in range(5)]
        np.save(root / f"{c}.npy", np.concatenate(blocks))
    np.save(root / "labels.npy", np.tile(np.asarray(labels, dtype=np.int64), 5))


def write_cifar_p(root: Path, *, values: np.ndarray, frames: int = 6) -> None:
    """``<root>/<perturbation>.npy``: uint8 (n, T, 32, 32, 3)."""
    root.mkdir(parents=True, exist_ok=True)
    for pi, p in enumerate(REQUIRED_PERTURBATION_FOLDERS):
        rng = np.random.default_rng(700 + pi)
        seqs = [
            colour_images(v + np.cumsum(rng.normal(0, 30, frames)), h=32, w=32, seed=pi * 50 + j)
            for j, v in enumerate(values)
        ]
        np.save(root / f"{p}.npy", np.stack(seqs))


class ColourModel(torch.nn.Module):
    """Fixed classifier over ``num_classes`` columns: column ``c`` scores ``-(mean red - centre_c)^2``
    for the columns in ``centres``, every other column scores ``other`` (a constant)."""

    def __init__(self, num_classes: int, centres: dict[int, float], other: float = -1e4) -> None:
        super().__init__()
        table = torch.full((num_classes,), float("nan"))
        for c, v in centres.items():
            table[c] = v
        self.register_buffer("centres", table)
        self.other = other

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x.float()[:, 0].mean(dim=(1, 2))
        logits = -((red[:, None] - self.centres[None, :]) ** 2) / 100.0
        return torch.where(torch.isnan(logits), torch.full_like(logits, self.other), logits)


def logits_np(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.array(x, copy=True)).permute(0, 3, 1, 2)).numpy()
