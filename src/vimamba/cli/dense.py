"""What the dense-prediction command groups (``vimamba seg``, ``vimamba det``) share: the train/eval/predict
actions, the run flags of ``train`` and its resume rules, reading a trained run back (checkpoint, or bare weights
with the run's config.yaml), the device and precision flags, and the checks ``predict`` makes on its input.

Each group keeps its own flags, messages' task words and reports; the helpers take them as arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from .common import CLIError, add_dataclass_arguments, dataclass_overrides

__all__ = [
    "add_actions",
    "add_train_arguments",
    "run_train",
    "add_checkpoint_arguments",
    "add_device_arguments",
    "read_trained_run",
    "rebuild_trained_model",
    "amp_dtype",
    "evaluation_loader",
    "add_predict_arguments",
    "predict_inputs",
    "model_on_device",
]

Action = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def add_actions(parser: argparse.ArgumentParser, dest: str, actions: list[Action]) -> None:
    """One sub-command per (name, help, add its arguments, run it); ``main`` calls ``args._run(args)``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the module docstring's examples as written
    subparsers = parser.add_subparsers(dest=dest, metavar="ACTION", required=True)
    for name, helptext, add, run_fn in actions:
        sub = subparsers.add_parser(name, help=helptext, description=helptext)
        add(sub)
        sub.set_defaults(_run=run_fn, _prog=sub.prog)  # errors then read "vimamba GROUP train: error: ..."


# ---- train ----------------------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser, presets, default_preset: str, config_cls,
                        helps: dict[str, str], short: dict[str, str], skip: set[str]) -> None:
    """The run flags (preset, settings file, output, resume, force, progress), then one flag per setting."""
    group = parser.add_argument_group("run")
    group.add_argument("--preset", default=None, metavar="NAME",
                       help=f"one of {', '.join(presets)} (default: {default_preset})")
    group.add_argument("--config", default=None, metavar="YAML", help="settings file (keys as in config.yaml)")
    group.add_argument("-o", "--output", default=None, metavar="DIR",
                       help="run folder (default: runs/DATE-TIME-PRESET; a folder holding a run is not overwritten)")
    group.add_argument("--resume", default=None, metavar="PATH", help="continue a run: its folder or a last.pth")
    group.add_argument("--force", action="store_true", help="write over a run already in --output")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    settings = parser.add_argument_group("settings (default: the preset's; see config.yaml of a run)")
    add_dataclass_arguments(settings, config_cls, helps, short, skip)


def run_train(args: argparse.Namespace, config_cls, skip: set[str], resolve_config, train_fn, task: str,
              not_this_task: str) -> int:
    """Resolve the settings (on ``--resume`` from the run's saved config, which the preset cannot change) and
    train; every user-fixable failure becomes a one-line ``CLIError``. ``not_this_task`` follows the path in the
    message for a checkpoint of another task."""
    from ..data import DataError
    from ..train import checkpoint as ckpt
    from ..train.config import ConfigError
    from ..train.trainer import TrainingError

    overrides = dataclass_overrides(args, config_cls, skip)
    try:
        if args.resume:
            path = ckpt.resolve_resume_path(args.resume)
            saved = ckpt.read_training_checkpoint(path)
            if saved.get("task") != task:
                raise CLIError(f"{path} {not_this_task}")
            if args.preset:
                raise ConfigError("--preset cannot change on --resume (the run's saved config is used)")
            config = resolve_config(yaml_path=args.config, overrides=overrides, base=saved["config"])
            del saved  # the optimiser state and weights: the training loop reads them again, once
        else:
            config = resolve_config(args.preset, args.config, overrides)
        train_fn(config, output=args.output, resume=args.resume, force=args.force, progress=not args.no_progress)
    except DataError as err:
        raise CLIError(err.short()) from err
    except (ConfigError, TrainingError) as err:
        raise CLIError(str(err)) from err
    return 0


# ---- loading a trained model ----------------------------------------------------------------------------------
def add_checkpoint_arguments(parser: argparse.ArgumentParser, group: str) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help=f"a `vimamba {group} train` checkpoint (last.pth/best.pth), or its .safetensors weights "
                             "(the run's config.yaml is read from beside them, or from --config)")
    parser.add_argument("--config", default=None, metavar="YAML", help="the run's config.yaml (for bare weights)")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="auto: bf16 on GPUs that have it, fp32 on the CPU")


