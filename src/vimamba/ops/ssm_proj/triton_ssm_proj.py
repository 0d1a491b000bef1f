"""A Triton kernel for the selective scan's two input projections (x_proj, then dt_proj), both directions at once.

``ssm_projections_triton(u, x_proj_weight, dt_proj_weight, second=None)`` gives ``ssm_projections_ref``'s
``(delta, B, C)`` for one direction, or for two (``second``: the other direction's ``(u, x_proj_weight,
dt_proj_weight)``, same shapes) from one launch.

Why a kernel for two products cuBLAS already does: both are narrow (Vim-Ti: 384 -> 44 and 12 -> 384 per
token) and memory-bound, and on an H200 cuBLAS ran each at ~2.4x its byte floor (Vim-Ti 1248, batch 64:
0.17 ms per product against ~0.07; 16 of the model's ~125 ms, v5 profile). Here each program reads a block of
tokens' u once, keeps their dt (dt_rank values per token) in registers, and writes x_dbl and delta: the bytes
of u in and delta out, ~0.125 ms per direction there, in one launch for both directions instead of four.

Numerics are the reference's under autocast: the products run in u's dtype with fp32 accumulation (the
weights rounded to it as they are loaded, as autocast casts them), and dt is rounded to u's dtype before the second product, as
the reference's x_dbl is. fp32 inputs use full-precision products (no TF32). The backward is plain PyTorch
matrix products (four per direction, what autograd does for the two ``F.linear``), reading the saved x_dbl for
dt. Triton's interpreter (3.8) multiplies 16-bit ``tl.dot`` operands wrongly (garbage of ~1e10 for bf16), so
there the kernel widens them to fp32 first: the same arithmetic, as the products of 16-bit values are exact in
fp32 and the tensor cores sum in fp32 too.

The kernel is turned into a Triton function on first use, not at import, and its body calls only
``triton.language`` builtins: ``ops/_triton.py`` says why.
"""

from typing import Optional, Sequence, Tuple

import torch

from .._triton import HAS_TRITON, cdiv, eager_op, lazy_kernel, next_pow2, tl, triton

__all__ = ["HAS_TRITON", "ssm_projections_triton"]


