"""Pieces the subcommands share: the user-facing error, model names, devices, what a checkpoint holds."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from timm.utils import ParseKwargs

from ..models import VARIANT_ALIASES, VARIANT_ARGS

__all__ = [
    "CLIError",
    "add_model_kwargs_argument",
    "checkpoint_num_classes",
    "resolve_device",
    "resolve_model_name",
]


class CLIError(Exception):
    """A problem the user can fix; ``main`` prints its message as one line and exits with status 2."""


def resolve_model_name(name: str) -> str:
    """The short name of a Vim variant, given it or its reference name; a ``CLIError`` listing them otherwise."""
    short = VARIANT_ALIASES.get(name, name)
    if short not in VARIANT_ARGS:
        raise CLIError(f"unknown model {name!r}; choose one of {', '.join(VARIANT_ARGS)} (or their reference names)")
    return short


def resolve_device(name: str | None) -> torch.device:
    """``--device``: CUDA when there is one unless told otherwise; a clear error for a device that is absent."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"unknown device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def add_model_kwargs_argument(parser: argparse.ArgumentParser) -> None:
    """timm's ``--model-kwargs key=value ...`` (values parsed as Python literals), e.g. ``depth=12``."""
    parser.add_argument(
        "--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="KEY=VALUE",
        help="extra model constructor arguments, as in timm's scripts (e.g. depth=12 drop_path_rate=0.1)")


def checkpoint_num_classes(state_dict: dict[str, Any]) -> int:
    """Outputs of the classifier head in a state dict; 0 when it has none (a backbone)."""
    head = state_dict.get("head.weight")
    return int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else 0
