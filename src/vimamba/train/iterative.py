"""The iteration-based training loop shared by segmentation and detection: one process or torchrun's, resumable,
guarded against non-finite steps.

Built on the classification loop's machinery: processes and devices (``train.distributed``), atomic checkpoints
and random-state capture (``train.checkpoint``), the output-folder rules and mixed precision (``train.trainer``),
the guarded optimiser step (``train.step``), metrics files (``train.metrics``), and the resumable sampler
(``data``): every batch and its augmentation are functions of (seed, epoch, position), so a run stopped and
resumed ends where an uninterrupted one does.

What differs between tasks (data, model, loss, evaluation, how scores read) comes from an ``IterationTask``;
``train_iterations(task, output)`` writes into ``output``: ``last.pth`` (every ``checkpoint_interval``
iterations and at each evaluation) and ``best.pth`` (by the task's ``best_metric``), with ``.safetensors``
weights beside them, ``metrics.csv`` / ``metrics.jsonl`` (one row per evaluation), ``learning_curves.png``,
``config.yaml``, ``summary.json``, and whatever files the task adds per evaluation.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..data import EpochSampler, epoch_loader
from . import checkpoint as ckpt
from .distributed import DistInfo, barrier, cleanup, gather_objects, init_distributed
from .metrics import plot_iteration_curves, replace_text, write_metrics, write_tensorboard
from .step import guarded_step
from .trainer import TrainingError, amp_dtype, open_run, seed_process

__all__ = ["Evaluation", "IterationTask", "TaskData", "train_iterations", "set_schedule_position"]


@dataclass
class TaskData:
    """The two splits as ``SeededTransformDataset``s, the class names, and the split sizes the run reports."""

    train_set: Any
    val_set: Any
    classes: list[str]
    train_images: int
    val_images: int


@dataclass
class Evaluation:
    """One evaluation: ``scores`` are the flat numbers a metrics row holds (the best checkpoint is picked among
    them); ``details`` whatever else the task wants for its summary or files (per-class scores, detections)."""

    scores: dict[str, Any]
    details: Any = None


class IterationTask:
    """What one task brings to ``train_iterations``; the defaults are those a task without extras needs."""

    name: str  # marks the checkpoints and config.yaml, so a run of another task is refused clearly
    command: str  # the CLI group, for the "continue with" hint
    best_metric: str  # the score in ``Evaluation.scores`` that picks best.pth (higher is better)
    curve_keys: tuple[str, ...]  # the scores drawn in learning_curves.png
    curve_label: str
    train_images_noun = "training images"  # as counted by TaskData.train_images
    eval_batch_size = 1
    collate_fn: Callable | None = None
    tracks_loss_terms = False  # training_loss returns the terms of the loss, averaged into each metrics row
    images_per_s_format = ".1f"

    def __init__(self, config):
        self.config = config

    def check_batch(self, local_batch: int, info: DistInfo) -> None:
        """Refuse a per-process batch the model cannot train on (before any data is read)."""

    def load_data(self, classes_known: Callable[[list[str]], None]) -> TaskData:
        """Read both splits; call ``classes_known`` with the class names as soon as they are read (a resumed run
        is checked against them there, before anything else can fail)."""
        raise NotImplementedError

    def check_resume_fits(self, saved: dict[str, Any], classes: list[str], path: Path) -> None:
        """Refuse a checkpoint of another task, or one whose model or classes differ from this run's."""
        raise NotImplementedError

    def build_model(self, num_classes: int, info: DistInfo, load_initial: bool) -> nn.Module:
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module):
        """(optimiser, per-iteration ``LambdaLR``)."""
        raise NotImplementedError

    def to_device(self, images, targets, device: torch.device):
        return images.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def training_loss(self, model: nn.Module, images, targets) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """(loss, its named terms or None), under autocast."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader, info: DistInfo, dtype: torch.dtype | None,
                 progress: bool) -> Evaluation:
        raise NotImplementedError

    def extra_resolved(self) -> dict[str, Any]:
        """Entries of config.yaml's ``resolved`` besides the class names."""
        return {}

    def checkpoint_extras(self, data: TaskData) -> dict[str, Any]:
        """What a checkpoint carries besides the training state, for ``eval``/``predict`` and resume checks."""
        return {"classes": data.classes}

    def describe(self, num_params: int) -> str:
        """The model and data in the first line a run prints."""
        raise NotImplementedError

    def input_size(self) -> str:
        raise NotImplementedError

    def format_scores(self, scores: dict[str, Any]) -> str:
        raise NotImplementedError

    def write_evaluation_files(self, evaluation: Evaluation, folder: Path) -> None:
        """Files an evaluation leaves in the run folder besides the metrics (main process only)."""

    def summary_scores(self, last: Evaluation, best: dict[str, Any], iterations: int) -> dict[str, Any]:
        """summary.json's first entries: the last and best scores and the iterations run."""
        raise NotImplementedError

    def summary_files(self, folder: Path) -> dict[str, str]:
        """Task files named in summary.json besides the checkpoints, metrics and plot."""
        return {}

    def summary_run(self, data: TaskData) -> dict[str, Any]:
        """What the run trained on, in summary.json, after the preset and model."""
        return {}

    def done_message(self, last: Evaluation, best: dict[str, Any]) -> str:
        raise NotImplementedError


