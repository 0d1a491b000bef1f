"""Training settings: one dataclass, named presets of it, and the merge preset < YAML file < command line.

Every value a run uses is a field here, so the saved ``config.yaml`` shows the whole recipe. Field names are
timm ``train.py``'s flag names with ``-`` turned into ``_`` (``--batch-size`` -> ``batch_size``), except that
``batch_size`` is the *total* batch over all processes, as the paper states it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PRESETS", "TrainConfig", "ConfigError", "resolve_config", "preset_names"]


class ConfigError(ValueError):
    """A preset, YAML file or value that cannot be used (shown to the user as one line)."""


@dataclass
class TrainConfig:
    # ---- what is trained, on what --------------------------------------------------------------------
    preset: str = "digits"
    data: str = "digits"            # "digits" (built in) or a folder with train/ and val/ class folders
    model: str = "vim_tiny_patch16_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int = 224
    initial_checkpoint: str | None = None   # weights to start from (lsft: a 224 checkpoint's `model` entry)
    drop_path: float = 0.0
    drop: float = 0.0
    # ---- length and batch ------------------------------------------------------------------------------
    epochs: int = 300
    batch_size: int = 1024          # total over all processes
    # ---- optimiser: lr = lr_base * batch_size / lr_base_size unless lr is given ---------------------------
    opt: str = "adamw"
    opt_eps: float = 1e-8
    opt_betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    lr: float | None = None
    lr_base: float = 5e-4
    lr_base_size: int = 512
    weight_decay: float = 0.05
    decay_a_log: bool = True        # the reference decays the 2-D A_log / A_b_log; False exempts them
    clip_grad: float | None = None
    # ---- schedule (timm's factory, stepped once per epoch) -------------------------------------------------
    sched: str = "cosine"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 0
    # ---- augmentation and loss (timm's create_transform and Mixup) -----------------------------------------
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.3
    aa: str | None = "rand-m9-mstd0.5-inc1"
    train_interpolation: str = "bicubic"
    interpolation: str = "bicubic"   # evaluation
    crop_pct: float = 0.875
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1
    aug_repeats: int = 3
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # ---- EMA (timm's ModelEmaV3, kept beside the raw model) -------------------------------------------
    model_ema: bool = True
    model_ema_decay: float = 0.99996
    # ---- running ----------------------------------------------------------------------------------------------
    amp: str = "auto"               # auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on the CPU
    seed: int = 0
    workers: int = 8
    device: str | None = None
    fsdp: bool = False               # shard parameters, gradients and optimiser state (FSDP2) instead of DDP
    strict_data: bool = False
    checkpoint_every_steps: int = 0  # also save last.pth every N optimiser steps (0: at epoch ends only)
    max_bad_steps: int = 20          # stop after this many consecutive non-finite losses/gradients
    threads: int | None = None       # torch intra-op threads on the CPU (default: torch's)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else self.lr_base * self.batch_size / self.lr_base_size

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _digits() -> TrainConfig:
    """The built-in job: a 4-block, 64-wide Vim on scikit-learn's 8x8 digits upsampled to 32x32 (17 tokens)."""
    return TrainConfig(
        preset="digits", data="digits", model="vim_tiny_patch16_224",
        model_kwargs=dict(embed_dim=64, depth=4, patch_size=8, stride=8), img_size=32,
        epochs=15, batch_size=64, lr_base=1.6e-2, lr_base_size=512, weight_decay=0.05,  # lr 2e-3 at batch 64
        warmup_epochs=0, warmup_lr=1e-6, min_lr=1e-5,  # stepped per epoch, a warmup epoch would be one lost
        scale=(0.85, 1.0), ratio=(0.9, 1.1), hflip=0.0, color_jitter=0.0, aa=None,
        train_interpolation="bilinear", interpolation="bilinear", crop_pct=1.0,
        reprob=0.0, mixup=0.0, cutmix=0.0, smoothing=0.1, aug_repeats=0,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        model_ema=False, workers=0,
        threads=1,  # the reference scan is many tiny ops: one thread beats two, and far more so on a busy CPU
    )


def _imagenet_vim_ti() -> TrainConfig:
    """Vim-Ti from scratch on ImageNet: the reference's script (8 GPUs x 128)."""
    return TrainConfig(
        preset="imagenet-vim-ti", data="", model="vim_tiny_patch16_224", img_size=224,
        epochs=300, batch_size=1024, lr_base=5e-4, lr_base_size=512, weight_decay=0.1, drop_path=0.0,
    )


