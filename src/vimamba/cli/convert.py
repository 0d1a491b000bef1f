"""vimamba convert: turn a reference checkpoint into a timm weight folder (config.json + model.safetensors).

The input may be a reference training checkpoint (.pth with the weights under 'model', beside optimizer state
and the run's arguments), a bare state dict or a .safetensors file. The variant is inferred from the tensor
shapes unless --model names it; the number of classes is the checkpoint's. The weights load strictly.
The folder then loads with vimamba.VisionMamba.from_pretrained(OUT) or, after `import vimamba`,
timm.create_model("local-dir:OUT", pretrained=True).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import create_model, list_models
from ..models import describe_state_dict, guess_variant, load_checkpoint, read_checkpoint_file, unwrap_state_dict
from ..models.hub import CONFIG_NAME, WEIGHTS_NAME, save_hub_folder
from .common import CLIError, add_model_kwargs_argument, checkpoint_num_classes, resolve_model_name

NAME = "convert"
HELP = "convert a reference .pth / state dict / .safetensors into a timm weight folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="checkpoint file (.pth, .pt, .bin or .safetensors)")
    parser.add_argument("output", metavar="OUT", help="folder to write config.json and model.safetensors into")
    parser.add_argument("-m", "--model", metavar="NAME",
                        help="Vim variant (short or reference name); inferred from the tensor shapes when omitted")
    parser.add_argument("--ema", "--use-ema", dest="ema", action="store_true",
                        help="convert the EMA weights stored in the checkpoint instead of the model's")
    parser.add_argument("--img-size", type=int, default=None, metavar="SIZE",
                        help="write the model for this input size, resampling the position embedding (default: 224)")
    add_model_kwargs_argument(parser)
    parser.add_argument("-f", "--force", action="store_true", help="overwrite a weight folder that exists")


def _training_args_model(checkpoint: dict) -> str | None:
    """The model name the reference training run recorded (its argparse.Namespace ``args.model``), if any."""
    name = getattr(checkpoint.get("args"), "model", None)
    return name if isinstance(name, str) else None


def _human_size(num_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return ""


def run(args: argparse.Namespace) -> int:
    src, out = Path(args.input), Path(args.output)
    name = resolve_model_name(args.model) if args.model else None
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out} is a file; OUT must be a folder (it is created if missing)")
    existing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if (out / f).exists()]
    if existing and not args.force:
        raise CLIError(f"{out} already holds {' and '.join(existing)}; pass --force to overwrite")

    checkpoint = read_checkpoint_file(src)
    try:
        state_dict = unwrap_state_dict(checkpoint, use_ema=args.ema)
    except KeyError as err:
        raise CLIError(f"{src}: {err.args[0]}") from err
    if name is None:
        name = guess_variant(state_dict)
        if name is None:
            recorded = _training_args_model(checkpoint)
            hint = f" (its training arguments say model={recorded})" if recorded else ""
            raise CLIError(
                f"cannot tell which Vim variant {src} holds{hint}: {describe_state_dict(state_dict)}; "
                f"pass --model NAME, one of {', '.join(list_models())}")
    kwargs = dict(args.model_kwargs)
    kwargs.setdefault("num_classes", checkpoint_num_classes(state_dict))
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size
    kwargs.setdefault("weight_init", "skip")
    del checkpoint, state_dict

    model = create_model(name, **kwargs)
    load_checkpoint(model, src, strict=True, use_ema=args.ema)
    save_hub_folder(model, out)

    params = sum(p.numel() for p in model.parameters())
    size = "x".join(str(s) for s in model.patch_embed.img_size)
    print(f"converted {src}{' (EMA weights)' if args.ema else ''}: {name}, {model.num_classes} classes, "
          f"{params / 1e6:.2f}M parameters, {size} input")
    for file in (CONFIG_NAME, WEIGHTS_NAME):
        print(f"  wrote {out / file} ({_human_size((out / file).stat().st_size)})")
    print(f"load it with vimamba.VisionMamba.from_pretrained({str(out)!r}), "
          f"or timm.create_model('local-dir:{out}', pretrained=True) after import vimamba")
    return 0
