"""torch.hub entry points: ``torch.hub.load("<owner>/vimamba", "vim_tiny_patch16_224", pretrained=True)``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

from vimamba.models.vim import (  # noqa: E402
    vim_base_patch16_224,
    vim_small_patch16_224,
    vim_small_patch16_stride8_224,
    vim_tiny_patch16_224,
    vim_tiny_patch16_stride8_224,
)

__all__ = [
    "vim_base_patch16_224",
    "vim_small_patch16_224",
    "vim_small_patch16_stride8_224",
    "vim_tiny_patch16_224",
    "vim_tiny_patch16_stride8_224",
]
