"""Vim as a segmentation backbone: four blocks' features turned into a stride 4-8-16-32 pyramid.

As the reference sets it up (hustvl/Vim ``seg/backbone/vim.py``): a Vim without class token whose position
embedding covers the crop's patch grid, features from blocks 6, 12, 18 and 24 (indices 5, 11, 17, 23),
each reshaped to the patch grid and sent through its own neck (ViTDet/BEiT style): 4x up (transposed conv,
BatchNorm, GELU, transposed conv), 2x up, identity, 2x2 max-pool. The model is the family's own
``VisionMamba`` built through timm; its ``forward_intermediates`` gives the features.

Which features: the reference takes each block's mixer output, before it joins the residual stream
(``feature='mixer'``); ``feature='norm'`` takes the residual stream after the block through the final
RMSNorm instead.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["VimSegBackbone", "FEATURES"]

FEATURES = ("mixer", "norm")


def _necks(dim: int, stride: int) -> list[nn.Module]:
    """Modules taking stride-``stride`` maps to strides 4, 8, 16, 32."""
    if stride == 16:
        return [
            nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),
                          nn.ConvTranspose2d(dim, dim, 2, stride=2)),
            nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2)),
            nn.Identity(),
            nn.MaxPool2d(2, 2),
        ]
    if stride == 8:  # the reference's layout for its 8-pixel-patch models, used here for the stride-8 variants
        return [
            nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2)),
            nn.Identity(),
            nn.Sequential(nn.MaxPool2d(2, 2)),
            nn.Sequential(nn.MaxPool2d(4, 4)),
        ]
    raise ValueError(f"the segmentation backbone needs patches every 8 or 16 pixels, got a stride of {stride}")


class VimSegBackbone(nn.Module):
    """Images (B, 3, H, W) to four maps (B, D, ~H/4, ~W/4) ... (B, D, ~H/32, ~W/32).

    Args:
        model_name: a Vim variant (short or reference name).
        img_size: the training crop; the position embedding is made (or resampled) for its patch grid, and
            other sizes are resampled to on the fly.
        out_indices: the four blocks whose features are taken, one per neck; a block may repeat (all four from
            the last block is ViTDet's simple pyramid).
        feature: ``'mixer'`` (the reference) or ``'norm'``, see the module docstring.
        drop_path_rate: stochastic depth of the blocks (the reference's model default, 0.1).
        residual_in_fp32: keep the residual stream in fp32 (the reference's Vim-Ti run does not, Vim-S does).
        checkpoint_path: ImageNet weights to start from (ours or the released ``.pth``): the class token and
            its position row are dropped, the grid rows resampled, the classifier ignored.
        pretrained: fetch the released weights of ``model_name`` through timm instead.
        model_kwargs: other ``VisionMamba`` arguments (e.g. ``depth``, ``embed_dim`` for small test models).
    """

    def __init__(
        self,
        model_name: str = "vim_tiny_patch16_224",
        img_size: int = 512,
        out_indices: Sequence[int] = (5, 11, 17, 23),
        feature: str = "mixer",
        drop_path_rate: float = 0.1,
        residual_in_fp32: bool = False,
        checkpoint_path: str | os.PathLike | None = None,
        pretrained: bool = False,
        **model_kwargs: Any,
    ):
        super().__init__()
        from .. import create_model
        from ..models import load_checkpoint

        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}")
        if len(out_indices) != 4:
            raise ValueError(f"the pyramid needs the features of exactly 4 blocks, got out_indices={list(out_indices)}")
        if checkpoint_path is not None and pretrained:
            raise ValueError("give ImageNet weights either as a checkpoint file or as pretrained=True, not both")
        self.feature = feature
        self.model = create_model(
            model_name, pretrained=pretrained, img_size=img_size, class_token=False, global_pool="avg", num_classes=0,
            drop_path_rate=drop_path_rate, residual_in_fp32=residual_in_fp32, dynamic_img_size=True, **model_kwargs)
        depth = len(self.model.layers)
        self.out_indices = [i if i >= 0 else depth + i for i in out_indices]
        if any(not 0 <= i < depth for i in self.out_indices):
            raise ValueError(f"out_indices {list(out_indices)} do not fit a {depth}-block model")
        if checkpoint_path is not None:
            load_checkpoint(self.model, checkpoint_path, filter_fn=_backbone_filter)
        # Blocks after the last one used, and the final norm when the features do not use it, would get no
        # gradient (DistributedDataParallel refuses such parameters unless told to search for them).
        self.model.prune_intermediate_layers(self.out_indices, prune_norm=feature != "norm", prune_head=True)

        dim = self.model.embed_dim
        stride = self.model.patch_embed.stride[0]
        self.fpn1, self.fpn2, self.fpn3, self.fpn4 = _necks(dim, stride)
        self.out_channels = [dim] * 4
        self.reductions = [4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        blocks = sorted(set(self.out_indices))
        features = self.model.forward_intermediates(
            x, indices=blocks, norm=self.feature == "norm", mixer_output=self.feature == "mixer",
            output_fmt="NCHW", intermediates_only=True)
        by_block = dict(zip(blocks, features))
        necks = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        return [neck(by_block[i]) for neck, i in zip(necks, self.out_indices)]


def _backbone_filter(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """An ImageNet checkpoint for the backbone: the usual conversion (class row out, grid resampled), no head."""
    from ..models import checkpoint_filter_fn

    state_dict = checkpoint_filter_fn(state_dict, model)
    return {k: v for k, v in state_dict.items() if not k.startswith("head.")}
