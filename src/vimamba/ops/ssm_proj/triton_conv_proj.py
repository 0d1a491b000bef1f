"""One Triton kernel for Vim's two convs and both directions' scan projections, for inference.

``conv_ssm_projections_triton(x, conv, proj)`` gives what ``causal_conv1d_pair_triton`` followed by
``ssm_projections_triton`` give: ``(u_f, u_b, (delta_f, B_f, C_f), (delta_b, B_b, C_b))``, where ``u_f`` is the
causal conv + SiLU of x, ``u_b`` the anti-causal one (``conv``: their weights and biases) and each triple the
projections of its u (``proj``: each direction's x_proj and dt_proj weights). Nothing is differentiable: the
mixer takes this path only where autograd is off, and training keeps the two separate ops and their backward.

Why fuse: at Vim-Ti 1248, batch 64 the conv pair reads x and writes u_f and u_b (0.9 GB a layer), and the
projection kernel then reads both u back (0.6 GB) to write delta and x_dbl. Here each program computes its
block of tokens' u tiles from x, stores them for the scan, and multiplies the same registers by x_proj's
weights: the u round trip (~14 GB a forward, ~5 ms on an H100) is gone, and so is a launch per block. x is read
once from memory for both directions; its neighbouring steps (the conv's taps) are the same lines again,
served by the caches.

Numerics are the separate kernels': the conv in fp32 from x's values (bias, then the taps from lag 0 on, then
SiLU), u rounded to x's dtype before it is stored *and* before the products, which run in that dtype with fp32
accumulation as ``ssm_projections_triton``'s do (see there; ``states_fp32`` keeps B and C unrounded).

The kernel is turned into a Triton function on first use, not at import, and its body calls only
``triton.language`` builtins: ``ops/_triton.py`` says why.
"""

from typing import Optional, Sequence, Tuple

import torch

from .._triton import HAS_TRITON, cdiv, eager_op, lazy_kernel, next_pow2, tl, triton
from ..causal_conv1d.triton_conv1d import _check_conv_call
from .triton_ssm_proj import _check, _scan_views

__all__ = ["conv_ssm_projections_triton"]


