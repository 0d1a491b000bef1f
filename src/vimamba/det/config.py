"""Detection training settings: one dataclass, the reference's ViTDet COCO recipe as a preset, and a tiny one.

Merged as classification's and segmentation's are: preset < YAML file (``--config``) < command line; the run's
``config.yaml`` holds every value. ``batch_size`` is the total over all processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..train.config import ConfigError, check_all, layer_settings, make_whole_numbers
from .model import ARCHITECTURES

__all__ = ["DET_PRESETS", "DetConfig", "resolve_det_config", "BEST_METRICS"]

BEST_METRICS = ("bbox_AP", "segm_AP")


@dataclass
class DetConfig:
    # ---- what is trained, on what -------------------------------------------------------------------------
    preset: str = "coco-vim-ti"
    data: str = ""                        # a COCO-layout folder: annotations/instances_{train,val}2017.json, {train,val}2017/
    train_ann: str | None = None          # a COCO-format annotation file (default: from --data)
    train_images: str | None = None       # its image folder (default: from --data)
    val_ann: str | None = None
    val_images: str | None = None
    model: str = "vim_tiny_patch16_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    architecture: str = "cascade_mask_rcnn"
    img_size: int = 1024                  # the square canvas images are padded to (and the LSJ crop)
    drop_path: float = 0.1
    rope: bool = True
    rope_residual: bool = True
    rope_pt_grid: int = 14
    fpn_channels: int = 256
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, float, float] = (0.5, 1.0, 2.0)
    rpn_convs: int = 2
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 1000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    head_conv_dim: int = 256
    head_fc_dim: int = 1024
    roi_batch_per_image: int = 512
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    initial_checkpoint: str | None = None  # ImageNet weights for the backbone (ours or the released .pth)
    pretrained: bool = False              # fetch the released ImageNet weights through timm instead
    # ---- length, batch, optimiser, schedule ----------------------------------------------------------------------
    iterations: int = 184375
    batch_size: int = 64
    opt: str = "adamw"
    opt_eps: float = 1e-8
    opt_betas: tuple[float, float] = (0.9, 0.999)
    lr: float = 1e-4
    weight_decay: float = 0.1
    layer_decay: float = 0.837
    warmup_iters: int = 250
    warmup_factor: float = 0.001
    lr_steps: tuple[int, ...] = (163889, 177546)   # iterations at which the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    clip_grad: float | None = None
    # ---- augmentation ----------------------------------------------------------------------------------------------
    scale_range: tuple[float, float] = (0.1, 2.0)  # large-scale jitter of img_size
    hflip: float = 0.5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # ---- evaluation ------------------------------------------------------------------------------------------------
    eval_interval: int = 5000             # iterations between evaluations (and best.pth), and at the end
    checkpoint_interval: int = 5000       # iterations between last.pth saves (also at every evaluation)
    eval_batch_size: int = 1              # images a process scores at once
    best_metric: str = "segm_AP"
    # ---- running -----------------------------------------------------------------------------------------------
    amp: str = "auto"
    seed: int = 0
    workers: int = 8
    device: str | None = None
    max_bad_steps: int = 20
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """(annotation file, image folder) of ``split`` ('train' or 'val'): the explicit ones, else COCO's layout."""
        ann, images = getattr(self, f"{split}_ann"), getattr(self, f"{split}_images")
        root = Path(self.data) if self.data else None
        if ann is None:
            if root is None:
                raise ConfigError(f"no {split} annotations: pass --data DIR (COCO layout) or --{split}-ann FILE")
            ann = root / "annotations" / f"instances_{split}2017.json"
        if images is None:
            if root is None:
                raise ConfigError(f"no {split} images: pass --data DIR (COCO layout) or --{split}-images DIR")
            images = root / f"{split}2017"
        return Path(ann), Path(images)


def _coco_vim_ti() -> DetConfig:
    """Vim-Ti + Cascade Mask R-CNN on COCO, ViTDet's 100-epoch schedule (the reference's det config).

    1024x1024 large-scale jitter (0.1-2.0, crop, flip); AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.1 (none
    on norms and the position embedding), layer-wise lr decay 0.837 over the 24 blocks; batch 64 for 184,375
    iterations (100 epochs of COCO train2017), linear warmup over 250 iterations from 0.001 of the lr, lr x 0.1 at
    iterations 163,889 and 177,546 (88.9% and 96.3%); drop path 0.1; bf16/fp16 autocast on GPUs.
    """
    return DetConfig(preset="coco-vim-ti")


