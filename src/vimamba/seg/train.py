"""Segmentation training: the iteration-based loop of ``train.iterative`` (one process or torchrun's, resumable,
guarded against non-finite steps) with the segmentation data, model, loss and mIoU evaluation.

``train_seg(config, output)`` writes into ``output``: ``last.pth`` (every ``checkpoint_interval`` iterations
and at each evaluation) and ``best.pth`` (by mIoU), with ``.safetensors`` weights beside them, ``metrics.csv``
/ ``metrics.jsonl`` (one row per evaluation), ``learning_curves.png``, ``config.yaml`` and ``summary.json``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..data import SeededTransformDataset
from ..models import CheckpointError
from ..train.checkpoint import check_same_settings
from ..train.distributed import DistInfo, all_reduce_sum
from ..train.iterative import Evaluation, IterationTask, TaskData, train_iterations
from ..train.trainer import TrainingError
from .config import SegConfig
from .data import SegEvalTransform, SegSource, SegTrainTransform, check_image_sizes, load_split
from .inference import predict
from .metrics import confusion_matrix, scores_from_confusion
from .model import build_seg_model, seg_loss
from .optim import build_seg_optimizer

__all__ = ["train_seg", "evaluate_seg", "compute_loss", "TASK"]

TASK = "segmentation"  # marks our checkpoints, so a classification one is refused with a clear message
_RESUME_KEYS = ("model", "model_kwargs", "crop_size", "out_indices", "feature", "decode_channels", "aux_channels")


def compute_loss(outputs: dict[str, torch.Tensor], targets: torch.Tensor, config: SegConfig) -> torch.Tensor:
    """The training loss (a function of its own so tests can inject failures)."""
    return seg_loss(outputs, targets, config.aux_weight, config.avg_non_ignore)


@torch.no_grad()
def evaluate_seg(model: nn.Module, loader, info: DistInfo, dtype: torch.dtype | None, classes: list[str],
                 mode: str, crop: int, stride: int, progress: bool = True, desc: str = "eval") -> dict[str, Any]:
    """mIoU, mAcc, aAcc and per-class scores over ``loader`` (one image a batch, labels at the original size);
    with several processes each scores its share and the confusion matrices are summed."""
    model.eval()
    num_classes = len(classes)
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=info.device)
    bar = tqdm(total=len(loader.sampler) if hasattr(loader, "sampler") else None, unit="img", desc=desc, leave=False,
               disable=not (progress and info.is_main), file=sys.stderr, dynamic_ncols=True)
    for images, labels in loader:
        images, labels = images.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)
        with torch.autocast(info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = predict(model, images, tuple(labels.shape[-2:]), mode, num_classes, crop, stride)
        matrix += confusion_matrix(pred, labels, num_classes)
        bar.update(len(images))
    bar.close()
    all_reduce_sum(matrix, info)
    return scores_from_confusion(matrix.cpu(), classes)


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Every process takes rank 0's BatchNorm statistics, as mmcv's distributed evaluation does before scoring:
    with per-process BatchNorm each process's running statistics drift apart, and the checkpoint holds rank 0's."""
    if info.distributed:
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def check_resume_fits(saved: dict[str, Any], config: SegConfig, num_classes: int, path: Path) -> None:
    if saved.get("task") != TASK:
        raise CheckpointError(f"{path} is not a segmentation run's checkpoint; resume it with `vimamba train`, or "
                              f"start from its weights with --initial-checkpoint")
    check_same_settings(saved["config"], config.to_dict(), _RESUME_KEYS, path)
    if saved.get("num_classes") != num_classes:
        raise CheckpointError(f"cannot resume from {path}: it has {saved.get('num_classes')} classes, the data has "
                              f"{num_classes}")


