"""The reference's optimiser groups (layer-wise lr decay, as its constructor really applies it) and lr schedule.

The reference (BEiT's ``LayerDecayOptimizerConstructor`` under mmsegmentation) means to give block i of a
24-block backbone the lr scale ``0.92 ** (24 - i)``, the patch and position embeddings ``0.92 ** 25``, and
everything else (final norm, necks, heads) 1. It finds the blocks by the name ``backbone.blocks.N``; Vim's
are ``backbone.layers.N``, so they fall through to "everything else" and train at the full lr: only the
embeddings are decayed. Its weight-decay rule also compares the full name ``backbone.pos_embed`` with
``pos_embed``, so the position embedding is weight-decayed. ``mode='reference'`` reproduces both;
``mode='layerwise'`` is the intended scheme (decay through the blocks, no weight decay on the position
embedding).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["LAYER_DECAY_MODES", "seg_param_groups", "PolyWithWarmup", "build_seg_optimizer"]

LAYER_DECAY_MODES = ("reference", "layerwise")
_STEM = re.compile(r"^backbone\.model\.(pos_embed|cls_token|patch_embed\.)")
_BLOCK = re.compile(r"^backbone\.model\.layers\.(\d+)\.")


def seg_param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                     mode: str = "reference") -> list[dict[str, Any]]:
    """Parameter groups with ``lr_scale`` and ``weight_decay``, named ``layer_<id>_<decay|no_decay>``.

    Written out rather than taken from timm's ``param_groups_layer_decay``: timm numbers the layers by the
    groups its matcher finds, which cannot express the reference's split (embeddings at
    ``decay ** (depth + 1)``, everything else at 1).
    """
    if mode not in LAYER_DECAY_MODES:
        raise ValueError(f"layer_decay_mode must be one of {', '.join(LAYER_DECAY_MODES)}, got {mode!r}")
    depth = len(model.backbone.model.layers)
    num_layers = depth + 2  # the embeddings, the blocks, then everything else
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim == 1 or name.endswith(".bias")
        if mode == "layerwise" and name == "backbone.model.pos_embed":
            exempt = True
        if _STEM.match(name):
            layer_id = 0
        elif mode == "layerwise" and (block := _BLOCK.match(name)):
            layer_id = int(block.group(1)) + 1
        else:
            layer_id = num_layers - 1
        key = f"layer_{layer_id}_{'no_decay' if exempt else 'decay'}"
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "weight_decay": 0.0 if exempt else weight_decay,
                           "lr_scale": layer_decay ** (num_layers - 1 - layer_id), "group_name": key}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())


class PolyWithWarmup:
    """mmcv's iteration-based ``poly`` policy with ``linear`` warmup, as a ``LambdaLR`` factor of one group's lr.

    lr(i) = (base - min_lr) * (1 - i / total) ** power + min_lr, and during the first ``warmup`` iterations that
    times 1 - (1 - i / warmup) * (1 - warmup_ratio). timm's ``PolyLRScheduler`` warms up linearly to the base
    lr and then jumps onto the poly curve; mmcv multiplies the two, so the curve is continuous.
    """

    def __init__(self, base_lr: float, total: int, warmup: int = 0, warmup_ratio: float = 1e-6, power: float = 1.0,
                 min_lr: float = 0.0):
        self.base_lr, self.total, self.warmup = base_lr, total, warmup
        self.warmup_ratio, self.power, self.min_lr = warmup_ratio, power, min_lr

    def lr(self, iteration: int) -> float:
        progress = min(iteration, self.total) / self.total
        value = (self.base_lr - self.min_lr) * (1 - progress) ** self.power + self.min_lr
        if iteration < self.warmup:
            value *= 1 - (1 - iteration / self.warmup) * (1 - self.warmup_ratio)
        return value

    def __call__(self, iteration: int) -> float:
        return self.lr(iteration) / self.base_lr if self.base_lr else 0.0


def build_seg_optimizer(model: nn.Module, config: Any):
    """Optimiser (timm's factory over the groups above) and the per-iteration schedule; ``scheduler.step()``
    after every iteration."""
    from ..train.optim import create_scaled_group_optimizer

    groups = seg_param_groups(model, config.weight_decay, config.layer_decay, config.layer_decay_mode)
    optimizer = create_scaled_group_optimizer(groups, config)
    schedules = [PolyWithWarmup(group["lr"], config.iterations, config.warmup_iters, config.warmup_ratio,
                                config.poly_power, config.min_lr) for group in optimizer.param_groups]
    return optimizer, LambdaLR(optimizer, schedules)
