"""vimamba train: train a Vim classifier; with no arguments, the built-in job on scikit-learn's digits.

Settings come from a preset (--preset: digits, imagenet-vim-ti, imagenet-vim-s, lsft), then a YAML file
(--config), then the flags below (timm train.py's names; --batch-size is the total over all processes).
Everything used is saved in OUTPUT/config.yaml. The run writes last.pth every epoch (and every
--checkpoint-every-steps optimiser steps), best.pth by validation top-1, .safetensors weights, metrics.csv,
metrics.jsonl, learning_curves.png and finally summary.json. --resume OUTPUT continues a stopped run where it
stopped, mid-epoch included. Several processes: torchrun --nproc_per_node=N -m vimamba train ... (DDP; add
--fsdp to shard the model, its gradients and optimiser state over the processes instead).
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import CLIError, add_dataclass_arguments, dataclass_overrides

NAME = "train"
HELP = "train a Vim (default: a small one on the built-in digits, a few minutes on the CPU)"

HELPS = {
    "data": "'digits' (built in) or a folder with train/ and val/ class folders",
    "model": "Vim variant; --model-kwargs changes its sizes",
    "img_size": "input size",
    "initial_checkpoint": "start from these weights (head re-initialised if the class count differs)",
    "batch_size": "total batch over all processes",
    "lr": "learning rate (default: lr-base x batch-size / lr-base-size)",
    "decay_a_log": "weight-decay A_log/A_b_log as the reference does (--no-decay-a-log exempts them)",
    "aa": "RandAugment/AutoAugment policy ('none' for none)",
    "amp": "auto (bf16 on GPUs that have it, fp16 on others, fp32 on the CPU), bf16, fp16 or fp32",
    "checkpoint_every_steps": "also write last.pth every N batches (0: at epoch ends only)",
    "max_bad_steps": "stop after this many steps in a row with a non-finite loss or gradient",
    "strict_data": "stop at an unreadable image instead of skipping it with a warning",
    "threads": "torch threads on the CPU",
    "fsdp": "shard parameters, gradients and optimiser state over the processes (FSDP2 fully_shard) instead of "
            "replicating them (DDP); checkpoints are the same either way",
}
SHORT = {"batch_size": "-b", "model": "-m", "workers": "-j"}
SKIP = {"preset"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.config import PRESETS, TrainConfig

    run = parser.add_argument_group("run")
    run.add_argument("--preset", default=None, metavar="NAME", help=f"one of {', '.join(PRESETS)} (default: digits)")
    run.add_argument("--config", default=None, metavar="YAML", help="settings file (keys as in config.yaml)")
    run.add_argument("-o", "--output", default=None, metavar="DIR",
                     help="run folder (default: runs/DATE-TIME-PRESET; a folder holding a run is not overwritten)")
    run.add_argument("--resume", default=None, metavar="PATH", help="continue a run: its folder or a last.pth")
    run.add_argument("--force", action="store_true", help="write over a run already in --output")
    run.add_argument("--resume-any-world-size", action="store_true",
                     help="--resume with another number of processes or another --batch-size than the run had "
                          "(the data order and random draws then differ from an uninterrupted run)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    settings = parser.add_argument_group("settings (default: the preset's; see config.yaml of a run)")
    add_dataclass_arguments(settings, TrainConfig, HELPS, SHORT, SKIP)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    from ..train.config import TrainConfig

    return dataclass_overrides(args, TrainConfig, SKIP)


def run(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..train import checkpoint as ckpt
    from ..train.config import ConfigError, resolve_config
    from ..train.trainer import TrainingError, train

    overrides = overrides_from(args)
    try:
        if args.resume:
            saved = ckpt.read_training_checkpoint(ckpt.resolve_resume_path(args.resume))
            if args.preset:
                raise ConfigError("--preset cannot change on --resume (the run's saved config is used)")
            config = resolve_config(yaml_path=args.config, overrides=overrides, base=saved["config"])
            del saved
        else:
            config = resolve_config(args.preset, args.config, overrides)
        train(config, output=args.output, resume=args.resume, force=args.force, progress=not args.no_progress,
              resume_any_world_size=args.resume_any_world_size)
    except DataError as err:
        raise CLIError(err.short()) from err
    except (ConfigError, TrainingError) as err:
        raise CLIError(str(err)) from err
    return 0
