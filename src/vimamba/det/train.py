"""Detection training: the iteration-based loop of ``train.iterative`` (one process or torchrun's, resumable,
guarded against non-finite steps), as segmentation uses it, with COCO-format data, the R-CNN model and losses,
and pycocotools' box/mask AP.

``train_det(config, output)`` writes into ``output``: ``last.pth`` (every ``checkpoint_interval`` iterations and
at each evaluation) and ``best.pth`` (by ``best_metric``), with ``.safetensors`` weights beside them,
``metrics.csv`` / ``metrics.jsonl`` (one row per evaluation), ``learning_curves.png``, ``config.yaml``,
``summary.json``, and the last evaluation's detections as ``detections_val.json`` (COCO result format).
"""

from __future__ import annotations

import json
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
from ..train.distributed import DistInfo, broadcast_object, gather_objects
from ..train.iterative import Evaluation, IterationTask, TaskData, train_iterations
from ..train.metrics import replace_text
from ..train.trainer import TrainingError
from .coco_eval import coco_ground_truth, evaluate_coco, to_coco_results
from .config import DetConfig
from .data import CocoData, CocoSource, EvalTransform, LargeScaleJitter, collate, load_coco
from .model import build_det_model, detection_loss
from .optim import build_det_optimizer

__all__ = ["train_det", "evaluate_det", "compute_loss", "TASK", "flat_scores"]

TASK = "detection"  # marks our checkpoints, so a classification or segmentation one is refused clearly
_RESUME_KEYS = ("model", "model_kwargs", "architecture", "img_size", "fpn_channels", "head_conv_dim", "head_fc_dim",
                "rope", "rope_residual", "anchor_sizes")


def compute_loss(losses: dict[str, torch.Tensor], config: DetConfig) -> torch.Tensor:
    """The training loss (a function of its own so tests can inject failures)."""
    return detection_loss(losses)


