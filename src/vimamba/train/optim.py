"""Optimiser and schedule from timm's factories, with the reference's weight-decay groups."""

from __future__ import annotations

from torch import nn
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2

from .config import TrainConfig

__all__ = ["no_weight_decay_patterns", "build_optimizer", "build_scheduler"]


def no_weight_decay_patterns(decay_a_log: bool = True) -> list[str]:
    """Names exempt from decay besides 1-D tensors and biases (which timm's grouping exempts itself).

    The reference exempts only those plus ``pos_embed`` and ``cls_token``: its optimiser factory never sees
    the Mamba ``_no_weight_decay`` marks, so the 2-D ``A_log``/``A_b_log`` are decayed. (The model's own
    ``no_weight_decay()`` lists them, as Mamba intends, hence the explicit list here.)
    """
    patterns = ["pos_embed", "cls_token"]
    if not decay_a_log:
        patterns += ["*.A_log", "*.A_b_log", "A_log", "A_b_log"]
    return patterns


def build_optimizer(model: nn.Module, config: TrainConfig, lr: float):
    groups = param_groups_weight_decay(
        model, config.weight_decay, no_weight_decay_list=no_weight_decay_patterns(config.decay_a_log))
    kwargs = {}
    if config.opt.lower() in ("adamw", "adam", "lamb", "nadamw"):
        kwargs.update(eps=config.opt_eps, betas=tuple(config.opt_betas))
    return create_optimizer_v2(groups, opt=config.opt, lr=lr, weight_decay=config.weight_decay,
                               momentum=config.momentum, **kwargs)


def build_scheduler(optimizer, config: TrainConfig):
    """timm's scheduler, stepped once per epoch (``step(epoch + 1)`` after each), as the reference does."""
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=config.sched, num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
        warmup_lr=config.warmup_lr, min_lr=config.min_lr, cooldown_epochs=config.cooldown_epochs,
        step_on_epochs=True)
    return scheduler
