"""Semantic segmentation with Vim: the reference's Vim + UperNet setup in plain PyTorch (no OpenMMLab).

``backbone`` (Vim features to a 4-level pyramid), ``heads`` (UperNet, FCN auxiliary), ``model`` (the two
together, the loss), ``data`` (ADE20K-layout folders, transforms), ``metrics`` (mIoU from a confusion matrix),
``inference`` (sliding windows or whole images), ``optim`` (layer decay, poly schedule), ``config`` (presets),
``train`` (the loop). Depends on ``train`` and ``models``, never the other way.
"""

from .backbone import VimSegBackbone
from .config import SEG_PRESETS, SegConfig, resolve_seg_config
from .heads import FCNHead, UPerHead
from .model import VimUperNet, build_seg_model, seg_loss

__all__ = [
    "FCNHead",
    "SEG_PRESETS",
    "SegConfig",
    "UPerHead",
    "VimSegBackbone",
    "VimUperNet",
    "build_seg_model",
    "resolve_seg_config",
    "seg_loss",
]