def _conv_proj_kernel(
    x_ptr, cw_ptr, cb_ptr, cw2_ptr, cb2_ptr,
    wx_ptr, wdt_ptr, wx2_ptr, wdt2_ptr,
    u_ptr, u2_ptr, xdbl_ptr, xdbl2_ptr, delta_ptr, delta2_ptr,
    n_rows, L, E, R, NBC,
    s_xb, s_xl, s_xd, s_cd, s_ck,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    IEEE: tl.constexpr, WIDEN: tl.constexpr, RP: tl.constexpr, NP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # x (batch, length, E) through its strides; conv weights (E, W) with strides (s_cd, s_ck), biases (E,); wx
    # (R + NBC, E) and wdt (E, R) contiguous. Outputs contiguous: u and delta (batch * length, E) in x's dtype,
    # x_dbl (batch * length, R + NBC) in x's dtype or fp32. A program: BLOCK_M consecutive tokens (rows),
    # both directions.
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    m_rows = rows < n_rows
    step = rows % L
    x_row = (rows // L) * s_xb
    kk = tl.arange(0, BLOCK_K)
    rr = tl.arange(0, RP)
    nn = tl.arange(0, NP)
    m_r = rr < R
    m_n = nn < NBC
    acc_dt = tl.full([BLOCK_M, RP], 0.0, tl.float32)
    acc_bc = tl.full([BLOCK_M, NP], 0.0, tl.float32)
    acc_dt2 = tl.full([BLOCK_M, RP], 0.0, tl.float32)
    acc_bc2 = tl.full([BLOCK_M, NP], 0.0, tl.float32)
    for k0 in range(0, E, BLOCK_K):
        k = k0 + kk
        m_k = k < E
        y = tl.full([BLOCK_M, BLOCK_K], 0.0, tl.float32)
        y2 = tl.full([BLOCK_M, BLOCK_K], 0.0, tl.float32)
        if HAS_BIAS:
            y += tl.load(cb_ptr + k, mask=m_k, other=0.0).to(tl.float32)[None, :]
            y2 += tl.load(cb2_ptr + k, mask=m_k, other=0.0).to(tl.float32)[None, :]
        for m in tl.static_range(W):  # lag m: tap W-1-m times x[t - m] (causal) and x[t + m] (anti-causal)
            w_m = tl.load(cw_ptr + k * s_cd + (W - 1 - m) * s_ck, mask=m_k, other=0.0).to(tl.float32)
            w2_m = tl.load(cw2_ptr + k * s_cd + (W - 1 - m) * s_ck, mask=m_k, other=0.0).to(tl.float32)
            ok = m_rows & (step >= m)
            x_m = tl.load(x_ptr + (x_row + (step - m) * s_xl)[:, None] + k[None, :] * s_xd,
                          mask=ok[:, None] & m_k[None, :], other=0.0).to(tl.float32)
            y += w_m[None, :] * x_m
            if m > 0:  # (lag 0 serves both)
                ok = m_rows & (step + m < L)
                x_m = tl.load(x_ptr + (x_row + (step + m) * s_xl)[:, None] + k[None, :] * s_xd,
                              mask=ok[:, None] & m_k[None, :], other=0.0).to(tl.float32)
            y2 += w2_m[None, :] * x_m
        if SILU:
            y = y / (1.0 + tl.exp(-y))
            y2 = y2 / (1.0 + tl.exp(-y2))
        a = y.to(u_ptr.dtype.element_ty)  # u as the conv stores it, and as the products read it
        a2 = y2.to(u_ptr.dtype.element_ty)
        m_tile = m_rows[:, None] & m_k[None, :]
        tl.store(u_ptr + rows[:, None] * E + k[None, :], a, mask=m_tile)
        tl.store(u2_ptr + rows[:, None] * E + k[None, :], a2, mask=m_tile)
        w_dt = tl.load(wx_ptr + rr[None, :] * E + k[:, None], mask=m_r[None, :] & m_k[:, None], other=0.0)
        w_bc = tl.load(wx_ptr + (R + nn)[None, :] * E + k[:, None], mask=m_n[None, :] & m_k[:, None], other=0.0)
        w2_dt = tl.load(wx2_ptr + rr[None, :] * E + k[:, None], mask=m_r[None, :] & m_k[:, None], other=0.0)
        w2_bc = tl.load(wx2_ptr + (R + nn)[None, :] * E + k[:, None], mask=m_n[None, :] & m_k[:, None], other=0.0)
        w_dt = w_dt.to(u_ptr.dtype.element_ty)  # (rounded as autocast rounds the reference's weights)
        w_bc = w_bc.to(u_ptr.dtype.element_ty)
        w2_dt = w2_dt.to(u_ptr.dtype.element_ty)
        w2_bc = w2_bc.to(u_ptr.dtype.element_ty)
        if WIDEN:  # (the interpreter) 16-bit operands as fp32: products exact either way, fp32 sums
            a = a.to(tl.float32)
            a2 = a2.to(tl.float32)
            w_dt = w_dt.to(tl.float32)
            w_bc = w_bc.to(tl.float32)
            w2_dt = w2_dt.to(tl.float32)
            w2_bc = w2_bc.to(tl.float32)
        if IEEE or WIDEN:
            acc_dt = tl.dot(a, w_dt, acc_dt, input_precision="ieee")
            acc_bc = tl.dot(a, w_bc, acc_bc, input_precision="ieee")
            acc_dt2 = tl.dot(a2, w2_dt, acc_dt2, input_precision="ieee")
            acc_bc2 = tl.dot(a2, w2_bc, acc_bc2, input_precision="ieee")
        else:  # 16-bit inputs: the precision argument does not apply
            acc_dt = tl.dot(a, w_dt, acc_dt)
            acc_bc = tl.dot(a, w_bc, acc_bc)
            acc_dt2 = tl.dot(a2, w2_dt, acc_dt2)
            acc_bc2 = tl.dot(a2, w2_bc, acc_bc2)
    # per direction: x_dbl's columns, then delta = dt wdt^T with dt rounded as the reference's x_dbl is
    row_x = rows[:, None] * (R + NBC)
    m_xr = m_rows[:, None] & m_r[None, :]
    m_xn = m_rows[:, None] & m_n[None, :]
    dt = acc_dt.to(u_ptr.dtype.element_ty)
    dt2 = acc_dt2.to(u_ptr.dtype.element_ty)
    tl.store(xdbl_ptr + row_x + rr[None, :], dt.to(xdbl_ptr.dtype.element_ty), mask=m_xr)
    tl.store(xdbl_ptr + row_x + (R + nn)[None, :], acc_bc.to(xdbl_ptr.dtype.element_ty), mask=m_xn)
    tl.store(xdbl2_ptr + row_x + rr[None, :], dt2.to(xdbl_ptr.dtype.element_ty), mask=m_xr)
    tl.store(xdbl2_ptr + row_x + (R + nn)[None, :], acc_bc2.to(xdbl_ptr.dtype.element_ty), mask=m_xn)
    for half in tl.static_range(2):  # one direction's delta at a time: one (BLOCK_M, BLOCK_N) product live
        if half == 0:
            dt_h = dt
            wdt_h = wdt_ptr
            delta_h = delta_ptr
        else:
            dt_h = dt2
            wdt_h = wdt2_ptr
            delta_h = delta2_ptr
        if WIDEN:
            dt_h = dt_h.to(tl.float32)
        for n0 in range(0, E, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            m_e = n < E
            w = tl.load(wdt_h + n[None, :] * R + rr[:, None], mask=m_r[:, None] & m_e[None, :], other=0.0)
            w = w.to(u_ptr.dtype.element_ty)
            if WIDEN:
                d = tl.dot(dt_h, w.to(tl.float32), input_precision="ieee")
            elif IEEE:
                d = tl.dot(dt_h, w, input_precision="ieee")
            else:
                d = tl.dot(dt_h, w)
            tl.store(delta_h + rows[:, None] * E + n[None, :], d.to(delta_ptr.dtype.element_ty),
                     mask=m_rows[:, None] & m_e[None, :])

def _configs(ieee: bool):
    """Candidate (BLOCK_M, BLOCK_K, BLOCK_N, num_warps), the heuristic choice first. Besides the projection
    kernel's accumulators, a program holds both directions' conv tiles (2 x BLOCK_M x BLOCK_K fp32) and the
    shifted x tiles' addresses, hence narrower K blocks than ``triton_ssm_proj._configs``: at BLOCK_K = 64 every
    16-bit tile spilled (200-280 bytes of stack, sm_90, Triton 3.6 and 3.8); these use 232-255 registers."""
    if ieee:  # (fp32: products on the FMA units)
        return [(32, 16, 64, 4), (16, 32, 64, 4)]
    return [(64, 32, 128, 4), (128, 32, 128, 8), (64, 16, 128, 4), (128, 32, 64, 8)]


_INTERP_TILE = (128, 64, 128)  # the interpreter runs programs one after another: large blocks
_KERNELS = {}
# (BLOCK_M, BLOCK_K, BLOCK_N, num_warps, num_stages, maxnreg or 0) instead of the autotuner's choice: for sweeps
# (benchmarks/conv_proj_sweep.py)
_TILE_OVERRIDE: Optional[tuple] = None


def _autotune_configs(ieee: bool) -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn}, num_warps=nw)
            for bm, bk, bn, nw in _configs(ieee)]


