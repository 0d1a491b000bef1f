"""An experimental backward for the selective scan that is parallel over time (session 7): not dispatched yet.

Why it exists. The shipped backward (``triton_scan._scan_bwd_kernel``) walks time step by step in each thread,
with the channels across lanes. At Vim-Ti's training size (224, batch 128: 197 steps, 384 channels) that is a
few warps per scheduler, each step waiting on the last: latency-bound, ~30% of issue (docs/performance.md,
v7), and the backward scan is most of the training step's 107 ms of GPU time against DeiT-Ti's 15. Here one
program takes a whole sequence of one channel at a time as a [steps, states] tile and runs both recurrences as
parallel prefix scans over time (``tl.associative_scan`` with the composition of affine maps
``x -> a x + b``): the forward states, then the adjoint from the other end. Every (step, state) element is
independent work for the lanes, so a GPU fills with warps whatever the batch.

Per program: one batch element, ``channels_per_program`` consecutive channels in a loop. B and C of the batch
element are loaded once as [steps, states] tiles and reused by every channel; the channel sums dB and dC are
accumulated over the program's channels in registers and written once as fp32 partials per channel block,
summed by torch afterwards (no atomics). dA, dD and d(delta_bias) are partials per batch element, as in the
shipped backward.

Recurrences (one direction; ``reverse`` walks time from the last step, the neighbour s below is then t - 1)::

    h[t] = a[t] h[t-s] + dt[t] u[t] B[t]                      (scan in the direction of the scan)
    lambda[t] = gy[t] C[t] + a[t+s] lambda[t+s]               (scan in the other direction)

with a[t] = exp(dt[t] A), gy = dout * silu(z), and a[t] h[t-s] = h[t] - dt[t] u[t] B[t], so no shifted state is
needed; the neighbour's decay a[t+s] is recomputed from its own delta (one more exp per element, as the
shipped backward's phase B does).

Limits: the whole sequence is one tile, so the length is at most ``MAX_LENGTH`` (1,024 steps: Vim at 224 and
512 with 16-pixel patches); B and C of shape (batch, state, length); no initial or final state. Longer
sequences need the tile to walk chunks with a carried state (a second pass for the adjoint's entry states):
not written. ``benchmarks/time_parallel_probe.py`` times it against the shipped backward on a GPU.
"""

from __future__ import annotations

import torch

from .._triton import HAS_TRITON, next_pow2, tl, triton
from .reference import check_scan_inputs
from .triton_scan import _softplus_impl

__all__ = ["MAX_LENGTH", "selective_scan_bwd_time_parallel"]

MAX_LENGTH = 1024

_sum_comb = tl.standard._sum_combine if HAS_TRITON else None


def _affine_compose_impl(a_first, b_first, a_then, b_then):
    # x -> a_then (a_first x + b_first) + b_then: the combine of both scans, in the order the scan walks
    return a_first * a_then, a_then * b_first + b_then


