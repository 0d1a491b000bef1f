"""Where images come from: scikit-learn's handwritten digits (built in) and class folders (timm's reader).

A source is a list of (image, target) that it can load one at a time, with the class names; the transform
is applied later, by ``SeededTransformDataset``, so augmentation can be replayed exactly on resume.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

__all__ = ["DataError", "ImageSource", "digits_split", "folder_source", "resolve_split_folder"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0   # the held-out split is fixed: the same 360 images whatever the training seed


class DataError(ValueError):
    """Data the run cannot use: a missing or empty folder, a class without images, an unreadable image."""

    def short(self) -> str:
        """The message alone, also when a loader worker re-raised it with the worker's traceback inside."""
        text = str(self).strip()
        if "Traceback" in text:
            text = text.splitlines()[-1]
            text = text.split("DataError:", 1)[-1].strip()
        return text


class ImageSource:
    """``len`` items, ``load(i) -> (PIL image, target)``; unreadable files are skipped with a warning.

    ``strict=True`` makes an unreadable file fatal. Skipping substitutes the next readable item, so the
    batch keeps its size and the order stays a function of the index alone.
    """

    def __init__(self, items: list, loader: Callable, classes: list[str], name: str, strict: bool = False):
        self.items = items
        self._loader = loader
        self.classes = classes
        self.name = name
        self.strict = strict
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def targets(self) -> list[int]:
        return [int(t) for _, t in self.items]

    def load(self, index: int):
        for attempt in range(len(self.items)):
            i = (index + attempt) % len(self.items)
            item, target = self.items[i]
            try:
                return self._loader(item), int(target)
            except Exception as err:  # noqa: BLE001 - PIL fails with OSError, SyntaxError, ValueError, ...
                message = f"cannot read image {item}: {type(err).__name__}: {err}"
                if self.strict:
                    raise DataError(message + " (--strict-data)") from err
                if i not in self._warned:
                    self._warned.add(i)
                    print(f"warning: skipping unreadable image {item} ({type(err).__name__}: {err})",
                          file=sys.stderr, flush=True)
        raise DataError(f"no readable image in {self.name}")


# ---- scikit-learn digits --------------------------------------------------------------------------------------
def _digit_image(pixels: np.ndarray) -> Image.Image:
    """An 8x8 digit (values 0..16) as an RGB image; the transform upsamples it."""
    gray = np.clip(pixels.reshape(8, 8) * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def digits_split(split: str) -> ImageSource:
    """The train (1437 images) or val (360 images) part of the digits, a fixed stratified split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise DataError("the built-in digits data set needs scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    index = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(
        index, test_size=DIGITS_VAL_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=digits.target)
    chosen = np.sort(train_idx if split == "train" else val_idx)
    items = [(i, int(digits.target[i])) for i in chosen]
    images = digits.images

    def load(i):
        return _digit_image(images[i])

    return ImageSource(items, load, [str(d) for d in range(10)], f"digits/{split}")


# ---- class folders --------------------------------------------------------------------------------------------
def resolve_split_folder(root: str | Path, split: str) -> Path:
    """``root/split`` (``val`` also found as ``validation``); ``root`` itself for evaluation of a flat folder."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"--data must be a folder (with train/ and val/ class folders), got file {root}")
    names = (split, "validation") if split == "val" else (split,)
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"data folder {root} has no {split}/ folder (expected {root}/train/CLASS/*.jpg and "
                    f"{root}/val/CLASS/*.jpg)")


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def folder_source(folder: Path, strict: bool = False, class_to_idx: dict[str, int] | None = None) -> ImageSource:
    """A class-folder data set (``folder/CLASS/**/image``) through timm's folder reader, checked first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"data folder {folder} is empty: it needs one sub-folder of images per class")
    for class_dir in class_dirs:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in class_dir.rglob("*")):
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    from timm.data.readers.reader_image_folder import find_images_and_targets

    samples, found = find_images_and_targets(str(folder), types=IMAGE_SUFFIXES, class_to_idx=class_to_idx)
    if class_to_idx is not None:
        extra = sorted(set(p.name for p in class_dirs) - set(class_to_idx))
        if extra:
            raise DataError(f"{folder} has classes that the training data does not: {', '.join(extra[:5])}")
    classes = [name for name, _ in sorted(found.items(), key=lambda kv: kv[1])]
    return ImageSource(list(samples), _open_rgb, classes, str(folder), strict=strict)