def _get_kernel(ieee: bool = False, tune: Optional[bool] = None):
    """(kernel, interpreted, autotuned) for the current mode and input precision (``lazy_kernel``)."""
    return lazy_kernel(_KERNELS, (ieee,), _conv_proj_kernel, _autotune_configs, ("E", "R", "NBC", "W", "IEEE"),
                       tune)


def _conv_proj_impl(x: torch.Tensor, cw: torch.Tensor, cb: Optional[torch.Tensor], cw2: torch.Tensor,
                    cb2: Optional[torch.Tensor], wx: torch.Tensor, wdt: torch.Tensor, wx2: torch.Tensor,
                    wdt2: torch.Tensor, silu: bool, states_fp32: bool
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, E, length = x.shape
    R = wdt.shape[1]
    NBC = wx.shape[0] - R
    dtype = x.dtype
    u, u2 = (torch.empty((batch, length, E), device=x.device, dtype=dtype) for _ in range(2))
    xdbl_dtype = torch.float32 if states_fp32 else dtype
    x_dbl, x_dbl2 = (torch.empty((batch, length, R + NBC), device=x.device, dtype=xdbl_dtype) for _ in range(2))
    delta, delta2 = (torch.empty((batch, length, E), device=x.device, dtype=dtype) for _ in range(2))
    n_rows = batch * length
    if n_rows:
        ieee = dtype == torch.float32
        kern, interp, tuned = _get_kernel(ieee, False if _TILE_OVERRIDE else None)
        extra = {}
        if _TILE_OVERRIDE and not interp:
            bm, bk, bn, nw, ns, regs = _TILE_OVERRIDE
            extra = {"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn, "num_warps": nw, "num_stages": ns,
                     **({"maxnreg": regs} if regs else {})}
        elif interp:
            extra = dict(zip(("BLOCK_M", "BLOCK_K", "BLOCK_N"), _INTERP_TILE))
        elif not tuned:
            bm, bk, bn, nw = _configs(ieee)[0]
            extra = {"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn, "num_warps": nw}
        grid = lambda meta: (cdiv(n_rows, meta["BLOCK_M"]),)  # noqa: E731
        kern[grid](
            x, cw, cb if cb is not None else cw, cw2, cb2 if cb2 is not None else cw2,
            wx, wdt, wx2, wdt2,
            u, u2, x_dbl, x_dbl2, delta, delta2,
            n_rows, length, E, R, NBC,
            x.stride(0), x.stride(2), x.stride(1), cw.stride(0), cw.stride(1),
            W=cw.shape[1], HAS_BIAS=cb is not None, SILU=bool(silu),
            IEEE=ieee, WIDEN=interp and not ieee, RP=max(16, next_pow2(R)), NP=max(16, next_pow2(NBC)), **extra,
        )
    return u, u2, x_dbl, delta, x_dbl2, delta2


def _conv_proj_fake(x, cw, cb, cw2, cb2, wx, wdt, wx2, wdt2, silu, states_fp32):
    batch, E, length = x.shape
    xdbl_dtype = torch.float32 if states_fp32 else x.dtype
    u, u2, delta, delta2 = (x.new_empty((batch, length, E)) for _ in range(4))
    x_dbl, x_dbl2 = (x.new_empty((batch, length, wx.shape[0]), dtype=xdbl_dtype) for _ in range(2))
    return u, u2, x_dbl, delta, x_dbl2, delta2


# A custom op (``eager_op``) so that torch.compile keeps a whole model in one graph; it has no autograd formula
# (inference only: a call on inputs that need gradients is refused before it gets here).
_conv_proj_op = eager_op("vimamba::conv_ssm_projections", _conv_proj_impl)
_conv_proj_op.op.register_fake(_conv_proj_fake)


def conv_ssm_projections_triton(x: torch.Tensor, conv: Sequence, proj: Sequence,
                                activation: Optional[str] = "silu", states_fp32: bool = False):
    """Vim's two convs of x (batch, E, length) and both directions' scan projections in one launch.

    ``conv``: (weight, bias, weight_rev, bias_rev) of the causal and the anti-causal conv, weights (E, width);
    ``proj``: (x_proj_weight, dt_proj_weight, x_proj_weight_rev, dt_proj_weight_rev). Returns ``(u_f, u_b,
    (delta_f, B_f, C_f), (delta_b, B_b, C_b))``: each u (batch, E, length) a view of a (batch, length, E) tensor
    as the conv pair gives it, each triple ``ssm_projections_triton``'s (B and C in fp32 with ``states_fp32``).
    Inference only: refuses inputs that need gradients while autograd is on."""
    if not HAS_TRITON:
        raise RuntimeError("conv_ssm_projections_triton needs the triton package")
    if not x.is_cuda and not _get_kernel()[1]:
        raise RuntimeError("conv_ssm_projections_triton on CPU tensors runs in Triton's interpreter only: "
                           "set TRITON_INTERPRET=1 before the first call")
    cw, cb, cw2, cb2 = conv
    wx, wdt, wx2, wdt2 = proj
    tensors = (x, cw, cb, cw2, cb2, wx, wdt, wx2, wdt2)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("conv_ssm_projections_triton is for inference and has no backward: call it under "
                           "torch.no_grad() (or inference_mode), or use causal_conv1d_pair_fn and "
                           "ssm_projections_fn, which are differentiable")
    _check_conv_call(x, cw, cb, activation)
    _check_conv_call(x, cw2, cb2, activation)
    if cw2.shape != cw.shape or cw2.stride() != cw.stride() or (cb is None) != (cb2 is None):
        raise ValueError("the two convs need weights (and biases) of one shape and layout: got "
                         f"{tuple(cw.shape)}/{cw.stride()} with bias {cb is not None} and "
                         f"{tuple(cw2.shape)}/{cw2.stride()} with bias {cb2 is not None}")
    _check(x, wx, wdt, "")
    _check(x, wx2, wdt2, "second ")
    if (wx2.shape, wdt2.shape) != (wx.shape, wdt.shape):
        raise ValueError("both directions' projections must agree in shapes, got "
                         f"{tuple(wx.shape)}/{tuple(wx2.shape)} and {tuple(wdt.shape)}/{tuple(wdt2.shape)}")
    contiguous = [t if t is None or t.is_contiguous() else t.contiguous() for t in (cb, cb2, wx, wdt, wx2, wdt2)]
    cb, cb2, wx, wdt, wx2, wdt2 = contiguous
    u, u2, x_dbl, delta, x_dbl2, delta2 = _conv_proj_op(x, cw, cb, cw2, cb2, wx, wdt, wx2, wdt2,
                                                        activation is not None, bool(states_fp32))
    rank = wdt.shape[1]
    return (u.transpose(1, 2), u2.transpose(1, 2), _scan_views(x_dbl, delta, rank),
            _scan_views(x_dbl2, delta2, rank))
