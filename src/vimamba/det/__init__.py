"""Object detection and instance segmentation with Vim: the reference's Vim + Cascade Mask R-CNN (ViTDet-style) on
torchvision's detection parts (no detectron2).

``backbone`` (Vim with rotary embedding, last stream to a simple feature pyramid), ``pyramid`` (ViTDet's), ``cascade``
(three box stages on torchvision's ``RoIHeads``, aligned multi-level RoIAlign), ``model`` (the R-CNN frame, both
architectures), ``data`` (COCO-format files, checked; large-scale jitter), ``coco_eval`` (pycocotools AP),
``optim`` (layer decay, step schedule), ``config`` (presets), ``train`` (the loop). Depends on ``train`` and
``models``, never the other way.
"""

from .backbone import VimDetBackbone
from .cascade import AlignedMultiScaleRoIAlign, CascadeBoxPredictor, CascadeRoIHeads
from .config import DET_PRESETS, DetConfig, resolve_det_config
from .model import VimRCNN, build_det_model, detection_loss
from .pyramid import SimpleFeaturePyramid

__all__ = [
    "AlignedMultiScaleRoIAlign",
    "CascadeBoxPredictor",
    "CascadeRoIHeads",
    "DET_PRESETS",
    "DetConfig",
    "SimpleFeaturePyramid",
    "VimDetBackbone",
    "VimRCNN",
    "build_det_model",
    "detection_loss",
    "resolve_det_config",
]
