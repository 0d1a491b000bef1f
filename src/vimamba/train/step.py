"""One optimiser step guarded against non-finite values, shared by the classification, segmentation and
detection training loops.

The rule is the classification loop's: a step is skipped on every process when any process has a
non-finite loss (DistributedDataParallel needs all processes or none to run backward), and skipped when the
gradient norm is not finite; under fp16 the loss scaler decides and lowers its scale.
"""

from __future__ import annotations

import torch

from .distributed import DistInfo, all_reduce_sum

__all__ = ["guarded_step"]


def guarded_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], info: DistInfo,
                 scaler: torch.amp.GradScaler | None = None, clip_grad: float | None = None) -> bool:
    """Backward and step unless a loss or gradient is non-finite; returns True when the step was skipped."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=info.device)
    all_reduce_sum(bad, info)
    optimizer.zero_grad(set_to_none=True)
    if bad.item() > 0:
        return True
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # sharded (FSDP2) gradients give a DTensor norm: the global one
        grad_norm = grad_norm.full_tensor()
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        return scaler.get_scale() < scale
    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return True
    optimizer.step()
    return False
