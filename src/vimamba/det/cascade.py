"""Cascade R-CNN's box stages (Cai & Vasconcelos 2018) on torchvision's detection parts, and the pieces both heads share.

torchvision has Faster/Mask R-CNN's ``RoIHeads`` but no cascade. ``CascadeRoIHeads`` subclasses it, so stage 0
is torchvision's own (proposal matching at IoU 0.5 with ``Matcher``, 512 proposals a image with a quarter
positive through ``BalancedPositiveNegativeSampler``, ground truth added to the proposals, ``BoxCoder`` with
weights (10, 10, 5, 5)), and the mask branch is torchvision's (``maskrcnn_loss`` / ``maskrcnn_inference``). What
it adds is detectron2's ``CascadeROIHeads``, which the reference's ViTDet configuration uses:

- stages 1 and 2 take the previous stage's regressed boxes (detached, clipped, empty ones dropped in training),
  match them to the ground truth at IoU 0.6 and 0.7 without sampling, and code boxes with weights
  (20, 20, 10, 10) and (30, 30, 15, 15);
- every stage regresses one class-agnostic box, and its loss is cross-entropy plus L1 (detectron2's smooth L1
  with beta 0) on the positive boxes, summed and divided by the number of boxes of the stage;
- the gradient reaching the pooled features from each stage is scaled by 1 / (number of stages);
- at inference the class scores of all stages (each on the boxes it was given) are averaged, and the boxes are
  the last stage's regression; then per-class NMS as Fast R-CNN's.
- the mask head trains on stage 0's positive proposals and runs on the final detections.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper, _convert_to_roi_format

__all__ = [
    "AlignedMultiScaleRoIAlign",
    "CascadeBoxPredictor",
    "CascadeRoIHeads",
    "CASCADE_IOUS",
    "CASCADE_WEIGHTS",
    "match_stage",
]

CASCADE_IOUS = (0.5, 0.6, 0.7)
CASCADE_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


class AlignedMultiScaleRoIAlign(nn.Module):
    """RoIAlign over pyramid levels, with detectron2's ``ROIAlignV2`` (pixel-aligned) sampling.

    Why not torchvision's ``MultiScaleRoIAlign``: it samples with ``aligned=False`` (a half-pixel shift the
    reference's detectron2 setup does not have), and it infers each level's scale once, from the first batch's
    largest image, which after large-scale jitter can be far smaller than the padded canvas the maps cover. Here
    the strides are given. Level assignment is torchvision's ``LevelMapper`` (the FPN paper's rule, 224 -> level
    4, as detectron2's).
    """

    def __init__(self, featmap_names: Sequence[str], strides: Sequence[int], output_size: int,
                 sampling_ratio: int = 0, canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        if len(featmap_names) != len(strides):
            raise ValueError(f"{len(featmap_names)} feature maps but {len(strides)} strides")
        self.featmap_names = list(featmap_names)
        self.scales = [1.0 / s for s in strides]
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        levels = [int(torch.tensor(float(s)).log2().round()) for s in strides]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"pooled levels must have consecutive power-of-two strides, got {list(strides)}")
        self.map_levels = LevelMapper(levels[0], levels[-1], canonical_scale, canonical_level)

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes=None) -> torch.Tensor:
        maps = [x[name] for name in self.featmap_names]
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        result = maps[0].new_zeros((rois.shape[0], maps[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(maps, self.scales)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, spatial_scale=scale,
                               sampling_ratio=self.sampling_ratio, aligned=True)
            result[index] = pooled.to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return (f"featmap_names={self.featmap_names}, scales={self.scales}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}, aligned=True")


class CascadeBoxPredictor(nn.Module):
    """Class scores (background at index 0, torchvision's order) and one class-agnostic box delta.

    Outputs are fp32 whatever the autocast dtype: the deltas are decoded against boxes in pixels, where bf16's
    8-bit mantissa would cost several pixels at 1024.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, 4)
        # detectron2's FastRCNNOutputLayers init
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x).float(), self.bbox_pred(x).float()


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def match_stage(proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
                matcher: det_utils.Matcher, box_coder: det_utils.BoxCoder):
    """Labels, matched ground-truth indices and regression targets of a later cascade stage's boxes (no sampling).

    A box whose best IoU reaches the stage's threshold takes that ground truth's class; every other box is
    background (label 0). Images without ground truth make all their boxes background.
    """
    labels, matched, targets = [], [], []
    for boxes, gt, classes in zip(proposals, gt_boxes, gt_labels):
        if gt.numel() == 0:
            index = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
            label = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
            matched_gt = torch.zeros_like(boxes)
        else:
            found = matcher(box_ops.box_iou(gt, boxes))
            index = found.clamp(min=0)
            label = classes[index].to(torch.int64)
            label[found < 0] = 0
            matched_gt = gt[index]
        labels.append(label)
        matched.append(index)
        targets.append(box_coder.encode_single(matched_gt, boxes))
    return labels, matched, targets