def to_device(images, targets, device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def flat_scores(scores: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """``{'bbox': {'AP': x}}`` as ``{'bbox_AP': x}``."""
    return {f"{iou_type}_{metric}": value for iou_type, values in scores.items() for metric, value in values.items()}


@torch.no_grad()
def evaluate_det(model: nn.Module, loader, info: DistInfo, dtype: torch.dtype | None, data: CocoData,
                 progress: bool = True, desc: str = "eval") -> tuple[dict[str, dict[str, float | None]], list]:
    """COCO box and mask AP (pycocotools) of ``model`` over ``loader``; with several processes each detects on its
    share, rank 0 scores them all, and every process gets the scores. Returns (scores, COCO result entries)."""
    model.eval()
    label_to_category = data.label_to_category
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    bar = tqdm(total=len(loader.sampler) if hasattr(loader, "sampler") else None, unit="img", desc=desc, leave=False,
               disable=not (progress and info.is_main), file=sys.stderr, dynamic_ncols=True)
    for images, targets in loader:
        images = [im.to(info.device, non_blocking=True) for im in images]
        with torch.autocast(info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(images)
        for output, target in zip(outputs, targets):
            results += to_coco_results(output, target["image_id"], label_to_category)
            image_ids.append(target["image_id"])
        bar.update(len(images))
    bar.close()
    all_results = [r for part in gather_objects(results, info) for r in part]
    all_ids = sorted({i for part in gather_objects(image_ids, info) for i in part})
    scores = None
    if info.is_main:
        iou_types = ("bbox", "segm") if getattr(model.roi_heads, "has_mask", lambda: False)() else ("bbox",)
        scores = evaluate_coco(coco_ground_truth(data.coco_dict), all_results, all_ids, iou_types)
    return broadcast_object(scores, info), all_results


def check_resume_fits(saved: dict[str, Any], config: DetConfig, classes: list[str], path: Path) -> None:
    if saved.get("task") != TASK:
        raise CheckpointError(f"{path} is not a detection run's checkpoint; resume it with the command that wrote "
                              f"it, or start from its weights with --initial-checkpoint")
    check_same_settings(saved["config"], config.to_dict(), _RESUME_KEYS, path)
    if saved.get("classes") != classes:
        raise CheckpointError(f"cannot resume from {path}: it was trained on the classes {saved.get('classes')}, "
                              f"the data has {classes}")


def train_det(config: DetConfig, output: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
              force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train as ``config`` says; returns the summary (also written to ``output/summary.json``)."""
    return train_iterations(DetTask(config), output, resume, force, progress)


def _format_scores(scores: dict[str, Any]) -> str:
    parts = []
    for iou_type, name in (("bbox", "box"), ("segm", "mask")):
        if scores.get(f"{iou_type}_AP") is not None:
            parts.append(f"{name} AP {100 * scores[f'{iou_type}_AP']:.2f} "
                         f"(AP50 {100 * (scores[f'{iou_type}_AP50'] or 0):.2f})")
    return ", ".join(parts)


class DetTask(IterationTask):
    """Vim + (Cascade) Mask R-CNN on COCO-format data, scored by pycocotools' AP."""

    name = TASK
    command = "det"
    curve_keys = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")
    curve_label = "validation AP (%)"
    train_images_noun = "training images with objects"  # CocoSource(train=True) drops images without any
    collate_fn = staticmethod(collate)
    tracks_loss_terms = True
    images_per_s_format = ".2f"

    def __init__(self, config: DetConfig):
        super().__init__(config)
        self.best_metric = config.best_metric
        self.eval_batch_size = config.eval_batch_size

    def load_data(self, classes_known) -> TaskData:
        config = self.config
        train_data = load_coco(*config.split_paths("train"))
        val_data = load_coco(*config.split_paths("val"))
        if [c["id"] for c in val_data.categories] != [c["id"] for c in train_data.categories]:
            raise TrainingError(f"the training and validation files list different categories "
                                f"({train_data.path.name}: {train_data.classes}; {val_data.path.name}: "
                                f"{val_data.classes})")
        classes_known(train_data.classes)
        self.train_data, self.val_data = train_data, val_data
        self.categories = [{"id": c["id"], "name": c["name"]} for c in train_data.categories]
        train_source, val_source = CocoSource(train_data, train=True), CocoSource(val_data, train=False)
        train_set = SeededTransformDataset(train_source, LargeScaleJitter(config.img_size, config.scale_range,
                                                                          config.hflip), joint=True)
        val_set = SeededTransformDataset(val_source, EvalTransform(), joint=True)
        return TaskData(train_set, val_set, train_data.classes, len(train_source), len(val_source))

    def check_resume_fits(self, saved: dict[str, Any], classes: list[str], path: Path) -> None:
        check_resume_fits(saved, self.config, classes, path)

    def build_model(self, num_classes: int, info: DistInfo, load_initial: bool) -> nn.Module:
        return build_det_model(self.config, num_classes, load_initial=load_initial)

    def build_optimizer(self, model: nn.Module):
        return build_det_optimizer(model, self.config)

    def to_device(self, images, targets, device: torch.device):
        return to_device(images, targets, device)

    def training_loss(self, model: nn.Module, images, targets):
        losses = model(images, targets)
        return compute_loss(losses, self.config), losses

    def evaluate(self, model: nn.Module, loader, info: DistInfo, dtype: torch.dtype | None,
                 progress: bool) -> Evaluation:
        scores, results = evaluate_det(model, loader, info, dtype, self.val_data, progress)
        return Evaluation(flat_scores(scores), results)

    def write_evaluation_files(self, evaluation: Evaluation, folder: Path) -> None:
        replace_text(folder / "detections_val.json", json.dumps(evaluation.details))

    def extra_resolved(self) -> dict[str, Any]:
        return {"categories": self.categories}

    def checkpoint_extras(self, data: TaskData) -> dict[str, Any]:
        return {"classes": data.classes, "categories": self.categories}

    def describe(self, num_params: int) -> str:
        return f"{self.config.model} + {self.config.architecture} ({num_params / 1e6:.2f}M parameters)"

    def input_size(self) -> str:
        return f"canvas {self.config.img_size}"

    def format_scores(self, scores: dict[str, Any]) -> str:
        return _format_scores(scores)

    def summary_scores(self, last: Evaluation, best: dict[str, Any], iterations: int) -> dict[str, Any]:
        return {**last.scores, "best": best, "iterations": iterations}

    def summary_files(self, folder: Path) -> dict[str, str]:
        return {"detections": str(folder / "detections_val.json")}

    def summary_run(self, data: TaskData) -> dict[str, Any]:
        return {"architecture": self.config.architecture, "train_ann": str(self.train_data.path),
                "val_ann": str(self.val_data.path)}

    def done_message(self, last: Evaluation, best: dict[str, Any]) -> str:
        metric = self.best_metric
        return (f"{_format_scores(last.scores)}; best {metric} {100 * max(best[metric], 0):.2f} at iteration "
                f"{best['iteration']}")
