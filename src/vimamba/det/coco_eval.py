"""COCO evaluation through pycocotools: detections as COCO result entries, box and mask AP.

The numbers are pycocotools' own (``COCOeval.stats``), so they compare with the paper's and detectron2's. They are
fractions (0.457, not 45.7); an area range without ground truth gives None (pycocotools' -1).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

__all__ = ["METRICS", "IOU_TYPES", "to_coco_results", "evaluate_coco", "coco_ground_truth"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def coco_ground_truth(coco_dict: dict[str, Any]):
    """A pycocotools ``COCO`` from an annotation dict (``CocoData.coco_dict``), without its chatter on stdout."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = coco_dict
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, label_to_category: dict[int, int],
                    mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """One image's detections (torchvision's dict, original-image coordinates) as COCO result entries: ``bbox`` as
    [x, y, width, height], the category id of the file, and ``segmentation`` as compressed RLE when there are masks."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    rles = None
    if "masks" in output:
        binary = (output["masks"].detach()[:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    results = []
    for k, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        entry = {"image_id": int(image_id), "category_id": int(label_to_category[int(label)]),
                 "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
        if rles is not None:
            rle = rles[k]
            entry["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        results.append(entry)
    return results


def evaluate_coco(gt, results: list[dict[str, Any]], image_ids: list[int] | None = None,
                  iou_types: tuple[str, ...] = IOU_TYPES, log: bool = False) -> dict[str, dict[str, float | None]]:
    """``{'bbox': {'AP': ..., 'AP50': ..., ...}, 'segm': {...}}`` of ``results`` against the ground truth ``gt``.

    ``image_ids`` restricts the evaluation (default: every image of ``gt``); no detections at all scores 0.
    ``log`` lets pycocotools print its summary table.
    """
    from pycocotools.cocoeval import COCOeval

    image_ids = sorted(gt.getImgIds()) if image_ids is None else sorted(image_ids)
    scores: dict[str, dict[str, float | None]] = {}
    for iou_type in iou_types:
        entries = [r for r in results if iou_type != "segm" or "segmentation" in r]
        if not entries:
            scores[iou_type] = {m: 0.0 for m in METRICS}
            continue
        if iou_type == "segm":
            # With a bbox present pycocotools takes the box's area for the small/medium/large split of mask AP;
            # without it, the mask's (as detectron2 does, for the same reason).
            entries = [{k: v for k, v in r.items() if k != "bbox"} for r in entries]
        else:
            entries = [dict(r) for r in entries]  # loadRes writes into the entries it gets
        with contextlib.redirect_stdout(io.StringIO()) if not log else contextlib.nullcontext():
            dt = gt.loadRes(entries)
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        scores[iou_type] = {m: (None if v < 0 else float(v)) for m, v in zip(METRICS, evaluator.stats[:6])}
    return scores
