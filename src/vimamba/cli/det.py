"""vimamba det: object detection and instance segmentation with Vim + Cascade Mask R-CNN (the paper's COCO
setup, ViTDet-style, on torchvision's detection parts): train, eval, predict.

Data: COCO format, an annotation JSON and an image folder per split. --data DIR reads COCO's layout
(DIR/annotations/instances_{train,val}2017.json, DIR/{train,val}2017/); --train-ann/--train-images/--val-ann/
--val-images name them one by one.

  vimamba det train --data coco --initial-checkpoint vim_t_midclstok_76p1acc.pth
  vimamba det eval --val-ann coco/annotations/instances_val2017.json --val-images coco/val2017 --checkpoint runs/.../best.pth
  vimamba det predict photo.jpg --checkpoint runs/.../best.pth -o out/
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

NAME = "det"
HELP = "object detection and instance segmentation with Vim + Cascade Mask R-CNN: train, eval, predict"

HELPS = {
    "data": "COCO-layout folder (annotations/instances_{train,val}2017.json, {train,val}2017/)",
    "train_ann": "training annotation file (COCO format; default: from --data)",
    "train_images": "training image folder (default: from --data)",
    "val_ann": "validation annotation file (COCO format; default: from --data)",
    "val_images": "validation image folder (default: from --data)",
    "model": "Vim variant; --model-kwargs changes its sizes",
    "architecture": "cascade_mask_rcnn (the paper's) or mask_rcnn",
    "img_size": "square canvas images are padded to (1024 in the paper); the LSJ crop size",
    "initial_checkpoint": "ImageNet weights for the backbone: a vimamba checkpoint or a released .pth",
    "pretrained": "download the released ImageNet weights of --model instead",
    "batch_size": "total batch over all processes",
    "lr_steps": "iterations at which the lr drops by lr-gamma",
    "scale_range": "large-scale jitter: random factor range on img-size",
    "best_metric": "bbox_AP or segm_AP: which validation score picks best.pth",
    "amp": "auto (bf16 on GPUs that have it, fp16 on others, fp32 on the CPU), bf16, fp16 or fp32",
}
SHORT = {"batch_size": "-b", "model": "-m", "workers": "-j"}
SKIP = {"preset"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_actions(parser, "det_command", [
        ("train", "train Vim + (Cascade) Mask R-CNN on COCO-format data", _train_arguments, _run_train),
        ("eval", "COCO box and mask AP (pycocotools) of a checkpoint", _eval_arguments, _run_eval),
        ("predict", "draw boxes, labels and masks on images; COCO-format JSON results", _predict_arguments,
         _run_predict),
    ])


def run(args: argparse.Namespace) -> int:
    try:
        import pycocotools  # noqa: F401 - masks (RLE) and COCO evaluation in every action
    except ImportError as err:
        raise CLIError("`vimamba det` needs pycocotools: pip install 'vimamba[det]' (or pip install pycocotools)") from err
    return args._run(args)


# ---- train ----------------------------------------------------------------------------------------------------
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..det.config import DET_PRESETS, DetConfig

    add_train_arguments(parser, DET_PRESETS, "coco-vim-ti", DetConfig, HELPS, SHORT, SKIP)


def _run_train(args: argparse.Namespace) -> int:
    from ..det.config import DetConfig, resolve_det_config
    from ..det.train import TASK, train_det

    return run_train(args, DetConfig, SKIP, resolve_det_config, train_det, TASK,
                     "is not a detection run's checkpoint; resume it with the command that wrote it")


# ---- loading a trained model -----------------------------------------------------------------------------------
def _common_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser, NAME)
    parser.add_argument("--score-thresh", type=float, default=None, metavar="X",
                        help="keep detections scoring at least X (default: the run's, 0.05)")
    add_device_arguments(parser)


def load_trained(checkpoint: str, config_path: str | None, score_thresh: float | None = None):
    """(model with its weights, DetConfig, categories [{'id', 'name'}]) from a training checkpoint or bare weights
    + config.yaml."""
    from ..det.config import resolve_det_config
    from ..det.model import build_det_model
    from ..det.train import TASK

    path, saved_config, categories, state_dict = read_trained_run(checkpoint, config_path, TASK, NAME, "categories",
                                                                  "is not a detection checkpoint")
    if score_thresh is not None:
        if not 0 <= score_thresh <= 1:
            raise CLIError(f"--score-thresh must be between 0 and 1, got {score_thresh}")
        saved_config = dict(saved_config, score_thresh=score_thresh)
    model, config = rebuild_trained_model(path, saved_config, state_dict, len(categories), resolve_det_config,
                                          build_det_model)
    return model, config, categories


# ---- eval -----------------------------------------------------------------------------------------------------
def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, metavar="DIR", help="COCO-layout folder (its val split is scored)")
    parser.add_argument("--ann", default=None, metavar="FILE", help="annotation file to score against "
                        "(default: DATA/annotations/instances_val2017.json)")
    parser.add_argument("--images", default=None, metavar="DIR", help="its image folder (default: DATA/val2017)")
    _common_model_arguments(parser)
    parser.add_argument("-b", "--batch-size", type=int, default=1, metavar="N", help="images a forward pass")
    parser.add_argument("-j", "--workers", type=int, default=4, metavar="N", help="data-loading processes")
    parser.add_argument("--results", default=None, metavar="FILE", help="also write the detections (COCO result JSON)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_eval(args: argparse.Namespace) -> int:
    from ..data import DataError, SeededTransformDataset
    from ..det.data import CocoSource, EvalTransform, collate, load_coco
    from ..det.train import evaluate_det
    from ..train.distributed import cleanup, init_distributed

    if args.ann is None or args.images is None:
        if args.data is None:
            raise CLIError("give the data to score: --data DIR (COCO layout) or --ann FILE and --images DIR")
    ann = Path(args.ann) if args.ann else Path(args.data) / "annotations" / "instances_val2017.json"
    images = Path(args.images) if args.images else Path(args.data) / "val2017"
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, config, categories = load_trained(args.checkpoint, args.config, args.score_thresh)
    try:
        data = load_coco(ann, images)
    except DataError as err:
        raise CLIError(err.short()) from err
    if [c["id"] for c in data.categories] != [c["id"] for c in categories]:
        raise CLIError(f"checkpoint {args.checkpoint} was trained on the categories "
                       f"{[c['name'] for c in categories]}, but {ann} lists {data.classes}")
    info = init_distributed(args.device)
    try:
        model = model.to(info.device)
        dataset = SeededTransformDataset(CocoSource(data, train=False), EvalTransform(), joint=True)
        loader = evaluation_loader(dataset, info, args.batch_size, args.workers, collate_fn=collate)
        try:
            scores, results = evaluate_det(model, loader, info, amp_dtype(args.amp, info.device), data,
                                           progress=not args.no_progress)
        except DataError as err:
            raise CLIError(err.short()) from err
    finally:
        cleanup(info)
    if not info.is_main:
        return 0
    if args.results:
        Path(args.results).write_text(json.dumps(results))
    report = {"checkpoint": str(args.checkpoint), "annotations": str(ann), "images": len(data.images),
              "detections": len(results), **scores}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'':6}" + "".join(f"{m:>8}" for m in scores[next(iter(scores))]))
    for iou_type, values in scores.items():
        print(f"{iou_type:6}" + "".join("     n/a" if v is None else f"{100 * v:8.2f}" for v in values.values()))
    print(f"{config.model} + {config.architecture} on {ann} ({len(data.images)} images, {len(results)} detections)")
    return 0


# ---- predict --------------------------------------------------------------------------------------------------
def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    add_predict_arguments(parser, "where NAME_det.png (drawn detections) and detections.json (COCO results) go",
                          _common_model_arguments, "mask colour opacity (0-1)", "print the detections as JSON")


def _run_predict(args: argparse.Namespace) -> int:
    import torch
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from ..det.coco_eval import to_coco_results
    from ..seg.data import palette
    from .predict import load_image

    paths = predict_inputs(args)
    model, config, categories = load_trained(args.checkpoint, args.config, args.score_thresh)
    label_to_category = {i + 1: c["id"] for i, c in enumerate(categories)}
    names = {i + 1: c["name"] for i, c in enumerate(categories)}
    category_names = {c["id"]: c["name"] for c in categories}
    colours = palette(len(categories) + 1)
    model, device, dtype = model_on_device(model, args)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    images_json: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for image_id, path in enumerate(paths, start=1):
        image = load_image(path)
        tensor = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = {k: v.cpu() for k, v in model([tensor.to(device)])[0].items()}
        detections = to_coco_results(output, image_id, label_to_category)
        for entry in detections:
            entry["category_name"] = category_names[entry["category_id"]]
        results += detections
        images_json.append({"id": image_id, "file_name": str(path), "width": image.width, "height": image.height})
        drawn = TF.pil_to_tensor(image)
        labels = output["labels"].tolist()
        if len(labels):
            if "masks" in output:
                drawn = draw_segmentation_masks(drawn, output["masks"][:, 0] > 0.5, alpha=args.opacity,
                                                colors=[colours[c] for c in labels])
            captions = [f"{names[c]} {s:.2f}" for c, s in zip(labels, output["scores"].tolist())]
            drawn = draw_bounding_boxes(drawn, output["boxes"], labels=captions, colors=[colours[c] for c in labels],
                                        width=2)
        drawn_path = out_dir / f"{path.stem}_det.png"
        TF.to_pil_image(drawn).save(drawn_path)
        if not args.json:
            counts: dict[str, int] = {}
            for c in labels:
                counts[names[c]] = counts.get(names[c], 0) + 1
            shown = ", ".join(f"{n} x{k}" for n, k in sorted(counts.items(), key=lambda kv: -kv[1])) or "nothing"
            print(f"{path}: {shown} -> {drawn_path}")
    results_path = out_dir / "detections.json"
    # COCO result entries (image ids as in images.json beside them, which maps them to the files)
    results_path.write_text(json.dumps(results))
    (out_dir / "images.json").write_text(json.dumps({"images": images_json, "categories": categories}))
    if args.json:
        print(json.dumps({"images": images_json, "detections": results}, indent=2))
    else:
        print(f"{len(results)} detections in {len(paths)} images -> {results_path}")
    return 0
