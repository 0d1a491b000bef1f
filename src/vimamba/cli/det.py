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

from .common import CLIError, add_dataclass_arguments, dataclass_overrides

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
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples above on their own lines
    actions = parser.add_subparsers(dest="det_command", metavar="ACTION", required=True)
    for name, helptext, add, run_fn in (
        ("train", "train Vim + (Cascade) Mask R-CNN on COCO-format data", _train_arguments, _run_train),
        ("eval", "COCO box and mask AP (pycocotools) of a checkpoint", _eval_arguments, _run_eval),
        ("predict", "draw boxes, labels and masks on images; COCO-format JSON results", _predict_arguments,
         _run_predict),
    ):
        sub = actions.add_parser(name, help=helptext, description=helptext)
        add(sub)
        sub.set_defaults(_run=run_fn, _prog=sub.prog)  # errors then read "vimamba det train: error: ..."


def run(args: argparse.Namespace) -> int:
    try:
        import pycocotools  # noqa: F401 - masks (RLE) and COCO evaluation in every action
    except ImportError as err:
        raise CLIError("`vimamba det` needs pycocotools: pip install 'vimamba[det]' (or pip install pycocotools)") from err
    return args._run(args)


# ---- train ----------------------------------------------------------------------------------------------------
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..det.config import DET_PRESETS, DetConfig

    group = parser.add_argument_group("run")
    group.add_argument("--preset", default=None, metavar="NAME",
                       help=f"one of {', '.join(DET_PRESETS)} (default: coco-vim-ti)")
    group.add_argument("--config", default=None, metavar="YAML", help="settings file (keys as in config.yaml)")
    group.add_argument("-o", "--output", default=None, metavar="DIR",
                       help="run folder (default: runs/DATE-TIME-PRESET; a folder holding a run is not overwritten)")
    group.add_argument("--resume", default=None, metavar="PATH", help="continue a run: its folder or a last.pth")
    group.add_argument("--force", action="store_true", help="write over a run already in --output")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    settings = parser.add_argument_group("settings (default: the preset's; see config.yaml of a run)")
    add_dataclass_arguments(settings, DetConfig, HELPS, SHORT, SKIP)


def _run_train(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..det.config import DetConfig, resolve_det_config
    from ..det.train import TASK, train_det
    from ..train import checkpoint as ckpt
    from ..train.config import ConfigError
    from ..train.trainer import TrainingError

    overrides = dataclass_overrides(args, DetConfig, SKIP)
    try:
        if args.resume:
            path = ckpt.resolve_resume_path(args.resume)
            saved = ckpt.read_training_checkpoint(path)
            if saved.get("task") != TASK:
                raise CLIError(f"{path} is not a detection run's checkpoint; resume it with the command that wrote it")
            if args.preset:
                raise ConfigError("--preset cannot change on --resume (the run's saved config is used)")
            config = resolve_det_config(yaml_path=args.config, overrides=overrides, base=saved["config"])
            del saved
        else:
            config = resolve_det_config(args.preset, args.config, overrides)
        train_det(config, output=args.output, resume=args.resume, force=args.force, progress=not args.no_progress)
    except DataError as err:
        raise CLIError(err.short()) from err
    except (ConfigError, TrainingError) as err:
        raise CLIError(str(err)) from err
    return 0


# ---- loading a trained model -----------------------------------------------------------------------------------
def _common_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a `vimamba det train` checkpoint (last.pth/best.pth), or its .safetensors weights "
                             "(the run's config.yaml is read from beside them, or from --config)")
    parser.add_argument("--config", default=None, metavar="YAML", help="the run's config.yaml (for bare weights)")
    parser.add_argument("--score-thresh", type=float, default=None, metavar="X",
                        help="keep detections scoring at least X (default: the run's, 0.05)")
    parser.add_argument("--device", default=None, metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="auto: bf16 on GPUs that have it, fp32 on the CPU")


def load_trained(checkpoint: str, config_path: str | None, score_thresh: float | None = None):
    """(model with its weights, DetConfig, categories [{'id', 'name'}]) from a training checkpoint or bare weights
    + config.yaml."""
    import yaml

    from ..det.config import resolve_det_config
    from ..det.model import build_det_model
    from ..det.train import TASK
    from ..models import CheckpointError, read_checkpoint_file
    from ..train.config import ConfigError

    path = Path(checkpoint)
    raw = read_checkpoint_file(path)
    if "config" in raw and isinstance(raw.get("model"), dict):
        if raw.get("task") != TASK:
            raise CLIError(f"{path} is not a detection checkpoint; `vimamba det` needs one written by "
                           f"`vimamba det train`")
        saved_config, categories, state_dict = raw["config"], list(raw["categories"]), raw["model"]
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
        if resolved.get("task") != TASK or "categories" not in resolved:
            raise CLIError(f"{yaml_path} is not the config.yaml of a `vimamba det train` run")
        categories, state_dict = list(resolved["categories"]), raw.get("model", raw)
    if score_thresh is not None:
        if not 0 <= score_thresh <= 1:
            raise CLIError(f"--score-thresh must be between 0 and 1, got {score_thresh}")
        saved_config = dict(saved_config, score_thresh=score_thresh)
    try:
        config = resolve_det_config(base=saved_config)
    except ConfigError as err:
        raise CLIError(f"the run's settings do not resolve: {err}") from err
    model = build_det_model(config, len(categories), load_initial=False)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).splitlines()
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes: "
                              f"{'; '.join(s.strip() for s in first[:3])}") from err
    return model.eval(), config, categories


def _amp_dtype(choice: str, device):
    import torch

    if choice == "auto":
        if device.type != "cuda":
            return None
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[choice]


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
    from torch.utils.data import DataLoader

    from ..data import DataError, EpochSampler, SeededTransformDataset
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
        sampler = EpochSampler(len(dataset), info.world_size, info.rank, shuffle=False, pad=False)
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                            pin_memory=info.device.type == "cuda", collate_fn=collate)
        try:
            scores, results = evaluate_det(model, loader, info, _amp_dtype(args.amp, info.device), data,
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
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="where NAME_det.png (drawn detections) and detections.json (COCO results) go")
    _common_model_arguments(parser)
    parser.add_argument("--opacity", type=float, default=0.5, metavar="X", help="mask colour opacity (0-1)")
    parser.add_argument("--json", action="store_true", help="print the detections as JSON")


def _run_predict(args: argparse.Namespace) -> int:
    import torch
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from ..det.coco_eval import to_coco_results
    from ..seg.data import palette
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
    model, config, categories = load_trained(args.checkpoint, args.config, args.score_thresh)
    label_to_category = {i + 1: c["id"] for i, c in enumerate(categories)}
    names = {i + 1: c["name"] for i, c in enumerate(categories)}
    category_names = {c["id"]: c["name"] for c in categories}
    colours = palette(len(categories) + 1)
    device = resolve_device(args.device)
    dtype = _amp_dtype(args.amp, device)
    model = model.to(device)
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
