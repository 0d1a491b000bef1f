"""Plain-PyTorch causal depthwise conv1d: the reference for the fused kernel and the CPU path.

Signature of the causal-conv1d package's ``causal_conv1d_fn``: x (batch, dim, length), weight (dim, width),
bias (dim,), activation None or "silu"; the output at step t sees inputs t-width+1 .. t only.
``reverse=True`` is the same conv run from the end (output t sees t .. t+width-1): flip, convolve, flip back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d_ref", "check_conv_inputs"]


def check_conv_inputs(x: torch.Tensor, weight: torch.Tensor, activation: str | None) -> None:
    """Raise a ValueError that says what was expected when the arguments do not fit together."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"expected x (batch, dim, length) and weight (dim, width) with equal dim, "
            f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}")


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    check_conv_inputs(x, weight, activation)
    if reverse:
        return causal_conv1d_ref(x.flip(-1), weight, bias, activation).flip(-1)
    dim, width = weight.shape
    out = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                   padding=width - 1, groups=dim)[..., : x.shape[-1]]
    return F.silu(out) if activation is not None else out