def read_trained_run(checkpoint: str, config_path: str | None, task: str, group: str, labels_key: str,
                     not_this_task: str) -> tuple[Path, dict[str, Any], list, dict[str, Any]]:
    """(path, the run's saved settings, its ``labels_key`` entry, the weights) from a training checkpoint of
    ``task``, or from bare weights and the run's config.yaml (``config_path``, or the one beside them)."""
    import yaml

    from ..models import read_checkpoint_file

    path = Path(checkpoint)
    raw = read_checkpoint_file(path)
    if "config" in raw and isinstance(raw.get("model"), dict):
        if raw.get("task") != task:
            raise CLIError(f"{path} {not_this_task}; `vimamba {group}` needs one written by `vimamba {group} train`")
        return path, raw["config"], list(raw[labels_key]), raw["model"]
    yaml_path = Path(config_path) if config_path else path.parent / "config.yaml"
    if not yaml_path.is_file():
        raise CLIError(f"{path} holds bare weights and there is no {yaml_path} beside it; pass the run's "
                       f"config.yaml with --config")
    try:
        saved_config = yaml.safe_load(yaml_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise CLIError(f"cannot parse {yaml_path}: {str(err).splitlines()[0]}") from err
    resolved = saved_config.pop("resolved", None) or {}
    if resolved.get("task") != task or labels_key not in resolved:
        raise CLIError(f"{yaml_path} is not the config.yaml of a `vimamba {group} train` run")
    return path, saved_config, list(resolved[labels_key]), raw.get("model", raw)


def rebuild_trained_model(path: Path, saved_config: dict[str, Any], state_dict: dict[str, Any], num_classes: int,
                          resolve_config, build_model):
    """(model in eval mode with the run's weights, its config) from what ``read_trained_run`` read."""
    from ..models import CheckpointError
    from ..train.config import ConfigError

    try:
        config = resolve_config(base=saved_config)
    except ConfigError as err:
        raise CLIError(f"the run's settings do not resolve: {err}") from err
    model = build_model(config, num_classes, load_initial=False)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).splitlines()
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes: "
                              f"{'; '.join(s.strip() for s in first[:3])}") from err
    return model.eval(), config


def amp_dtype(choice: str, device):
    """``--amp``: auto is bf16 on GPUs that have it, fp16 on other GPUs, none (fp32) on the CPU."""
    import torch

    if choice == "auto":
        if device.type != "cuda":
            return None
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[choice]


# ---- eval and predict -----------------------------------------------------------------------------------------
def evaluation_loader(dataset, info, batch_size: int, workers: int, collate_fn: Callable | None = None):
    """This process's share of ``dataset`` in order, unpadded (every image scored once over all processes)."""
    from torch.utils.data import DataLoader

    from ..data import EpochSampler

    sampler = EpochSampler(len(dataset), info.world_size, info.rank, shuffle=False, pad=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=info.device.type == "cuda", collate_fn=collate_fn)


def add_predict_arguments(parser: argparse.ArgumentParser, outputs: str, model_arguments, opacity: str,
                          json_help: str) -> None:
    """Images, the output folder (``outputs`` says what goes there), the model flags, overlay opacity, --json."""
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help=outputs)
    model_arguments(parser)
    parser.add_argument("--opacity", type=float, default=0.5, metavar="X", help=opacity)
    parser.add_argument("--json", action="store_true", help=json_help)


def predict_inputs(args: argparse.Namespace) -> list[Path]:
    """The image files to predict on, after checking --opacity; a one-line error where two share a stem, as
    their outputs, named after it, would overwrite each other."""
    from .predict import expand_images

    if not 0 <= args.opacity <= 1:
        raise CLIError(f"--opacity must be between 0 and 1, got {args.opacity}")
    paths = expand_images(args.images)
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise CLIError(f"two images are named {path.stem} ({stems[path.stem]} and {path}); their outputs would "
                           f"overwrite each other: predict them into separate --output folders")
        stems[path.stem] = path
    return paths


def model_on_device(model, args: argparse.Namespace):
    """(model on --device, that device, the --amp autocast dtype or None)."""
    from .common import resolve_device

    device = resolve_device(args.device)
    return model.to(device), device, amp_dtype(args.amp, device)
