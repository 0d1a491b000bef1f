"""Triton kernels for Vim's residual add + RMSNorm (forward and backward).

``add_rms_norm_triton(x, residual, weight, eps=1e-5, residual_in_fp32=True) -> (normed, stream)`` has the
semantics and dtypes of ``add_rms_norm_ref``:

* the stream is ``at_least_fp32(residual) + at_least_fp32(x)`` when ``residual_in_fp32`` (fp32, or fp64
  when an operand is fp64), ``residual + x.to(residual.dtype)`` otherwise (rounded to the residual's dtype,
  and the rounded value is what gets normalised), and ``x`` itself (as fp32 when ``residual_in_fp32``)
  when ``residual`` is None;
* ``normed = stream * rsqrt(mean(stream^2) + eps) * weight`` in fp32, stored in x's dtype.

One kernel pass over rows (everything but the last, ``hidden``, dimension) reads x (and the residual) once
and writes the normalised output and the stream once. Where the reference's stream is ``x`` itself
(residual None and no dtype change) nothing is written for it: ``x`` is returned, as the reference does, and
autograd adds the stream's gradient to x's.

Backward takes the gradients of both outputs (either may be absent)::

    xhat = s * rstd,   ds = rstd * (g_n*w - xhat * mean(g_n*w*xhat)) + g_s,   dx = dresidual = ds
    dweight = sum_rows g_n * xhat

re-reading the stream (rstd is recomputed, the row is in registers anyway). The weight gradient is summed
per program (a persistent grid striding over row blocks) into an fp32 partial row, then over programs with
torch. All arithmetic is in fp32 (fp64 inputs are therefore computed in fp32 too).

Kernels are turned into Triton functions on first use, not at import, and their bodies call only
``triton.language`` builtins: ``ops/_triton.py`` says why.
"""

from typing import Optional, Tuple

import torch

from .._triton import HAS_TRITON, cdiv, eager_op, lazy_kernel, next_pow2, num_sms, tl, triton

__all__ = ["HAS_TRITON", "add_rms_norm_triton"]


# ----------------------------------------------------------------------------------------------------------
# Kernels (plain functions; decorated lazily by _get_kernel)
# ----------------------------------------------------------------------------------------------------------

