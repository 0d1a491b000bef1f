"""The training loop: one process or torchrun's (DDP, or FSDP2 with ``fsdp``), resumable at any batch, guarded
against non-finite steps.

``train(config, output)`` builds everything from timm's factories (model, transforms, Mixup, losses,
optimiser, scheduler, EMA), trains, evaluates each epoch (distributed: every process scores its share and
the counts are summed), and writes into ``output``: ``last.pth`` / ``best.pth`` (+ ``.safetensors``),
``metrics.csv`` / ``metrics.jsonl``, ``learning_curves.png``, ``config.yaml`` and finally ``summary.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from .. import __version__, create_model
from ..data import (EpochSampler, SeededTransformDataset, digits_split, epoch_loader, folder_source,
                    resolve_split_folder)
from ..models import CheckpointError
from . import checkpoint as ckpt
from .config import TrainConfig
from . import fsdp
from .distributed import (DistInfo, all_reduce_max, all_reduce_sum, barrier, broadcast_object, cleanup, gather_objects,
                          init_distributed)
from .metrics import plot_curves, write_metrics, write_tensorboard
from .optim import EpochSchedule, build_optimizer, build_scheduler
from .step import guarded_step

__all__ = ["TrainingError", "train", "run_folder_holds_run", "default_output", "evaluate", "build_eval_transform"]

RUN_MARKERS = ("summary.json", "last.pth", "best.pth")  # a folder with only config.yaml died before its first save


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or the output folder/checkpoint does not fit); said in one line."""


# ---- small helpers -----------------------------------------------------------------------------------------
def default_output(preset: str) -> Path:
    return Path("runs") / f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{preset}"


def run_folder_holds_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / m).exists() for m in RUN_MARKERS)


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """None for fp32; bf16 by default on GPUs that support it, fp16 on older ones, fp32 on the CPU."""
    choice = config.amp
    if choice == "auto":
        if device.type != "cuda":
            return None
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[choice]


def build_eval_transform(config: TrainConfig):
    from timm.data import create_transform

    return create_transform(config.img_size, is_training=False, interpolation=config.interpolation,
                            crop_pct=config.crop_pct, mean=tuple(config.mean), std=tuple(config.std))


def build_train_transform(config: TrainConfig):
    from timm.data import create_transform

    return create_transform(
        config.img_size, is_training=True, scale=tuple(config.scale), ratio=tuple(config.ratio), hflip=config.hflip,
        color_jitter=config.color_jitter, auto_augment=config.aa, interpolation=config.train_interpolation,
        mean=tuple(config.mean), std=tuple(config.std), re_prob=config.reprob, re_mode=config.remode,
        re_count=config.recount)


def load_sources(config: TrainConfig):
    if config.data == "digits":
        return digits_split("train"), digits_split("val")
    train_source = folder_source(resolve_split_folder(config.data, "train"), strict=config.strict_data)
    class_to_idx = {name: i for i, name in enumerate(train_source.classes)}
    val_source = folder_source(resolve_split_folder(config.data, "val"), strict=config.strict_data,
                               class_to_idx=class_to_idx)
    val_source.classes = train_source.classes
    return train_source, val_source


def build_model(config: TrainConfig, num_classes: int, load_initial: bool = True) -> nn.Module:
    kwargs = dict(config.model_kwargs)
    kwargs.setdefault("img_size", config.img_size)
    model = create_model(config.model, num_classes=num_classes, drop_path_rate=config.drop_path,
                         drop_rate=config.drop, **kwargs)
    if config.initial_checkpoint and load_initial:
        from ..models import load_checkpoint
        from ..models.vim import checkpoint_filter_fn

        def keep_own_head(state_dict, m):
            # Fine-tuning from another class count: the head is re-initialised, everything else must fit.
            state_dict = checkpoint_filter_fn(state_dict, m)
            own = m.state_dict()
            for key in ("head.weight", "head.bias"):
                if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
                    state_dict[key] = own[key]
            return state_dict

        load_checkpoint(model, config.initial_checkpoint, filter_fn=keep_own_head)
    return model


def check_resume_fits(saved: dict[str, Any], config: TrainConfig, num_classes: int, path: Path) -> None:
    ckpt.check_same_settings(saved["config"], vars(config), ("model", "model_kwargs", "img_size"), path)
    if saved.get("num_classes") != num_classes:
        raise CheckpointError(f"cannot resume from {path}: it has {saved.get('num_classes')} classes, the data has "
                              f"{num_classes}")


