"""Pieces the subcommands share: the user-facing error, model names, devices, what a checkpoint holds."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

import torch
from timm.utils import ParseKwargs

from ..models import VARIANT_ALIASES, VARIANT_ARGS

__all__ = [
    "CLIError",
    "add_dataclass_arguments",
    "add_model_kwargs_argument",
    "checkpoint_num_classes",
    "dataclass_overrides",
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


# ---- settings dataclasses as flags (train and seg train) ---------------------------------------------------------
def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null") else float(text)


def _optional_str(text: str) -> str | None:
    return None if text.lower() in ("none", "null", "") else text


class _NumbersOrNone(argparse.Action):
    """A fixed count of numbers, or the single word 'none' (for settings a run may switch off)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if [v.lower() for v in values] in (["none"], ["null"]):
            setattr(namespace, self.dest, None)
            return
        try:
            numbers = tuple(float(v) for v in values)
        except ValueError:
            numbers = ()
        if len(numbers) != self.const:
            parser.error(f"{option_string} takes {self.const} numbers or 'none', got {' '.join(values)}")
        setattr(namespace, self.dest, numbers)


def add_dataclass_arguments(group, cls, helps: dict[str, str] | None = None, short: dict[str, str] | None = None,
                            skip: set[str] | frozenset[str] = frozenset()) -> None:
    """One flag per field of the settings dataclass ``cls`` (``batch_size`` -> ``--batch-size``), typed from its
    hints; unset flags stay out of the namespace, so the preset and YAML values stand."""
    from timm.utils import ParseKwargs

    helps, short = helps or {}, short or {}
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [short[f.name], flag] if f.name in short else [flag]
        hint = hints[f.name]
        optional = type(None) in typing.get_args(hint)
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=helps.get(f.name))
        current = getattr(defaults, f.name)
        if f.name == "model_kwargs":
            kwargs.update(nargs="*", action=ParseKwargs, metavar="KEY=VALUE",
                          help=helps.get(f.name, "model constructor arguments, e.g. depth=12 embed_dim=256"))
        elif hint is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif isinstance(current, tuple) and optional:
            kwargs.update(nargs="+", action=_NumbersOrNone, const=len(current), metavar="X")
        elif isinstance(current, tuple):
            kwargs.update(type=float, nargs=len(current), metavar="X")
        elif hint in (float, float | None):
            kwargs.update(type=_optional_float if optional else float, metavar="X")
        elif hint in (int, int | None):
            kwargs.update(type=int, metavar="N")
        else:
            kwargs.update(type=_optional_str if optional else str, metavar="VALUE")
        group.add_argument(*names, **kwargs)


def dataclass_overrides(args: argparse.Namespace, cls, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The settings given on the command line, by field name."""
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    return {k: v for k, v in vars(args).items() if k in names}
