"""Detection training: iteration-based, one process or torchrun's, resumable, guarded against non-finite steps.

Built as the segmentation loop is, on the classification loop's machinery: processes and devices
(``train.distributed``), atomic checkpoints and random-state capture (``train.checkpoint``), the output-folder rules
and mixed precision (``train.trainer``), the guarded optimiser step (``train.step``), metrics files
(``train.metrics``), and the resumable sampler (``data``): every batch and its augmentation are functions of
(seed, epoch, position), so a run stopped and resumed ends where an uninterrupted one does.

``train_det(config, output)`` writes into ``output``: ``last.pth`` (every ``checkpoint_interval`` iterations and
at each evaluation) and ``best.pth`` (by ``best_metric``), with ``.safetensors`` weights beside them,
``metrics.csv`` / ``metrics.jsonl`` (one row per evaluation), ``learning_curves.png``, ``config.yaml``,
``summary.json``, and the last evaluation's detections as ``detections_val.json`` (COCO result format).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import __version__
from ..data import EpochSampler, SeededTransformDataset
from ..models import CheckpointError
from ..train import checkpoint as ckpt
from ..train.distributed import DistInfo, barrier, broadcast_object, cleanup, gather_objects, init_distributed
from ..train.metrics import write_metrics, write_tensorboard
from ..train.step import guarded_step
from ..train.trainer import TrainingError, amp_dtype, prepare_output
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
    old, new = saved["config"], config.to_dict()
    for key in _RESUME_KEYS:
        if old.get(key) != new[key]:
            raise CheckpointError(f"cannot resume from {path}: it was trained with {key}={old.get(key)!r}, "
                                  f"this run has {key}={new[key]!r}")
    if saved.get("classes") != classes:
        raise CheckpointError(f"cannot resume from {path}: it was trained on the classes {saved.get('classes')}, "
                              f"the data has {classes}")


def plot_det_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation box/mask AP against iterations (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["iteration"] for r in rows]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(steps, [r["train_loss"] for r in rows], marker="o")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"):
        if any(r.get(key) is not None for r in rows):
            ax_score.plot(steps, [100 * (r.get(key) or 0.0) for r in rows], marker="o", label=key)
    ax_score.set_xlabel("iteration")
    ax_score.set_ylabel("validation AP (%)")
    ax_score.legend()
    ax_score.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _set_schedule_position(scheduler, optimizer, iteration: int) -> None:
    """Put the per-iteration schedule at ``iteration`` (on resume): the lr is a function of the iteration alone."""
    scheduler.last_epoch = iteration
    for group, base, schedule in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * schedule(iteration)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def train_det(config: DetConfig, output: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
              force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train as ``config`` says; returns the summary (also written to ``output/summary.json``)."""
    info = init_distributed(config.device)
    where: dict[str, Path] = {}
    try:
        return _train(config, output, resume, force, progress, info, where)
    except KeyboardInterrupt:
        folder = where.get("folder")
        if info.is_main and folder is not None and (folder / ckpt.LAST).exists():
            print(f"\ninterrupted; continue from the last checkpoint with: vimamba det train --resume {folder}",
                  file=sys.stderr, flush=True)
        raise
    finally:
        cleanup(info)


def _format_scores(row: dict[str, Any]) -> str:
    parts = []
    for iou_type, name in (("bbox", "box"), ("segm", "mask")):
        if row.get(f"{iou_type}_AP") is not None:
            parts.append(f"{name} AP {100 * row[f'{iou_type}_AP']:.2f} (AP50 {100 * (row[f'{iou_type}_AP50'] or 0):.2f})")
    return ", ".join(parts)


