"""Segmentation training: iteration-based, one process or torchrun's, resumable, guarded against non-finite steps.

The classification loop's machinery is reused: processes and devices (``train.distributed``), atomic
checkpoints and random-state capture (``train.checkpoint``), the output-folder rules and mixed precision
(``train.trainer``), the guarded optimiser step (``train.step``), metrics files (``train.metrics``), and the
resumable sampler (``data``): every batch and its augmentation are functions of (seed, epoch, position),
so a run stopped and resumed ends where an uninterrupted one does.

``train_seg(config, output)`` writes into ``output``: ``last.pth`` (every ``checkpoint_interval`` iterations
and at each evaluation) and ``best.pth`` (by mIoU), with ``.safetensors`` weights beside them, ``metrics.csv``
/ ``metrics.jsonl`` (one row per evaluation), ``learning_curves.png``, ``config.yaml`` and ``summary.json``.
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
from ..train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, gather_objects, init_distributed
from ..train.metrics import write_metrics, write_tensorboard
from ..train.step import guarded_step
from ..train.trainer import TrainingError, amp_dtype, prepare_output
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
    old, new = saved["config"], config.to_dict()
    for key in _RESUME_KEYS:
        if old.get(key) != new[key]:
            raise CheckpointError(f"cannot resume from {path}: it was trained with {key}={old.get(key)!r}, "
                                  f"this run has {key}={new[key]!r}")
    if saved.get("num_classes") != num_classes:
        raise CheckpointError(f"cannot resume from {path}: it has {saved.get('num_classes')} classes, the data has "
                              f"{num_classes}")


def plot_seg_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation mIoU / mAcc / aAcc against iterations (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["iteration"] for r in rows]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(steps, [r["train_loss"] for r in rows], marker="o")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    for key in ("mIoU", "mAcc", "aAcc"):
        ax_score.plot(steps, [100 * r[key] for r in rows], marker="o", label=key)
    ax_score.set_xlabel("iteration")
    ax_score.set_ylabel("validation (%)")
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


def train_seg(config: SegConfig, output: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
              force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train as ``config`` says; returns the summary (also written to ``output/summary.json``)."""
    info = init_distributed(config.device)
    where: dict[str, Path] = {}
    try:
        return _train(config, output, resume, force, progress, info, where)
    except KeyboardInterrupt:
        folder = where.get("folder")
        if info.is_main and folder is not None and (folder / ckpt.LAST).exists():
            print(f"\ninterrupted; continue from the last checkpoint with: vimamba seg train --resume {folder}",
                  file=sys.stderr, flush=True)
        raise
    finally:
        cleanup(info)


def _sources(config: SegConfig) -> tuple[SegSource, SegSource]:
    train_source = load_split(config.data, "train", config.dataset, config.class_names)
    val_source = load_split(config.data, "val", config.dataset, config.class_names)
    if config.img_scale is None:
        check_image_sizes(train_source, config.crop_size)
    return train_source, val_source