def set_schedule_position(scheduler, optimizer, iteration: int) -> None:
    """Put the per-iteration schedule at ``iteration`` (on resume): the lr is a function of the iteration alone."""
    scheduler.last_epoch = iteration
    for group, base, schedule in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * schedule(iteration)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def train_iterations(task: IterationTask, output: str | os.PathLike | None = None,
                     resume: str | os.PathLike | None = None, force: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """Train as ``task.config`` says; returns the summary (also written to ``output/summary.json``)."""
    info = init_distributed(task.config.device)
    where: dict[str, Path] = {}
    try:
        return _train(task, output, resume, force, progress, info, where)
    except KeyboardInterrupt:
        folder = where.get("folder")
        if info.is_main and folder is not None and (folder / ckpt.LAST).exists():
            print(f"\ninterrupted; continue from the last checkpoint with: vimamba {task.command} train --resume "
                  f"{folder}", file=sys.stderr, flush=True)
        raise
    finally:
        cleanup(info)


def _train(task: IterationTask, output, resume, force: bool, progress: bool, info: DistInfo,
           where: dict[str, Path]) -> dict[str, Any]:
    config = task.config
    started = time.time()
    resume_path, saved, folder, local_batch = open_run(config, output, resume, force, info)
    where["folder"] = folder
    task.check_batch(local_batch, info)

    def classes_known(classes: list[str]) -> None:
        if saved is not None:
            task.check_resume_fits(saved, classes, resume_path)

    data = task.load_data(classes_known)
    classes, num_classes = data.classes, len(data.classes)
    train_sampler = EpochSampler(len(data.train_set), info.world_size, info.rank, shuffle=True, seed=config.seed)
    val_sampler = EpochSampler(len(data.val_set), info.world_size, info.rank, shuffle=False, pad=False)
    steps_per_epoch = len(train_sampler) // local_batch
    if steps_per_epoch < 1:
        raise TrainingError(f"{len(data.train_set)} {task.train_images_noun} make no full batch of "
                            f"{config.batch_size}")

    def loader(dataset, sampler, batch_size, drop_last, epoch):
        return epoch_loader(dataset, sampler, batch_size, drop_last=drop_last, seed=config.seed, epoch=epoch,
                            workers=config.workers, pin_memory=info.device.type == "cuda",
                            collate_fn=task.collate_fn)

    torch.manual_seed(config.seed)  # the same initial weights on every process
    model = task.build_model(num_classes, info, load_initial=saved is None).to(info.device)
    num_params = sum(p.numel() for p in model.parameters())
    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    optimizer, scheduler = task.build_optimizer(model)
    dtype = amp_dtype(config, info.device)
    scaler = torch.amp.GradScaler(info.device.type) if dtype == torch.float16 else None

    start = 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {task.best_metric: -1.0, "iteration": None}
    # what the loop sums between evaluations; saved with the checkpoint, so a resumed run's next row is whole
    fresh: dict[str, Any] = {"loss_sum": 0.0, "batches": 0, "skipped": 0, "images": 0, "seconds": 0.0}
    if task.tracks_loss_terms:
        fresh["terms"] = {}
    partial = copy.deepcopy(fresh)
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
        set_schedule_position(scheduler, optimizer, start)
        history, best, partial, bad_streak = saved["history"], saved["best"], saved["partial"], saved["bad_streak"]
        rng = saved["rng"]
        if len(rng) != info.world_size:
            raise TrainingError(f"{resume_path} was written by {len(rng)} processes; resume it with as many "
                                f"(this run has {info.world_size})")
        ckpt.restore_rng(rng[info.rank])
    else:
        seed_process(config.seed + info.rank)

    dtype_name = "fp32" if dtype is None else str(dtype).replace("torch.", "")
    config_dump = {**config.to_dict(), "resolved": {
        "task": task.name, "num_classes": num_classes, "classes": classes, **task.extra_resolved(),
        "world_size": info.world_size, "batch_per_process": local_batch, "amp_dtype": dtype_name,
        "device": str(info.device), "train_images": data.train_images, "val_images": data.val_images,
        "iterations_per_epoch": steps_per_epoch, "params": num_params, "vimamba": __version__,
        "torch": str(torch.__version__)}}
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        if saved is not None and folder.resolve() != resume_path.parent.resolve():
            for name in (ckpt.BEST, "best.safetensors"):  # continuing into another folder: the best so far too
                if (resume_path.parent / name).is_file():
                    shutil.copyfile(resume_path.parent / name, folder / name)
        replace_text(folder / "config.yaml", yaml.safe_dump(config_dump, sort_keys=False))
        what = f"resuming at iteration {start}" if saved is not None else "training"
        print(f"{what} {task.describe(num_params)}: "
              f"{data.train_images} train / {data.val_images} val images, {num_classes} classes, "
              f"{config.iterations} iterations, batch {config.batch_size}, {task.input_size()}, lr {config.lr:.3g}, "
              f"{dtype_name} on {info.device}{f' x {info.world_size} processes' if info.distributed else ''}; "
              f"output {folder}", flush=True)

    def save(iteration: int) -> None:
        rng_states = gather_objects(ckpt.capture_rng(), info)  # every process hands over its random state
        if not info.is_main:
            return
        state = {
            "task": task.name, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "iteration": iteration,
            "history": history, "best": best, "partial": partial, "bad_streak": bad_streak, "rng": rng_states,
            "config": config.to_dict(), **task.checkpoint_extras(data), "vimamba": __version__,
        }
        ckpt.atomic_save(state, folder / ckpt.LAST)

    def evaluate() -> Evaluation:
        return task.evaluate(model, loader(data.val_set, val_sampler, task.eval_batch_size, False, 0), info, dtype,
                             progress)

    def evaluate_and_record(iteration: int, lr: float) -> Evaluation:
        nonlocal best, partial
        evaluation = evaluate()
        scores = evaluation.scores
        batches = max(partial["batches"], 1)
        row = {"iteration": iteration, "epoch": round(iteration / steps_per_epoch, 4), "lr": lr,
               "train_loss": partial["loss_sum"] / batches,
               **{k: v / batches for k, v in sorted(partial.get("terms", {}).items())}, **scores,
               "skipped_steps": partial["skipped"], "images_per_s": partial["images"] / max(partial["seconds"], 1e-9),
               "train_seconds": partial["seconds"]}
        history.append(row)
        value = scores.get(task.best_metric)
        is_best = value is not None and value > best[task.best_metric]
        if is_best:
            best = {**scores, "iteration": iteration}
        partial = copy.deepcopy(fresh)
        save(iteration)
        if info.is_main:
            ckpt.atomic_save_safetensors(model.state_dict(), folder / "last.safetensors")
            if is_best:  # the best checkpoint is a complete copy of this evaluation's last one
                tmp = folder / f".{ckpt.BEST}.tmp"
                shutil.copyfile(folder / ckpt.LAST, tmp)
                os.replace(tmp, folder / ckpt.BEST)
                ckpt.atomic_save_safetensors(model.state_dict(), folder / "best.safetensors")
            task.write_evaluation_files(evaluation, folder)
            write_metrics(history, folder)
            # write_tensorboard steps on a row's "epoch"; an iteration-based run's step is the iteration
            write_tensorboard({**{k: v for k, v in row.items() if k not in ("epoch", "iteration")},
                               "epoch": iteration}, folder)
            plot_iteration_curves(history, folder / "learning_curves.png", task.curve_keys, task.curve_label)
            skipped = f", {row['skipped_steps']} steps skipped" if row["skipped_steps"] else ""
            tqdm.write(f"iteration {iteration}/{config.iterations}: train loss {row['train_loss']:.4f}, "
                       f"{task.format_scores(row)}, lr {lr:.3g}, "
                       f"{row['images_per_s']:{task.images_per_s_format}} img/s{skipped}", file=sys.stdout)
            sys.stdout.flush()
        barrier(info)
        return evaluation

    params = [p for p in model.parameters() if p.requires_grad]
    last: Evaluation | None = None
    iteration = start
    bar = tqdm(total=config.iterations, initial=start, unit="it", desc="train", disable=not (progress and info.is_main),
               file=sys.stderr, dynamic_ncols=True)
    tick = time.time()
    while iteration < config.iterations:
        epoch, step = divmod(iteration, steps_per_epoch)
        train_sampler.set_epoch(epoch, start=step * local_batch)
        train_model.train()
        for images, targets in loader(data.train_set, train_sampler, local_batch, True, epoch):
            lr = max(group["lr"] for group in optimizer.param_groups)
            images, targets = task.to_device(images, targets, info.device)
            with torch.autocast(info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss, terms = task.training_loss(train_model, images, targets)
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
                for name, value in (terms or {}).items():
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
                last = evaluate_and_record(iteration, lr)
                train_model.train()
                tick = time.time()
            elif iteration % config.checkpoint_interval == 0:
                partial["seconds"] += time.time() - tick
                tick = time.time()
                save(iteration)
            if iteration >= config.iterations:
                break
    bar.close()

    if last is None:  # nothing left to train (resumed at the end): score the weights as they are
        last = evaluate()
        save(iteration)
        if info.is_main:
            ckpt.atomic_save_safetensors(model.state_dict(), folder / "last.safetensors")
    summary = {
        **task.summary_scores(last, best, iteration),
        "best_checkpoint": str(folder / ckpt.BEST), "last_checkpoint": str(folder / ckpt.LAST),
        "best_weights": str(folder / "best.safetensors"), "last_weights": str(folder / "last.safetensors"),
        "metrics": str(folder / "metrics.csv"), "plot": str(folder / "learning_curves.png"),
        **task.summary_files(folder), "config": str(folder / "config.yaml"),
        "preset": config.preset, "model": config.model, **task.summary_run(data), "num_classes": num_classes,
        "train_images": data.train_images, "val_images": data.val_images, "world_size": info.world_size,
        "wall_seconds": time.time() - started,
    }
    if info.is_main:
        replace_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
        print(f"done: {task.done_message(last, best)}; {folder / 'summary.json'}", flush=True)
    return summary
