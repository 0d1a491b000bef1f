"""ViTDet's optimiser groups (layer-wise lr decay, no weight decay on norms and the position embedding) and its
step schedule with linear warmup.

Layer decay as ViTDet's ``get_vit_lr_decay_rate`` with Vim's names: the patch and position embeddings are layer 0,
block i is layer i + 1, everything else (the pyramid, RPN and heads) layer depth + 1; a parameter's lr is
``lr * decay ** (depth + 1 - layer)``. Weight decay as detectron2's ``get_default_optimizer_params(
weight_decay_norm=0, overrides={'pos_embed': {'weight_decay': 0}})``: none for the parameters of normalisation
layers and for ``pos_embed``, the configured one for everything else, biases included. Vim's RMSNorm counts as a
normalisation layer here (detectron2's list of norm classes predates it).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["det_param_groups", "WarmupMultiStep", "build_det_optimizer"]

_STEM = re.compile(r"^backbone\.model\.(pos_embed|patch_embed\.)")
_BLOCK = re.compile(r"^backbone\.model\.layers\.(\d+)\.")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
          nn.LocalResponseNorm)


def _is_norm(module: nn.Module) -> bool:
    from timm.layers import LayerNorm2d, RmsNorm

    return isinstance(module, _NORMS + (LayerNorm2d, RmsNorm))


def det_param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Parameter groups with ``lr_scale`` and ``weight_decay``, named ``layer_<id>_<decay|no_decay>``."""
    depth = len(model.backbone.model.layers)
    norm_params = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = id(param) in norm_params or name.rsplit(".", 1)[-1] == "pos_embed"
        if _STEM.match(name):
            layer_id = 0
        elif block := _BLOCK.match(name):
            layer_id = int(block.group(1)) + 1
        else:
            layer_id = depth + 1
        key = f"layer_{layer_id}_{'no_decay' if exempt else 'decay'}"
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "weight_decay": 0.0 if exempt else weight_decay,
                           "lr_scale": layer_decay ** (depth + 1 - layer_id), "group_name": key}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())


class WarmupMultiStep:
    """The lr factor at an iteration: ``gamma ** (milestones passed)``, times detectron2's linear warmup
    ``factor * (1 - t / warmup) + t / warmup`` during the first ``warmup`` iterations."""

    def __init__(self, milestones: tuple[int, ...], gamma: float = 0.1, warmup: int = 0, warmup_factor: float = 0.001):
        self.milestones, self.gamma, self.warmup, self.warmup_factor = tuple(milestones), gamma, warmup, warmup_factor

    def __call__(self, iteration: int) -> float:
        value = self.gamma ** sum(iteration >= m for m in self.milestones)
        if iteration < self.warmup:
            alpha = iteration / self.warmup
            value *= self.warmup_factor * (1 - alpha) + alpha
        return value


def build_det_optimizer(model: nn.Module, config: Any):
    """Optimiser (timm's factory over the groups above) and the per-iteration schedule; ``scheduler.step()``
    after every iteration."""
    from ..train.optim import create_scaled_group_optimizer

    groups = det_param_groups(model, config.weight_decay, config.layer_decay)
    optimizer = create_scaled_group_optimizer(groups, config)
    schedule = WarmupMultiStep(config.lr_steps, config.lr_gamma, config.warmup_iters, config.warmup_factor)
    return optimizer, LambdaLR(optimizer, schedule)
