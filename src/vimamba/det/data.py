"""COCO-format detection data: an annotation JSON and an image folder, checked entry by entry, and ViTDet's
large-scale-jitter augmentation on torchvision's v2 transforms.

``load_coco(ann, images)`` reads and checks the file (every problem names its entry: the image or annotation id,
the file name), maps the category ids to contiguous labels 1..K (0 is the background, torchvision's order), and
keeps a copy of the file as pycocotools reads it for evaluation (``area`` and ``iscrowd`` filled in where absent).
``CocoSource`` serves (image, target) pairs for ``data.SeededTransformDataset``: in training only images with
objects, without crowd regions (as detectron2 does); targets hold ``boxes`` (x1, y1, x2, y2), ``labels`` and
``masks`` (N, H, W) from polygons or RLE.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data import DataError

__all__ = ["CocoData", "CocoSource", "LargeScaleJitter", "EvalTransform", "load_coco", "collate", "decode_mask"]

BOX_TOLERANCE = 1.0  # pixels a box may reach past the image edge (rounding in converted data sets); clipped


@dataclass
class CocoData:
    path: Path
    image_dir: Path
    images: list[dict[str, Any]]                # as in the file, in its order
    annotations: dict[int, list[dict[str, Any]]]  # image id -> its annotations
    categories: list[dict[str, Any]]            # sorted by id
    coco_dict: dict[str, Any]                   # the file with area/iscrowd filled in, for pycocotools

    @property
    def classes(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def label_to_category(self) -> dict[int, int]:
        return {i + 1: c["id"] for i, c in enumerate(self.categories)}

    @property
    def category_to_label(self) -> dict[int, int]:
        return {c["id"]: i + 1 for i, c in enumerate(self.categories)}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_segmentation(seg: Any, where: str, height: int, width: int) -> None:
    if isinstance(seg, list):
        if not seg:
            raise DataError(f"{where}: empty polygon list in 'segmentation'")
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(_number(v) for v in poly):
                raise DataError(f"{where}: polygon {k} must be a flat list of at least 3 x, y pairs of numbers")
    elif isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise DataError(f"{where}: an RLE 'segmentation' needs 'counts' and 'size'")
        if list(seg["size"]) != [height, width]:
            raise DataError(f"{where}: RLE size {seg['size']} does not match the image's height x width "
                            f"[{height}, {width}]")
        if not isinstance(seg["counts"], (list, str)):
            raise DataError(f"{where}: RLE 'counts' must be a list of run lengths or a compressed string")
    else:
        raise DataError(f"{where}: 'segmentation' must be a list of polygons or an RLE dict")


def load_coco(ann_path: str | Path, image_dir: str | Path, require_masks: bool = True) -> CocoData:
    """Read and check a COCO-format annotation file against its image folder."""
    ann_path, image_dir = Path(ann_path), Path(image_dir)
    if not ann_path.is_file():
        raise DataError(f"annotation file {ann_path} not found")
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} not found")
    try:
        raw = json.loads(ann_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{ann_path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise DataError(f"{ann_path} must hold a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            raise DataError(f"{ann_path}: '{key}' must be a list")
    name = ann_path.name

    if not raw["categories"]:
        raise DataError(f"{name}: 'categories' is empty; list the object classes as {{'id': ..., 'name': ...}}")
    categories: dict[int, dict[str, Any]] = {}
    for k, cat in enumerate(raw["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise DataError(f"{name}: category {k} needs an integer 'id' and a string 'name', got {cat!r}"[:300])
        if not cat["name"].strip():
            raise DataError(f"{name}: category id {cat['id']} has an empty name")
        if cat["id"] in categories:
            raise DataError(f"{name}: category id {cat['id']} appears twice")
        categories[cat["id"]] = cat

    images: dict[int, dict[str, Any]] = {}
    present = {p.name for p in image_dir.iterdir()}
    for k, img in enumerate(raw["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int):
            raise DataError(f"{name}: image entry {k} needs an integer 'id'")
        where = f"{name}: image id {img['id']}"
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise DataError(f"{where} needs a 'file_name'")
        if not all(isinstance(img.get(key), int) and img[key] > 0 for key in ("width", "height")):
            raise DataError(f"{where} ({img['file_name']}) needs positive integer 'width' and 'height'")
        if img["id"] in images:
            raise DataError(f"{where} appears twice")
        file_name = img["file_name"]
        # one listing of the folder instead of a stat per image (118k of them in COCO); subfolders are stat'ed
        if file_name not in present and not (image_dir / file_name).is_file():
            raise DataError(f"{where}: image file {image_dir / file_name} not found")
        images[img["id"]] = img
    if not images:
        raise DataError(f"{name}: 'images' is empty")

    per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    seen: set[Any] = set()
    coco_anns = []
    for k, ann in enumerate(raw["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{name}: annotation {k} is not an object")
        where = f"{name}: annotation id {ann.get('id', f'(entry {k})')}"
        if "id" in ann:
            if ann["id"] in seen:
                raise DataError(f"{where} appears twice")
            seen.add(ann["id"])
        image = images.get(ann.get("image_id"))
        if image is None:
            raise DataError(f"{where} refers to image id {ann.get('image_id')!r}, which is not in 'images'")
        where += f" (image id {image['id']}, {image['file_name']})"
        if ann.get("category_id") not in categories:
            raise DataError(f"{where} has category_id {ann.get('category_id')!r}, which is not in 'categories'")
        box = ann.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
            raise DataError(f"{where}: 'bbox' must be [x, y, width, height], got {box!r}")
        x, y, w, h = box
        width, height = image["width"], image["height"]
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: bbox {box} has no area (width and height must be positive)")
        if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
            raise DataError(f"{where}: bbox {box} reaches outside the {width}x{height} image")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise DataError(f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r}")
        if "segmentation" in ann:
            _check_segmentation(ann["segmentation"], where, height, width)
        elif require_masks and not crowd:
            raise DataError(f"{where} has no 'segmentation'; instance segmentation needs a polygon or RLE mask per "
                            f"object")
        filled = dict(ann, iscrowd=crowd)
        if "area" not in filled:
            filled["area"] = float(_mask_area(ann, height, width)) if "segmentation" in ann else float(w * h)
        if "id" not in filled:
            filled["id"] = -(k + 1)  # pycocotools needs one; negative ones cannot clash with the file's
        coco_anns.append(filled)
        per_image[image["id"]].append(filled)
    coco_dict = {"images": list(images.values()), "annotations": coco_anns,
                 "categories": sorted(categories.values(), key=lambda c: c["id"])}
    if "info" in raw:
        coco_dict["info"] = copy.deepcopy(raw["info"])
    return CocoData(ann_path, image_dir, list(images.values()), per_image, coco_dict["categories"], coco_dict)


def _rle(segmentation: Any, height: int, width: int):
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}


def _mask_area(ann: dict[str, Any], height: int, width: int) -> float:
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(_rle(ann["segmentation"], height, width)))


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A polygon list or an RLE (compressed or not) as a (height, width) uint8 mask."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(_rle(segmentation, height, width)).astype(np.uint8)


class CocoSource:
    """``load(i) -> (PIL image, target)``, with the interface of ``data.ImageSource`` for the seeded loaders.

    Args:
        data: the checked file.
        train: keep only images with non-crowd objects and drop crowd regions (detectron2's training filter);
            otherwise every image, and targets only carry the image id (the model maps detections back itself).
    """

    def __init__(self, data: CocoData, train: bool):
        self.data = data
        self.train = train
        self.classes = data.classes
        self.name = str(data.path)
        self.cat_to_label = data.category_to_label
        images = data.images
        if train:
            images = [im for im in images if any(not a["iscrowd"] for a in data.annotations[im["id"]])]
            if not images:
                raise DataError(f"{data.path.name}: no image has a (non-crowd) object to train on")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int):
        info = self.images[index]
        path = self.data.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read image id {info['id']} ({path}): {err}") from err
        if image.size != (info["width"], info["height"]):
            raise DataError(f"image id {info['id']} ({path}) is {image.width}x{image.height} but "
                            f"{self.data.path.name} says {info['width']}x{info['height']}")
        target: dict[str, Any] = {"image_id": info["id"]}
        if not self.train:
            return image, target
        anns = [a for a in self.data.annotations[info["id"]] if not a["iscrowd"]]
        height, width = info["height"], info["width"]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for k, ann in enumerate(anns):
            if "segmentation" in ann:
                masks[k] = decode_mask(ann["segmentation"], height, width)
            else:  # box-only data: the box stands for the mask
                x1, y1, x2, y2 = boxes[k].round().int().tolist()
                masks[k, y1:y2, x1:x2] = 1
        target.update(boxes=boxes, labels=torch.tensor([self.cat_to_label[a["category_id"]] for a in anns],
                                                        dtype=torch.int64), masks=torch.from_numpy(masks))
        return image, target


class LargeScaleJitter:
    """ViTDet's training augmentation: flip, resize to ``size`` x a random factor in ``scale_range`` (keeping the
    aspect ratio, fitting the scaled square), a random crop of at most ``size`` x ``size``, and boxes that the
    crop left empty removed with their masks. torchvision's v2 transforms move boxes and masks with the image."""

    def __init__(self, size: int, scale_range: tuple[float, float] = (0.1, 2.0), hflip: float = 0.5):
        from torchvision.transforms import v2

        self.size = size
        self.flip = v2.RandomHorizontalFlip(hflip)
        self.jitter = v2.ScaleJitter((size, size), scale_range=tuple(scale_range), antialias=True)
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1.0)

    def __call__(self, image: Image.Image, target: dict[str, Any]):
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        sample = {
            "image": tv_tensors.Image(TF.pil_to_tensor(image)),
            "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(image.height, image.width)),
            "masks": tv_tensors.Mask(target["masks"]),
            "labels": target["labels"],
        }
        sample = self.jitter(self.flip(sample))
        height, width = sample["image"].shape[-2:]
        crop_h, crop_w = min(height, self.size), min(width, self.size)
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        for key in ("image", "boxes", "masks"):
            sample[key] = TF.crop(sample[key], top, left, crop_h, crop_w)
        sample = self.sanitize(sample)
        out = {"image_id": target["image_id"], "boxes": sample["boxes"].as_subclass(torch.Tensor).float(),
               "labels": sample["labels"], "masks": sample["masks"].as_subclass(torch.Tensor)}
        return TF.to_dtype(sample["image"], torch.float32, scale=True).as_subclass(torch.Tensor), out


class EvalTransform:
    """Evaluation and prediction: the image as a float tensor in [0, 1]; the model resizes it and maps back."""

    def __call__(self, image: Image.Image, target: dict[str, Any]):
        from torchvision.transforms.v2 import functional as TF

        return TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True), target


def collate(batch):
    """Detection batches are lists: images differ in size and targets in length."""
    images, targets = zip(*batch)
    return list(images), list(targets)
