"""Vim + (Cascade) Mask R-CNN as the reference's ViTDet configuration sets it up, on torchvision's ``GeneralizedRCNN``.

- Images: normalised with the ImageNet mean and std, padded at the bottom and right to a square of ``img_size``
  (ViTDet's ``square_pad``). In training they arrive already resized (large-scale jitter in the data pipeline);
  at inference the longest side is resized to ``img_size`` (detectron2's ``ResizeShortestEdge(1024, max 1024)``)
  and the detections are mapped back to the original image.
- Backbone: ``VimDetBackbone`` (Vim + simple feature pyramid, strides 4 to 64, 256 channels).
- RPN: torchvision's, with two shared 3x3 convs (ViTDet's ``conv_dims=[-1, -1]``), one anchor size per level
  (32 to 512) and aspect ratios 0.5, 1, 2; 2000/1000 proposals before/after NMS in training, 1000/1000 at test.
  Its loss is torchvision's (smooth L1 with beta 1/9 where detectron2's ViTDet uses L1).
- Box heads: 4 convs (256, 3x3, LayerNorm) and one FC (1024); pooled 7x7 with aligned RoIAlign.
  ``cascade_mask_rcnn``: three stages (``cascade.CascadeRoIHeads``). ``mask_rcnn``: torchvision's ``RoIHeads``
  with class-specific boxes.
- Mask head: 4 convs (256, LayerNorm), a 2x2 transposed conv and a 1x1 per-class predictor, on 14x14 pools.
- Inference: score threshold 0.05, NMS 0.5, 100 detections an image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .backbone import VimDetBackbone
from .cascade import CASCADE_IOUS, CASCADE_WEIGHTS, AlignedMultiScaleRoIAlign, CascadeBoxPredictor, CascadeRoIHeads

__all__ = ["ARCHITECTURES", "PadToSquareTransform", "VimRCNN", "build_det_model", "detection_loss"]

ARCHITECTURES = ("cascade_mask_rcnn", "mask_rcnn")


class PadToSquareTransform(GeneralizedRCNNTransform):
    """torchvision's transform, with ViTDet's geometry: no resizing in training (the data pipeline's large-scale
    jitter already did it), the longest side to ``size`` at inference, and every batch padded to ``size`` square."""

    def __init__(self, size: int, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD):
        super().__init__(min_size=size, max_size=size, image_mean=list(image_mean), image_std=list(image_std))
        self.size = size

    def resize(self, image, target=None):
        if self.training:
            return image, target
        return super().resize(image, target)

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        batch = images[0].new_zeros((len(images), images[0].shape[0], self.size, self.size))
        for i, image in enumerate(images):
            height, width = image.shape[-2:]
            if height > self.size or width > self.size:
                raise ValueError(f"image {i} of the batch is {height}x{width}, larger than the {self.size}x{self.size} "
                                 f"canvas; crop training images to the canvas in the data pipeline")
            batch[i, :, :height, :width].copy_(image)
        return batch


class FloatRPNHead(RPNHead):
    """torchvision's RPN head returning fp32: the proposals are decoded in the deltas' dtype (bf16 would cost
    several pixels at 1024)."""

    def forward(self, x):
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class FloatFastRCNNPredictor(FastRCNNPredictor):
    """torchvision's class-specific box predictor returning fp32, for the same reason."""

    def forward(self, x):
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()


class VimRCNN(GeneralizedRCNN):
    """torchvision's R-CNN frame (transform, backbone, RPN, RoI heads) with the class names kept beside it.

    ``model(images)`` in eval mode gives torchvision's detections: per image ``boxes`` (x1, y1, x2, y2 in the
    original image), ``labels`` (1..num_classes), ``scores`` and ``masks`` (N, 1, H, W probabilities); in training
    ``model(images, targets)`` gives the dict of losses.
    """

    def __init__(self, backbone, rpn, roi_heads, transform, num_classes: int):
        super().__init__(backbone, rpn, roi_heads, transform)
        self.num_classes = num_classes