def stage_loss(class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: list[torch.Tensor],
               targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """detectron2's Fast R-CNN loss with class-agnostic regression: cross-entropy, and L1 over the positive boxes'
    deltas summed and divided by the number of boxes (so the regression weight follows the share of positives)."""
    labels_all = torch.cat(labels)
    targets_all = torch.cat(targets)
    loss_cls = F.cross_entropy(class_logits, labels_all)
    positive = labels_all > 0
    loss_box = F.l1_loss(box_deltas[positive], targets_all[positive], reduction="sum") / max(labels_all.numel(), 1)
    return loss_cls, loss_box


class CascadeRoIHeads(RoIHeads):
    """Three box stages (or any number) and an optional mask branch; a drop-in for torchvision's ``RoIHeads``.

    Args:
        box_roi_pool: pooling for the box stages (shared).
        box_heads, box_predictors: one per stage (``CascadeBoxPredictor``: class-agnostic boxes).
        stage_ious: the IoU a box needs to be positive at each stage.
        stage_weights: each stage's ``BoxCoder`` weights.
        batch_size_per_image, positive_fraction: stage 0's proposal sampling.
        score_thresh, nms_thresh, detections_per_img: inference.
        mask_roi_pool, mask_head, mask_predictor: torchvision's mask branch (all three or none).
    """

    def __init__(self, box_roi_pool: nn.Module, box_heads: Sequence[nn.Module], box_predictors: Sequence[nn.Module],
                 stage_ious: Sequence[float] = CASCADE_IOUS,
                 stage_weights: Sequence[Sequence[float]] = CASCADE_WEIGHTS,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, mask_roi_pool: nn.Module | None = None,
                 mask_head: nn.Module | None = None, mask_predictor: nn.Module | None = None):
        stages = len(box_heads)
        if not (stages == len(box_predictors) == len(stage_ious) == len(stage_weights)) or stages < 1:
            raise ValueError(f"a cascade needs as many box heads ({len(box_heads)}), predictors "
                             f"({len(box_predictors)}), IoU thresholds ({len(stage_ious)}) and box-coder weights "
                             f"({len(stage_weights)}), at least one")
        super().__init__(
            box_roi_pool=box_roi_pool, box_head=None, box_predictor=None, fg_iou_thresh=stage_ious[0],
            bg_iou_thresh=stage_ious[0], batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction, bbox_reg_weights=tuple(stage_weights[0]), score_thresh=score_thresh,
            nms_thresh=nms_thresh, detections_per_img=detections_per_img, mask_roi_pool=mask_roi_pool,
            mask_head=mask_head, mask_predictor=mask_predictor)
        del self.box_head, self.box_predictor
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.stage_ious = tuple(float(v) for v in stage_ious)
        self.box_coders = [det_utils.BoxCoder(tuple(w)) for w in stage_weights]
        self.stage_matchers = [det_utils.Matcher(v, v, allow_low_quality_matches=False) for v in self.stage_ious]

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    def _run_stage(self, features, proposals, image_shapes, stage: int):
        pooled = self.box_roi_pool(features, proposals, image_shapes)
        if self.training:
            pooled = _ScaleGradient.apply(pooled, 1.0 / self.num_stages)
        return self.box_predictors[stage](self.box_heads[stage](pooled))

    def _next_proposals(self, deltas: torch.Tensor, proposals: list[torch.Tensor], image_shapes, stage: int):
        boxes = self.box_coders[stage].decode_single(deltas.detach(), torch.cat(proposals).float())
        out = []
        for part, shape in zip(boxes.split([len(p) for p in proposals]), image_shapes):
            part = box_ops.clip_boxes_to_image(part, shape)
            if self.training:
                keep = (part[:, 2] > part[:, 0]) & (part[:, 3] > part[:, 1])
                part = part[keep]
            out.append(part)
        return out

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            self.check_targets(targets)
            proposals = [p.float() for p in proposals]
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            gt_boxes = [t["boxes"].float() for t in targets]
            gt_labels = [t["labels"] for t in targets]
            mask_proposals, mask_matched = proposals, matched_idxs  # stage 0's sampled proposals train the masks
            mask_labels = labels
        losses: dict[str, torch.Tensor] = {}
        scores_per_stage = []
        stage_proposals = proposals
        deltas = None
        for stage in range(self.num_stages):
            if stage > 0:
                stage_proposals = self._next_proposals(deltas, stage_proposals, image_shapes, stage - 1)
                if self.training:
                    labels, _, regression_targets = match_stage(
                        stage_proposals, gt_boxes, gt_labels, self.stage_matchers[stage], self.box_coders[stage])
            class_logits, deltas = self._run_stage(features, stage_proposals, image_shapes, stage)
            if self.training:
                loss_cls, loss_box = stage_loss(class_logits, deltas, labels, regression_targets)
                losses[f"loss_classifier_stage{stage}"] = loss_cls
                losses[f"loss_box_reg_stage{stage}"] = loss_box
            else:
                scores_per_stage.append(F.softmax(class_logits, -1))

        result: list[dict[str, torch.Tensor]] = []
        if not self.training:
            scores = sum(scores_per_stage) / self.num_stages
            last = self.box_coders[-1].decode_single(deltas, torch.cat(stage_proposals).float())
            boxes, scores, labels = self.postprocess_agnostic(scores, last, [len(p) for p in stage_proposals],
                                                              image_shapes)
            result = [{"boxes": b, "labels": c, "scores": s} for b, s, c in zip(boxes, scores, labels)]

        if self.has_mask():
            if self.training:
                positive = [torch.where(label > 0)[0] for label in mask_labels]
                boxes = [p[i] for p, i in zip(mask_proposals, positive)]
                matched = [m[i] for m, i in zip(mask_matched, positive)]
                mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
                losses["loss_mask"] = maskrcnn_loss(mask_logits, boxes, [t["masks"] for t in targets], gt_labels,
                                                    matched)
            else:
                boxes = [r["boxes"] for r in result]
                mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
                for probs, r in zip(maskrcnn_inference(mask_logits.float(), [r["labels"] for r in result]), result):
                    r["masks"] = probs
        return result, losses

    def postprocess_agnostic(self, scores: torch.Tensor, boxes: torch.Tensor, counts: list[int], image_shapes):
        """Fast R-CNN inference with one box per proposal: each (proposal, class) pair above the score threshold is
        a candidate with the proposal's box; per-class NMS; the best ``detections_per_img``."""
        out_boxes, out_scores, out_labels = [], [], []
        for image_scores, image_boxes, shape in zip(scores.split(counts), boxes.split(counts), image_shapes):
            image_boxes = box_ops.clip_boxes_to_image(image_boxes, shape)
            image_scores = image_scores[:, 1:]
            candidate, cls = torch.where(image_scores > self.score_thresh)
            cand_boxes, cand_scores, cand_labels = image_boxes[candidate], image_scores[candidate, cls], cls + 1
            keep = box_ops.remove_small_boxes(cand_boxes, min_size=1e-2)
            cand_boxes, cand_scores, cand_labels = cand_boxes[keep], cand_scores[keep], cand_labels[keep]
            keep = box_ops.batched_nms(cand_boxes, cand_scores, cand_labels, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(cand_boxes[keep])
            out_scores.append(cand_scores[keep])
            out_labels.append(cand_labels[keep])
        return out_boxes, out_scores, out_labels
