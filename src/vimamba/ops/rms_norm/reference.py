"""Plain-PyTorch RMSNorm with a residual add: the reference for the fused kernel and the CPU path.

Vim's blocks keep a residual stream beside the hidden states. Each block adds its input to the stream,
normalises the sum and hands the normalised tensor to its mixer; the stream itself may be kept in fp32
(``residual_in_fp32``) so that 24 additions in half precision do not drift.
"""

from __future__ import annotations

import torch

__all__ = ["add_rms_norm_ref", "rms_norm_ref"]


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, out_dtype=None) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in fp32 (fp64 stays fp64)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x_f = x.to(acc)
    y = x_f * torch.rsqrt(x_f.pow(2).mean(-1, keepdim=True) + eps) * weight.to(acc)
    return y.to(out_dtype or x.dtype)


def add_rms_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(rms_norm(x + residual), x + residual)``.

    With ``residual`` None the stream starts at ``x``. The sum is formed in fp32 when either operand is fp32
    or ``residual_in_fp32`` is set; the normalised output takes ``x``'s dtype, as mamba-ssm's fused
    kernel does, so the mixer after it runs in the activation precision.
    """
    if residual is None:
        stream = _at_least_fp32(x) if residual_in_fp32 else x
    else:
        stream = (_at_least_fp32(residual) + _at_least_fp32(x)) if residual_in_fp32 else residual + x.to(residual.dtype)
    return rms_norm_ref(stream, weight, eps, out_dtype=x.dtype), stream
