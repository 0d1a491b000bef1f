"""Segmentation scores from a confusion matrix, with mmsegmentation's definitions (numbers comparable with the paper).

Over a whole data set, per class c: IoU = TP / (TP + FP + FN), Acc = TP / (TP + FN); ``mIoU`` and ``mAcc``
average them over the classes where they are defined (a class absent from both the labels and the
predictions has no IoU; a class absent from the labels has no Acc), ``aAcc`` is the fraction of labelled
pixels predicted right. Pixels labelled ``ignore_index`` count nowhere.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["IGNORE_INDEX", "confusion_matrix", "scores_from_confusion"]

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows the true class and columns the predicted one.

    A label that is neither a class index nor ``ignore_index`` is an error: counted silently it would
    corrupt every score.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel():
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"label value {bad} is outside the class range 0..{num_classes - 1} "
                             f"({ignore_index} marks ignored pixels)")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"prediction values must lie in 0..{num_classes - 1}")
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def scores_from_confusion(matrix: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, mAcc, aAcc (fractions) and the per-class IoU and Acc (None where undefined)."""
    matrix = matrix.double()
    true_positive = matrix.diag()
    per_label = matrix.sum(dim=1)
    per_pred = matrix.sum(dim=0)
    union = per_label + per_pred - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))
    acc = torch.where(per_label > 0, true_positive / per_label.clamp(min=1), torch.full_like(union, float("nan")))
    labelled = per_label.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    if len(names) != len(iou):
        raise ValueError(f"{len(names)} class names for a {len(iou)}-class confusion matrix")

    def mean(values: torch.Tensor) -> float:
        defined = values[~values.isnan()]
        return float(defined.mean()) if defined.numel() else float("nan")

    def listed(values: torch.Tensor) -> list[float | None]:
        return [None if v != v else v for v in values.tolist()]

    return {
        "mIoU": mean(iou),
        "mAcc": mean(acc),
        "aAcc": float(true_positive.sum() / labelled) if labelled > 0 else float("nan"),
        "classes": names,
        "iou": listed(iou),
        "acc": listed(acc),
        "pixels": int(labelled),
    }
