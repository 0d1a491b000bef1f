"""Vim as the detection backbone of the reference (hustvl/Vim ``det/``, built on detectron2's ViTDet project).

A Vim without class token at the padded input size (1024x1024 in the paper, a 64x64 patch grid), with the
2-D rotary position embedding on top of the absolute one (``if_rope`` and ``if_rope_residual``, pretraining
grid 14) and stochastic depth 0.1. Its one output is the last block's output added to the residual stream,
without the final norm (the reference's ``last_layer_process="add"``), which ViTDet's simple feature pyramid
turns into strides 4 to 64. The model is the family's own ``VisionMamba`` built through timm.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .pyramid import SCALE_FACTORS, SimpleFeaturePyramid

__all__ = ["VimDetBackbone"]


class VimDetBackbone(nn.Module):
    """Padded images (B, 3, S, S) to an ordered dict of pyramid levels '0'..'3' and 'pool' (torchvision's layout).

    Args:
        model_name: a Vim variant (short or reference name).
        img_size: the square the images are padded to; the position embedding is made (or resampled) for its grid.
        drop_path_rate: stochastic depth of the blocks (0.1 in the reference).
        rope, rope_residual, rope_pt_grid: the rotary embedding (on in the reference, grid 14).
        out_channels: channels of every pyramid level.
        scale_factors: the pyramid's levels relative to the backbone's stride.
        checkpoint_path: ImageNet weights to start from (ours or the released ``.pth``): the class token and its
            position row are dropped, the grid rows resampled, the classifier ignored.
        pretrained: fetch the released weights of ``model_name`` through timm instead.
        model_kwargs: other ``VisionMamba`` arguments (``depth``, ``embed_dim`` for small test models).
    """

    def __init__(
        self,
        model_name: str = "vim_tiny_patch16_224",
        img_size: int = 1024,
        drop_path_rate: float = 0.1,
        rope: bool = True,
        rope_residual: bool = True,
        rope_pt_grid: int = 14,
        out_channels: int = 256,
        scale_factors: tuple[float, ...] = SCALE_FACTORS,
        checkpoint_path: str | os.PathLike | None = None,
        pretrained: bool = False,
        **model_kwargs: Any,
    ):
        super().__init__()
        from .. import create_model
        from ..models import load_checkpoint

        if checkpoint_path is not None and pretrained:
            raise ValueError("give ImageNet weights either as a checkpoint file or as pretrained=True, not both")
        self.model = create_model(
            model_name, pretrained=pretrained, img_size=img_size, class_token=False, global_pool="avg", num_classes=0,
            drop_path_rate=drop_path_rate, rope=rope, rope_residual=rope_residual, rope_pt_grid=rope_pt_grid,
            **model_kwargs)
        if checkpoint_path is not None:
            load_checkpoint(self.model, checkpoint_path, filter_fn=_backbone_filter)
        # The final norm is not used ("add" takes the stream as it is); unused parameters trouble DDP.
        self.last_index = len(self.model.layers) - 1
        self.model.prune_intermediate_layers([self.last_index], prune_norm=True, prune_head=True)
        stride = self.model.patch_embed.stride[0]
        self.pyramid = SimpleFeaturePyramid(self.model.embed_dim, stride, out_channels, scale_factors)
        self.out_channels = out_channels
        self.strides = self.pyramid.strides
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"the detection backbone takes images padded to {self.img_size}x{self.img_size}, "
                             f"got {tuple(x.shape[-2:])}")
        last = self.model.forward_intermediates(x, indices=[self.last_index], norm=False, output_fmt="NCHW",
                                                intermediates_only=True)[0]
        # Levels in fp32 (the pyramid ends in LayerNorm, which autocast runs in fp32 anyway): torchvision makes
        # its anchors in the maps' dtype, and bf16 anchors would be off by pixels at 1024.
        return OrderedDict((name, level.float()) for name, level in self.pyramid(last).items())


def _backbone_filter(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """An ImageNet checkpoint for the backbone: the usual conversion (class row out, grid resampled), no head."""
    from ..models import checkpoint_filter_fn

    state_dict = checkpoint_filter_fn(state_dict, model)
    return {k: v for k, v in state_dict.items() if not k.startswith("head.")}
