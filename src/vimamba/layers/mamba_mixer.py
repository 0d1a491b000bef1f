"""Vim's bidirectional Mamba mixer ("v2"): one in/out projection, two selective-scan branches.

The forward branch scans the token sequence left to right; the backward branch, with parameters of its
own (the ``_b`` names), scans it right to left. Their outputs are averaged and projected back.
Parameter names and shapes are the reference implementation's, so its checkpoints load as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import causal_conv1d_fn, selective_scan_fn

__all__ = ["BiMambaMixer"]


class BiMambaMixer(nn.Module):
    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        divide_out: bool = True,
        num_layers: int = 24,
        symmetric_dt_init: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.d_state = d_state
        self.d_inner = expand * dim
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.divide_out = divide_out
        inner, rank = self.d_inner, self.dt_rank

        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(inner, rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(rank, inner, bias=True)
        self.A_log = nn.Parameter(self._s4d_real_log(inner, d_state))
        self.D = nn.Parameter(torch.ones(inner))
        self.conv1d_b = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj_b = nn.Linear(inner, rank + 2 * d_state, bias=False)
        self.dt_proj_b = nn.Linear(rank, inner, bias=True)
        self.A_b_log = nn.Parameter(self._s4d_real_log(inner, d_state))
        self.D_b = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)

        self._init_dt_proj(self.dt_proj, dt_min, dt_max, dt_init_floor)
        if symmetric_dt_init:
            self._init_dt_proj(self.dt_proj_b, dt_min, dt_max, dt_init_floor)
        else:
            # The reference never gives the backward branch Mamba's dt init: its weight keeps PyTorch's
            # default and its bias is zeroed. The released weights were trained from this.
            nn.init.zeros_(self.dt_proj_b.bias)
        # GPT-2 style rescaling of the projection into the residual stream, 1/sqrt(depth).
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(num_layers)

    @staticmethod
    def _s4d_real_log(channels: int, d_state: int) -> torch.Tensor:
        return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(channels, 1).contiguous()

    def _init_dt_proj(self, layer: nn.Linear, dt_min: float, dt_max: float, floor: float) -> None:
        std = self.dt_rank ** -0.5
        nn.init.uniform_(layer.weight, -std, std)
        # Bias = softplus^-1(dt) for dt log-uniform in [dt_min, dt_max], so initial step sizes span that range.
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        with torch.no_grad():
            layer.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _branch(self, x, z, conv1d, x_proj, dt_proj, A_log, D, reverse, add=None, out=None):
        """One direction: conv + SiLU, input-dependent (dt, B, C), selective scan gated by silu(z), plus
        ``add`` (the other branch's output) summed into the scan's output, written into ``out`` if given.

        The backward branch runs the same ops from the end of the sequence (``reverse``) instead of on
        flipped copies, so its output is already in token order.
        """
        u = causal_conv1d_fn(x, conv1d.weight.squeeze(1), conv1d.bias, activation="silu", reverse=reverse)
        x_dbl = F.linear(u.transpose(1, 2), x_proj.weight)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)
        A = -torch.exp(A_log.float())
        return selective_scan_fn(
            u, delta, A, B.transpose(1, 2), C.transpose(1, 2), D.float(), z,
            delta_bias=dt_proj.bias.float(), delta_softplus=True, reverse=reverse, add=add, out=out)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(hidden).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        y_f = self._branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, reverse=False)
        # The backward branch's scan adds y_f to its output as it writes it: no separate pass for the sum.
        # Without autograd it writes the sum over y_f itself: one (batch, length, dim) tensor fewer at the peak.
        y = self._branch(x, z, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, reverse=True,
                         add=y_f, out=None if torch.is_grad_enabled() else y_f)
        if not self.divide_out:
            return self.out_proj(y.transpose(1, 2))
        # The halving of (y_f + y_b) rides on the output projection's weight (0.5 * W: exact, a 74k-element
        # op) instead of a pass over the (batch, length, dim) activations (4.7 ms of 390 for Vim-Ti at 1248,
        # batch 64, H100). Same values bit for bit: halving is exact in every float format.
        return F.linear(y.transpose(1, 2), self.out_proj.weight * 0.5, self.out_proj.bias)
