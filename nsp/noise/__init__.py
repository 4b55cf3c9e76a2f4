"""Input noise for the student: batched per-sample RandAugment, crop/flip, cutout."""

from nsp.noise.randaugment import (
    ALL_OPS,
    OFFICIAL_32PX_OPS,
    OFFICIAL_OPS,
    RandAugmentBatch,
    level_to_arg,
    random_crop_flip,
    random_cutout,
    warp_affine,
)

__all__ = [
    "ALL_OPS",
    "OFFICIAL_32PX_OPS",
    "OFFICIAL_OPS",
    "RandAugmentBatch",
    "level_to_arg",
    "random_crop_flip",
    "random_cutout",
    "warp_affine",
]
