"""vimamba: Vision Mamba (Vim) for timm users, with nothing to compile.

``import vimamba`` registers every Vim variant with timm, so ``timm.create_model("vim_small_patch16_224")``
works; ``vimamba.create_model`` does the same and loads local checkpoints with readable errors.
"""

from __future__ import annotations

import os
from typing import Any

import timm

from .models import (
    VARIANT_ALIASES,
    VARIANT_ARGS,
    CheckpointError,
    VisionMamba,
    checkpoint_filter_fn,
    load_checkpoint,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "VisionMamba",
    "__version__",
    "checkpoint_filter_fn",
    "create_model",
    "list_models",
    "load_checkpoint",
]


def list_models() -> list[str]:
    """The short names of every Vim variant (the reference names are accepted as aliases)."""
    return list(VARIANT_ARGS)


def create_model(
    model_name: str,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> VisionMamba:
    """``timm.create_model`` for Vim, plus loading a local checkpoint (reference ``.pth``, state dict or safetensors).

    The checkpoint goes through ``checkpoint_filter_fn`` (position embedding resampled to ``img_size``) and
    loads strictly; a mismatch raises ``CheckpointError`` naming the keys and shapes that differ.
    """
    name = VARIANT_ALIASES.get(model_name, model_name)
    if name not in VARIANT_ARGS:
        raise ValueError(
            f"unknown Vim model {model_name!r}; choose one of {', '.join(VARIANT_ARGS)} "
            f"(or their reference names)")
    if checkpoint_path is not None:
        kwargs.setdefault("weight_init", "skip")
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model