def _tp_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, g_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    dim, L,
    s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl,
    s_Ad, s_An, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    s_xb, s_xd, s_xl, s_pc, s_pb, s_pl,
    N: tl.constexpr, TL: tl.constexpr, DB: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    A_LOG: tl.constexpr, REVERSE: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    t = tl.arange(0, TL)[:, None]  # [TL, 1]: per-step values broadcast over the states
    n = tl.arange(0, N)[None, :]  # [1, N]
    m_t = t < L
    if REVERSE:
        t_nb = t - 1  # the step whose decay carries the adjoint into step t
    else:
        t_nb = t + 1
    m_nb = (t_nb >= 0) & (t_nb < L)
    B_t = tl.load(B_ptr + pid_b * s_Bb + n * s_Bn + t * s_Bl, mask=m_t, other=0.0).to(tl.float32)
    C_t = tl.load(C_ptr + pid_b * s_Cb + n * s_Cn + t * s_Cl, mask=m_t, other=0.0).to(tl.float32)
    # two separate zero tiles: one shared start value would hide either from Triton's loop-carry detection
    # (see the conv's SLIDE window)
    dB_acc = tl.full([TL, N], 0.0, tl.float32)
    dC_acc = tl.full([TL, N], 0.0, tl.float32)
    at0 = tl.full([1, 1], 0, tl.int32)  # offset tile that makes a per-channel scalar load or store a [1, 1] tile
    for i in range(0, DB):
        d = pid_c * DB + i
        A_row = tl.load(A_ptr + d * s_Ad + n * s_An).to(tl.float32)
        if A_LOG:
            A_row = -tl.exp(A_row)
        A2 = A_row * 1.4426950408889634
        u = tl.load(u_ptr + pid_b * s_ub + d * s_ud + t * s_ul, mask=m_t, other=0.0).to(tl.float32)
        r = tl.load(dt_ptr + pid_b * s_tb + d * s_td + t * s_tl, mask=m_t, other=0.0).to(tl.float32)
        r_nb = tl.load(dt_ptr + pid_b * s_tb + d * s_td + t_nb * s_tl, mask=m_nb, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + pid_b * s_gb + d * s_gd + t * s_gl, mask=m_t, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d + at0).to(tl.float32)
            r = r + bias
            r_nb = r_nb + bias
        if SOFTPLUS:
            dt = _softplus(r)
            dt_nb = _softplus(r_nb)
        else:
            dt = r
            dt_nb = r_nb
        dt = tl.where(m_t, dt, 0.0)  # padded steps: decay 1, no input, so they change nothing
        a = tl.exp2(dt * A2)  # [TL, N]
        a_nb = tl.where(m_nb, tl.exp2(dt_nb * A2), 0.0)
        du_ = dt * u
        bu = du_ * B_t
        if REVERSE:
            _, h = tl.associative_scan((a, bu), 0, _affine_compose, reverse=True)
        else:
            _, h = tl.associative_scan((a, bu), 0, _affine_compose, reverse=False)
        if HAS_D:
            Dv = tl.load(D_ptr + d + at0).to(tl.float32)
        x_off = pid_b * s_xb + d * s_xd + t * s_xl
        if HAS_Z:
            zz = tl.load(z_ptr + pid_b * s_zb + d * s_zd + t * s_zl, mask=m_t, other=0.0).to(tl.float32)
            sig = 1.0 / (1.0 + tl.exp2(-zz * 1.4426950408889634))
            gy = g * zz * sig
            y = tl.reduce(h * C_t, 1, _sum_comb, keep_dims=True)
            if HAS_D:
                y = y + Dv * u
            dz = g * y * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + x_off, dz.to(dz_ptr.dtype.element_ty), mask=m_t)
        else:
            gy = g
        if REVERSE:
            _, lam = tl.associative_scan((a_nb, gy * C_t), 0, _affine_compose, reverse=False)
        else:
            _, lam = tl.associative_scan((a_nb, gy * C_t), 0, _affine_compose, reverse=True)
        q = lam * (h - bu)  # lambda[t] a[t] h[t-s]
        dA_row = tl.reduce(q * dt, 0, _sum_comb, keep_dims=True)
        if A_LOG:
            dA_row = dA_row * A_row
        tl.store(dA_ptr + (pid_b * dim + d) * N + n, dA_row)
        lb = tl.reduce(lam * B_t, 1, _sum_comb, keep_dims=True)
        aq = tl.reduce(q * A_row, 1, _sum_comb, keep_dims=True)
        ddt = u * lb + aq
        if SOFTPLUS:
            ddt = ddt / (1.0 + tl.exp2(-r * 1.4426950408889634))
        ddt = tl.where(m_t, ddt, 0.0)
        du_o = dt * lb
        if HAS_D:
            du_o = du_o + gy * Dv
            tl.store(dD_ptr + pid_b * dim + d + at0, tl.reduce(gy * u, 0, _sum_comb, keep_dims=True))
        if HAS_BIAS:
            tl.store(dbias_ptr + pid_b * dim + d + at0, tl.reduce(ddt, 0, _sum_comb, keep_dims=True))
        tl.store(du_ptr + x_off, du_o.to(du_ptr.dtype.element_ty), mask=m_t)
        tl.store(ddt_ptr + x_off, ddt.to(ddt_ptr.dtype.element_ty), mask=m_t)
        dB_acc += lam * du_
        dC_acc += gy * h
    p_off = pid_c * s_pc + pid_b * s_pb + t * s_pl + n
    tl.store(dB_ptr + p_off, dB_acc, mask=m_t)
    tl.store(dC_ptr + p_off, dC_acc, mask=m_t)