def _coco_vim_s() -> DetConfig:
    """Vim-S with the same recipe (its layer decay as Vim-Ti's; drop path 0.1)."""
    return DetConfig(preset="coco-vim-s", model="vim_small_patch16_224")


def _tiny() -> DetConfig:
    """A pipeline check on the CPU: 4 blocks, 64 wide, 128x128 canvas, narrow heads, 300 iterations."""
    return DetConfig(
        preset="tiny", model="vim_tiny_patch16_224", model_kwargs=dict(embed_dim=64, depth=4), img_size=128,
        drop_path=0.0, fpn_channels=64, anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_train=500,
        rpn_post_nms_train=200, rpn_pre_nms_test=500, rpn_post_nms_test=200, head_conv_dim=64, head_fc_dim=256,
        roi_batch_per_image=64, iterations=300, batch_size=4, lr=5e-4, weight_decay=0.05, layer_decay=1.0,
        warmup_iters=20, lr_steps=(250,), scale_range=(0.8, 1.25), eval_interval=100, checkpoint_interval=100,
        eval_batch_size=4, workers=0, threads=2)


DET_PRESETS = {"coco-vim-ti": _coco_vim_ti, "coco-vim-s": _coco_vim_s, "tiny": _tiny}

_INT_TUPLES = ("anchor_sizes", "lr_steps")


def resolve_det_config(preset: str | None = None, yaml_path: str | Path | None = None,
                       overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> DetConfig:
    """Preset (or a saved config ``base``), then the YAML file, then explicit overrides; checked."""
    config = layer_settings(DetConfig, DET_PRESETS, "coco-vim-ti", preset, yaml_path, overrides, base)
    make_whole_numbers(config, _INT_TUPLES)
    validate(config)
    return config


def validate(config: DetConfig) -> None:
    has_data = bool(config.data) or (config.train_ann and config.train_images and config.val_ann and config.val_images)
    checks = [
        (has_data, f"preset {config.preset!r} trains on your data: pass --data DIR (COCO layout) or "
                   f"--train-ann/--train-images/--val-ann/--val-images"),
        (config.architecture in ARCHITECTURES,
         f"architecture must be one of {', '.join(ARCHITECTURES)}, got {config.architecture!r}"),
        (config.iterations >= 1, "iterations must be at least 1"),
        (config.batch_size >= 1 and config.eval_batch_size >= 1, "batch_size and eval_batch_size must be at least 1"),
        (config.img_size >= 64 and config.img_size % 32 == 0,
         f"img_size must be a multiple of 32 of at least 64 (the pyramid reaches stride 64), got {config.img_size}"),
        (config.fpn_channels >= 1 and config.head_conv_dim >= 1 and config.head_fc_dim >= 1,
         "fpn_channels, head_conv_dim and head_fc_dim must be positive"),
        (len(config.anchor_sizes) == 5, f"anchor_sizes needs one size per pyramid level (5), got {list(config.anchor_sizes)}"),
        (config.amp in ("auto", "bf16", "fp16", "fp32"), f"amp must be auto, bf16, fp16 or fp32, got {config.amp!r}"),
        (0 < config.layer_decay <= 1, f"layer_decay must be in (0, 1], got {config.layer_decay}"),
        (0 < config.scale_range[0] <= config.scale_range[1],
         f"scale_range must be two increasing positive numbers, got {list(config.scale_range)}"),
        (0 <= config.hflip <= 1, f"hflip must be a probability, got {config.hflip}"),
        (list(config.lr_steps) == sorted(config.lr_steps), f"lr_steps must increase, got {list(config.lr_steps)}"),
        (config.warmup_iters >= 0 and 0 < config.warmup_factor <= 1,
         "warmup_iters must be >= 0 and warmup_factor in (0, 1]"),
        (config.eval_interval >= 1 and config.checkpoint_interval >= 1,
         "eval_interval and checkpoint_interval must be at least 1"),
        (config.best_metric in BEST_METRICS, f"best_metric must be one of {', '.join(BEST_METRICS)}, got "
                                             f"{config.best_metric!r}"),
        (config.max_bad_steps >= 1, "max_bad_steps must be at least 1"),
        (not (config.initial_checkpoint and config.pretrained),
         "give the ImageNet weights either as --initial-checkpoint FILE or as --pretrained, not both"),
    ]
    check_all(checks)