def _imagenet_vim_s() -> TrainConfig:
    """Vim-S from scratch on ImageNet: the reference's script (8 GPUs x 64)."""
    return TrainConfig(
        preset="imagenet-vim-s", data="", model="vim_small_patch16_224", img_size=224,
        epochs=300, batch_size=512, lr_base=1e-3, lr_base_size=512, weight_decay=0.05, drop_path=0.05,
    )


def _lsft() -> TrainConfig:
    """Long-sequence fine-tuning: the stride-8 model from a 224 checkpoint, 30 epochs at a flat 1e-5."""
    return TrainConfig(
        preset="lsft", data="", model="vim_tiny_patch16_stride8_224", img_size=224,
        epochs=30, batch_size=512, lr_base=1e-5, lr_base_size=512, weight_decay=1e-8,
        warmup_epochs=5, warmup_lr=1e-5, min_lr=1e-5,  # warmup from and cosine down to the lr itself: flat
    )


PRESETS = {
    "digits": _digits,
    "imagenet-vim-ti": _imagenet_vim_ti,
    "imagenet-vim-s": _imagenet_vim_s,
    "lsft": _lsft,
}


def preset_names() -> list[str]:
    return list(PRESETS)


def _coerce(name: str, value: Any, current: Any) -> Any:
    """A YAML/command-line value in the type the field has (tuples from lists, floats from ints)."""
    if value is None:
        return None
    if isinstance(current, tuple) or name in ("scale", "ratio", "opt_betas", "mean", "std"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def apply_overrides(config: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    known = {f.name for f in fields(config)}  # any settings dataclass: the segmentation config uses this too
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key not in known:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        if key == "preset":
            continue
        setattr(config, key, _coerce(key, value, getattr(config, key)))
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse config file {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value")
    return data


def resolve_config(
    preset: str | None = None,
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Preset (or a saved config ``base``), then the YAML file, then explicit overrides; checked."""
    config = layer_settings(TrainConfig, PRESETS, "digits", preset, yaml_path, overrides, base)
    validate(config)
    return config


def layer_settings(cls, presets: dict[str, Any], default_preset: str, preset: str | None,
                   yaml_path: str | Path | None, overrides: dict[str, Any] | None, base: dict[str, Any] | None):
    """A settings dataclass ``cls`` from its preset (``presets[name]()``, or a saved config ``base`` over the
    defaults), then the YAML file, then explicit overrides; not yet checked. Shared by every task's config."""
    file_values = read_yaml(yaml_path) if yaml_path else {}
    file_values.pop("resolved", None)  # a run's config.yaml works as --config: its derived values are recomputed
    if base is not None:
        config = apply_overrides(cls(), base, "saved config")
        config.preset = base.get("preset", config.preset)
    else:
        name = preset or file_values.get("preset") or default_preset
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
        config = presets[name]()
    apply_overrides(config, file_values, str(yaml_path))
    apply_overrides(config, overrides or {}, "command line")
    return config


def make_whole_numbers(config, keys: tuple[str, ...]) -> None:
    """The number-list settings ``keys`` as tuples of ints: the shared coercion reads number lists as floats, and
    these are counts, sizes or iterations. A setting switched off (None) stays so."""
    for key in keys:
        value = getattr(config, key)
        if value is not None:
            if any(float(v) != int(v) for v in value):
                raise ConfigError(f"{key} must be whole numbers, got {list(value)}")
            setattr(config, key, tuple(int(v) for v in value))


def check_all(checks: list[tuple[Any, str]]) -> None:
    """Raise ``ConfigError`` with the message of the first (condition, message) whose condition fails."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def validate(config: TrainConfig) -> None:
    if config.epochs < 1:
        raise ConfigError("epochs must be at least 1")
    if config.batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    if config.amp not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"amp must be auto, bf16, fp16 or fp32, got {config.amp!r}")
    if (config.mixup > 0 or config.cutmix > 0) and config.batch_size % 2:
        raise ConfigError("mixup/cutmix need an even batch size per process")
    if not config.data:
        raise ConfigError(f"preset {config.preset!r} trains on your data: pass --data DIR (with train/ and val/)")
    if config.preset == "lsft" and not config.initial_checkpoint:
        raise ConfigError("preset 'lsft' fine-tunes a trained model: pass --initial-checkpoint FILE (a 224 "
                          "checkpoint such as vim_t_midclstok_76p1acc.pth)")
    if config.sched == "plateau":
        raise ConfigError("sched 'plateau' needs a validation metric at each step, which this trainer's per-epoch "
                          "schedule does not pass; choose cosine, step, multistep, poly or tanh")
    if config.checkpoint_every_steps < 0 or config.max_bad_steps < 1:
        raise ConfigError("checkpoint_every_steps must be >= 0 and max_bad_steps >= 1")