_KERNELS: dict = {}


def _get_kernel():
    """The kernel for the current mode (compiled or interpreted), with its helpers decorated the same way."""
    global _softplus, _affine_compose
    import os

    interp = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")
    if interp not in _KERNELS:
        _KERNELS[interp] = (triton.jit(_tp_bwd_kernel), triton.jit(_softplus_impl), triton.jit(_affine_compose_impl))
    kern, _softplus, _affine_compose = _KERNELS[interp]
    return kern


def selective_scan_bwd_time_parallel(u, delta, A, B, C, D, z, delta_bias, dout, delta_softplus=False,
                                     reverse=False, a_log=False, channels_per_program=None, num_warps=4):
    """Gradients of ``selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse=reverse)``
    (with ``A = -exp(A)`` when ``a_log``) for the output gradient ``dout``, recomputing the forward.

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias): du, ddelta, dz in their input's dtype, laid out
    time-major like the shipped backward's; dA, dB, dC, dD, ddelta_bias in fp32 (None where the input is None).
    ``channels_per_program`` must divide the channels (default: the largest of 16, 8, 4, 2, 1 that does).
    """
    if not HAS_TRITON:
        raise RuntimeError("selective_scan_bwd_time_parallel needs the triton package")
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    nstate = A.shape[1]
    if B.dim() != 3 or C.dim() != 3:
        raise NotImplementedError("the time-parallel backward takes B and C of shape (batch, state, length)")
    if length > MAX_LENGTH:
        raise NotImplementedError(f"the time-parallel backward holds a whole sequence in one tile: length "
                                  f"{length} is over its {MAX_LENGTH} steps")
    if nstate & (nstate - 1):
        raise NotImplementedError(f"state size {nstate}: the time-parallel backward needs a power of 2")
    if dout.shape != u.shape:
        raise ValueError(f"dout has shape {tuple(dout.shape)}, expected u's {tuple(u.shape)}")
    if channels_per_program is None:
        channels_per_program = next(c for c in (16, 8, 4, 2, 1) if dim % c == 0)
    if dim % channels_per_program:
        raise ValueError(f"channels_per_program={channels_per_program} must divide the {dim} channels")
    kern = _get_kernel()
    f32 = dict(device=u.device, dtype=torch.float32)
    du = u.new_empty((batch, length, dim)).transpose(1, 2)
    ddt = delta.new_empty((batch, length, dim)).transpose(1, 2)
    dz = z.new_empty((batch, length, dim)).transpose(1, 2) if z is not None else du
    n_cb = dim // channels_per_program
    dA = torch.empty((batch, dim, nstate), **f32)
    dD = torch.empty((batch, dim), **f32) if D is not None else dA
    dbias = torch.empty((batch, dim), **f32) if delta_bias is not None else dA
    dB_part = torch.empty((n_cb, batch, length, nstate), **f32)
    dC_part = torch.empty((n_cb, batch, length, nstate), **f32)
    zz = z if z is not None else u
    kern[(n_cb, batch)](
        u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A, dout,
        du, ddt, dz, dA, dD, dbias, dB_part, dC_part,
        dim, length,
        u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1), delta.stride(2),
        zz.stride(0), zz.stride(1), zz.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
        A.stride(0), A.stride(1), B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        du.stride(0), du.stride(1), du.stride(2), dB_part.stride(0), dB_part.stride(1), dB_part.stride(2),
        N=nstate, TL=max(16, next_pow2(length)), DB=channels_per_program,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        A_LOG=bool(a_log), REVERSE=bool(reverse), num_warps=num_warps,
    )
    dB = dB_part.sum(0).transpose(1, 2)
    dC = dC_part.sum(0).transpose(1, 2)
    return (du, ddt, dA.sum(0), dB, dC, dD.sum(0) if D is not None else None, dz if z is not None else None,
            dbias.sum(0) if delta_bias is not None else None)
