"""vimamba predict: top-k classes of images, with ImageNet names for 1000-class models.

Weights come from --checkpoint (a reference .pth, a state dict, a .safetensors file, or a folder written by
`vimamba convert` / save_pretrained) or --pretrained (the released weights, from the Hugging Face Hub).
Images are preprocessed as the model's pretrained config says (resize by crop_pct, bicubic, center crop,
ImageNet mean and std). Folders are expanded to the image files inside them, recursively, in sorted order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from .. import create_model, list_models
from ..models import VisionMamba, guess_variant, read_checkpoint_file, unwrap_state_dict
from .common import CLIError, add_model_kwargs_argument, checkpoint_num_classes, resolve_device, resolve_model_name

NAME = "predict"
HELP = "classify images with a Vim checkpoint"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PROGRESS_MIN_IMAGES = 5  # show a progress bar from this many images on


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("-m", "--model", metavar="NAME",
                        help="Vim variant (short or reference name); inferred from --checkpoint when omitted")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", metavar="PATH",
                         help="weights: .pth/.pt/.bin, .safetensors, or a weight folder "
                              "(config.json + model.safetensors)")
    weights.add_argument("--pretrained", action="store_true",
                         help="download the released weights of --model from the Hugging Face Hub")
    parser.add_argument("--topk", type=int, default=5, metavar="K", help="classes to show per image (default: 5)")
    parser.add_argument("--img-size", type=int, default=None, metavar="SIZE",
                        help="input size (default: the model's, 224); the position embedding is resampled")
    parser.add_argument("-b", "--batch-size", type=int, default=8, metavar="N", help="images per forward (default: 8)")
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_model_kwargs_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")


def expand_images(args: list[str]) -> list[Path]:
    """Image paths from the arguments: files as given, folders expanded to the image files inside (sorted)."""
    images: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise CLIError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise CLIError(f"image not found: {path}")
    return images


def load_image(path: Path) -> Image.Image:
    """The image as RGB, upright (EXIF orientation applied); a ``CLIError`` naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL's decoders fail with OSError, SyntaxError, ValueError, ...
        raise CLIError(f"cannot read image {path}: {err}") from err


def _hub_unreachable(err: Exception) -> bool:
    """Whether a failure to build a pretrained model is about getting the file (network, Hub, cache)."""
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, ConnectionError, TimeoutError)):
        return True
    return type(err).__module__.split(".")[0] in ("requests", "httpx", "urllib3", "httpcore")


def build_model(args: argparse.Namespace) -> tuple[VisionMamba, str]:
    """The model with its weights, and a description of where they came from."""
    kwargs = dict(args.model_kwargs)
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size
    name = resolve_model_name(args.model) if args.model else None

    if args.pretrained:
        if name is None:
            raise CLIError("--pretrained needs --model NAME (which variant's released weights to download)")
        try:
            model = create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - sorted below: network failures get advice, the rest propagate
            if not _hub_unreachable(err):
                raise
            raise CLIError(
                f"could not download the pretrained weights of {name}: the Hugging Face Hub could not be reached "
                f"({type(err).__name__}); download the .pth file elsewhere and pass it with --checkpoint FILE") from err
        return model, f"pretrained {name}"

    if args.checkpoint is None:
        raise CLIError(
            "no weights given: pass --checkpoint FILE (a .pth, .safetensors or weight folder) or --pretrained "
            "(the released weights); a randomly initialised model predicts nothing")
    path = Path(args.checkpoint)
    if path.is_dir():
        model = VisionMamba.from_pretrained(path, **kwargs)
        return model, str(path)
    state_dict = unwrap_state_dict(read_checkpoint_file(path))
    if name is None:
        name = guess_variant(state_dict)
        if name is None:
            raise CLIError(
                f"cannot tell which Vim variant {path} holds; pass --model NAME "
                f"(one of {', '.join(list_models())})")
    kwargs.setdefault("num_classes", checkpoint_num_classes(state_dict))
    if kwargs["num_classes"] == 0:
        raise CLIError(f"checkpoint {path} has no classifier head (no head.weight): it is a backbone, not a classifier")
    del state_dict
    return create_model(name, checkpoint_path=path, **kwargs), str(path)


def run(args: argparse.Namespace) -> int:
    import timm.data

    if args.topk < 1:
        raise CLIError("--topk must be at least 1")
    if args.batch_size < 1:
        raise CLIError("--batch-size must be at least 1")
    device = resolve_device(args.device)
    images = expand_images(args.images)
    model, source = build_model(args)
    model = model.to(device).eval()

    # The pretrained cfg's preprocessing at the size the model was built for (--img-size, or a weight folder's).
    data_config = timm.data.resolve_data_config(
        {"input_size": (model.patch_embed.in_chans, *model.patch_embed.img_size)}, model=model)
    transform = timm.data.create_transform(**data_config)
    num_classes = model.num_classes
    names = timm.data.ImageNetInfo() if num_classes == 1000 else None
    k = min(args.topk, num_classes)

    predictions = []
    with tqdm(total=len(images), unit="img", disable=len(images) < PROGRESS_MIN_IMAGES, file=sys.stderr) as bar:
        for start in range(0, len(images), args.batch_size):
            batch = images[start:start + args.batch_size]
            inputs = torch.stack([transform(load_image(p)) for p in batch]).to(device)
            with torch.inference_mode():
                probs = model(inputs).float().softmax(dim=-1)
            top_p, top_i = probs.topk(k, dim=-1)
            for path, ps, idx in zip(batch, top_p.tolist(), top_i.tolist()):
                predictions.append({"image": str(path), "topk": [
                    {"index": i, "label": names.index_to_description(i) if names else None, "probability": p}
                    for p, i in zip(ps, idx)]})
            bar.update(len(batch))

    if args.json:
        arch = model.pretrained_cfg.get("architecture") if hasattr(model, "pretrained_cfg") else None
        print(json.dumps({"model": arch, "weights": source, "num_classes": num_classes,
                          "input_size": list(data_config["input_size"]), "predictions": predictions}, indent=2))
        return 0
    for pred in predictions:
        print(pred["image"])
        for entry in pred["topk"]:
            label = f"{entry['label']} ({entry['index']})" if entry["label"] else f"class {entry['index']}"
            print(f"  {100 * entry['probability']:6.2f}%  {label}")
    return 0
