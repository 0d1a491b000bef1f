"""mIoU, mAcc, aAcc and per-class scores against confusion matrices counted by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vimamba.seg.metrics import confusion_matrix, scores_from_confusion

# 4 classes; class 3 never occurs in the labels but is predicted once; 255 marks an ignored pixel.
TARGET = torch.tensor([[0, 0, 1, 1],
                       [1, 2, 255, 0]])
PRED = torch.tensor([[0, 1, 1, 1],
                     [2, 2, 3, 3]])
# Counted by hand, rows = truth, columns = prediction (the ignored pixel, predicted 3, counts nowhere):
#   truth 0 at (0,0)->0, (0,1)->1, (1,3)->3;  truth 1 at (0,2)->1, (0,3)->1, (1,0)->2;  truth 2 at (1,1)->2
HAND = [[1, 1, 0, 1],
        [0, 2, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 0]]


def test_confusion_matrix_matches_the_hand_count():
    assert confusion_matrix(PRED, TARGET, 4).tolist() == HAND


def test_scores_match_the_hand_computation():
    scores = scores_from_confusion(torch.tensor(HAND), ["a", "b", "c", "d"])
    # IoU = TP / (label + pred - TP): class 0: 1/(3+1-1), class 1: 2/(3+3-2), class 2: 1/(1+2-1), class 3: 0/(0+1-0)
    iou = [1 / 3, 2 / 4, 1 / 2, 0.0]
    acc = [1 / 3, 2 / 3, 1 / 1, None]  # class 3 has no labelled pixel: no accuracy, and it does not count in mAcc
    assert scores["iou"] == pytest.approx(iou)
    assert scores["acc"][:3] == pytest.approx(acc[:3]) and scores["acc"][3] is None
    assert scores["mIoU"] == pytest.approx(sum(iou) / 4)  # predicted but absent: IoU 0, counted
    assert scores["mAcc"] == pytest.approx(sum(acc[:3]) / 3)
    assert scores["aAcc"] == pytest.approx(4 / 7) and scores["pixels"] == 7
    assert scores["classes"] == ["a", "b", "c", "d"]


def test_a_class_absent_everywhere_has_no_iou_and_does_not_lower_the_mean():
    matrix = torch.zeros(3, 3, dtype=torch.int64)
    matrix[0, 0], matrix[1, 1], matrix[1, 0] = 4, 3, 1
    scores = scores_from_confusion(matrix)
    assert scores["iou"][2] is None and scores["acc"][2] is None
    assert scores["mIoU"] == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert scores["classes"] == ["0", "1", "2"]


def test_scores_are_data_set_totals_not_image_averages():
    second_target = torch.tensor([[2, 2], [2, 255]])
    second_pred = torch.tensor([[2, 0], [2, 1]])
    total = confusion_matrix(PRED, TARGET, 4) + confusion_matrix(second_pred, second_target, 4)
    joined = confusion_matrix(torch.cat([PRED.flatten(), second_pred.flatten()]),
                              torch.cat([TARGET.flatten(), second_target.flatten()]), 4)
    assert torch.equal(total, joined)
    one, two = scores_from_confusion(confusion_matrix(PRED, TARGET, 4)), scores_from_confusion(total)
    # class 2 over both: TP 1 + 2, labelled 1 + 3, predicted 2 + 2 (the ignored pixel's prediction not counted)
    assert two["iou"][2] == pytest.approx(3 / (4 + 4 - 3))
    assert not math.isclose(two["mIoU"], (one["mIoU"] + scores_from_confusion(
        confusion_matrix(second_pred, second_target, 4))["mIoU"]) / 2)


def test_bad_labels_and_shapes_are_errors():
    with pytest.raises(ValueError, match=r"label value 7 is outside the class range 0..3 \(255 marks ignored"):
        confusion_matrix(PRED, TARGET.masked_fill(TARGET == 2, 7), 4)
    with pytest.raises(ValueError, match="label value -1"):
        confusion_matrix(PRED, TARGET.masked_fill(TARGET == 2, -1), 4)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(PRED[:, :3], TARGET, 4)
    with pytest.raises(ValueError, match="3 class names for a 4-class"):
        scores_from_confusion(torch.tensor(HAND), ["a", "b", "c"])
