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

from .common import CLIError
from .dense import (add_actions, add_checkpoint_arguments, add_device_arguments, add_predict_arguments,
                    add_train_arguments, amp_dtype, evaluation_loader, model_on_device, predict_inputs,
                    read_trained_run, rebuild_trained_model, run_train)

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
    add_actions(parser, "seg_command", [
        ("train", "train Vim + UperNet on segmentation data", _train_arguments, _run_train),
        ("eval", "mIoU, mAcc, aAcc and per-class IoU of a checkpoint", _eval_arguments, _run_eval),
        ("predict", "colour overlays and index masks (PNG) for images", _predict_arguments, _run_predict),
    ])


def run(args: argparse.Namespace) -> int:
    return args._run(args)


# ---- train ----------------------------------------------------------------------------------------------------
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..seg.config import SEG_PRESETS, SegConfig

    add_train_arguments(parser, SEG_PRESETS, "ade20k-vim-ti", SegConfig, HELPS, SHORT, SKIP)


def _run_train(args: argparse.Namespace) -> int:
    from ..seg.config import SegConfig, resolve_seg_config
    from ..seg.train import TASK, train_seg

    return run_train(args, SegConfig, SKIP, resolve_seg_config, train_seg, TASK,
                     "is not a segmentation run's checkpoint; resume it with `vimamba train`")


# ---- loading a trained model -----------------------------------------------------------------------------------
def _common_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser, NAME)
    parser.add_argument("--mode", choices=("slide", "whole"), default=None,
                        help="inference: sliding windows or the whole image (default: the run's eval_mode)")
    parser.add_argument("--stride", type=int, default=None, metavar="N", help="slide stride (default: the run's)")
    parser.add_argument("--img-scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                        help="rescale images to fit LONG x SHORT first (default: the run's img_scale)")
    add_device_arguments(parser)


def load_trained(checkpoint: str, config_path: str | None):
    """(model with its weights, SegConfig, class names) from a training checkpoint or bare weights + config.yaml."""
    from ..seg.config import resolve_seg_config
    from ..seg.model import build_seg_model
    from ..seg.train import TASK

    path, saved_config, classes, state_dict = read_trained_run(checkpoint, config_path, TASK, NAME, "classes",
                                                               "is a classification checkpoint")
    model, config = rebuild_trained_model(path, saved_config, state_dict, len(classes), resolve_seg_config,
                                          build_seg_model)
    return model, config, classes


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
    from ..data import DataError, SeededTransformDataset
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
        loader = evaluation_loader(dataset, info, 1, args.workers)
        try:
            scores = evaluate_seg(model, loader, info, amp_dtype(args.amp, info.device), classes, mode,
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
    add_predict_arguments(parser, "where NAME_mask.png (class index per pixel) and NAME_overlay.png go",
                          _common_model_arguments, "overlay colour opacity (0-1)",
                          "print what was written, with class areas, as JSON")


def _run_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_segmentation_masks

    from ..seg.data import SegEvalTransform, palette
    from ..seg.inference import predict
    from .predict import load_image

    paths = predict_inputs(args)
    model, config, classes = load_trained(args.checkpoint, args.config)
    if len(classes) > 256:
        raise CLIError(f"{len(classes)} classes do not fit an 8-bit index mask")
    model, device, dtype = model_on_device(model, args)
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