def train_seg(config: SegConfig, output: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
              force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train as ``config`` says; returns the summary (also written to ``output/summary.json``)."""
    return train_iterations(SegTask(config), output, resume, force, progress)


def _sources(config: SegConfig) -> tuple[SegSource, SegSource]:
    train_source = load_split(config.data, "train", config.dataset, config.class_names)
    val_source = load_split(config.data, "val", config.dataset, config.class_names)
    if config.img_scale is None:
        check_image_sizes(train_source, config.crop_size)
    return train_source, val_source


class SegTask(IterationTask):
    """Vim + UperNet on a segmentation folder, scored by mIoU."""

    name = TASK
    command = "seg"
    best_metric = "mIoU"
    curve_keys = ("mIoU", "mAcc", "aAcc")
    curve_label = "validation (%)"

    @staticmethod
    def _sync_bn(info: DistInfo) -> bool:
        return info.distributed and info.device.type == "cuda"

    def check_batch(self, local_batch: int, info: DistInfo) -> None:
        if local_batch < 2 and not self._sync_bn(info):
            raise TrainingError(f"BatchNorm in the heads needs at least 2 images per process (the batch gives "
                                f"{local_batch}); raise --batch-size")

    def load_data(self, classes_known) -> TaskData:
        config = self.config
        train_source, val_source = _sources(config)
        classes_known(train_source.classes)
        train_set = SeededTransformDataset(train_source, SegTrainTransform(
            config.crop_size, config.img_scale, config.ratio_range, config.cat_max_ratio, config.hflip,
            config.photometric, config.mean, config.std), joint=True)
        val_set = SeededTransformDataset(val_source, SegEvalTransform(config.img_scale, config.mean, config.std),
                                         joint=True)
        self.classes = train_source.classes  # the validation split is scored under the training split's names
        return TaskData(train_set, val_set, self.classes, len(train_source), len(val_source))

    def check_resume_fits(self, saved: dict[str, Any], classes: list[str], path: Path) -> None:
        check_resume_fits(saved, self.config, len(classes), path)

    def build_model(self, num_classes: int, info: DistInfo, load_initial: bool) -> nn.Module:
        model = build_seg_model(self.config, num_classes, load_initial=load_initial)
        return nn.SyncBatchNorm.convert_sync_batchnorm(model) if self._sync_bn(info) else model

    def build_optimizer(self, model: nn.Module):
        return build_seg_optimizer(model, self.config)

    def training_loss(self, model: nn.Module, images, targets):
        return compute_loss(model(images), targets, self.config), None

    def evaluate(self, model: nn.Module, loader, info: DistInfo, dtype: torch.dtype | None,
                 progress: bool) -> Evaluation:
        config = self.config
        broadcast_buffers(model, info)
        scores = evaluate_seg(model, loader, info, dtype, self.classes, config.eval_mode,
                              config.crop_size, config.slide_stride, progress)
        return Evaluation({key: scores[key] for key in ("mIoU", "mAcc", "aAcc")}, scores)

    def checkpoint_extras(self, data: TaskData) -> dict[str, Any]:
        return {"num_classes": len(data.classes), "classes": data.classes}

    def describe(self, num_params: int) -> str:
        return f"{self.config.model} + UperNet ({num_params / 1e6:.2f}M parameters) on {self.config.data}"

    def input_size(self) -> str:
        return f"crop {self.config.crop_size}"

    def format_scores(self, scores: dict[str, Any]) -> str:
        return f"mIoU {100 * scores['mIoU']:.2f}%, mAcc {100 * scores['mAcc']:.2f}%, aAcc {100 * scores['aAcc']:.2f}%"

    def summary_scores(self, last: Evaluation, best: dict[str, Any], iterations: int) -> dict[str, Any]:
        return {**last.scores, "best_mIoU": best["mIoU"], "best_iteration": best["iteration"],
                "iterations": iterations, "per_class_iou": dict(zip(last.details["classes"], last.details["iou"]))}

    def summary_run(self, data: TaskData) -> dict[str, Any]:
        return {"data": self.config.data}

    def done_message(self, last: Evaluation, best: dict[str, Any]) -> str:
        scores = last.scores
        return (f"mIoU {100 * scores['mIoU']:.2f}% (best {100 * best['mIoU']:.2f}% at iteration {best['iteration']}), "
                f"mAcc {100 * scores['mAcc']:.2f}%, aAcc {100 * scores['aAcc']:.2f}%")
