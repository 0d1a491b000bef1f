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

from ..ops import (ScanInputs, bidirectional_selective_scan_fn, causal_conv1d_pair_fn, ssm_projections_fn,
                   ssm_projections_fused)

__all__ = ["BiMambaMixer", "MixerCasts", "ProductWeightCasts"]

# Without autograd, problems up to this many elements in x (tokens x d_inner) are small: x and z come from one
# in_proj product, and with cast weights the branches run side by side (``_forward_stacked``), which saves
# launches where the host bounds the step (224 x 224). Larger ones take x and z from two products, so that x's
# buffer is freed as soon as both convs have read it (the peak at 1248 x 1248: Vim-Ti batch 64 has 150 M).
ONE_IN_PROJ_MAX_ELEMENTS = 1 << 26


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

    def _convs(self, x, stacked=False):
        """Both branches' depthwise conv + SiLU: causal for the forward branch; the backward branch's runs from
        the end of the sequence instead of on a flipped copy, so everything stays in token order. On the Triton
        path the two come from one pass over x, and so do their gradients. ``stacked``: side by side in one
        tensor (batch, 2 * d_inner, length)."""
        return causal_conv1d_pair_fn(x, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                     self.conv1d_b.weight.squeeze(1), self.conv1d_b.bias, activation="silu",
                                     stacked=stacked)

    def product_weights(self) -> list[torch.Tensor]:
        """The weights of the mixer's matrix products, in the order ``ProductWeightCasts`` casts them: in_proj,
        x_proj, dt_proj, x_proj_b, dt_proj_b, out_proj."""
        return [self.in_proj.weight, self.x_proj.weight, self.dt_proj.weight, self.x_proj_b.weight,
                self.dt_proj_b.weight, self.out_proj.weight]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.forward_list([hidden])

    def forward_list(self, box: list, weights: MixerCasts | None = None) -> torch.Tensor:
        """``forward`` on ``[hidden]``, which it empties: without autograd the input is released as soon as
        the projections have read it (``VimBlock.forward_state`` passes it this way).

        ``weights``: without autograd under autocast, this mixer's product weights already in autocast's dtype
        (``ProductWeightCasts``), so that no product casts its weight again; below
        ``ONE_IN_PROJ_MAX_ELEMENTS`` the two branches then also share their products (``_forward_stacked``)."""
        hidden = box.pop()
        if torch.is_grad_enabled():
            xz = self.in_proj(hidden).transpose(1, 2)
            del hidden
            return self._forward_branches(list(xz.chunk(2, dim=1)), None, grad=True)
        small = hidden.numel() // self.dim * self.d_inner <= ONE_IN_PROJ_MAX_ELEMENTS
        w = self.in_proj.weight if weights is None else weights.in_proj
        if small:
            x, z = F.linear(hidden, w).transpose(1, 2).chunk(2, dim=1)
        else:  # x in a buffer of its own, freed once both convs have read it
            x = F.linear(hidden, w[: self.d_inner]).transpose(1, 2)
            z = F.linear(hidden, w[self.d_inner:]).transpose(1, 2)
        del hidden
        # x and z go in a list that the callee empties: arguments stay referenced by this frame until the call
        # returns, and x, the conv's input, must be freed once the convs have read it (at Vim-Ti 1248, batch 64,
        # holding it raised the peak from 2.91 to 3.21 GiB: bench-h200-v9 against bench-h200-v11)
        xz = [x, z]
        del x, z
        if weights is not None and small:
            return self._forward_stacked(xz, weights)
        return self._forward_branches(xz, weights, grad=False)

    def _projections(self, u_f, u_b, weights: MixerCasts | None):
        """Each branch's input-dependent (delta, B, C): x_proj, then dt_proj (with the fused kernel, one launch for
        both branches' four products), with the cast weights where given."""
        if weights is None:
            return ssm_projections_fn(u_f, self.x_proj.weight, self.dt_proj.weight,
                                      second=(u_b, self.x_proj_b.weight, self.dt_proj_b.weight))
        wx, wdt = weights.x_proj, weights.dt_proj
        return ssm_projections_fn(u_f, wx[0], wdt[0], second=(u_b, wx[1], wdt[1]))

    def _scan_inputs(self, u_f, u_b, proj_f, proj_b) -> tuple[ScanInputs, ScanInputs]:
        """Both branches' scan inputs. A_log as it is stored: the scan computes A = -exp(A_log) itself (a_log=True
        in the callers), and takes A_log, D and the bias in fp32 whatever their dtype."""
        return (ScanInputs(u_f, proj_f[0], self.A_log, proj_f[1], proj_f[2], self.D, self.dt_proj.bias),
                ScanInputs(u_b, proj_b[0], self.A_b_log, proj_b[1], proj_b[2], self.D_b, self.dt_proj_b.bias))

    def _forward_branches(self, xz: list, weights: MixerCasts | None, grad: bool) -> torch.Tensor:
        """The two branches, each with its own products; ``xz``: [x, z], emptied here."""
        z = xz.pop()
        u_f, u_b = self._convs(xz.pop())
        fwd, bwd = self._scan_inputs(u_f, u_b, *self._projections(u_f, u_b, weights))
        del u_f, u_b
        # Both scans in one launch; without autograd each writes its output over its own u (no new tensors).
        y_f, y_b = bidirectional_selective_scan_fn(fwd, bwd, z, delta_softplus=True,
                                                   out=None if grad else (fwd.u, bwd.u), a_log=True)
        del fwd, bwd, z  # delta, B, C: released before the output projection allocates
        # out_proj((y_f + y_b) / 2) as two products, the second accumulating in place onto the first (GEMM
        # with beta = 1): no pass over the activations for the sum. The halving rides on the weight (exact).
        # One cast of the halved weight to the activations' dtype serves both products (what autocast would
        # give each of them; halving commutes with the rounding).
        if weights is None:
            weight = self.out_proj.weight * 0.5 if self.divide_out else self.out_proj.weight
            weight = weight.to(y_f.dtype)
        else:
            weight = weights.out_proj
        out = F.linear(y_f.transpose(1, 2), weight, self.out_proj.bias)
        del y_f
        flat = out.view(-1, out.shape[-1])
        flat.addmm_(y_b.transpose(1, 2).reshape(-1, self.d_inner).to(flat.dtype), weight.t().to(flat.dtype))
        return out

    def _forward_stacked(self, xz: list, weights: MixerCasts) -> torch.Tensor:
        """The branches side by side, for small problems, where the host's launches bound the step (224 x 224):
        both convs write one (batch, length, 2 * d_inner) tensor; from it both branches' x_proj and then both
        dt_proj run as one batched product each, and after the scans have written their outputs over it,
        out_proj of both branches, summed and halved, is one product over its 2 * d_inner channels. Seven
        launches a block where ``_forward_branches`` makes ten. (The sum of the branches is then rounded once,
        after the product, where the two products round the first branch's part before adding the second's.)
        ``xz``: [x, z], emptied here."""
        inner, rank, n = self.d_inner, self.dt_rank, self.d_state
        z = xz.pop()
        both = self._convs(xz.pop(), stacked=True)  # (batch, 2 * inner, length) over (batch, length, 2 * inner)
        batch, _, length = both.shape
        u_f, u_b = both[:, :inner], both[:, inner:]
        if ssm_projections_fused(u_f):
            proj_f, proj_b = self._projections(u_f, u_b, weights)
        else:
            rows = both.transpose(1, 2).reshape(batch * length, 2, inner).transpose(0, 1)
            x_dbl = torch.bmm(rows, weights.x_proj_t)  # (2, tokens, rank + 2 * n)
            del rows
            delta = torch.bmm(x_dbl[..., :rank], weights.dt_proj_t)  # (2, tokens, inner)
            # each branch's (delta, B, C) as (batch, channels, length) views (few view operators: they cost host
            # time too)
            delta = delta.view(2, batch, length, inner).transpose(2, 3).unbind(0)
            x_dbl = x_dbl.view(2, batch, length, rank + 2 * n).transpose(2, 3)
            B, C = x_dbl[:, :, rank:rank + n].unbind(0), x_dbl[:, :, rank + n:].unbind(0)
            proj_f, proj_b = (delta[0], B[0], C[0]), (delta[1], B[1], C[1])
            del x_dbl, delta, B, C
        fwd, bwd = self._scan_inputs(u_f, u_b, proj_f, proj_b)
        del u_f, u_b, proj_f, proj_b
        bidirectional_selective_scan_fn(fwd, bwd, z, delta_softplus=True, out=(fwd.u, bwd.u), a_log=True)
        del fwd, bwd, z
        return F.linear(both.transpose(1, 2), weights.out_proj_pair(), self.out_proj.bias)


