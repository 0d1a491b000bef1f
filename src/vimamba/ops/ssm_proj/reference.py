"""Plain-PyTorch input projections of a selective scan: the reference for the fused kernel and the CPU path.

Each Mamba direction turns its conv output ``u`` (batch, channels, length) into the scan's input-dependent
parameters with two small products: ``x_dbl = u^T x_proj`` (dt_rank + 2 * d_state values per token: the
low-rank dt, then B, then C) and ``delta = dt dt_proj`` (channels values per token; the bias and softplus
are applied inside the scan).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ssm_projections_ref", "x_proj_fp32"]

# torch.mm's out_dtype overload (a 16-bit product's fp32 accumulator, CUDA), which older torch lacks
_MM_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()


def ssm_projections_ref(u: torch.Tensor, x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor,
                        states_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scan's ``(delta, B, C)`` for ``u`` (batch, channels, length): ``delta`` (batch, channels, length), a
    view of a (batch, length, channels) tensor, and ``B``, ``C`` (batch, d_state, length), views of the columns
    of ``x_dbl`` (batch, length, dt_rank + 2 * d_state).

    ``x_proj_weight`` is (dt_rank + 2 * d_state, channels), ``dt_proj_weight`` (channels, dt_rank). The products
    run in ``u``'s dtype unless autocast says otherwise: as ``nn.Linear`` layers would under autocast, and with
    x_dbl rounded to that dtype before the second product.

    ``states_dtype``: B and C in this dtype (None: x_dbl's). float32 from a 16-bit product keeps the product's
    fp32 accumulator for them (still x_dbl's columns), which the scan then reads without converting (see
    ``x_proj_fp32``; where that route is closed, copies cast from the rounded product); delta is computed from dt
    rounded to the product's dtype, as without it."""
    dt_rank = dt_proj_weight.shape[1]
    d_state = (x_proj_weight.shape[0] - dt_rank) // 2
    rows = u.transpose(1, 2)
    accumulator = None
    if states_dtype == torch.float32:
        product = _product_dtype(rows, x_proj_weight)
        accumulator = x_proj_fp32(rows, x_proj_weight, dtype=product)
    x_dbl = F.linear(rows, x_proj_weight) if accumulator is None else accumulator
    dt, B, C = x_dbl.split([dt_rank, d_state, d_state], dim=-1)
    if accumulator is not None:  # dt rounded as the 16-bit product would have rounded it
        dt = dt.to(product)
    delta = F.linear(dt, dt_proj_weight).transpose(1, 2)
    B, C = B.transpose(1, 2), C.transpose(1, 2)
    if states_dtype is not None and B.dtype != states_dtype:
        B, C = B.to(states_dtype), C.to(states_dtype)
    return delta, B, C


def _product_dtype(rows: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear(rows, weight)`` computes in here (autocast's where it is on)."""
    if torch.is_autocast_enabled(rows.device.type):
        return torch.get_autocast_dtype(rows.device.type)
    return torch.promote_types(rows.dtype, weight.dtype)


def x_proj_fp32(rows: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """``F.linear(rows, weight)`` of a 16-bit product (autocast's dtype, or the inputs' own) with its fp32
    accumulator written out instead of the rounded result: one cuBLAS call (``torch.mm``'s ``out_dtype``), no
    extra pass. Only where nothing needs its gradient (that overload has no derivative) and on CUDA (it has no
    CPU kernel); None otherwise, and where this torch lacks the overload. ``dtype``: the product's dtype where the
    caller has it already (``_product_dtype``'s answer)."""
    if dtype is None:
        dtype = _product_dtype(rows, weight)
    if (not _MM_OUT_DTYPE or dtype not in (torch.float16, torch.bfloat16) or not rows.is_cuda or
            (torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad))):
        return None
    flat = rows.reshape(-1, rows.shape[-1]).to(dtype)
    out = torch.mm(flat, weight.to(dtype).t(), out_dtype=torch.float32)
    return out.view(*rows.shape[:-1], weight.shape[0])