def _add_rms_norm_fwd_kernel(
    x_ptr, r_ptr, w_ptr, y_ptr, s_ptr,
    n_rows, H,
    stride_xm, stride_xh, stride_rm, stride_rh, stride_ym, stride_sm,
    eps,
    HAS_RES: tl.constexpr, ADD_FP32: tl.constexpr, STORE_STREAM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask_h = cols < H
    mask = (rows < n_rows)[:, None] & mask_h[None, :]

    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xh, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(r_ptr + rows[:, None] * stride_rm + cols[None, :] * stride_rh, mask=mask, other=0.0)
        if ADD_FP32:
            s = x.to(tl.float32) + r.to(tl.float32)
        else:  # residual + x.to(residual.dtype), one rounding to the residual's dtype below
            # (through fp32: a direct fp16 -> bf16 cast is not reliable across Triton versions/interpreter)
            s = x.to(tl.float32).to(r_ptr.dtype.element_ty).to(tl.float32) + r.to(tl.float32)
    else:
        s = x.to(tl.float32)
    if STORE_STREAM:
        s_out = s.to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + rows[:, None] * stride_sm + cols[None, :], s_out, mask=mask)
        s = s_out.to(tl.float32)  # normalise the stream as stored (matters when it is half precision)

    w = tl.load(w_ptr + cols, mask=mask_h, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.reduce(s * s, 1, tl.standard._sum_combine) / H + eps)
    y = s * rstd[:, None] * w[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


def _add_rms_norm_bwd_kernel(
    s_ptr, w_ptr, gy_ptr, gs_ptr, dx_ptr, dr_ptr, dw_part_ptr,
    n_rows, n_blocks, H,
    stride_sm, stride_sh, stride_gym, stride_gyh, stride_gsm, stride_gsh, stride_dxm, stride_drm,
    eps,
    HAS_GY: tl.constexpr, HAS_GS: tl.constexpr, WANT_DX: tl.constexpr, WANT_DR: tl.constexpr,
    WANT_DW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_H)
    mask_h = cols < H
    w = tl.load(w_ptr + cols, mask=mask_h, other=0.0).to(tl.float32)
    dw_acc = tl.full([BLOCK_M, BLOCK_H], 0.0, tl.float32)
    for blk in range(pid, n_blocks, n_progs):
        rows = (blk * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < n_rows)[:, None] & mask_h[None, :]
        ds = tl.full([BLOCK_M, BLOCK_H], 0.0, tl.float32)
        if HAS_GY:
            s = tl.load(s_ptr + rows[:, None] * stride_sm + cols[None, :] * stride_sh, mask=mask, other=0.0)
            s = s.to(tl.float32)
            rstd = tl.rsqrt(tl.reduce(s * s, 1, tl.standard._sum_combine) / H + eps)
            xhat = s * rstd[:, None]
            gy = tl.load(gy_ptr + rows[:, None] * stride_gym + cols[None, :] * stride_gyh, mask=mask, other=0.0)
            gy = gy.to(tl.float32)
            gxhat = gy * w[None, :]
            c = tl.reduce(gxhat * xhat, 1, tl.standard._sum_combine) / H
            ds += (gxhat - xhat * c[:, None]) * rstd[:, None]
            if WANT_DW:
                dw_acc += gy * xhat
        if HAS_GS:
            gs = tl.load(gs_ptr + rows[:, None] * stride_gsm + cols[None, :] * stride_gsh, mask=mask, other=0.0)
            ds += gs.to(tl.float32)
        if WANT_DX:
            tl.store(dx_ptr + rows[:, None] * stride_dxm + cols[None, :], ds.to(dx_ptr.dtype.element_ty), mask=mask)
        if WANT_DR:
            tl.store(dr_ptr + rows[:, None] * stride_drm + cols[None, :], ds.to(dr_ptr.dtype.element_ty), mask=mask)
    if WANT_DW:
        # every program writes its row (zeros when it had no block): the buffer needs no clearing
        tl.store(dw_part_ptr + pid * H + cols, tl.reduce(dw_acc, 0, tl.standard._sum_combine), mask=mask_h)


# ----------------------------------------------------------------------------------------------------------
# Lazy decoration, autotuning and tile shapes
# ----------------------------------------------------------------------------------------------------------

def _block_h(hidden: int) -> int:
    return max(16, next_pow2(hidden))


def _fwd_configs(block_h: int):
    """Candidate (BLOCK_M, num_warps), the heuristic choice first: about 1-4K elements per program."""
    bm = max(1, min(64, 2048 // block_h))
    nw = 4 if block_h <= 2048 else 8
    cands = [(bm, nw), (max(1, bm // 2), nw), (min(128, bm * 2), 8)]
    seen, out = set(), []
    for c in cands:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def _bwd_block_m(block_h: int) -> int:
    # Not autotuned: with a persistent grid its value sets how many programs (partial rows) there are.
    return max(1, min(32, 1024 // block_h))


def _bwd_warps(block_h: int):
    return [4, 8]


def _interp_block_m(block_h: int) -> int:
    # The interpreter runs programs one after another in Python: fewer, larger tiles.
    return max(1, min(64, 16384 // block_h))


_KERNELS = {}


def _autotune_configs(name: str, block_h: int) -> list:
    if name == "fwd":
        return [triton.Config({"BLOCK_M": bm}, num_warps=nw) for bm, nw in _fwd_configs(block_h)]
    # BLOCK_M is fixed (it sets the persistent grid); only the warps are tuned
    return [triton.Config({}, num_warps=nw) for nw in _bwd_warps(block_h)]


def _get_kernel(name: str, block_h: int):
    """(kernel, interpreted, autotuned) for the current mode (``lazy_kernel``)."""
    if name == "fwd":
        return lazy_kernel(_KERNELS, (name, block_h), _add_rms_norm_fwd_kernel, _autotune_configs,
                           ("n_rows", "H", "HAS_RES", "STORE_STREAM"))
    return lazy_kernel(_KERNELS, (name, block_h), _add_rms_norm_bwd_kernel, _autotune_configs,
                       ("n_rows", "H", "HAS_GY", "HAS_GS"))


def _as_rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    """(rows, hidden) view of t where its strides allow one (any slice or stride along hidden, leading dims
    that flatten into one), a copy otherwise (e.g. a transpose that interleaves hidden with the rows)."""
    return t.reshape(-1, hidden)


def _launch_fwd(x, residual, weight, eps, add_fp32, stream_dtype):
    hidden = x.shape[-1]
    x2 = _as_rows(x, hidden)
    r2 = _as_rows(residual, hidden) if residual is not None else None
    n_rows = x2.shape[0]
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    s = torch.empty(x.shape, device=x.device, dtype=stream_dtype) if stream_dtype is not None else None
    if n_rows == 0 or hidden == 0:
        return y, s
    block_h = _block_h(hidden)
    kern, interp, tuned = _get_kernel("fwd", block_h)
    grid = lambda meta: (cdiv(n_rows, meta["BLOCK_M"]),)  # noqa: E731
    extra = {}
    if interp:
        extra = {"BLOCK_M": _interp_block_m(block_h)}
    elif not tuned:
        bm, nw = _fwd_configs(block_h)[0]
        extra = {"BLOCK_M": bm, "num_warps": nw}
    kern[grid](
        x2, r2 if r2 is not None else x2, weight, y, s if s is not None else y,
        n_rows, hidden,
        x2.stride(0), x2.stride(1),
        r2.stride(0) if r2 is not None else 0, r2.stride(1) if r2 is not None else 0,
        hidden, hidden,
        float(eps),
        HAS_RES=r2 is not None, ADD_FP32=bool(add_fp32), STORE_STREAM=s is not None,
        BLOCK_H=block_h, **extra,
    )
    return y, s


def _launch_bwd(s, weight, gy, gs, eps, x_dtype, r_dtype, want_dx, want_dr, want_dw):
    hidden = s.shape[-1]
    s2 = _as_rows(s, hidden)
    n_rows = s2.shape[0]
    gy2 = _as_rows(gy, hidden) if gy is not None else None
    gs2 = _as_rows(gs, hidden) if gs is not None else None
    dx = torch.empty(s.shape, device=s.device, dtype=x_dtype) if want_dx else None
    dr = torch.empty(s.shape, device=s.device, dtype=r_dtype) if want_dr else None
    want_dw = want_dw and gy is not None
    dw = None
    if n_rows == 0 or hidden == 0:
        for t in (dx, dr):
            if t is not None:
                t.zero_()
        if want_dw:
            dw = torch.zeros_like(weight)
        return dx, dr, dw
    block_h = _block_h(hidden)
    kern, interp, tuned = _get_kernel("bwd", block_h)
    block_m = _interp_block_m(block_h) if interp else _bwd_block_m(block_h)
    extra = {} if interp or tuned else {"num_warps": _bwd_warps(block_h)[0]}
    n_progs = max(1, min(cdiv(n_rows, block_m), 4 * num_sms(s.device)))
    dw_part = torch.empty((n_progs, hidden), device=s.device, dtype=torch.float32) if want_dw else None
    dummy = s2
    kern[(n_progs,)](
        s2, weight,
        gy2 if gy2 is not None else dummy, gs2 if gs2 is not None else dummy,
        dx if dx is not None else dummy, dr if dr is not None else dummy,
        dw_part if dw_part is not None else dummy,
        n_rows, cdiv(n_rows, block_m), hidden,
        s2.stride(0), s2.stride(1),
        gy2.stride(0) if gy2 is not None else 0, gy2.stride(1) if gy2 is not None else 0,
        gs2.stride(0) if gs2 is not None else 0, gs2.stride(1) if gs2 is not None else 0,
        hidden, hidden,
        float(eps),
        HAS_GY=gy2 is not None, HAS_GS=gs2 is not None,
        WANT_DX=bool(want_dx), WANT_DR=bool(want_dr), WANT_DW=bool(want_dw),
        BLOCK_M=block_m, BLOCK_H=block_h, **extra,
    )
    if want_dw:
        dw = dw_part.sum(0).to(weight.dtype)
    return dx, dr, dw


# Registered as custom ops (``eager_op``), so torch.compile keeps a whole model in one graph; eager calls skip
# torch.library's dispatch; CUDA graphs capture the kernels as they are. The stream output is an empty tensor when it is not written (the stream is x).
def _norm_fwd_impl(x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor, eps: float,
                 add_fp32: bool, stream_dtype: Optional[torch.dtype]) -> Tuple[torch.Tensor, torch.Tensor]:
    y, s = _launch_fwd(x, residual, weight, eps, add_fp32, stream_dtype)
    return y, s if s is not None else x.new_empty(0)


def _norm_fwd_fake(x, residual, weight, eps, add_fp32, stream_dtype):
    stream = x.new_empty(x.shape, dtype=stream_dtype) if stream_dtype is not None else x.new_empty(0)
    return x.new_empty(x.shape), stream


def _norm_bwd_impl(s: torch.Tensor, weight: torch.Tensor, gy: Optional[torch.Tensor], gs: Optional[torch.Tensor],
                 eps: float, x_dtype: torch.dtype, r_dtype: Optional[torch.dtype], want_dx: bool, want_dr: bool,
                 want_dw: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dr, dw = _launch_bwd(s, weight, gy, gs, eps, x_dtype, r_dtype, want_dx, want_dr, want_dw)
    # one fresh empty tensor per absent gradient: custom-op outputs may not alias each other
    return (dx if dx is not None else s.new_empty(0), dr if dr is not None else s.new_empty(0),
            dw if dw is not None else s.new_empty(0))


def _norm_bwd_fake(s, weight, gy, gs, eps, x_dtype, r_dtype, want_dx, want_dr, want_dw):
    want_dw = want_dw and gy is not None
    return (s.new_empty(s.shape if want_dx else (0,), dtype=x_dtype),
            s.new_empty(s.shape if want_dr and r_dtype is not None else (0,), dtype=r_dtype or s.dtype),
            weight.new_empty(weight.shape if want_dw else (0,)))


_norm_bwd_op = eager_op("vimamba::add_rms_norm_bwd", _norm_bwd_impl)
_norm_bwd_op.op.register_fake(_norm_bwd_fake)


def _norm_setup_context(ctx, inputs, output):
    x, residual, weight, eps, add_fp32, stream_dtype = inputs
    # backward re-reads the stream: the written one, or x when the stream is x
    ctx.save_for_backward(output[1] if stream_dtype is not None else x, weight)
    ctx.eps = eps
    ctx.x_dtype = x.dtype
    ctx.r_dtype = residual.dtype if residual is not None else None
    ctx.set_materialize_grads(False)


def _norm_backward(ctx, gy, gs):
    s, weight = ctx.saved_tensors
    if gs is not None and gs.numel() == 0:  # the placeholder stream of the stream-is-x case
        gs = None
    want_dx, want_dr, want_dw = ctx.needs_input_grad[:3]
    want_dr = want_dr and ctx.r_dtype is not None
    if (gy is None and gs is None) or not (want_dx or want_dr or want_dw):
        return None, None, None, None, None, None
    dx, dr, dw = _norm_bwd_op(s, weight, gy, gs, ctx.eps, ctx.x_dtype, ctx.r_dtype, want_dx, want_dr, want_dw)
    return (dx if want_dx else None, dr if want_dr else None, dw if want_dw and gy is not None else None,
            None, None, None)


_norm_fwd_op = eager_op("vimamba::add_rms_norm_fwd", _norm_fwd_impl,
                        backward=_norm_backward, setup_context=_norm_setup_context)
_norm_fwd_op.op.register_fake(_norm_fwd_fake)


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def add_rms_norm_triton(
    x: torch.Tensor,
    residual: Optional[torch.Tensor],
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual) * weight, x + residual)`` with ``add_rms_norm_ref``'s dtypes; differentiable
    in x, residual and weight through both outputs."""
    if not HAS_TRITON:
        raise RuntimeError("add_rms_norm_triton needs the triton package")
    if not x.is_cuda and not _get_kernel("fwd", 16)[1]:
        raise RuntimeError("add_rms_norm_triton on CPU tensors runs in Triton's interpreter only: "
                           "set TRITON_INTERPRET=1 before the first call")
    if x.dim() < 1 or weight.shape != (x.shape[-1],):
        raise ValueError(f"expected x (..., hidden) and weight (hidden,), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    weight = weight.contiguous()  # a no-op for a parameter; autograd sees through it otherwise
    if residual is None:
        stream_dtype = _at_least_fp32(x.dtype) if residual_in_fp32 else x.dtype
        add_fp32 = True
        if stream_dtype == x.dtype:  # the reference's stream is x itself
            y, _ = _norm_fwd_op(x, None, weight, eps, add_fp32, None)
            return y, x
    elif residual_in_fp32:
        stream_dtype = torch.promote_types(_at_least_fp32(residual.dtype), _at_least_fp32(x.dtype))
        add_fp32 = True
    else:
        stream_dtype = residual.dtype
        add_fp32 = False
    return _norm_fwd_op(x, residual, weight, eps, add_fp32, stream_dtype)