_PLAIN = (torch.Tensor, nn.Parameter)


class MixerCasts:
    """One mixer's product weights in autocast's dtype, views of ``ProductWeightCasts``' buffers: ``in_proj``;
    ``x_proj`` and ``dt_proj`` stacked over the two branches (forward first), also transposed for batched
    products (``x_proj_t``, ``dt_proj_t``); ``out_proj`` halved where the branches are averaged;
    ``out_proj_pair()`` that weight twice side by side (2 * d_inner inputs), made on first request in a forward,
    for ``BiMambaMixer._forward_stacked``. Made once per set of buffers: views cost host operators too."""

    __slots__ = ("in_proj", "x_proj", "dt_proj", "x_proj_t", "dt_proj_t", "out_proj", "_pair", "_owner")

    def __init__(self, owner, in_proj, x_proj, dt_proj, out_proj, pair):
        self._owner, self._pair = owner, pair
        self.in_proj, self.x_proj, self.dt_proj, self.out_proj = in_proj, x_proj, dt_proj, out_proj
        self.x_proj_t, self.dt_proj_t = x_proj.transpose(1, 2), dt_proj.transpose(1, 2)

    def out_proj_pair(self) -> torch.Tensor:
        self._owner._make_pairs()
        return self._pair


class ProductWeightCasts:
    """Every mixer's product weights in autocast's dtype, for forwards without autograd, refreshed by one
    multi-tensor copy per forward.

    Why: under autocast every ``F.linear`` casts its fp32 weight again on every call, a kernel launch each
    (autocast's own cache lasts one ``with`` block and serves only leaf tensors: not the slices of in_proj,
    nor the halved out_proj): eight launches per Vim block, 192 per Vim-Ti forward, issued by the host that
    bounds the step at 224 x 224 (a cProfile of that forward on the H100 machine put ~50 us of host time in
    each ``F.linear`` call with its cast). Here all of them are refreshed from the parameters by
    ``torch._foreach_copy_`` (and the halving by one ``torch._foreach_mul``) on every forward, so a weight
    changed between forwards in any way, ``.data`` included, is seen. The values are autocast's: fp32 rounded
    to its dtype, the halving done in fp32 before the rounding (as the mixer does without this). The buffers
    (one per kind of weight, stacked over the mixers, which must agree in shapes) are kept between forwards
    (Vim-Ti: 6.3 M values, 9.9 M with the out_proj pairs) until ``release``. ``VisionMamba`` uses it on CUDA
    devices (``cast_products_once``)."""

    def __init__(self):
        self.release()

    def release(self) -> None:
        self._key = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._targets: list[torch.Tensor] = []  # the copy's destinations, in product_weights' order per mixer
        self._casts: list[MixerCasts] = []
        self._pairs_fresh = False

    def refresh(self, mixers: list, dtype: torch.dtype) -> list[MixerCasts] | None:
        """Each mixer's casts, or None where there is nothing to cast (the parameters already have ``dtype``,
        as autocast then casts nothing either), the parameters are not plain tensors (FSDP's DTensors) or the
        mixers differ in their weights' shapes or in halving."""
        if not mixers:
            return None
        weights = [m.product_weights() for m in mixers]
        flat = [w for ws in weights for w in ws]
        if all(w.dtype == dtype for w in flat) or any(type(w) not in _PLAIN for w in flat):
            return None
        shapes = tuple(w.shape for w in weights[0])
        halve = mixers[0].divide_out
        if any(tuple(w.shape for w in ws) != shapes for ws in weights) or any(m.divide_out != halve for m in mixers):
            return None
        device = flat[0].device
        key = (dtype, device, len(mixers), shapes)
        if key != self._key:
            count = len(mixers)
            in_shape, x_shape, dt_shape, _, _, out_shape = shapes
            # ordinary tensors even when the first forward runs in inference mode, so that later forwards
            # under no_grad may still write them
            with torch.inference_mode(False):
                def buffer(*shape):
                    return torch.empty((count, *shape), device=device, dtype=dtype)

                b = self._buffers = {"in": buffer(*in_shape), "x": buffer(2, *x_shape), "dt": buffer(2, *dt_shape),
                                     "out": buffer(*out_shape), "pair": buffer(out_shape[0], 2 * out_shape[1])}
                self._targets = [t for i in range(count) for t in (
                    b["in"][i], b["x"][i, 0], b["dt"][i, 0], b["x"][i, 1], b["dt"][i, 1], b["out"][i])]
                self._casts = [MixerCasts(self, b["in"][i], b["x"][i], b["dt"][i], b["out"][i], b["pair"][i])
                               for i in range(count)]
            self._key = key
        if halve:
            for ws, out in zip(weights, torch._foreach_mul([ws[5] for ws in weights], 0.5)):
                ws[5] = out
        torch._foreach_copy_(self._targets, [w for ws in weights for w in ws])
        self._pairs_fresh = False
        return self._casts

    def _make_pairs(self) -> None:
        """Every mixer's out_proj cast twice side by side: one copy for all of them, once per forward."""
        if not self._pairs_fresh:
            out = self._buffers["out"]
            torch.cat([out, out], dim=2, out=self._buffers["pair"])
            self._pairs_fresh = True
