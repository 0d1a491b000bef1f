"""Vim + UperNet: the backbone's pyramid, the UperNet decode head and the FCN auxiliary head, and their loss.

``forward`` returns torchvision's segmentation-model dict: ``out``, class scores at the input's size, and in
training ``aux``, the auxiliary head's, also at the input's size (the loss compares both with the labels).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import VimSegBackbone
from .heads import FCNHead, UPerHead
from .metrics import IGNORE_INDEX

__all__ = ["VimUperNet", "seg_loss", "build_seg_model"]


class VimUperNet(nn.Module):
    """Encoder-decoder in mmsegmentation's layout (``backbone``, ``decode_head``, ``auxiliary_head``).

    Args:
        backbone: the Vim pyramid.
        num_classes: classes per pixel.
        channels: width of the UperNet head.
        aux_channels: width of the auxiliary FCN head; 0 for none.
        aux_in_index: which pyramid map the auxiliary head reads (2: stride 16, as the reference).
        dropout: before each classifier.
    """

    def __init__(self, backbone: VimSegBackbone, num_classes: int, channels: int = 192, aux_channels: int = 256,
                 aux_in_index: int = 2, dropout: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.decode_head = UPerHead(backbone.out_channels, channels, num_classes, dropout=dropout)
        self.auxiliary_head = (
            FCNHead(backbone.out_channels[aux_in_index], aux_channels, num_classes, aux_in_index, dropout)
            if aux_channels > 0 else None)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        features = self.backbone(images)
        out = {"out": F.interpolate(self.decode_head(features), size=size, mode="bilinear", align_corners=False)}
        if self.training and self.auxiliary_head is not None:  # inference never pays for the auxiliary head
            out["aux"] = F.interpolate(self.auxiliary_head(features), size=size, mode="bilinear", align_corners=False)
        return out


def seg_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, aux_weight: float = 0.4,
             avg_non_ignore: bool = False, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy of the decode head plus ``aux_weight`` times the auxiliary head's.

    ``avg_non_ignore=False`` averages over all pixels, ignored ones counting zero, as mmsegmentation 0.29 (the
    reference's) does by default; True averages over the labelled pixels only (PyTorch's ``mean``).
    """

    def one(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if avg_non_ignore:
            return F.cross_entropy(logits, target, ignore_index=ignore_index)
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").mean()

    loss = one(outputs["out"])
    if "aux" in outputs and aux_weight:
        loss = loss + aux_weight * one(outputs["aux"])
    return loss


def build_seg_model(config: Any, num_classes: int, load_initial: bool = True) -> VimUperNet:
    """The model a ``SegConfig`` describes; ``load_initial=False`` skips the ImageNet weights (resume, eval)."""
    backbone = VimSegBackbone(
        config.model, img_size=config.crop_size, out_indices=config.out_indices, feature=config.feature,
        drop_path_rate=config.drop_path, residual_in_fp32=config.residual_in_fp32,
        checkpoint_path=config.initial_checkpoint if load_initial else None,
        pretrained=config.pretrained and load_initial, **config.model_kwargs)
    return VimUperNet(backbone, num_classes, channels=config.decode_channels, aux_channels=config.aux_channels,
                      dropout=config.dropout)
