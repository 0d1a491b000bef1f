"""Data for training and evaluation: the built-in digits set, class folders, and resumable loaders."""

from .datasets import DataError, ImageSource, digits_split, folder_source, resolve_split_folder
from .loader import EpochSampler, SeededTransformDataset, aug_seed, epoch_loader

__all__ = [
    "DataError",
    "EpochSampler",
    "ImageSource",
    "SeededTransformDataset",
    "aug_seed",
    "digits_split",
    "epoch_loader",
    "folder_source",
    "resolve_split_folder",
]
