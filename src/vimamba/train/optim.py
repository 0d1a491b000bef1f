"""Optimiser and schedule from timm's factories, with the reference's weight-decay groups."""

from __future__ import annotations

from torch import nn
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2

from .config import TrainConfig

__all__ = ["no_weight_decay_patterns", "build_optimizer", "build_scheduler", "EpochSchedule",
           "create_scaled_group_optimizer"]


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
    return create_optimizer_v2(groups, opt=config.opt, lr=lr, weight_decay=config.weight_decay,
                               momentum=config.momentum, **_adam_kwargs(config))


def _adam_kwargs(config) -> dict:
    """eps and betas for the Adam family (other optimisers take neither)."""
    if config.opt.lower() in ("adamw", "adam", "lamb", "nadamw"):
        return dict(eps=config.opt_eps, betas=tuple(config.opt_betas))
    return {}


def create_scaled_group_optimizer(groups: list[dict], config):
    """timm's optimiser over parameter groups that carry an ``lr_scale`` (layer decay), each group's lr set to
    ``config.lr * lr_scale``: torch optimisers ignore timm's lr_scale (timm's own schedulers apply it), and the
    per-iteration ``LambdaLR`` schedules of segmentation and detection scale each group's lr from there."""
    optimizer = create_optimizer_v2(groups, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                    **_adam_kwargs(config))
    for group in optimizer.param_groups:
        group["lr"] = config.lr * group.get("lr_scale", 1.0)
    return optimizer


def build_scheduler(optimizer, config: TrainConfig):
    """timm's scheduler over ``config.epochs`` (driven per epoch by ``EpochSchedule``; None for sched 'none')."""
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=config.sched, num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
        warmup_lr=config.warmup_lr, min_lr=config.min_lr, cooldown_epochs=config.cooldown_epochs,
        step_on_epochs=True)
    return scheduler


class EpochSchedule:
    """The learning rate of each epoch, as the reference's ``main.py`` (DeiT's) sets it.

    The reference calls ``lr_scheduler.step(epoch)`` after training epoch ``epoch``, so epoch 0 runs at the lr the
    scheduler's constructor set (warmup_lr with warmup) and epoch e >= 1 at the schedule's value for e - 1: the
    first two epochs share warmup_lr, and every later epoch is one behind timm ``train.py``'s ``step(epoch + 1)``.

    The lr is set at the start of each epoch from its number alone (timm's per-epoch schedules are functions of
    the epoch), so a resumed run, mid-epoch included, gets the uninterrupted run's lr. (The reference's own
    resume calls ``step(start_epoch)`` and so runs its first resumed epoch one schedule step ahead.)
    """

    def __init__(self, optimizer, scheduler):
        self.optimizer, self.scheduler = optimizer, scheduler
        self.initial = [group["lr"] for group in optimizer.param_groups]

    def start_epoch(self, epoch: int) -> float:
        """Set the optimiser's lr for ``epoch`` (counting from 0); returns the first group's."""
        if epoch == 0 or self.scheduler is None:
            for group, lr in zip(self.optimizer.param_groups, self.initial):
                group["lr"] = lr
        else:
            self.scheduler.step(epoch - 1)
        return self.optimizer.param_groups[0]["lr"]
