"""Small segmentation data sets for the seg tests: real photographs (scikit-learn's two sample images) with masks
derived from the pixels' colours, in the ADE20K layout (images/ and annotations/ per split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("blue", "green", "red", "other")
TILES = ((0, 0), (0, 96), (64, 0), (64, 96))  # 64x96 tiles of each photograph scaled to 192x128


def colour_labels(pixels: np.ndarray) -> np.ndarray:
    """Class per pixel from its colour: blue-ish, green-ish, red-ish, anything else."""
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    labels = np.full(r.shape, 3, dtype=np.uint8)
    labels[(b > r + 10) & (b >= g)] = 0
    labels[(g > r) & (g > b)] = 1
    labels[(r > g + 30) & (r > b + 10)] = 2
    return labels


def photo_tiles() -> list[tuple[str, np.ndarray]]:
    from sklearn.datasets import load_sample_images

    tiles = []
    for name, photo in zip(("china", "flower"), load_sample_images().images):
        small = np.asarray(Image.fromarray(photo).resize((192, 128), Image.BILINEAR))
        for i, (top, left) in enumerate(TILES):
            tiles.append((f"{name}_{i}", small[top:top + 64, left:left + 96]))
    return tiles


def make_seg_data(root: Path, ade20k: bool = False, ignore_rows: int = 2) -> Path:
    """The same 8 tiles in training/ and validation/ (the tests overfit). The top ``ignore_rows`` rows are ignored:
    value 255 with a classes.txt, or value 0 in ADE20K's convention (where class i is stored as i + 1)."""
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for name, tile in photo_tiles():
        labels = colour_labels(tile)
        if ade20k:
            labels = labels + 1
            labels[:ignore_rows] = 0
        else:
            labels[:ignore_rows] = 255
        for split in ("training", "validation"):
            Image.fromarray(tile).save(root / "images" / split / f"{name}.png")  # PNG: colours stay exact
            Image.fromarray(labels, mode="L").save(root / "annotations" / split / f"{name}.png")
    if not ade20k:
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root
