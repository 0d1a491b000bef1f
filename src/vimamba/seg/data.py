"""Segmentation data: ADE20K-layout folders, any folder of images with index-mask PNGs, and the transforms.

Layout (ADEChallengeData2016's): ``DATA/images/{training,validation}/NAME.jpg`` beside
``DATA/annotations/{training,validation}/NAME.png`` (``train``/``val`` also accepted). Without a class-name
file the folder is read as ADE20K: label 0 ("other") is ignored and 1..150 become classes 0..149. With
``DATA/classes.txt`` (one name a line, or the file ``class_names`` names) mask values 0..N-1 are the classes
as they are, and 255 marks pixels to ignore.

Training augmentation is mmsegmentation's ADE20K pipeline as the reference runs it: random rescale within
0.5-2.0 x (2048, 512) keeping the aspect ratio, a random 512 crop in which no class covers more than 75% of
the labelled pixels (up to 10 tries), horizontal flip, photometric distortion, normalisation, and padding
to the crop (label 255 in the padding). Evaluation rescales to fit (2048, 512) and keeps the labels at the
original size (scores are computed there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..data import DataError
from .metrics import IGNORE_INDEX

__all__ = [
    "ADE20K_CLASSES", "DATASETS", "SegSource", "load_split", "read_class_names", "rescale_size", "palette",
    "SegTrainTransform", "SegEvalTransform", "photometric_distortion", "check_image_sizes",
]

DATASETS = ("auto", "ade20k", "folder")
SPLIT_NAMES = {"train": ("training", "train"), "val": ("validation", "val")}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CLASS_FILE = "classes.txt"

# ADEChallengeData2016's 150 classes in label order (label i + 1 in the annotation files is class i).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


# ---- sources ------------------------------------------------------------------------------------------------
class SegSource:
    """``len`` (image, annotation) pairs; ``load(i) -> (RGB PIL image, uint8 label array)`` in class indices.

    Labels are checked on every load: a value that is neither a class nor ignored is an error naming the file
    (a silent wrong label would train and score the wrong thing).
    """

    def __init__(self, items: list[tuple[Path, Path]], classes: Sequence[str], name: str,
                 reduce_zero_label: bool = False):
        self.items = items
        self.classes = list(classes)
        self.name = name
        self.reduce_zero_label = reduce_zero_label

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_labels(self, index: int) -> np.ndarray:
        path = self.items[index][1]
        try:
            with Image.open(path) as mask:
                if mask.mode not in ("L", "P", "I", "I;16"):
                    raise DataError(f"annotation {path} is a {mask.mode} image; expected a single-channel index "
                                    f"PNG (mode L or P) whose pixel values are class numbers")
                raw = np.asarray(mask, dtype=np.int64)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - PIL fails with OSError, SyntaxError, ValueError, ...
            raise DataError(f"cannot read annotation {path}: {type(err).__name__}: {err}") from err
        if self.reduce_zero_label:  # ADE20K: 0 ("other") is ignored, 1..150 become 0..149
            labels = raw - 1
            labels[(raw == 0) | (raw == 255)] = IGNORE_INDEX
        else:
            labels = raw
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            values = sorted({int(v) for v in np.unique(raw[bad])})
            shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
            if self.reduce_zero_label:
                expected = (f"ADE20K labels are 0..{self.num_classes} (0 ignored); a folder with other classes "
                            f"needs a {CLASS_FILE}")
            else:
                expected = (f"the {self.num_classes} classes are 0..{self.num_classes - 1} and {IGNORE_INDEX} marks "
                            f"ignored pixels")
            raise DataError(f"annotation {path} holds label value(s) {shown} outside the class range: {expected}")
        return labels.astype(np.uint8)

    def load_image(self, index: int) -> Image.Image:
        path = self.items[index][0]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except Exception as err:  # noqa: BLE001
            raise DataError(f"cannot read image {path}: {type(err).__name__}: {err}") from err

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image, labels = self.load_image(index), self.load_labels(index)
        if labels.shape != (image.height, image.width):
            raise DataError(f"image {self.items[index][0]} is {image.width}x{image.height} but its annotation "
                            f"{self.items[index][1]} is {labels.shape[1]}x{labels.shape[0]}")
        return image, labels


def read_class_names(path: str | Path) -> list[str]:
    """One class name a line (blank lines skipped); line i names the mask value i."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class-name file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataError(f"class-name file {path} names no classes (expected one name a line)")
    if len(names) > IGNORE_INDEX:
        raise DataError(f"class-name file {path} names {len(names)} classes; at most {IGNORE_INDEX} fit "
                        f"(mask value {IGNORE_INDEX} marks ignored pixels)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"class-name file {path} names {dup!r} twice")
    return names


def _split_folder(root: Path, kind: str, split: str) -> Path:
    for name in SPLIT_NAMES[split]:
        if (root / kind / name).is_dir():
            return root / kind / name
    tried = " or ".join(f"{kind}/{n}" for n in SPLIT_NAMES[split])
    raise DataError(f"data folder {root} has no {tried} folder (expected images/{{training,validation}}/*.jpg "
                    f"and annotations/{{training,validation}}/*.png)")


def _by_name(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        key = rel.with_suffix("").as_posix()
        if key in found:
            raise DataError(f"{folder} holds two files named {key} ({found[key].name} and {path.name}); "
                            f"image and annotation are paired by name")
        found[key] = path
    return found


def _pair(images_dir: Path, ann_dir: Path) -> list[tuple[Path, Path]]:
    images = _by_name(images_dir, IMAGE_SUFFIXES)
    annotations = _by_name(ann_dir, (".png",))
    if not images:
        raise DataError(f"image folder {images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    lonely_images = [k for k in images if k not in annotations]
    lonely_masks = [k for k in annotations if k not in images]
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            k = lonely_images[0]
            parts.append(f"{len(lonely_images)} image(s) have no annotation (e.g. {images[k].name}: expected "
                         f"{ann_dir / (k + '.png')})")
        if lonely_masks:
            k = lonely_masks[0]
            parts.append(f"{len(lonely_masks)} annotation(s) have no image (e.g. {annotations[k].name} in {ann_dir})")
        raise DataError(f"images and annotations do not match by name: {'; '.join(parts)}")
    return [(images[k], annotations[k]) for k in sorted(images)]


def load_split(root: str | Path, split: str, dataset: str = "auto", class_names: str | Path | None = None
               ) -> SegSource:
    """The ``train`` or ``val`` split of a data folder, paired and checked (labels are checked as they load)."""
    if dataset not in DATASETS:
        raise DataError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"--data must be a folder (with images/ and annotations/), got file {root}")
    class_file = Path(class_names) if class_names else root / CLASS_FILE
    if dataset == "auto":
        dataset = "folder" if class_file.is_file() else "ade20k"
    if dataset == "folder":
        classes, reduce_zero_label = read_class_names(class_file), False
    else:
        classes, reduce_zero_label = ADE20K_CLASSES, True
    images_dir, ann_dir = _split_folder(root, "images", split), _split_folder(root, "annotations", split)
    return SegSource(_pair(images_dir, ann_dir), classes, str(images_dir), reduce_zero_label)


# ---- geometry -------------------------------------------------------------------------------------------------
def rescale_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's ``rescale_size``: the largest size with the image's aspect ratio whose long side fits ``max(scale)``
    and short side fits ``min(scale)`` (upscaling too), rounded to the nearest pixel."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _to_tv(image: Image.Image, labels: np.ndarray | None):
    img = tv_tensors.Image(TF.pil_to_tensor(image))
    mask = tv_tensors.Mask(torch.from_numpy(labels)) if labels is not None else None
    return img, mask


def _normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    image = TF.to_dtype(image, torch.float32, scale=True)
    return TF.normalize(image, list(mean), list(std)).as_subclass(torch.Tensor)


def _cat_ratio_crop(mask: torch.Tensor, crop: int, cat_max_ratio: float, tries: int = 10) -> tuple[int, int, int, int]:
    """mmseg's ``RandomCrop`` box: re-drawn (up to ``tries`` times) while one class covers ``cat_max_ratio`` or
    more of the crop's labelled pixels. torchvision's RandomCrop draws once and has no such cap."""
    height, width = mask.shape[-2:]
    crop_h, crop_w = min(crop, height), min(crop, width)

    def draw() -> tuple[int, int]:
        top = int(torch.randint(0, height - crop_h + 1, ()).item())
        left = int(torch.randint(0, width - crop_w + 1, ()).item())
        return top, left

    top, left = draw()
    if cat_max_ratio < 1.0:
        for _ in range(tries):
            window = mask[..., top:top + crop_h, left:left + crop_w]
            counts = torch.bincount(window.reshape(-1).long(), minlength=256)[:IGNORE_INDEX]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
                break
            top, left = draw()
    return top, left, crop_h, crop_w


# ---- photometric distortion -------------------------------------------------------------------------------------
def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) floats in [0, 1] to hue in degrees [0, 360), saturation and value in [0, 1]."""
    r, g, b = rgb.unbind(0)
    value, _ = rgb.max(0)
    low, _ = rgb.min(0)
    delta = value - low
    sat = torch.where(value > 0, delta / value.clamp(min=1e-12), torch.zeros_like(value))
    safe = delta.clamp(min=1e-12)
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(delta > 0, (hue * 60) % 360, torch.zeros_like(hue))
    return torch.stack([hue, sat, value])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, sat, value = hsv.unbind(0)
    k = lambda n: (n + hue / 60) % 6  # noqa: E731 - the standard closed form, one line per channel
    channel = lambda n: value - value * sat * (torch.minimum(k(n), 4 - k(n)).clamp(0, 1))  # noqa: E731
    return torch.stack([channel(5), channel(3), channel(1)])


def photometric_distortion(image: torch.Tensor, brightness_delta: float = 32, contrast: tuple[float, float] = (0.5, 1.5),
                           saturation: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> torch.Tensor:
    """mmsegmentation's ``PhotoMetricDistortion`` on a uint8 (3, H, W) image, drawing from torch's generator.

    Each step happens with probability 1/2: add a brightness offset in [-32, 32]; multiply by a contrast
    factor in [0.5, 1.5] (first or last, at random); multiply the HSV saturation by [0.5, 1.5]; shift the
    hue by [-18, 17] OpenCV units (2 degrees each). Values are clipped and truncated to uint8 after each, as
    there. Written here because torchvision's ``ColorJitter`` does other operations (multiplicative
    brightness, contrast and saturation blended towards grey), always applied.
    """
    def coin() -> bool:
        return bool(torch.randint(0, 2, ()).item())

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand(()).item()

    x = image.float()

    def affine(values: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
        return (values * alpha + beta).clamp(0, 255).floor()

    if coin():
        x = affine(x, beta=uniform(-brightness_delta, brightness_delta))
    contrast_first = coin()
    if contrast_first and coin():
        x = affine(x, alpha=uniform(*contrast))
    if coin():
        hsv = _rgb_to_hsv(x / 255)
        hsv[1] = (hsv[1] * uniform(*saturation)).clamp(0, 1)
        x = (_hsv_to_rgb(hsv) * 255).round().clamp(0, 255)
    if coin():
        hsv = _rgb_to_hsv(x / 255)
        hsv[0] = (hsv[0] + 2 * int(torch.randint(-hue_delta, hue_delta, ()).item())) % 360
        x = (_hsv_to_rgb(hsv) * 255).round().clamp(0, 255)
    if not contrast_first and coin():
        x = affine(x, alpha=uniform(*contrast))
    return x.to(torch.uint8)


# ---- the transforms -------------------------------------------------------------------------------------------
class SegTrainTransform:
    """(PIL image, uint8 labels) -> (normalised float (3, crop, crop), int64 labels (crop, crop)).

    ``img_scale=None`` skips the rescale (for data already at its working scale; ``check_image_sizes`` then
    makes sure every image can fill a crop).

    Resizing, flipping, cropping and padding go through torchvision's v2 functions on ``tv_tensors`` (masks are
    resized nearest-neighbour there); the random size rule and the capped crop are mmseg's, written out.
    """

    def __init__(self, crop_size: int = 512, img_scale: Sequence[int] | None = (2048, 512),
                 ratio_range: Sequence[float] | None = (0.5, 2.0), cat_max_ratio: float = 0.75, hflip: float = 0.5,
                 photometric: bool = True, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)):
        self.crop_size, self.ratio_range = crop_size, ratio_range
        self.img_scale = tuple(img_scale) if img_scale else None  # None: images keep their size
        self.cat_max_ratio, self.photometric = cat_max_ratio, photometric
        self.flip = v2.RandomHorizontalFlip(hflip)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = _to_tv(image, labels)
        if self.img_scale is not None:
            ratio = 1.0
            if self.ratio_range is not None:
                low, high = self.ratio_range
                ratio = low + (high - low) * torch.rand(()).item()
            # mmseg truncates the jittered scale to whole pixels before fitting the image into it
            scale = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))
            size = list(rescale_size(img.shape[-2], img.shape[-1], scale))
            # bilinear without antialiasing: what OpenCV's resize (the reference's) does when it shrinks
            img = TF.resize(img, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
            mask = TF.resize(mask, size)
        top, left, height, width = _cat_ratio_crop(mask, self.crop_size, self.cat_max_ratio)
        img, mask = TF.crop(img, top, left, height, width), TF.crop(mask, top, left, height, width)
        img, mask = self.flip(img, mask)
        if self.photometric:
            img = tv_tensors.Image(photometric_distortion(img))
        img = _normalize(img, self.mean, self.std)
        pad = [0, 0, self.crop_size - width, self.crop_size - height]  # right and bottom, as mmseg pads
        if pad[2] or pad[3]:
            img = TF.pad(img, pad, fill=0.0)
            mask = TF.pad(mask, pad, fill=IGNORE_INDEX)
        return img, mask.as_subclass(torch.Tensor).long()


class SegEvalTransform:
    """(PIL image, labels or None) -> (normalised image rescaled to fit ``img_scale``, labels at the original size)."""

    def __init__(self, img_scale: Sequence[int] | None = (2048, 512), mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)):
        self.img_scale = tuple(img_scale) if img_scale else None
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image, labels: np.ndarray | None = None):
        img, mask = _to_tv(image, labels)
        if self.img_scale is not None:
            size = list(rescale_size(img.shape[-2], img.shape[-1], self.img_scale))
            img = TF.resize(img, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
        img = _normalize(img, self.mean, self.std)
        if mask is None:
            return img, torch.empty(0, dtype=torch.long)
        return img, mask.as_subclass(torch.Tensor).long()


def check_image_sizes(source: SegSource, crop_size: int) -> None:
    """Every image at least ``crop_size`` on both sides (read from the file headers, no decoding)."""
    for image_path, _ in source.items:
        try:
            with Image.open(image_path) as image:
                width, height = image.size
        except Exception as err:  # noqa: BLE001
            raise DataError(f"cannot read image {image_path}: {type(err).__name__}: {err}") from err
        if width < crop_size or height < crop_size:
            raise DataError(f"image {image_path} is {width}x{height}, smaller than the {crop_size}x{crop_size} crop; "
                            f"without rescaling (img_scale none) every image must fill a crop: set --img-scale "
                            f"(e.g. {4 * crop_size} {crop_size}) or a smaller --crop-size")


def palette(num_classes: int) -> list[tuple[int, int, int]]:
    """A distinct colour per class: the PASCAL VOC colour map (bits of the class index spread over R, G, B)."""
    colours = []
    for index in range(num_classes):
        r = g = b = 0
        c = index + 1  # class 0 would be black, the colour of "nothing" in an overlay
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return colours

