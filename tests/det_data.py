"""A small COCO-format detection data set made from real photographs with objects drawn on them.

scikit-learn's two sample photographs (china.jpg, flower.jpg) are cut into crops; on each crop 1-3 filled
shapes of three categories are drawn (red rectangles, blue ellipses, yellow triangles) and annotated with their
boxes and masks: rectangles and triangles as polygons, ellipses as RLE (alternately compressed and as run-length
lists), so every mask encoding the loader reads is exercised. Category ids are deliberately not 1..K.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 3, "name": "rectangle"}, {"id": 7, "name": "ellipse"}, {"id": 11, "name": "triangle"}]
COLOURS = {3: (230, 30, 30), 7: (30, 60, 230), 11: (240, 220, 20)}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's run-length list (column-major, starting with a run of zeros)."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def _draw_object(draw: ImageDraw.ImageDraw, cat: int, box: tuple[int, int, int, int], ann_id: int, size):
    from pycocotools import mask as mask_utils

    x0, y0, x1, y1 = box
    width, height = size
    if cat == 3:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=COLOURS[cat])
        segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    elif cat == 11:
        points = [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
        draw.polygon(points, fill=COLOURS[cat])
        segmentation = [[float(v) for p in points for v in p]]
    else:
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=COLOURS[cat])
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).ellipse([x0, y0, x1 - 1, y1 - 1], fill=1)
        mask = np.asarray(canvas, dtype=np.uint8)
        if ann_id % 2:
            rle = mask_utils.encode(np.asfortranarray(mask))
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        else:
            segmentation = _uncompressed_rle(mask)
    return segmentation


def make_coco_dataset(root: Path, num_images: int = 8, size: int = 128, seed: int = 0,
                      val_same_as_train: bool = True) -> Path:
    """Write ``root/{train2017,val2017}/*.jpg`` and ``root/annotations/instances_{train,val}2017.json``.

    With ``val_same_as_train`` the validation split is the training split (an overfitting check).
    """
    from sklearn.datasets import load_sample_images

    rng = random.Random(seed)
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    root = Path(root)
    splits = ("train", "val")
    made: dict[str, dict] = {}
    for split in splits:
        if split == "val" and val_same_as_train:
            made["val"] = made["train"]
            continue
        images, annotations = [], []
        for index in range(num_images):
            photo = photos[index % len(photos)]
            w, h = size + rng.randrange(0, 33, 8), size - rng.randrange(0, 33, 8)  # not square, not the canvas
            left, top = rng.randrange(0, photo.width - 2 * w), rng.randrange(0, photo.height - 2 * h)
            image = photo.crop((left, top, left + 2 * w, top + 2 * h)).resize((w, h), Image.BILINEAR)
            draw = ImageDraw.Draw(image)
            image_id = 100 + index
            placed: list[tuple[int, int, int, int]] = []
            for _ in range(rng.randint(1, 3)):
                for _attempt in range(20):
                    bw, bh = rng.randint(22, 48), rng.randint(22, 48)
                    x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
                    box = (x0, y0, x0 + bw, y0 + bh)
                    if all(box[2] <= p[0] or box[0] >= p[2] or box[3] <= p[1] or box[1] >= p[3] for p in placed):
                        break
                else:
                    continue
                placed.append(box)
                cat = rng.choice(CATEGORIES)["id"]
                ann_id = len(annotations) + 1
                segmentation = _draw_object(draw, cat, box, ann_id, (w, h))
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": cat,
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                    "segmentation": segmentation, "iscrowd": 0})
            name = f"{split}_{index:03d}.jpg"
            folder = root / f"{split}2017"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        made[split] = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in splits:
        if split == "val" and val_same_as_train:
            folder = root / "val2017"
            folder.mkdir(parents=True, exist_ok=True)
            for entry in made["train"]["images"]:
                (folder / entry["file_name"]).write_bytes((root / "train2017" / entry["file_name"]).read_bytes())
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(made[split]))
    return root
