"""vimamba seg: semantic segmentation with Vim + UperNet (the paper's ADE20K setup): train, eval, predict.

Data: a folder with images/{training,validation}/NAME.jpg and annotations/{training,validation}/NAME.png.
Without classes.txt it is read as ADE20K (label 0 ignored, 1..150 the classes); with DATA/classes.txt (one
name a line) mask values 0..N-1 are the classes and 255 is ignored.

  vimamba seg train --data ADEChallengeData2016 --initial-checkpoint vim_t_midclstok_76p1acc.pth
  vimamba seg eval --data ADEChallengeData2016 --checkpoint runs/.../best.pth
  vimamba seg predict photo.jpg --checkpoint runs/.../best.pth -o out/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import CLIError, add_dataclass_arguments, dataclass_overrides

NAME = "seg"
HELP = "semantic segmentation with Vim + UperNet: train, eval, predict"

HELPS = {
    "data": "folder with images/ and annotations/ (ADE20K, or any with a classes.txt)",
    "dataset": "auto (folder when there is a class-name file, else ade20k), ade20k or folder",
    "class_names": "class-name file, one name a line (default: DATA/classes.txt)",
    "model": "Vim variant; --model-kwargs changes its sizes",
    "out_indices": "the four blocks whose features make the pyramid",
    "feature": "mixer (each block's mixer output, as the reference) or norm (the normalised residual stream)",
    "initial_checkpoint": "ImageNet weights for the backbone: a vimamba checkpoint or a released .pth",
    "pretrained": "download the released ImageNet weights of --model instead",
    "batch_size": "total batch over all processes",
    "layer_decay_mode": "reference (as the reference's optimiser really applies it: embeddings only) or layerwise",
    "img_scale": "rescale target LONG SHORT before cropping and for evaluation ('none': keep image sizes)",
    "ratio_range": "random factor range on img_scale in training ('none': no jitter)",
    "eval_mode": "slide (crop-sized windows every slide-stride pixels) or whole",
    "avg_non_ignore": "average the loss over labelled pixels only (default: over all, as mmseg 0.29)",
    "amp": "auto (bf16 on GPUs that have it, fp16 on others, fp32 on the CPU), bf16, fp16 or fp32",
}
SHORT = {"batch_size": "-b", "model": "-m", "workers": "-j"}
SKIP = {"preset"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples above on their own lines
    actions = parser.add_subparsers(dest="seg_command", metavar="ACTION", required=True)
    for name, helptext, add, run_fn in (
        ("train", "train Vim + UperNet on segmentation data", _train_arguments, _run_train),
        ("eval", "mIoU, mAcc, aAcc and per-class IoU of a checkpoint", _eval_arguments, _run_eval),
        ("predict", "colour overlays and index masks (PNG) for images", _predict_arguments, _run_predict),
    ):
        sub = actions.add_parser(name, help=helptext, description=helptext)
        add(sub)
        sub.set_defaults(_run=run_fn, _prog=sub.prog)  # errors then read "vimamba seg train: error: ..."


def run(args: argparse.Namespace) -> int:
    return args._run(args)


# ---- train ----------------------------------------------------------------------------------------------------
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..seg.config import SEG_PRESETS, SegConfig

    group = parser.add_argument_group("run")
    group.add_argument("--preset", default=None, metavar="NAME",
                       help=f"one of {', '.join(SEG_PRESETS)} (default: ade20k-vim-ti)")
    group.add_argument("--config", default=None, metavar="YAML", help="settings file (keys as in config.yaml)")
    group.add_argument("-o", "--output", default=None, metavar="DIR",
                       help="run folder (default: runs/DATE-TIME-PRESET; a folder holding a run is not overwritten)")
    group.add_argument("--resume", default=None, metavar="PATH", help="continue a run: its folder or a last.pth")
    group.add_argument("--force", action="store_true", help="write over a run already in --output")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    settings = parser.add_argument_group("settings (default: the preset's; see config.yaml of a run)")
    add_dataclass_arguments(settings, SegConfig, HELPS, SHORT, SKIP)


def _run_train(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..seg.config import SegConfig, resolve_seg_config
    from ..seg.train import TASK, train_seg
    from ..train import checkpoint as ckpt
    from ..train.config import ConfigError
    from ..train.trainer import TrainingError

    overrides = dataclass_overrides(args, SegConfig, SKIP)
    try:
        if args.resume:
            path = ckpt.resolve_resume_path(args.resume)
            saved = ckpt.read_training_checkpoint(path)
            if saved.get("task") != TASK:
                raise CLIError(f"{path} is not a segmentation run's checkpoint; resume it with `vimamba train`")
            if args.preset:
                raise ConfigError("--preset cannot change on --resume (the run's saved config is used)")
            config = resolve_seg_config(yaml_path=args.config, overrides=overrides, base=saved["config"])
            del saved
        else:
            config = resolve_seg_config(args.preset, args.config, overrides)
        train_seg(config, output=args.output, resume=args.resume, force=args.force, progress=not args.no_progress)
    except DataError as err:
        raise CLIError(err.short()) from err
    except (ConfigError, TrainingError) as err:
        raise CLIError(str(err)) from err
    return 0


# ---- loading a trained model -----------------------------------------------------------------------------------
def _common_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a `vimamba seg train` checkpoint (last.pth/best.pth), or its .safetensors weights "
                             "(the run's config.yaml is read from beside them, or from --config)")
    parser.add_argument("--config", default=None, metavar="YAML", help="the run's config.yaml (for bare weights)")
    parser.add_argument("--mode", choices=("slide", "whole"), default=None,
                        help="inference: sliding windows or the whole image (default: the run's eval_mode)")
    parser.add_argument("--stride", type=int, default=None, metavar="N", help="slide stride (default: the run's)")
    parser.add_argument("--img-scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                        help="rescale images to fit LONG x SHORT first (default: the run's img_scale)")
    parser.add_argument("--device", default=None, metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="auto: bf16 on GPUs that have it, fp32 on the CPU")


def load_trained(checkpoint: str, config_path: str | None):
    """(model with its weights, SegConfig, class names) from a training checkpoint or bare weights + config.yaml."""
    import yaml

    from ..models import CheckpointError, read_checkpoint_file
    from ..seg.config import resolve_seg_config
    from ..seg.model import build_seg_model
    from ..seg.train import TASK
    from ..train.config import ConfigError

    path = Path(checkpoint)
    raw = read_checkpoint_file(path)
    if "config" in raw and isinstance(raw.get("model"), dict):
        if raw.get("task") != TASK:
            raise CLIError(f"{path} is a classification checkpoint; `vimamba seg` needs one written by "
                           f"`vimamba seg train`")
        saved_config, classes, state_dict = raw["config"], list(raw["classes"]), raw["model"]
    else:
        yaml_path = Path(config_path) if config_path else path.parent / "config.yaml"
        if not yaml_path.is_file():
            raise CLIError(f"{path} holds bare weights and there is no {yaml_path} beside it; pass the run's "
                           f"config.yaml with --config")
        try:
            saved_config = yaml.safe_load(yaml_path.read_text()) or {}
        except yaml.YAMLError as err:
            raise CLIError(f"cannot parse {yaml_path}: {str(err).splitlines()[0]}") from err
        resolved = saved_config.pop("resolved", None) or {}
        if resolved.get("task") != TASK or "classes" not in resolved:
            raise CLIError(f"{yaml_path} is not the config.yaml of a `vimamba seg train` run")
        classes, state_dict = list(resolved["classes"]), raw.get("model", raw)
    try:
        config = resolve_seg_config(base=saved_config)
    except ConfigError as err:
        raise CLIError(f"the run's settings do not resolve: {err}") from err
    model = build_seg_model(config, len(classes), load_initial=False)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).splitlines()
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes: "
                              f"{'; '.join(s.strip() for s in first[:3])}") from err
    return model.eval(), config, classes


def _amp_dtype(choice: str, device):
    import torch

    if choice == "auto":
        if device.type != "cuda":
            return None
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[choice]


# ---- eval -----------------------------------------------------------------------------------------------------
def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="data folder (images/ and annotations/)")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="which split to score (default: val)")
    parser.add_argument("--dataset", choices=("auto", "ade20k", "folder"), default=None,
                        help="how to read --data (default: the run's setting)")
    parser.add_argument("--class-names", default=None, metavar="FILE", help="class-name file (default: DATA/classes.txt)")
    _common_model_arguments(parser)
    parser.add_argument("-j", "--workers", type=int, default=4, metavar="N", help="data-loading processes")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from ..data import DataError, EpochSampler, SeededTransformDataset
    from ..seg.data import SegEvalTransform, load_split
    from ..seg.train import evaluate_seg
    from ..train.distributed import cleanup, init_distributed

    model, config, classes = load_trained(args.checkpoint, args.config)
    try:
        source = load_split(args.data, args.split, args.dataset or config.dataset, args.class_names)
    except DataError as err:
        raise CLIError(err.short()) from err
    if source.num_classes != len(classes):
        raise CLIError(f"checkpoint {args.checkpoint} predicts {len(classes)} classes but {args.data} has "
                       f"{source.num_classes}; evaluate it on data with the classes it was trained on")
    mode = args.mode or config.eval_mode
    stride = args.stride or config.slide_stride
    if not 1 <= stride <= config.crop_size:
        raise CLIError(f"--stride must be between 1 and the crop size {config.crop_size}, got {stride}")
    img_scale = tuple(args.img_scale) if args.img_scale else config.img_scale
    info = init_distributed(args.device)
    try:
        model = model.to(info.device)
        dataset = SeededTransformDataset(source, SegEvalTransform(img_scale, config.mean, config.std), joint=True)
        sampler = EpochSampler(len(dataset), info.world_size, info.rank, shuffle=False, pad=False)
        loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=args.workers,
                            pin_memory=info.device.type == "cuda")
        try:
            scores = evaluate_seg(model, loader, info, _amp_dtype(args.amp, info.device), classes, mode,
                                  config.crop_size, stride, progress=not args.no_progress)
        except DataError as err:
            raise CLIError(err.short()) from err
    finally:
        cleanup(info)
    if not info.is_main:
        return 0
    report = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split, "images": len(source),
              "mode": mode, "crop_size": config.crop_size, "stride": stride,
              "img_scale": list(img_scale) if img_scale else None,
              "mIoU": scores["mIoU"], "mAcc": scores["mAcc"], "aAcc": scores["aAcc"],
              "per_class": [{"class": c, "iou": i, "acc": a}
                            for c, i, a in zip(scores["classes"], scores["iou"], scores["acc"])]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    width = max(len(c) for c in classes)
    print(f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}")
    for row in report["per_class"]:
        def pct(v):
            return "   n/a" if v is None else f"{100 * v:6.2f}"
        print(f"{row['class']:<{width}}  {pct(row['iou'])}  {pct(row['acc'])}")
    print(f"{config.model} on {args.data} ({args.split}, {len(source)} images, {mode}): mIoU {100 * scores['mIoU']:.2f}%, "
          f"mAcc {100 * scores['mAcc']:.2f}%, aAcc {100 * scores['aAcc']:.2f}%")
    return 0


# ---- predict --------------------------------------------------------------------------------------------------
def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="where NAME_mask.png (class index per pixel) and NAME_overlay.png go")
    _common_model_arguments(parser)
    parser.add_argument("--opacity", type=float, default=0.5, metavar="X", help="overlay colour opacity (0-1)")
    parser.add_argument("--json", action="store_true", help="print what was written, with class areas, as JSON")


def _run_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_segmentation_masks

    from ..seg.data import SegEvalTransform, palette
    from ..seg.inference import predict
    from .common import resolve_device
    from .predict import expand_images, load_image

    if not 0 <= args.opacity <= 1:
        raise CLIError(f"--opacity must be between 0 and 1, got {args.opacity}")
    paths = expand_images(args.images)
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise CLIError(f"two images are named {path.stem} ({stems[path.stem]} and {path}); their outputs would "
                           f"overwrite each other: predict them into separate --output folders")
        stems[path.stem] = path
    model, config, classes = load_trained(args.checkpoint, args.config)
    if len(classes) > 256:
        raise CLIError(f"{len(classes)} classes do not fit an 8-bit index mask")
    device = resolve_device(args.device)
    dtype = _amp_dtype(args.amp, device)
    model = model.to(device)
    mode = args.mode or config.eval_mode
    stride = args.stride or config.slide_stride
    if not 1 <= stride <= config.crop_size:
        raise CLIError(f"--stride must be between 1 and the crop size {config.crop_size}, got {stride}")
    transform = SegEvalTransform(tuple(args.img_scale) if args.img_scale else config.img_scale, config.mean, config.std)
    colours = palette(len(classes))
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for path in paths:
        image = load_image(path)
        tensor, _ = transform(image)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = predict(model, tensor[None].to(device), (image.height, image.width), mode, len(classes),
                           config.crop_size, stride)[0].cpu()
        mask_path, overlay_path = out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png"
        Image.fromarray(pred.numpy().astype(np.uint8), mode="L").save(mask_path)
        present = pred.unique().tolist()
        overlay = draw_segmentation_masks(TF.pil_to_tensor(image), torch.stack([pred == c for c in present]),
                                          alpha=args.opacity, colors=[colours[c] for c in present])
        TF.to_pil_image(overlay).save(overlay_path)
        total = pred.numel()
        areas = sorted(((classes[c], (pred == c).sum().item() / total) for c in present), key=lambda kv: -kv[1])
        results.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                        "classes": {name: round(share, 6) for name, share in areas}})
        if not args.json:
            shown = ", ".join(f"{name} {100 * share:.1f}%" for name, share in areas[:5])
            print(f"{path}: {shown}{', ...' if len(areas) > 5 else ''} -> {mask_path}, {overlay_path}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0