def compute_loss(criterion, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss (a separate function so tests can inject failures)."""
    return criterion(output, target)


@torch.no_grad()
def evaluate(model: nn.Module, loader, info: DistInfo, dtype: torch.dtype | None, desc: str = "eval",
             progress: bool = True) -> dict[str, float]:
    """Top-1/top-5 accuracy (fractions) and mean cross-entropy; counts summed over processes."""
    model.eval()
    sharded = fsdp.is_fsdp(model)
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # correct1, correct5, loss, count
    bar = tqdm(total=len(loader.sampler) if hasattr(loader, "sampler") else None, unit="img", desc=desc,
               leave=False, disable=not (progress and info.is_main), file=sys.stderr, dynamic_ncols=True)
    image_shape = None
    for images, targets in loader:
        images, targets = images.to(info.device, non_blocking=True), targets.to(info.device, non_blocking=True)
        image_shape = tuple(images.shape[1:])
        with torch.autocast(info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = model(images)
        output = output.float()
        k = min(5, output.shape[1])
        top = output.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        sums[0] += hits[:, 0].sum()
        sums[1] += hits.any(dim=1).sum()
        sums[2] += F.cross_entropy(output, targets, reduction="sum")
        sums[3] += len(targets)
        bar.update(len(targets))
    bar.close()
    if sharded:
        # Every forward of a sharded model all-gathers with all processes, but the validation set is dealt
        # unevenly (a process may have one batch fewer): the short ones run discarded forwards to keep step.
        missing = all_reduce_max(len(loader), info) - len(loader)
        shape = broadcast_object(image_shape, info)  # rank 0 has the largest share, so it saw a batch
        for _ in range(missing):
            with torch.autocast(info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                model(torch.zeros((1, *shape), device=info.device))
        # The root's parameters stay gathered after a forward (FSDP expects backward next); shard them again so
        # in-place updates of the shards (EMA, optimiser) are what the next forward gathers.
        model.reshard()
    all_reduce_sum(sums, info)
    count = max(sums[3].item(), 1.0)
    return {"top1": sums[0].item() / count, "top5": sums[1].item() / count, "loss": sums[2].item() / count,
            "count": int(sums[3].item())}


# ---- the run ------------------------------------------------------------------------------------------------
def prepare_output(output: Path | None, config: TrainConfig, resume: Path | None, force: bool, info: DistInfo) -> Path:
    folder = None
    if info.is_main:
        if output is None:
            output = resume.parent if resume is not None else default_output(config.preset)
        folder = Path(output)
        continuing = resume is not None and folder.resolve() == resume.parent.resolve()
        if not continuing and run_folder_holds_run(folder) and not force:
            raise TrainingError(
                f"output folder {folder} already holds a run; continue it with --resume {folder}, "
                f"write over it with --force, or choose another --output")
    return Path(broadcast_object(str(folder) if folder else None, info))  # made once the data and model are fine


def open_run(config, output: str | os.PathLike | None, resume: str | os.PathLike | None, force: bool,
             info: DistInfo) -> tuple[Path | None, dict[str, Any] | None, Path, int]:
    """How every training loop starts: (checkpoint path to resume from, its contents, the run folder (checked, made
    later), the batch per process). ``config`` is any settings dataclass with threads, preset and batch_size."""
    if config.threads:
        torch.set_num_threads(config.threads)
    resume_path = ckpt.resolve_resume_path(resume) if resume is not None else None
    saved = ckpt.read_training_checkpoint(resume_path) if resume_path is not None else None
    folder = prepare_output(Path(output) if output else None, config, resume_path, force, info)
    if config.batch_size % info.world_size:
        raise TrainingError(f"batch size {config.batch_size} does not split over {info.world_size} processes")
    return resume_path, saved, folder, config.batch_size // info.world_size


def train(config: TrainConfig, output: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
          force: bool = False, progress: bool = True, resume_any_world_size: bool = False) -> dict[str, Any]:
    """Train as ``config`` says; returns the summary (also written to ``output/summary.json``).

    ``resume_any_world_size``: resume with another number of processes or total batch than the run had (refused
    otherwise, as the data order and random draws then differ from an uninterrupted run).
    """
    info = init_distributed(config.device, need_group=config.fsdp)
    try:
        return _train(config, output, resume, force, progress, info, resume_any_world_size)
    except KeyboardInterrupt:
        if info.is_main and _RUN_FOLDER.get("path") and (Path(_RUN_FOLDER["path"]) / ckpt.LAST).exists():
            print(f"\ninterrupted; continue from the last checkpoint with: vimamba train --resume {_RUN_FOLDER['path']}",
                  file=sys.stderr, flush=True)
        raise
    finally:
        _RUN_FOLDER.clear()
        cleanup(info)


_RUN_FOLDER: dict[str, str] = {}


def check_resume_layout(saved: dict[str, Any], config: TrainConfig, info: DistInfo, path: Path,
                        accept: bool) -> None:
    """Refuse to resume with other processes or another total batch than the run had, unless ``accept``."""
    old_world, old_batch = len(saved["rng"]), saved["config"]["batch_size"]
    if (old_world, old_batch) == (info.world_size, config.batch_size):
        return
    had = f"{old_world} process{'es' if old_world > 1 else ''} with batch {old_batch}"
    has = f"{info.world_size} process{'es' if info.world_size > 1 else ''} with batch {config.batch_size}"
    if not accept:
        raise TrainingError(
            f"cannot resume {path} exactly: it was trained by {had}, this run has {has}; resume with {old_world} "
            f"process{'es' if old_world > 1 else ''} and --batch-size {old_batch}, or pass --resume-any-world-size "
            f"to continue with a different data order")
    if info.is_main:
        print(f"warning: resuming {path} (trained by {had}) with {has}: the data order and random draws differ "
              f"from an uninterrupted run", file=sys.stderr, flush=True)


def seed_process(seed: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _train(config: TrainConfig, output, resume, force: bool, progress: bool, info: DistInfo,
           resume_any_world_size: bool = False) -> dict[str, Any]:
    started = time.time()
    resume_path, saved, folder, local_batch = open_run(config, output, resume, force, info)
    _RUN_FOLDER["path"] = str(folder)
    if (config.mixup > 0 or config.cutmix > 0) and local_batch % 2:
        raise TrainingError(f"mixup/cutmix need an even batch per process (got {local_batch})")
    if saved is not None:
        check_resume_layout(saved, config, info, resume_path, resume_any_world_size)

    # Data (the number of classes comes from it).
    train_source, val_source = load_sources(config)
    num_classes = train_source.num_classes
    if saved is not None:
        check_resume_fits(saved, config, num_classes, resume_path)
    train_set = SeededTransformDataset(train_source, build_train_transform(config))
    val_set = SeededTransformDataset(val_source, build_eval_transform(config))
    train_sampler = EpochSampler(len(train_set), info.world_size, info.rank, shuffle=True, seed=config.seed,
                                 repeats=config.aug_repeats)
    val_sampler = EpochSampler(len(val_set), info.world_size, info.rank, shuffle=False, pad=False)
    steps_per_epoch = len(train_sampler) // local_batch
    if steps_per_epoch < 1:
        raise TrainingError(f"{len(train_set)} training images make no full batch of {config.batch_size}")

    def loader(dataset, sampler, batch_size, drop_last, epoch):
        return epoch_loader(dataset, sampler, batch_size, drop_last=drop_last, seed=config.seed, epoch=epoch,
                            workers=config.workers, pin_memory=info.device.type == "cuda")

    # Model: the same initial weights on every process.
    torch.manual_seed(config.seed)
    model = build_model(config, num_classes, load_initial=saved is None).to(info.device)
    num_params = sum(p.numel() for p in model.parameters())
    dtype = amp_dtype(config, info.device)
    ema = None
    if config.model_ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=config.model_ema_decay)
    train_model: nn.Module = model
    if config.fsdp:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        # On the CPU, low-precision gathered copies gain nothing (the CPU kernels and gloo are not faster in
        # them), so parameters stay fp32 there and autocast alone sets the compute dtype, as without FSDP.
        param_dtype = dtype if info.device.type == "cuda" else None
        fsdp.shard_model(model, mesh, param_dtype)
        if ema is not None:
            # The EMA copy is sharded exactly like the model (same mesh, same dim-0 chunks), so timm's update,
            # an elementwise lerp over the state dicts, runs shard against shard on each process: no gathering
            # per step and 1/world of the EMA memory, and since the lerp is elementwise it equals the unsharded
            # EMA. The EMA is gathered whole only to be evaluated (forwards) and saved.
            fsdp.shard_model(ema.module, mesh, param_dtype)
    elif info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    lr = config.resolved_lr()
    optimizer = build_optimizer(model, config, lr)  # after sharding: FSDP replaces the parameters
    scheduler = build_scheduler(optimizer, config)
    schedule = EpochSchedule(optimizer, scheduler)
    scaler = torch.amp.GradScaler(info.device.type) if dtype == torch.float16 else None

    mixup_fn = None
    if config.mixup > 0 or config.cutmix > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy
        mixup_fn = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                         switch_prob=config.mixup_switch_prob, mode=config.mixup_mode,
                         label_smoothing=config.smoothing, num_classes=num_classes)
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif config.smoothing > 0:
        from timm.loss import LabelSmoothingCrossEntropy
        criterion = LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    # Position and history; a resume restores them all.
    start_epoch, start_step, optimizer_steps = 0, 0, 0
    history: list[dict[str, Any]] = []
    best = {"val_top1": -1.0, "epoch": None}
    partial = {"loss_sum": 0.0, "batches": 0, "skipped": 0, "images": 0, "seconds": 0.0}
    bad_streak = 0
    if saved is not None:
        if config.fsdp:
            fsdp.load_model_state(model, saved["model"])
            if ema is not None and "model_ema" in saved:
                fsdp.load_model_state(ema.module, saved["model_ema"])
            fsdp.load_optimizer_state(model, optimizer, saved["optimizer"])
        else:
            model.load_state_dict(saved["model"])
            if ema is not None and "model_ema" in saved:
                ema.module.load_state_dict(saved["model_ema"])
            optimizer.load_state_dict(saved["optimizer"])
        # The schedule is not loaded: it is rebuilt from the settings (EpochSchedule sets each epoch's lr from
        # them), so a longer run or another lr redraws it.
        if info.is_main and saved["config"].get("epochs") != config.epochs:
            print(f"note: the schedule now spans {config.epochs} epochs (the run had {saved['config'].get('epochs')})",
                  flush=True)
        old = saved["config"]
        old_lr = old["lr"] if old.get("lr") is not None else old["lr_base"] * old["batch_size"] / old["lr_base_size"]
        if info.is_main and abs(old_lr - lr) > 1e-12 * max(abs(lr), abs(old_lr)):
            print(f"note: the schedule now peaks at lr {lr:.3g} (the run had {old_lr:.3g})", flush=True)
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        start_epoch, start_step = saved["epoch"], saved["step_in_epoch"]
        old_batch = saved["config"]["batch_size"]
        if start_step and old_batch != config.batch_size:
            # The images done, in whole batches of the new size: rounding down repeats under one batch of them.
            start_step = start_step * old_batch // config.batch_size
        optimizer_steps = saved["optimizer_steps"]
        history, best, partial = saved["history"], saved["best"], saved["partial"]
        bad_streak = saved.get("bad_streak", 0)
        if len(saved["rng"]) == info.world_size:
            ckpt.restore_rng(saved["rng"][info.rank])
        else:  # no saved state belongs to this process: fresh draws, different from the first run's
            seed_process(config.seed + info.rank + 1_000_003 * (optimizer_steps + 1))
    else:
        seed_process(config.seed + info.rank)

    config_dump = {**config.to_dict(), "resolved": {
        "lr": lr, "num_classes": num_classes, "classes": train_source.classes[:1000], "world_size": info.world_size,
        "batch_per_process": local_batch, "amp_dtype": str(dtype).replace("torch.", "") if dtype else "fp32",
        "device": str(info.device), "train_images": len(train_source), "val_images": len(val_source),
        "params": num_params, "vimamba": __version__, "torch": str(torch.__version__)}}
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        if saved is not None and folder.resolve() != resume_path.parent.resolve():
            import shutil  # continuing into another folder: it gets the run's best weights too

            for name in (ckpt.BEST, "best.safetensors"):
                if (resume_path.parent / name).is_file():
                    shutil.copyfile(resume_path.parent / name, folder / name)
        tmp = folder / ".config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(config_dump, sort_keys=False))
        os.replace(tmp, folder / "config.yaml")
        where = "resuming at epoch %d, batch %d" % (start_epoch + 1, start_step) if saved else "training"
        print(f"{where} {config.model} ({num_params / 1e6:.2f}M parameters) on {config.data}: "
              f"{len(train_source)} train / {len(val_source)} val images, {num_classes} classes, "
              f"{config.epochs} epochs, batch {config.batch_size}, lr {lr:.3g}, "
              f"{'fp32' if dtype is None else config_dump['resolved']['amp_dtype']} on {info.device}"
              f"{f' x {info.world_size} processes' if info.distributed else ''}; output {folder}", flush=True)

    def save(path_name: str, epoch: int, step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Every process hands over its random state (and under FSDP its shards); the main one writes the file.

        Returns the model's and the EMA's full state dicts on the main process (empty elsewhere under FSDP).
        """
        rng_states = gather_objects(ckpt.capture_rng(), info)
        if config.fsdp:
            weights = fsdp.full_model_state(model)
            ema_weights = fsdp.full_model_state(ema.module) if ema is not None else None
            optimizer_state = fsdp.full_optimizer_state(model, optimizer)
        else:
            weights = model.state_dict()
            ema_weights = ema.module.state_dict() if ema is not None else None
            optimizer_state = optimizer.state_dict() if info.is_main else {}
        if not info.is_main:
            return weights, ema_weights
        state = {
            "model": weights,
            "optimizer": optimizer_state,
            "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "step_in_epoch": step, "optimizer_steps": optimizer_steps,
            "history": history, "best": best, "partial": partial, "bad_streak": bad_streak,
            "rng": rng_states, "config": config.to_dict(), "num_classes": num_classes,
            "classes": train_source.classes, "vimamba": __version__,
        }
        if ema_weights is not None:
            state["model_ema"] = ema_weights
        ckpt.atomic_save(state, folder / path_name)
        return weights, ema_weights

    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(start_epoch, config.epochs):
        first = start_step if epoch == start_epoch else 0
        if first == 0:
            partial = {"loss_sum": 0.0, "batches": 0, "skipped": 0, "images": 0, "seconds": 0.0}
        train_sampler.set_epoch(epoch, start=first * local_batch)
        train_loader = loader(train_set, train_sampler, local_batch, True, epoch)
        train_model.train()
        epoch_lr = schedule.start_epoch(epoch)
        bar = tqdm(total=steps_per_epoch * config.batch_size, initial=first * config.batch_size, unit="img",
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and info.is_main),
                   file=sys.stderr, dynamic_ncols=True, unit_scale=False)
        tick = time.time()
        step = first
        for images, targets in train_loader:
            images, targets = images.to(info.device, non_blocking=True), targets.to(info.device, non_blocking=True)
            if mixup_fn is not None:
                images, targets = mixup_fn(images, targets)
            with torch.autocast(info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                output_ = train_model(images)
                loss = compute_loss(criterion, output_, targets)
            skipped = guarded_step(loss, optimizer, params, info, scaler, config.clip_grad)
            optimizer_steps += 0 if skipped else 1
            if skipped:
                bad_streak += 1
                partial["skipped"] += 1
                if info.is_main:
                    tqdm.write(f"warning: epoch {epoch + 1} batch {step + 1}: non-finite loss or gradient "
                               f"(loss {loss.detach().float().item():.4g}); step skipped "
                               f"({bad_streak} in a row)", file=sys.stderr)
            else:
                bad_streak = 0
                if ema is not None:
                    ema.update(model, step=optimizer_steps)
                partial["loss_sum"] += loss.detach().float().item()
                partial["batches"] += 1
            step += 1
            partial["images"] += config.batch_size
            bar.update(config.batch_size)
            if partial["batches"]:
                bar.set_postfix(loss=f"{partial['loss_sum'] / partial['batches']:.4f}", lr=f"{epoch_lr:.2e}",
                                refresh=False)
            if bad_streak >= config.max_bad_steps:
                bar.close()
                save(ckpt.LAST, epoch, step)
                barrier(info)
                raise TrainingError(
                    f"stopped: {bad_streak} steps in a row had a non-finite loss or gradient (epoch {epoch + 1}, "
                    f"batch {step}); the last good weights are in {folder / ckpt.LAST}; lower --lr, add "
                    f"--clip-grad, or use --amp fp32, then continue with --resume {folder}")
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step < steps_per_epoch:
                partial["seconds"] += time.time() - tick
                tick = time.time()
                save(ckpt.LAST, epoch, step)
        bar.close()
        partial["seconds"] += time.time() - tick

        # Evaluate (raw model, and the EMA beside it).
        eval_model = model
        val = evaluate(eval_model, loader(val_set, val_sampler, local_batch, False, 0), info, dtype,
                       progress=progress)
        row = {"epoch": epoch + 1, "lr": epoch_lr,
               "train_loss": partial["loss_sum"] / max(partial["batches"], 1),
               "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
               "skipped_steps": partial["skipped"],
               "images_per_s": partial["images"] / max(partial["seconds"], 1e-9),
               "epoch_seconds": partial["seconds"]}
        if ema is not None:
            ema_val = evaluate(ema.module, loader(val_set, val_sampler, local_batch, False, 0), info, dtype,
                               desc="eval EMA", progress=progress)
            row.update(ema_val_loss=ema_val["loss"], ema_val_top1=ema_val["top1"], ema_val_top5=ema_val["top5"])
        history.append(row)
        is_best = val["top1"] > best["val_top1"]
        if is_best:
            best = {"val_top1": val["top1"], "val_top5": val["top5"], "epoch": epoch + 1}
        partial = {"loss_sum": 0.0, "batches": 0, "skipped": 0, "images": 0, "seconds": 0.0}
        weights, ema_weights = save(ckpt.LAST, epoch + 1, 0)
        if info.is_main:
            ckpt.atomic_save_safetensors(weights, folder / "last.safetensors")
            if ema_weights is not None:
                ckpt.atomic_save_safetensors(ema_weights, folder / "last_ema.safetensors")
            if is_best:
                # The best checkpoint is the complete last one of this epoch (a hard link would do on most disks).
                import shutil
                tmp = folder / f".{ckpt.BEST}.tmp"
                shutil.copyfile(folder / ckpt.LAST, tmp)
                os.replace(tmp, folder / ckpt.BEST)
                ckpt.atomic_save_safetensors(weights, folder / "best.safetensors")
            write_metrics(history, folder)
            write_tensorboard(row, folder)
            plot_curves(history, folder / "learning_curves.png")
            ema_text = f", EMA top-1 {100 * row['ema_val_top1']:.2f}%" if ema is not None else ""
            skipped_text = f", {row['skipped_steps']} steps skipped" if row["skipped_steps"] else ""
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}, val loss "
                  f"{val['loss']:.4f}, top-1 {100 * val['top1']:.2f}%, top-5 {100 * val['top5']:.2f}%{ema_text}, "
                  f"lr {epoch_lr:.3g}, {row['images_per_s']:.0f} img/s, {row['epoch_seconds']:.1f} s"
                  f"{skipped_text}", flush=True)
        barrier(info)

    if start_epoch >= config.epochs:  # nothing left to train (e.g. resumed into another folder): keep a last.pth
        weights, _ = save(ckpt.LAST, start_epoch, start_step)
        if info.is_main:
            ckpt.atomic_save_safetensors(weights, folder / "last.safetensors")

    final = history[-1] if history else {}
    summary = {
        "val_top1": final.get("val_top1"), "val_top5": final.get("val_top5"), "val_loss": final.get("val_loss"),
        "best_val_top1": best["val_top1"], "best_epoch": best["epoch"], "epochs": len(history),
        "best_checkpoint": str(folder / ckpt.BEST), "last_checkpoint": str(folder / ckpt.LAST),
        "best_weights": str(folder / "best.safetensors"), "last_weights": str(folder / "last.safetensors"),
        "metrics": str(folder / "metrics.csv"), "plot": str(folder / "learning_curves.png"),
        "config": str(folder / "config.yaml"), "preset": config.preset, "model": config.model,
        "data": config.data, "num_classes": num_classes, "train_images": len(train_source),
        "val_images": len(val_source), "world_size": info.world_size, "optimizer_steps": optimizer_steps,
        "wall_seconds": time.time() - started,
    }
    if ema is not None and final:
        summary.update(ema_val_top1=final.get("ema_val_top1"), ema_val_top5=final.get("ema_val_top5"))
    if info.is_main:
        tmp = folder / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, folder / "summary.json")
        print(f"done: validation top-1 {100 * summary['val_top1']:.2f}% (best {100 * best['val_top1']:.2f}% at "
              f"epoch {best['epoch']}), top-5 {100 * summary['val_top5']:.2f}%; {folder / 'summary.json'}",
              flush=True)
    return summary
