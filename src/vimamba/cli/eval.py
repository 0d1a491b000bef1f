"""vimamba eval: top-1, top-5 and loss of a Vim checkpoint on a labelled image folder (or the digits).

--data is a folder of class folders, or a data root whose val/ holds them; 'digits' scores the built-in
held-out digits. A training checkpoint written by `vimamba train` brings its own model settings and
preprocessing; any other checkpoint (reference .pth, state dict, safetensors) is preprocessed as the
model's pretrained config says (crop_pct, interpolation, mean, std). Class folders are matched to outputs
in sorted order, as training reads them. Under torchrun every process scores its share.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import CLIError, add_model_kwargs_argument, checkpoint_num_classes, resolve_model_name

NAME = "eval"
HELP = "top-1/top-5 accuracy and loss of a checkpoint on labelled images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="class folders (DIR/CLASS/*.jpg or DIR/val/CLASS/*.jpg), or 'digits'")
    parser.add_argument("-m", "--model", metavar="NAME",
                        help="Vim variant; read from a training checkpoint, guessed from others when omitted")
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a vimamba training checkpoint, reference .pth, state dict or .safetensors")
    parser.add_argument("--use-ema", action="store_true", help="score the EMA weights of a training checkpoint")
    parser.add_argument("--img-size", type=int, default=None, metavar="SIZE", help="input size (default: the model's)")
    parser.add_argument("--crop-pct", type=float, default=None, metavar="X", help="override the model's crop_pct")
    parser.add_argument("--interpolation", default=None, metavar="MODE", help="override the model's interpolation")
    parser.add_argument("-b", "--batch-size", type=int, default=64, metavar="N", help="images per process per batch")
    parser.add_argument("-j", "--workers", type=int, default=4, metavar="N", help="data-loading processes")
    parser.add_argument("--device", default=None, metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    parser.add_argument("--strict-data", action="store_true", help="stop at an unreadable image instead of skipping it")
    add_model_kwargs_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _build(args: argparse.Namespace):
    """The model with its weights, and the evaluation preprocessing settings."""
    from timm.data import resolve_data_config

    from .. import create_model
    from ..models import guess_variant, load_checkpoint, read_checkpoint_file, unwrap_state_dict

    path = Path(args.checkpoint)
    raw = read_checkpoint_file(path)
    saved_config = raw.get("config") if isinstance(raw.get("config"), dict) else None
    kwargs = dict(args.model_kwargs)
    if saved_config is not None:  # a vimamba training checkpoint: its model settings and preprocessing
        name = resolve_model_name(args.model) if args.model else saved_config["model"]
        if args.model and name != resolve_model_name(saved_config["model"]):
            raise CLIError(f"checkpoint {path} holds a {saved_config['model']}, not a {name}")
        kwargs = {**saved_config.get("model_kwargs", {}), **kwargs}
        kwargs.setdefault("img_size", saved_config.get("img_size", 224))
        prep = dict(crop_pct=saved_config["crop_pct"], interpolation=saved_config["interpolation"],
                    mean=tuple(saved_config["mean"]), std=tuple(saved_config["std"]))
    else:
        prep = None
    if args.use_ema and not any(k in raw for k in ("model_ema", "state_dict_ema", "ema")):
        raise CLIError(f"--use-ema: checkpoint {path} holds no EMA weights")
    state_dict = unwrap_state_dict(raw, use_ema=args.use_ema)
    if saved_config is None:
        if args.model:
            name = resolve_model_name(args.model)
        else:
            name = guess_variant(state_dict)
            if name is None:
                raise CLIError(f"cannot tell which Vim variant {path} holds; pass --model NAME (and --model-kwargs)")
    num_classes = checkpoint_num_classes(state_dict)
    if num_classes == 0:
        raise CLIError(f"checkpoint {path} has no classifier head (no head.weight): it is a backbone")
    if args.img_size:
        kwargs["img_size"] = args.img_size
    del raw, state_dict
    try:
        model = create_model(name, num_classes=num_classes, weight_init="skip", **kwargs)
    except TypeError as err:
        raise CLIError(f"cannot build {name} with {kwargs}: {err}") from err
    load_checkpoint(model, path, use_ema=args.use_ema)
    if prep is None:
        cfg = resolve_data_config({"input_size": (3, *model.patch_embed.img_size)}, model=model)
        prep = dict(crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"])
    if args.crop_pct is not None:
        prep["crop_pct"] = args.crop_pct
    if args.interpolation is not None:
        prep["interpolation"] = args.interpolation
    return model, name, prep


def run(args: argparse.Namespace) -> int:
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    from ..data import DataError, EpochSampler, SeededTransformDataset, digits_split, folder_source
    from ..models import CheckpointError
    from ..train.distributed import cleanup, init_distributed
    from ..train.trainer import evaluate

    if args.batch_size < 1:
        raise CLIError("--batch-size must be at least 1")
    try:
        if args.data == "digits":
            source = digits_split("val")
        else:
            root = Path(args.data)
            if not root.exists():
                raise DataError(f"data folder not found: {root}")
            folder = next((root / n for n in ("val", "validation") if (root / n).is_dir()), root)
            source = folder_source(folder, strict=args.strict_data)
    except DataError as err:
        raise CLIError(err.short()) from err
    model, name, prep = _build(args)
    if model.num_classes != source.num_classes:
        raise CheckpointError(
            f"checkpoint {args.checkpoint} has {model.num_classes} classes but {args.data} has {source.num_classes} "
            f"class folders; evaluate it on data with the classes it was trained on")
    info = init_distributed(args.device)
    try:
        model = model.to(info.device)
        transform = create_transform(tuple(model.patch_embed.img_size), is_training=False, **prep)
        dataset = SeededTransformDataset(source, transform)
        sampler = EpochSampler(len(dataset), info.world_size, info.rank, shuffle=False, pad=False)
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                            pin_memory=info.device.type == "cuda")
        try:
            result = evaluate(model, loader, info, None, desc="eval", progress=not args.no_progress)
        except DataError as err:  # from a loader worker it arrives with the worker's traceback: cut it off
            raise CLIError(err.short()) from err
    finally:
        cleanup(info)
    if info.is_main:
        report = {"model": name, "checkpoint": str(args.checkpoint), "data": str(args.data),
                  "images": result["count"], "top1": result["top1"], "top5": result["top5"], "loss": result["loss"],
                  "preprocessing": {k: (list(v) if isinstance(v, tuple) else v) for k, v in prep.items()},
                  "ema": bool(args.use_ema)}
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"{name} on {args.data} ({result['count']} images): top-1 {100 * result['top1']:.2f}%, "
                  f"top-5 {100 * result['top5']:.2f}%, loss {result['loss']:.4f}")
    return 0