def _ssm_proj_kernel(
    u_ptr, wx_ptr, wdt_ptr, xdbl_ptr, delta_ptr,
    u2_ptr, wx2_ptr, wdt2_ptr, xdbl2_ptr, delta2_ptr,
    n_rows, E, R, NBC,
    s_um, s_ue,
    IEEE: tl.constexpr, WIDEN: tl.constexpr, RP: tl.constexpr, NP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # u: rows = tokens (batch x length), E channels; wx (R + NBC, E) and wdt (E, R) contiguous, any float dtype
    # (rounded to u's as they are loaded); x_dbl (rows, R + NBC) and delta (rows, E) contiguous, delta in u's
    # dtype, x_dbl in u's or fp32 (then B and C keep the accumulator's precision; dt is rounded to u's first).
    # Grid axis 1: the direction.
    if tl.program_id(1) == 1:
        u_ptr = u2_ptr
        wx_ptr = wx2_ptr
        wdt_ptr = wdt2_ptr
        xdbl_ptr = xdbl2_ptr
        delta_ptr = delta2_ptr
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    m_rows = rows < n_rows
    kk = tl.arange(0, BLOCK_K)
    rr = tl.arange(0, RP)  # dt's columns (R of them, padded to a tl.dot size)
    nn = tl.arange(0, NP)  # B's and C's (NBC)
    m_r = rr < R
    m_n = nn < NBC
    acc_dt = tl.full([BLOCK_M, RP], 0.0, tl.float32)
    acc_bc = tl.full([BLOCK_M, NP], 0.0, tl.float32)
    for k0 in range(0, E, BLOCK_K):
        k = k0 + kk
        m_k = k < E
        a = tl.load(u_ptr + rows[:, None] * s_um + k[None, :] * s_ue, mask=m_rows[:, None] & m_k[None, :],
                    other=0.0)
        w_dt = tl.load(wx_ptr + rr[None, :] * E + k[:, None], mask=m_r[None, :] & m_k[:, None], other=0.0)
        w_bc = tl.load(wx_ptr + (R + nn)[None, :] * E + k[:, None], mask=m_n[None, :] & m_k[:, None], other=0.0)
        w_dt = w_dt.to(u_ptr.dtype.element_ty)  # (rounded as autocast rounds the reference's weights)
        w_bc = w_bc.to(u_ptr.dtype.element_ty)
        if WIDEN:  # (the interpreter) 16-bit operands as fp32: products exact either way, fp32 sums
            a = a.to(tl.float32)
            w_dt = w_dt.to(tl.float32)
            w_bc = w_bc.to(tl.float32)
        if IEEE or WIDEN:
            acc_dt = tl.dot(a, w_dt, acc_dt, input_precision="ieee")
            acc_bc = tl.dot(a, w_bc, acc_bc, input_precision="ieee")
        else:  # 16-bit inputs: the precision argument does not apply
            acc_dt = tl.dot(a, w_dt, acc_dt)
            acc_bc = tl.dot(a, w_bc, acc_bc)
    dt = acc_dt.to(u_ptr.dtype.element_ty)  # rounded as the reference's x_dbl is, before dt_proj
    row_x = rows[:, None] * (R + NBC)
    tl.store(xdbl_ptr + row_x + rr[None, :], dt.to(xdbl_ptr.dtype.element_ty), mask=m_rows[:, None] & m_r[None, :])
    tl.store(xdbl_ptr + row_x + (R + nn)[None, :], acc_bc.to(xdbl_ptr.dtype.element_ty),
             mask=m_rows[:, None] & m_n[None, :])
    for n0 in range(0, E, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        m_e = n < E
        w = tl.load(wdt_ptr + n[None, :] * R + rr[:, None], mask=m_r[:, None] & m_e[None, :], other=0.0)
        w = w.to(u_ptr.dtype.element_ty)
        if WIDEN:
            d = tl.dot(dt.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        elif IEEE:
            d = tl.dot(dt, w, input_precision="ieee")
        else:
            d = tl.dot(dt, w)
        tl.store(delta_ptr + rows[:, None] * E + n[None, :], d.to(delta_ptr.dtype.element_ty),
                 mask=m_rows[:, None] & m_e[None, :])


def _configs(ieee: bool):
    """Candidate (BLOCK_M, BLOCK_K, BLOCK_N, num_warps), the heuristic choice first. 16-bit inputs: wgmma
    products, 122-236 registers on sm_90 (Triton 3.8, fp32 weights rounded in the kernel), no spills; fp32
    (products on the FMA units, where (64, 64, 128, 4) spills): 108-112."""
    if ieee:
        return [(32, 32, 64, 4), (64, 32, 64, 8)]
    return [(64, 64, 128, 4), (128, 64, 128, 8), (128, 64, 64, 4)]


# The interpreter runs programs one after another in Python: large row blocks
_INTERP_TILE = (128, 64, 128)
_KERNELS = {}


def _autotune_configs(ieee: bool) -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn}, num_warps=nw)
            for bm, bk, bn, nw in _configs(ieee)]


def _get_kernel(ieee: bool = False):
    """(kernel, interpreted, autotuned) for the current mode (``lazy_kernel``) and input precision."""
    return lazy_kernel(_KERNELS, (ieee,), _ssm_proj_kernel, _autotune_configs, ("E", "R", "NBC", "IEEE"))


def _rows(u: torch.Tensor) -> torch.Tensor:
    """(batch * length, channels) view of u (batch, channels, length) where its strides allow (time-major
    storage, as the conv writes it), else a copy."""
    return u.transpose(1, 2).reshape(-1, u.shape[1])