def _train(config: DetConfig, output, resume, force: bool, progress: bool, info: DistInfo,
           where: dict[str, Path]) -> dict[str, Any]:
    started = time.time()
    if config.threads:
        torch.set_num_threads(config.threads)
    resume_path = ckpt.resolve_resume_path(resume) if resume is not None else None
    saved = ckpt.read_training_checkpoint(resume_path) if resume_path is not None else None
    folder = prepare_output(Path(output) if output else None, config, resume_path, force, info)
    where["folder"] = folder
    if config.batch_size % info.world_size:
        raise TrainingError(f"batch size {config.batch_size} does not split over {info.world_size} processes")
    local_batch = config.batch_size // info.world_size

    train_data = load_coco(*config.split_paths("train"))
    val_data = load_coco(*config.split_paths("val"))
    if [c["id"] for c in val_data.categories] != [c["id"] for c in train_data.categories]:
        raise TrainingError(f"the training and validation files list different categories "
                            f"({train_data.path.name}: {train_data.classes}; {val_data.path.name}: {val_data.classes})")
    classes, num_classes = train_data.classes, train_data.num_classes
    if saved is not None:
        check_resume_fits(saved, config, classes, resume_path)
    train_source, val_source = CocoSource(train_data, train=True), CocoSource(val_data, train=False)
    train_set = SeededTransformDataset(train_source, LargeScaleJitter(config.img_size, config.scale_range,
                                                                      config.hflip), joint=True)
    val_set = SeededTransformDataset(val_source, EvalTransform(), joint=True)
    train_sampler = EpochSampler(len(train_set), info.world_size, info.rank, shuffle=True, seed=config.seed)
    val_sampler = EpochSampler(len(val_set), info.world_size, info.rank, shuffle=False, pad=False)
    steps_per_epoch = len(train_sampler) // local_batch
    if steps_per_epoch < 1:
        raise TrainingError(f"{len(train_set)} training images with objects make no full batch of "
                            f"{config.batch_size}")

    def loader(dataset, sampler, batch_size, drop_last, epoch):
        generator = torch.Generator()
        generator.manual_seed(config.seed * 7919 + epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=config.workers, pin_memory=info.device.type == "cuda",
                          persistent_workers=False, generator=generator, collate_fn=collate)

    torch.manual_seed(config.seed)  # the same initial weights on every process
    model = build_det_model(config, num_classes, load_initial=saved is None).to(info.device)
    num_params = sum(p.numel() for p in model.parameters())
    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    optimizer, scheduler = build_det_optimizer(model, config)
    dtype = amp_dtype(config, info.device)
    scaler = torch.amp.GradScaler(info.device.type) if dtype == torch.float16 else None

    start = 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {config.best_metric: -1.0, "iteration": None}
    fresh: dict[str, Any] = {"loss_sum": 0.0, "batches": 0, "skipped": 0, "images": 0, "seconds": 0.0, "terms": {}}
    partial = json.loads(json.dumps(fresh))
    bad_streak = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        start = saved["iteration"]
        if saved["config"].get("iterations") != config.iterations and info.is_main:
            print(f"note: the schedule now spans {config.iterations} iterations (the run had "
                  f"{saved['config'].get('iterations')})", flush=True)
        _set_schedule_position(scheduler, optimizer, start)
        history, best, partial, bad_streak = saved["history"], saved["best"], saved["partial"], saved["bad_streak"]
        rng = saved["rng"]
        if len(rng) != info.world_size:
            raise TrainingError(f"{resume_path} was written by {len(rng)} processes; resume it with as many "
                                f"(this run has {info.world_size})")
        ckpt.restore_rng(rng[info.rank])
    else:
        import random

        import numpy as np
        torch.manual_seed(config.seed + info.rank)
        random.seed(config.seed + info.rank)
        np.random.seed(config.seed + info.rank)

    dtype_name = "fp32" if dtype is None else str(dtype).replace("torch.", "")
    categories = [{"id": c["id"], "name": c["name"]} for c in train_data.categories]
    config_dump = {**config.to_dict(), "resolved": {
        "task": TASK, "num_classes": num_classes, "classes": classes, "categories": categories,
        "world_size": info.world_size, "batch_per_process": local_batch, "amp_dtype": dtype_name,
        "device": str(info.device), "train_images": len(train_source), "val_images": len(val_source),
        "iterations_per_epoch": steps_per_epoch, "params": num_params, "vimamba": __version__,
        "torch": str(torch.__version__)}}
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        if saved is not None and folder.resolve() != resume_path.parent.resolve():
            for name in (ckpt.BEST, "best.safetensors"):  # continuing into another folder: the best so far too
                if (resume_path.parent / name).is_file():
                    shutil.copyfile(resume_path.parent / name, folder / name)
        tmp = folder / ".config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(config_dump, sort_keys=False))
        os.replace(tmp, folder / "config.yaml")
        what = f"resuming at iteration {start}" if saved is not None else "training"
        print(f"{what} {config.model} + {config.architecture} ({num_params / 1e6:.2f}M parameters): "
              f"{len(train_source)} train / {len(val_source)} val images, {num_classes} classes, "
              f"{config.iterations} iterations, batch {config.batch_size}, canvas {config.img_size}, lr {config.lr:.3g}, "
              f"{dtype_name} on {info.device}{f' x {info.world_size} processes' if info.distributed else ''}; "
              f"output {folder}", flush=True)

    def save(iteration: int) -> None:
        rng_states = gather_objects(ckpt.capture_rng(), info)  # every process hands over its random state
        if not info.is_main:
            return
        state = {
            "task": TASK, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "iteration": iteration,
            "history": history, "best": best, "partial": partial, "bad_streak": bad_streak, "rng": rng_states,
            "config": config.to_dict(), "classes": classes, "categories": categories, "vimamba": __version__,
        }
        ckpt.atomic_save(state, folder / ckpt.LAST)

    def evaluate_and_record(iteration: int, lr: float) -> dict[str, Any]:
        nonlocal best, partial
        scores, results = evaluate_det(model, loader(val_set, val_sampler, config.eval_batch_size, False, 0), info,
                                       dtype, val_data, progress)
        flat = flat_scores(scores)
        batches = max(partial["batches"], 1)
        row = {"iteration": iteration, "epoch": round(iteration / steps_per_epoch, 4), "lr": lr,
               "train_loss": partial["loss_sum"] / batches,
               **{k: v / batches for k, v in sorted(partial["terms"].items())}, **flat,
               "skipped_steps": partial["skipped"], "images_per_s": partial["images"] / max(partial["seconds"], 1e-9),
               "train_seconds": partial["seconds"]}
        history.append(row)
        value = flat.get(config.best_metric)
        is_best = value is not None and value > best[config.best_metric]
        if is_best:
            best = {**flat, "iteration": iteration}
        partial = json.loads(json.dumps(fresh))
        save(iteration)
        if info.is_main:
            ckpt.atomic_save_safetensors(model.state_dict(), folder / "last.safetensors")
            if is_best:  # the best checkpoint is a complete copy of this evaluation's last one
                tmp = folder / f".{ckpt.BEST}.tmp"
                shutil.copyfile(folder / ckpt.LAST, tmp)
                os.replace(tmp, folder / ckpt.BEST)
                ckpt.atomic_save_safetensors(model.state_dict(), folder / "best.safetensors")
            tmp = folder / ".detections_val.json.tmp"
            tmp.write_text(json.dumps(results))
            os.replace(tmp, folder / "detections_val.json")
            write_metrics(history, folder)
            # write_tensorboard steps on a row's "epoch"; a detection run's step is the iteration
            write_tensorboard({**{k: v for k, v in row.items() if k not in ("epoch", "iteration")},
                               "epoch": iteration}, folder)
            plot_det_curves(history, folder / "learning_curves.png")
            skipped = f", {row['skipped_steps']} steps skipped" if row["skipped_steps"] else ""
            tqdm.write(f"iteration {iteration}/{config.iterations}: train loss {row['train_loss']:.4f}, "
                       f"{_format_scores(row)}, lr {lr:.3g}, {row['images_per_s']:.2f} img/s{skipped}",
                       file=sys.stdout)
            sys.stdout.flush()
        barrier(info)
        return flat

    params = [p for p in model.parameters() if p.requires_grad]
    last_scores: dict[str, Any] | None = None
    iteration = start
    bar = tqdm(total=config.iterations, initial=start, unit="it", desc="train", disable=not (progress and info.is_main),
               file=sys.stderr, dynamic_ncols=True)
    tick = time.time()
    while iteration < config.iterations:
        epoch, step = divmod(iteration, steps_per_epoch)
        train_sampler.set_epoch(epoch, start=step * local_batch)
        train_model.train()
        for images, targets in loader(train_set, train_sampler, local_batch, True, epoch):
            lr = max(group["lr"] for group in optimizer.param_groups)
            images, targets = to_device(images, targets, info.device)
            with torch.autocast(info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                losses = train_model(images, targets)
                loss = compute_loss(losses, config)
            skipped = guarded_step(loss, optimizer, params, info, scaler, config.clip_grad)
            scheduler.step()
            iteration += 1
            partial["images"] += config.batch_size
            if skipped:
                bad_streak += 1
                partial["skipped"] += 1
                if info.is_main:
                    tqdm.write(f"warning: iteration {iteration}: non-finite loss or gradient (loss "
                               f"{loss.detach().float().item():.4g}); step skipped ({bad_streak} in a row)",
                               file=sys.stderr)
            else:
                bad_streak = 0
                partial["loss_sum"] += loss.detach().float().item()
                partial["batches"] += 1
                for name, value in losses.items():
                    partial["terms"][name] = partial["terms"].get(name, 0.0) + value.detach().float().item()
            bar.update(1)
            if partial["batches"]:
                bar.set_postfix(loss=f"{partial['loss_sum'] / partial['batches']:.4f}", lr=f"{lr:.2e}", refresh=False)
            if bad_streak >= config.max_bad_steps:
                bar.close()
                partial["seconds"] += time.time() - tick
                save(iteration)
                barrier(info)
                raise TrainingError(
                    f"stopped: {bad_streak} steps in a row had a non-finite loss or gradient (iteration {iteration}); "
                    f"the last good weights are in {folder / ckpt.LAST}; lower --lr, add --clip-grad, or use "
                    f"--amp fp32, then continue with --resume {folder}")
            if iteration % config.eval_interval == 0 or iteration == config.iterations:
                partial["seconds"] += time.time() - tick
                last_scores = evaluate_and_record(iteration, lr)
                train_model.train()
                tick = time.time()
            elif iteration % config.checkpoint_interval == 0:
                partial["seconds"] += time.time() - tick
                tick = time.time()
                save(iteration)
            if iteration >= config.iterations:
                break
    bar.close()

    if last_scores is None:  # nothing left to train (resumed at the end): score the weights as they are
        scores, _ = evaluate_det(model, loader(val_set, val_sampler, config.eval_batch_size, False, 0), info, dtype,
                                 val_data, progress)
        last_scores = flat_scores(scores)
        save(iteration)
        if info.is_main:
            ckpt.atomic_save_safetensors(model.state_dict(), folder / "last.safetensors")
    summary = {
        **last_scores, "best": best, "iterations": iteration,
        "best_checkpoint": str(folder / ckpt.BEST), "last_checkpoint": str(folder / ckpt.LAST),
        "best_weights": str(folder / "best.safetensors"), "last_weights": str(folder / "last.safetensors"),
        "metrics": str(folder / "metrics.csv"), "plot": str(folder / "learning_curves.png"),
        "detections": str(folder / "detections_val.json"), "config": str(folder / "config.yaml"),
        "preset": config.preset, "model": config.model, "architecture": config.architecture,
        "train_ann": str(train_data.path), "val_ann": str(val_data.path), "num_classes": num_classes,
        "train_images": len(train_source), "val_images": len(val_source), "world_size": info.world_size,
        "wall_seconds": time.time() - started,
    }
    if info.is_main:
        tmp = folder / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, folder / "summary.json")
        print(f"done: {_format_scores(last_scores)}; best {config.best_metric} "
              f"{100 * max(best[config.best_metric], 0):.2f} at iteration {best['iteration']}; "
              f"{folder / 'summary.json'}", flush=True)
    return summary

