"""Data layer: dataset sources (IDX, CIFAR pickles, ImageFolder), ``prepare_splits`` and split loading."""

from nsp.data.prepare import prepare_splits, stratified_split
from nsp.data.sources import KNOWN_DATASETS
from nsp.data.splits import SPLITS, Split, load_split, load_unlabeled_truth, read_manifest

__all__ = [
    "KNOWN_DATASETS",
    "SPLITS",
    "Split",
    "load_split",
    "load_unlabeled_truth",
    "prepare_splits",
    "read_manifest",
    "stratified_split",
]
