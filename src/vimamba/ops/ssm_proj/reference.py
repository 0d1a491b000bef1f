"""Plain-PyTorch input projections of a selective scan: the reference for the fused kernel and the CPU path.

Each Mamba direction turns its conv output ``u`` (batch, channels, length) into the scan's input-dependent
parameters with two small products: ``x_dbl = u^T x_proj`` (dt_rank + 2 * d_state values per token: the
low-rank dt, then B, then C) and ``delta = dt dt_proj`` (channels values per token; the bias and softplus
are applied inside the scan).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ssm_projections_ref"]


def ssm_projections_ref(u: torch.Tensor, x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scan's ``(delta, B, C)`` for ``u`` (batch, channels, length): ``delta`` (batch, channels, length), a
    view of a (batch, length, channels) tensor, and ``B``, ``C`` (batch, d_state, length), views of the columns
    of ``x_dbl`` (batch, length, dt_rank + 2 * d_state).

    ``x_proj_weight`` is (dt_rank + 2 * d_state, channels), ``dt_proj_weight`` (channels, dt_rank). The products
    run in ``u``'s dtype unless autocast says otherwise: as ``nn.Linear`` layers would under autocast, and with
    x_dbl rounded to that dtype before the second product."""
    dt_rank = dt_proj_weight.shape[1]
    d_state = (x_proj_weight.shape[0] - dt_rank) // 2
    x_dbl = F.linear(u.transpose(1, 2), x_proj_weight)
    dt, B, C = x_dbl.split([dt_rank, d_state, d_state], dim=-1)
    delta = F.linear(dt, dt_proj_weight).transpose(1, 2)
    return delta, B.transpose(1, 2), C.transpose(1, 2)