def _contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _launch(dirs, states_fp32: bool = False):
    """dirs: one or two (u, x_proj_weight, dt_proj_weight). Returns [(x_dbl, delta (batch, length, E))]; x_dbl
    in fp32 where ``states_fp32``, else in u's dtype."""
    u0, wx0, wdt0 = dirs[0]
    batch, E, length = u0.shape
    R = wdt0.shape[1]
    NBC = wx0.shape[0] - R
    dtype = u0.dtype
    outs, args = [], []
    for u, wx, wdt in dirs:
        rows = _rows(u)
        x_dbl = torch.empty((batch, length, R + NBC), device=u.device,
                            dtype=torch.float32 if states_fp32 else dtype)
        delta = torch.empty((batch, length, E), device=u.device, dtype=dtype)
        outs.append((x_dbl, delta))
        # the weights as they are (fp32 parameters under autocast): the kernel rounds them to u's dtype as it
        # loads them, where a cast here would be two more launches per direction and call (autocast caches its
        # own casts of parameters, so the reference pays for them once)
        args.append((rows, _contiguous(wx), _contiguous(wdt), x_dbl, delta))
    n_rows = batch * length
    if n_rows == 0:
        return outs
    if len(args) > 1 and args[0][0].stride() != args[1][0].stride():  # one set of strides for both
        args = [(a[0].contiguous(),) + a[1:] for a in args]
    rows0 = args[0][0]
    second = args[-1]  # (the first again for one direction: grid axis 1 has one program then)
    ieee = dtype == torch.float32
    kern, interp, tuned = _get_kernel(ieee)
    extra = {}
    if interp:
        extra = dict(zip(("BLOCK_M", "BLOCK_K", "BLOCK_N"), _INTERP_TILE))
    elif not tuned:
        bm, bk, bn, nw = _configs(ieee)[0]
        extra = {"BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn, "num_warps": nw}
    grid = lambda meta: (cdiv(n_rows, meta["BLOCK_M"]), len(dirs))  # noqa: E731
    kern[grid](
        *args[0], *second,
        n_rows, E, R, NBC,
        rows0.stride(0), rows0.stride(1),
        IEEE=ieee, WIDEN=interp and not ieee, RP=max(16, next_pow2(R)), NP=max(16, next_pow2(NBC)), **extra,
    )
    return outs


def _empty_like_outputs(u):
    return u.new_empty(0), u.new_empty(0)


# Registered as a custom op (``eager_op``): torch.compile keeps a whole model in one graph, CUDA graphs capture
# the kernel as it is. The second direction's outputs are fresh empty tensors when there is none.
def _proj_fwd_impl(u: torch.Tensor, wx: torch.Tensor, wdt: torch.Tensor, u2: Optional[torch.Tensor],
                   wx2: Optional[torch.Tensor], wdt2: Optional[torch.Tensor], states_fp32: bool = False
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dirs = [(u, wx, wdt)] + ([(u2, wx2, wdt2)] if u2 is not None else [])
    outs = _launch(dirs, states_fp32)
    first = outs[0]
    second = outs[1] if len(outs) > 1 else _empty_like_outputs(u)
    return (*first, *second)


def _proj_fwd_fake(u, wx, wdt, u2, wx2, wdt2, states_fp32=False):
    batch, E, length = u.shape

    def pair():
        return (u.new_empty((batch, length, wx.shape[0]), dtype=torch.float32 if states_fp32 else u.dtype),
                u.new_empty((batch, length, E)))

    return (*pair(), *(pair() if u2 is not None else _empty_like_outputs(u)))


def _proj_setup_context(ctx, inputs, output):
    u, wx, wdt, u2, wx2, wdt2 = inputs[:6]
    ctx.two = u2 is not None
    ctx.save_for_backward(u, wx, wdt, output[0], *((u2, wx2, wdt2, output[2]) if ctx.two else ()))
    ctx.set_materialize_grads(False)


def _direction_grads(u, wx, wdt, x_dbl, g_xdbl, g_delta, needs):
    """Gradients of u, x_proj_weight and dt_proj_weight through x_dbl = u^T wx^T, delta = dt wdt^T (dt: the
    first dt_rank columns of x_dbl), as autograd gives them for the reference's two ``F.linear`` (with an fp32
    x_dbl, as for the reference's B and C cast to fp32: x_dbl's gradient rounded to u's dtype first)."""
    dtype = u.dtype
    R = wdt.shape[1]
    E = u.shape[1]
    rows = _rows(u)
    g_x = g_xdbl.reshape(-1, wx.shape[0]).to(dtype) if g_xdbl is not None else None
    g_wdt = None
    if g_delta is not None:
        g_d = g_delta.reshape(-1, E)
        g_dt = g_d @ wdt.to(dtype)
        g_x = g_x.clone() if g_x is not None else rows.new_zeros((rows.shape[0], wx.shape[0]))
        g_x[:, :R] += g_dt
        if needs[2]:
            g_wdt = (g_d.t() @ x_dbl.reshape(-1, wx.shape[0])[:, :R].to(dtype)).to(wdt.dtype)
    g_u = g_wx = None  # (None where no output reached the loss, as autograd leaves them)
    if g_x is not None:
        if needs[0]:
            g_u = (g_x @ wx.to(dtype)).view(u.shape[0], u.shape[2], E).transpose(1, 2)
        if needs[1]:
            g_wx = (g_x.t() @ rows).to(wx.dtype)
    return g_u, g_wx, g_wdt


def _proj_backward(ctx, g_xdbl, g_delta, g_xdbl2, g_delta2):
    saved = ctx.saved_tensors
    grads = list(_direction_grads(*saved[:4], g_xdbl, g_delta, ctx.needs_input_grad[:3]))
    if ctx.two:
        grads += _direction_grads(*saved[4:], g_xdbl2, g_delta2, ctx.needs_input_grad[3:])
    else:
        grads += [None, None, None]
    return (*grads, None)


_proj_fwd_op = eager_op("vimamba::ssm_projections", _proj_fwd_impl, backward=_proj_backward,
                        setup_context=_proj_setup_context)
_proj_fwd_op.op.register_fake(_proj_fwd_fake)


def _check(u, wx, wdt, name):
    if u.dim() != 3:
        raise ValueError(f"{name}u must be (batch, channels, length), got shape {tuple(u.shape)}")
    E = u.shape[1]
    if (wdt.dim() != 2 or wdt.shape[0] != E or wx.dim() != 2 or wx.shape[1] != E or wx.shape[0] <= wdt.shape[1]
            or (wx.shape[0] - wdt.shape[1]) % 2):
        raise ValueError(f"{name}x_proj_weight must be (dt_rank + 2 * d_state, {E}) and {name}dt_proj_weight "
                         f"({E}, dt_rank), got {tuple(wx.shape)} and {tuple(wdt.shape)}")
    if not u.dtype.is_floating_point or u.dtype == torch.float64:
        raise ValueError(f"{name}u must be fp32, fp16 or bf16, got {u.dtype}")


def _scan_views(x_dbl: torch.Tensor, delta: torch.Tensor, dt_rank: int):
    """The reference's (delta, B, C) views of the kernel's x_dbl and delta (batch, length, ...) outputs."""
    d_state = (x_dbl.shape[-1] - dt_rank) // 2
    _, B, C = x_dbl.split([dt_rank, d_state, d_state], dim=-1)
    return delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)


def ssm_projections_triton(u: torch.Tensor, x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor,
                           second: Optional[Sequence[torch.Tensor]] = None, states_fp32: bool = False):
    """``ssm_projections_ref(u, x_proj_weight, dt_proj_weight)`` -> (delta, B, C) in u's dtype, or, with
    ``second`` = (u, x_proj_weight, dt_proj_weight) of another direction of the same shapes, both directions'
    triples from one launch. Differentiable in every input. ``states_fp32``: B and C in fp32, the products'
    accumulator unrounded (``ssm_projections_ref(..., states_dtype=torch.float32)`` up to that rounding)."""
    if not HAS_TRITON:
        raise RuntimeError("ssm_projections_triton needs the triton package")
    if not u.is_cuda and not _get_kernel()[1]:
        raise RuntimeError("ssm_projections_triton on CPU tensors runs in Triton's interpreter only: "
                           "set TRITON_INTERPRET=1 before the first call")
    _check(u, x_proj_weight, dt_proj_weight, "")
    rank = dt_proj_weight.shape[1]
    if second is not None:
        u2, wx2, wdt2 = second
        _check(u2, wx2, wdt2, "second ")
        if (u2.shape, u2.dtype, wx2.shape, wdt2.shape) != (u.shape, u.dtype, x_proj_weight.shape,
                                                            dt_proj_weight.shape):
            raise ValueError("both directions must agree in shapes and u's dtype, got "
                             f"{tuple(u.shape)}/{tuple(u2.shape)}, {u.dtype}/{u2.dtype}, "
                             f"{tuple(x_proj_weight.shape)}/{tuple(wx2.shape)}")
        x1, d1, x2, d2 = _proj_fwd_op(u, x_proj_weight, dt_proj_weight, u2, wx2, wdt2, bool(states_fp32))
        return _scan_views(x1, d1, rank), _scan_views(x2, d2, rank)
    x1, d1, _, _ = _proj_fwd_op(u, x_proj_weight, dt_proj_weight, None, None, None, bool(states_fp32))
    return _scan_views(x1, d1, rank)