def _stage_box_head(channels: int, conv_dim: int, num_convs: int, fc_dim: int, pool: int) -> nn.Module:
    return FastRCNNConvFCHead((channels, pool, pool), [conv_dim] * num_convs, [fc_dim], norm_layer=LayerNorm2d)


def build_det_model(config: Any, num_classes: int, load_initial: bool = True) -> VimRCNN:
    """The model a ``DetConfig`` describes for ``num_classes`` object classes (background excluded);
    ``load_initial=False`` skips the ImageNet weights (resume, eval)."""
    if config.architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {config.architecture!r}")
    backbone = VimDetBackbone(
        config.model, img_size=config.img_size, drop_path_rate=config.drop_path, rope=config.rope,
        rope_residual=config.rope_residual, rope_pt_grid=config.rope_pt_grid, out_channels=config.fpn_channels,
        checkpoint_path=config.initial_checkpoint if load_initial else None,
        pretrained=config.pretrained and load_initial, **config.model_kwargs)
    levels = backbone.pyramid.names
    if len(config.anchor_sizes) != len(levels):
        raise ValueError(f"anchor_sizes needs one size per pyramid level ({len(levels)}), got {list(config.anchor_sizes)}")
    anchors = AnchorGenerator(tuple((int(s),) for s in config.anchor_sizes),
                              (tuple(float(r) for r in config.aspect_ratios),) * len(levels))
    rpn = RegionProposalNetwork(
        anchors, FloatRPNHead(config.fpn_channels, len(config.aspect_ratios), conv_depth=config.rpn_convs),
        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n=dict(training=config.rpn_pre_nms_train, testing=config.rpn_pre_nms_test),
        post_nms_top_n=dict(training=config.rpn_post_nms_train, testing=config.rpn_post_nms_test), nms_thresh=0.7)

    pooled = [name for name in levels if name != "pool"]  # the RPN alone sees the max-pooled top level
    strides = backbone.strides[: len(pooled)]
    box_pool = AlignedMultiScaleRoIAlign(pooled, strides, 7, sampling_ratio=0)
    mask_pool = AlignedMultiScaleRoIAlign(pooled, strides, 14, sampling_ratio=0)
    channels = config.fpn_channels
    mask_head = MaskRCNNHeads(channels, [config.head_conv_dim] * 4, 1, norm_layer=LayerNorm2d)
    mask_predictor = MaskRCNNPredictor(config.head_conv_dim, config.head_conv_dim, num_classes + 1)
    common = dict(batch_size_per_image=config.roi_batch_per_image, positive_fraction=0.25,
                  score_thresh=config.score_thresh, nms_thresh=config.nms_thresh,
                  detections_per_img=config.detections_per_img, mask_roi_pool=mask_pool, mask_head=mask_head,
                  mask_predictor=mask_predictor)
    if config.architecture == "cascade_mask_rcnn":
        heads = [_stage_box_head(channels, config.head_conv_dim, 4, config.head_fc_dim, 7) for _ in CASCADE_IOUS]
        predictors = [CascadeBoxPredictor(config.head_fc_dim, num_classes + 1) for _ in CASCADE_IOUS]
        roi_heads: nn.Module = CascadeRoIHeads(box_pool, heads, predictors, CASCADE_IOUS, CASCADE_WEIGHTS, **common)
    else:
        roi_heads = RoIHeads(
            box_roi_pool=box_pool, box_head=_stage_box_head(channels, config.head_conv_dim, 4, config.head_fc_dim, 7),
            box_predictor=FloatFastRCNNPredictor(config.head_fc_dim, num_classes + 1), fg_iou_thresh=0.5,
            bg_iou_thresh=0.5, bbox_reg_weights=CASCADE_WEIGHTS[0], **common)
    transform = PadToSquareTransform(config.img_size, config.mean, config.std)
    return VimRCNN(backbone, rpn, roi_heads, transform, num_classes)


def detection_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: the sum of the RPN's and the heads' terms (all weighted 1, as ViTDet)."""
    return sum(v.float() for v in losses.values())
