"""Reading checkpoints from disk, and errors that say what the file holds when it does not fit.

Accepted: the reference training checkpoints (a pickled dict whose ``model`` entry is the state dict, beside
optimizer state and an ``argparse.Namespace`` of the run's arguments), a bare state dict, and safetensors.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "describe_state_dict",
    "guess_variant",
    "load_checkpoint",
    "read_checkpoint_file",
]

# The reference checkpoints pickle the run's argparse.Namespace; allowing that one class lets them load with
# weights_only=True (no arbitrary code). Scoped with a context manager, not registered globally: timm's own
# loader scopes the same class the same way, and its exit would drop a global registration.
_SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def read_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``.pth``/``.pt``/``.bin`` pickle or a ``.safetensors`` file into a dict, on the CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; pass the weights file inside it, or load the folder with from_pretrained")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged file can fail inside the unpickler in any way
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict or a training checkpoint")
    return checkpoint


def guess_variant(state_dict: dict[str, Any]) -> str | None:
    """The registered Vim variant whose shapes this state dict has, if any."""
    from .vim import VARIANT_ARGS

    proj = state_dict.get("patch_embed.proj.weight")
    pos = state_dict.get("pos_embed")
    if not isinstance(proj, torch.Tensor):
        return None
    depth = sum(1 for k in state_dict if k.startswith("layers.") and k.endswith(".norm.weight"))
    for name, args in VARIANT_ARGS.items():
        grid = (224 - args["patch_size"]) // args["stride"] + 1
        if (proj.shape[0] == args["embed_dim"] and depth == args["depth"]
                and (pos is None or pos.shape[1] == grid * grid + 1)):
            return name
    return None


def describe_state_dict(state_dict: dict[str, Any]) -> str:
    """One line on what a state dict looks like: size, width, depth, sequence, classes, likely variant."""
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        return f"no tensors; top-level keys: {sorted(state_dict)[:12]}"
    parts = [f"{len(tensors)} tensors, {sum(v.numel() for v in tensors.values()) / 1e6:.2f}M values"]
    proj = tensors.get("patch_embed.proj.weight")
    if proj is not None:
        parts.append(f"embed dim {proj.shape[0]}, patch {proj.shape[-2]}x{proj.shape[-1]}")
    depth = sum(1 for k in tensors if k.startswith("layers.") and k.endswith(".norm.weight"))
    if depth:
        parts.append(f"{depth} blocks")
    if "pos_embed" in tensors:
        parts.append(f"{tensors['pos_embed'].shape[1]} position rows")
    if "head.weight" in tensors:
        parts.append(f"{tensors['head.weight'].shape[0]} classes")
    if proj is None:
        parts.append(f"first keys: {list(tensors)[:5]}")
    variant = guess_variant(tensors)
    if variant:
        parts.append(f"looks like {variant}")
    return "; ".join(parts)


def _mismatch_report(model: nn.Module, state_dict: dict[str, Any], source: str) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or shapes):
        return None

    def listing(title: str, items: list[str]) -> str:
        shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
        return f"\n  {title} ({len(items)}): {shown}"

    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    text = f"checkpoint {source} does not fit {arch}:"
    if missing:
        text += listing("missing from the file", missing)
    if unexpected:
        text += listing("in the file but not in the model", unexpected)
    if shapes:
        text += listing("different shapes", shapes)
    text += f"\n  the file holds: {describe_state_dict(state_dict)}"
    head = expected.get("head.weight")
    if (head is not None and isinstance(state_dict.get("head.weight"), torch.Tensor)
            and state_dict["head.weight"].shape != head.shape and state_dict["head.weight"].shape[1:] == head.shape[1:]):
        text += "\n  (for another number of classes, build the model with num_classes= or load with strict=False)"
    return text


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    use_ema: bool = False,
    filter_fn=None,
) -> nn.Module:
    """Load a checkpoint file into ``model`` through its checkpoint filter, with a readable mismatch error.

    ``strict=False`` skips keys and shapes that do not fit (and says which, through the returned model's
    ``load_report`` attribute) instead of failing.
    """
    from .vim import checkpoint_filter_fn, unwrap_state_dict

    checkpoint = read_checkpoint_file(path)
    try:
        state_dict = unwrap_state_dict(checkpoint, use_ema=use_ema)
    except KeyError as err:
        raise CheckpointError(f"checkpoint {path}: {err.args[0]}") from err
    state_dict = (filter_fn or checkpoint_filter_fn)(state_dict, model)
    report = _mismatch_report(model, state_dict, str(path))
    if report and strict:
        raise CheckpointError(report)
    if report:
        expected = model.state_dict()
        state_dict = {k: v for k, v in state_dict.items() if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(state_dict, strict=strict)
    model.load_report = report
    return model