def _train(config: SegConfig, output, resume, force: bool, progress: bool, info: DistInfo,
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
    sync_bn = info.distributed and info.device.type == "cuda"
    if local_batch < 2 and not sync_bn:
        raise TrainingError(f"BatchNorm in the heads needs at least 2 images per process (the batch gives "
                            f"{local_batch}); raise --batch-size")

    train_source, val_source = _sources(config)
    classes, num_classes = train_source.classes, train_source.num_classes
    if saved is not None:
        check_resume_fits(saved, config, num_classes, resume_path)
    train_set = SeededTransformDataset(train_source, SegTrainTransform(
        config.crop_size, config.img_scale, config.ratio_range, config.cat_max_ratio, config.hflip,
        config.photometric, config.mean, config.std), joint=True)
    val_set = SeededTransformDataset(val_source, SegEvalTransform(config.img_scale, config.mean, config.std),
                                     joint=True)
    train_sampler = EpochSampler(len(train_set), info.world_size, info.rank, shuffle=True, seed=config.seed)
    val_sampler = EpochSampler(len(val_set), info.world_size, info.rank, shuffle=False, pad=False)
    steps_per_epoch = len(train_sampler) // local_batch
    if steps_per_epoch < 1:
        raise TrainingError(f"{len(train_set)} training images make no full batch of {config.batch_size}")

    def loader(dataset, sampler, batch_size, drop_last, epoch):
        generator = torch.Generator()
        generator.manual_seed(config.seed * 7919 + epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=config.workers, pin_memory=info.device.type == "cuda",
                          persistent_workers=False, generator=generator)

    torch.manual_seed(config.seed)  # the same initial weights on every process
    model = build_seg_model(config, num_classes, load_initial=saved is None)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(info.device)
    num_params = sum(p.numel() for p in model.parameters())
    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    optimizer, scheduler = build_seg_optimizer(model, config)
    dtype = amp_dtype(config, info.device)
    scaler = torch.amp.GradScaler(info.device.type) if dtype == torch.float16 else None

    start = 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"mIoU": -1.0, "iteration": None}
    fresh = {"loss_sum": 0.0, "batches": 0, "skipped": 0, "images": 0, "seconds": 0.0}
    partial = dict(fresh)
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
    config_dump = {**config.to_dict(), "resolved": {
        "task": TASK, "num_classes": num_classes, "classes": classes, "world_size": info.world_size,
        "batch_per_process": local_batch, "amp_dtype": dtype_name, "device": str(info.device),
        "train_images": len(train_source), "val_images": len(val_source), "iterations_per_epoch": steps_per_epoch,
        "params": num_params, "vimamba": __version__, "torch": str(torch.__version__)}}
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
        print(f"{what} {config.model} + UperNet ({num_params / 1e6:.2f}M parameters) on {config.data}: "
              f"{len(train_source)} train / {len(val_source)} val images, {num_classes} classes, "
              f"{config.iterations} iterations, batch {config.batch_size}, crop {config.crop_size}, lr {config.lr:.3g}, "
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
            "config": config.to_dict(), "num_classes": num_classes, "classes": classes, "vimamba": __version__,
        }
        ckpt.atomic_save(state, folder / ckpt.LAST)

    def evaluate_and_record(iteration: int, lr: float) -> dict[str, Any]:
        nonlocal best, partial
        broadcast_buffers(model, info)
        scores = evaluate_seg(model, loader(val_set, val_sampler, 1, False, 0), info, dtype, classes,
                              config.eval_mode, config.crop_size, config.slide_stride, progress)
        row = {"iteration": iteration, "epoch": round(iteration / steps_per_epoch, 4), "lr": lr,
               "train_loss": partial["loss_sum"] / max(partial["batches"], 1),
               "mIoU": scores["mIoU"], "mAcc": scores["mAcc"], "aAcc": scores["aAcc"],
               "skipped_steps": partial["skipped"], "images_per_s": partial["images"] / max(partial["seconds"], 1e-9),
               "train_seconds": partial["seconds"]}
        history.append(row)
        is_best = scores["mIoU"] > best["mIoU"]
        if is_best:
            best = {"mIoU": scores["mIoU"], "mAcc": scores["mAcc"], "aAcc": scores["aAcc"], "iteration": iteration}
        partial = dict(fresh)
        save(iteration)
        if info.is_main:
            ckpt.atomic_save_safetensors(model.state_dict(), folder / "last.safetensors")
            if is_best:  # the best checkpoint is a complete copy of this evaluation's last one
                tmp = folder / f".{ckpt.BEST}.tmp"
                shutil.copyfile(folder / ckpt.LAST, tmp)
                os.replace(tmp, folder / ckpt.BEST)
                ckpt.atomic_save_safetensors(model.state_dict(), folder / "best.safetensors")
            write_metrics(history, folder)
            # write_tensorboard steps on a row's "epoch"; a segmentation run's step is the iteration
            write_tensorboard({**{k: v for k, v in row.items() if k not in ("epoch", "iteration")},
                               "epoch": iteration}, folder)
            plot_seg_curves(history, folder / "learning_curves.png")
            skipped = f", {row['skipped_steps']} steps skipped" if row["skipped_steps"] else ""
            tqdm.write(f"iteration {iteration}/{config.iterations}: train loss {row['train_loss']:.4f}, "
                       f"mIoU {100 * row['mIoU']:.2f}%, mAcc {100 * row['mAcc']:.2f}%, aAcc {100 * row['aAcc']:.2f}%, "
                       f"lr {lr:.3g}, {row['images_per_s']:.1f} img/s{skipped}", file=sys.stdout)
            sys.stdout.flush()
        barrier(info)
        return scores

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
            images, targets = images.to(info.device, non_blocking=True), targets.to(info.device, non_blocking=True)
            with torch.autocast(info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = compute_loss(train_model(images), targets, config)
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
        broadcast_buffers(model, info)
        last_scores = evaluate_seg(model, loader(val_set, val_sampler, 1, False, 0), info, dtype, classes,
                                   config.eval_mode, config.crop_size, config.slide_stride, progress)
        save(iteration)
        if info.is_main:
            ckpt.atomic_save_safetensors(model.state_dict(), folder / "last.safetensors")
    summary = {
        "mIoU": last_scores["mIoU"], "mAcc": last_scores["mAcc"], "aAcc": last_scores["aAcc"],
        "best_mIoU": best["mIoU"], "best_iteration": best["iteration"], "iterations": iteration,
        "per_class_iou": dict(zip(last_scores["classes"], last_scores["iou"])),
        "best_checkpoint": str(folder / ckpt.BEST), "last_checkpoint": str(folder / ckpt.LAST),
        "best_weights": str(folder / "best.safetensors"), "last_weights": str(folder / "last.safetensors"),
        "metrics": str(folder / "metrics.csv"), "plot": str(folder / "learning_curves.png"),
        "config": str(folder / "config.yaml"), "preset": config.preset, "model": config.model, "data": config.data,
        "num_classes": num_classes, "train_images": len(train_source), "val_images": len(val_source),
        "world_size": info.world_size, "wall_seconds": time.time() - started,
    }
    if info.is_main:
        tmp = folder / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, folder / "summary.json")
        print(f"done: mIoU {100 * summary['mIoU']:.2f}% (best {100 * best['mIoU']:.2f}% at iteration "
              f"{best['iteration']}), mAcc {100 * summary['mAcc']:.2f}%, aAcc {100 * summary['aAcc']:.2f}%; "
              f"{folder / 'summary.json'}", flush=True)
    return summary
