"""Triton selective scan (forward and backward) for input-dependent B and C, Vim's case.

``selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False, reverse=False)`` has the semantics of ``selective_scan_ref`` for B and C of shape
(batch, state, length); other B/C shapes (and fp64 inputs) raise ``NotImplementedError`` (the dispatcher
sends those to the reference). ``reverse=True`` scans from the last step to the first: the kernels walk time
backwards, nothing is flipped or copied. ``add=`` (u's shape) is added to the output inside the kernel,
before its one rounding: a branch sum without a separate pass (one scan's output added into the other's
as it is written; Vim's mixer now runs its two scans in one launch instead, ``selective_scan_bidir_triton``).
``out=`` (no autograd) writes the result into a given tensor, which may be ``add``. It is a ``torch.autograd.Function``: gradients reach u, delta, A, B,
C, D, z and delta_bias (each optional one when given), and flow back from the returned last state too.

Recurrence (per batch b, channel d, state n; ``dt`` is ``delta + delta_bias``, softplus'ed if asked)::

    a[t] = exp(dt[t] * A[d, n]) = exp2(dt[t] * A[d, n] * log2(e))       b[t] = dt[t] * u[t] * B[n, t]
    h[t] = a[t] * h[t-1] + b[t]
    y[t] = (sum_n C[n, t] * h[t, n] + D[d] * u[t]) * silu(z[t])

Everything runs in fp32 registers; inputs may be fp32, fp16 or bf16 (A, D, delta_bias are used in fp32); the
output has u's dtype, the gradients their input's dtype, the last state is fp32.

Layout of the work. One program per (block of channels, batch element), 1 to 4 warps. Each thread keeps the
state of its channel(s) x up to 16 states in registers; lanes walk consecutive channels, so loads and stores
of the time-indexed tensors are coalesced when they are channel-contiguous (time-major), which is how Vim
produces them (the transposes of Linear outputs): those views are read in place, through their strides,
with no copy. Length-contiguous inputs work too, with strided (slower) loads. The output and the gradients
of u, delta, z, B, C are written time-major and returned as (batch, dim, length) / (batch, state, length)
views of (batch, length, dim) / (batch, length, state) buffers (``.contiguous()`` if a caller needs it).

``selective_scan_bidir_triton(fwd, bwd, z, delta_softplus)`` runs Vim's two scans (the second from the last step to
the first) in one launch, and their backward in one launch too: the scan is latency-bound, so twice the rows per
SM cost ~1.3x one scan, not 2x (forward, measured), and the backward's waves pack tighter (NOTES_triton.md, run 9).

Forward kernel: walks time one chunk of T steps at a time (T = 1 by default: a longer unrolled chunk made
the loop body overflow the instruction cache on the H100, see NOTES_triton.md); the per-channel inputs of the
next one or two chunks are loaded while the current one is computed, and (tile option) the B, C rows of those
chunks are touched early; every pointer moves from chunk to chunk by a constant increment; B and C
are read four states per load (inline PTX) where their rows are aligned. Within a chunk
the recurrence is sequential inside each thread (one FMA per channel x state x step); softplus, the D skip
and the silu(z) gate are fused.

Backward kernel: the forward saves only the state entering each segment of S = T*K steps (32 by default:
batch x dim x state x length/32 fp32, i.e. 2 bytes per (channel, step)), and only when a gradient is needed.
The backward walks the segments in reverse scan order. Phase A reruns the recurrence through the segment
from its saved state and keeps the state entering each chunk of T steps in a small per-program scratch
buffer (written and read back by the same thread). Phase B walks the segment's chunks backwards: it
recomputes the chunk's states from the scratch (read a chunk ahead), then runs the adjoint recurrence step by step,
lambda[t] = C[t] gy[t] + mu, mu = a[t] lambda[t] (mu carries a[t+1] lambda[t+1] to step t), with
gy = dout * silu(z). Using a[t] h[t-1] = h[t] - b[t], no earlier state is needed::

    dB[n,t] = sum_d lambda dt u            dC[n,t] = sum_d gy h          du = gy D + dt sum_n lambda B
    ddt = u sum_n lambda B + sum_n A lambda a h_prev    dA = sum_{b,t} dt lambda a h_prev
    dD = sum_{b,t} gy u     ddelta = ddt * sigmoid(delta + delta_bias) (softplus)    dbias = sum_{b,t} ddelta

dA, dD and d(delta_bias) are written as fp32 partials per batch element and summed with torch; dB and dC are
sums over channels: fp32 partials per (channel block, warp), summed with torch (deterministic, the default),
or fp32 atomics (``_CONFIG_OVERRIDE["atomic_bc"]``). One launch forward, one launch backward plus a few small
torch reductions. No autotuning: the tile shapes are fixed per problem (``_config``) from a measured sweep,
so the first call at a new shape costs only the compilation (a few seconds).

Kernels are turned into Triton functions on first use, not at import: whether they run compiled (CUDA) or in
Triton's interpreter (CPU tensors, ``TRITON_INTERPRET=1``) is decided by the environment at that moment, so
setting the variable after triton was imported works. They use only long-standing ``tl`` operations
(checked on Triton 3.6 and 3.8).
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple

import torch

from .reference import check_scan_add, check_scan_inputs, check_scan_out

from .._triton import HAS_TRITON, cdiv, eager_op, next_pow2, num_sms, register_cap, tl, triton

__all__ = ["HAS_TRITON", "selective_scan_bidir_triton", "selective_scan_triton"]

# tl.reduce with Triton's own sum combine instead of tl.sum: the same code compiled, but Triton's
# interpreter runs it as one numpy sum (each call of the jitted tl.sum costs it about a millisecond)
_sum_comb = tl.standard._sum_combine if HAS_TRITON else None

# ----------------------------------------------------------------------------------------------------------
# Kernels (plain functions; decorated lazily by _get_kernels)
#
# Every tensor in a kernel is 6-D, [T, NR, DR, W, NL, DL]: T steps of the chunk, the state split over NR
# registers and NL lanes, the channel over DR registers, W warps and DL lanes. Triton's default layout gives
# the last two axes to the 32 lanes of a warp (NL * DL = 32), W to the warps, and keeps T, NR and DR in each
# thread's registers. So the recurrence over T never leaves a thread, sums over the state use NR in-thread
# adds and log2(NL) shuffles, and lanes walk consecutive channels. Per-channel tiles are loaded at shape
# [T,1,DR,W,NL,DL] and per-state tiles at [T,NR,1,W,NL,DL] (lanes that share a value load or store the same
# address: one transaction, no extra instruction), so every load and store has the layout of the arithmetic
# and the compiler inserts no layout conversion (checked in the SASS, with Triton 3.8 and with the device
# image's 3.6: no shared memory, no barrier; 3.6 needs the pointers' hints of _lane_ptr for that). Index
# maps run backwards inside a tile and time/batch strides are not specialised: otherwise the compiler sees
# a contiguous axis and lays the tile out along it, which puts the recurrence across lanes.
# ----------------------------------------------------------------------------------------------------------

def _softplus_impl(x):
    # softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]. log1p(e) = e * q(e), q a degree-8 polynomial
    # fitted for relative error on [0, 1] (2e-7 in fp32, so exact for tiny e): one exp2 and nine FMAs where
    # libdevice's log and a division cost ~45 instructions per (channel, step). Above x = 20 the added term is
    # below x's rounding, which is torch's threshold.
    e = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    q = 0.005232710584966079 * e - 0.029505304328954454
    q = q * e + 0.07822605890596245
    q = q * e - 0.1366325490125295
    q = q * e + 0.19106011057354272
    q = q * e - 0.24842983315937145
    q = q * e + 0.3331909694664038
    q = q * e - 0.49999493147180263
    q = q * e + 0.9999999698800918
    return tl.maximum(x, 0.0) + e * q


def _lane_ptr_impl(base, offset, NL: tl.constexpr, DL: tl.constexpr, HINT: tl.constexpr = True):
    # base + offset (a 6-D tile of pointers), declared contiguous along the lane axes NL, DL and aligned to one
    # element. Triton's coalescing pass lays out each load and store along its pointers' most contiguous
    # axes, ties broken by axis position: Triton 3.8 takes the last axes (the lanes, as the kernels intend),
    # 3.6 the first, which in the backward put the state axis across lanes: 24 layout conversions through
    # shared memory and twice the shuffles (ncu on the H100, NOTES_triton.md run 13). Declared contiguous, the
    # lane axes win in both; the one-element alignment keeps every access scalar, as it was, so the claim is
    # never used to widen a load. (The hints attach to the op that makes the pointers, hence the addition in
    # here: a hint on a helper's argument is lost.) HINT False: plain base + offset.
    if not HINT:
        return base + offset
    return tl.max_contiguous(tl.multiple_of(base + offset, [1, 1, 1, 1, 1, 1]), [1, 1, 1, 1, NL, DL])


def _prefetch_impl(p, L1: tl.constexpr):
    # Asks for the lines at p in L2, or L1 and L2 (PTX prefetch: no register is written, so nothing waits on it);
    # GPU only. The forward's one-step-ahead loads of u and delta still waited on memory at the top of each step
    # (ncu, H100, 1248 pair: 34% of the warps' stall samples on the first use of delta), and the backward, rid
    # of its layout conversions, waits on its loads (36% long scoreboard, H200; NOTES_triton.md run 13).
    # (two calls: Triton takes the asm only as a literal, not chosen by an expression)
    if L1:
        out = tl.inline_asm_elementwise("prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [p], dtype=tl.int32,
                                        is_pure=False, pack=1)
    else:
        out = tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [p], dtype=tl.int32,
                                        is_pure=False, pack=1)
    return out


def _load_states_impl(p, mask, VEC: tl.constexpr):
    # B or C at the pointers p, as fp32. VEC: four consecutive states (a thread keeps them in descending order,
    # see the index maps) in one 8-byte (16-bit types) or 16-byte (fp32) load, widened in the same asm; each
    # of the four pointers is then the group's first state's, and all are in bounds (the launcher checks). GPU only: the interpreter cannot run PTX, and
    # Triton's own vector loads would make the compiler lay the state axis across lanes.
    if not VEC:
        v = tl.load(p, mask=mask, other=0.0).to(tl.float32)
    elif p.dtype.element_ty == tl.float32:
        v = tl.inline_asm_elementwise("ld.global.nc.v4.f32 {$3, $2, $1, $0}, [$7];", "=f,=f,=f,=f,l,l,l,l",
                                      [p], dtype=tl.float32, is_pure=True, pack=4)
    elif p.dtype.element_ty == tl.bfloat16:
        v = tl.inline_asm_elementwise(
            "{ .reg .b32 w0, w1; ld.global.nc.v2.b32 {w0, w1}, [$7]; shl.b32 $3, w0, 16; "
            "and.b32 $2, w0, 0xffff0000; shl.b32 $1, w1, 16; and.b32 $0, w1, 0xffff0000; }",
            "=r,=r,=r,=r,l,l,l,l", [p], dtype=tl.int32, is_pure=True, pack=4).to(tl.float32, bitcast=True)
    else:
        v = tl.inline_asm_elementwise(
            "{ .reg .b32 w0, w1; .reg .b16 h0, h1, h2, h3; ld.global.nc.v2.b32 {w0, w1}, [$7]; "
            "mov.b32 {h0, h1}, w0; mov.b32 {h2, h3}, w1; cvt.f32.f16 $3, h0; cvt.f32.f16 $2, h1; "
            "cvt.f32.f16 $1, h2; cvt.f32.f16 $0, h3; }",
            "=f,=f,=f,=f,l,l,l,l", [p], dtype=tl.float32, is_pure=True, pack=4)
    return v


# Set by _get_kernels to the helpers above jitted in the kernels' mode (compiled or interpreted): a jitted
# kernel calls only helpers of its own kind.
_softplus = None
_load_states = None
_lane_ptr = None
_prefetch = None


def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, add_ptr,
    out_ptr, last_ptr, hs_ptr,
    u_r_ptr, dt_r_ptr, A_r_ptr, B_r_ptr, C_r_ptr, D_r_ptr, bias_r_ptr, out_r_ptr, hs_r_ptr,
    segh_ptr, segdt_ptr,
    dim, nstate, L, n_chunks, n_hs, never, n_seg, seg_chunks,
    s_ub, s_ud, s_ul,
    s_tb, s_td, s_tl,
    s_zb, s_zd, s_zl,
    s_ab, s_ad, s_al,
    s_Bb, s_Bn, s_Bl,
    s_Cb, s_Cn, s_Cl,
    s_ob, s_od, s_ol,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ADD: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, STORE_HS: tl.constexpr, STORE_LAST: tl.constexpr,
    HS_EVERY: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, PAD: tl.constexpr,
    T: tl.constexpr, NR: tl.constexpr, DR: tl.constexpr, W: tl.constexpr, NL: tl.constexpr, DL: tl.constexpr,
    AHEAD: tl.constexpr, VEC: tl.constexpr, BIDIR: tl.constexpr, TOUCH: tl.constexpr, A_LOG: tl.constexpr,
    PASS: tl.constexpr = 0, PREFETCH: tl.constexpr = 0, BC_PREFETCH: tl.constexpr = 0,
):
    # PASS 0: the whole sequence per program. Split in time (short of rows to fill the GPU: small batches at
    # high resolution), grid axis 1 runs over (batch element, segment of seg_chunks chunks): PASS 1 scans
    # each segment from a zero state and keeps only its end state and the sum of its dt per channel (the
    # segment's decay is exp(A * sum dt)); PASS 2 starts each segment from the state that the segments before
    # it in scan order hand on (composed here from PASS 1's results) and writes the output.
    pid_d = tl.program_id(0)
    pid_bs = tl.program_id(1)
    seg = pid_bs % n_seg
    pid_b = (pid_bs // n_seg).to(tl.int64)
    if BIDIR:
        # Both directions of Vim's mixer in one launch (grid axis 2): the second scans its own inputs (the _r
        # pointers, same strides) from the last step to the first. Twice the rows in flight per SM; the scan is
        # latency-bound, so the pair costs ~1.3x one scan instead of 2x (NOTES_triton.md, run 5).
        rev = tl.program_id(2)
        if rev == 1:
            u_ptr = u_r_ptr
            dt_ptr = dt_r_ptr
            A_ptr = A_r_ptr
            B_ptr = B_r_ptr
            C_ptr = C_r_ptr
            D_ptr = D_r_ptr
            bias_ptr = bias_r_ptr
            out_ptr = out_r_ptr
            hs_ptr = hs_r_ptr
    else:
        rev = REVERSE
    it = tl.arange(0, T)[:, None, None, None, None, None]
    # Step i of a chunk's tile is the i-th in scan order; it_t is its time offset inside the chunk (reversed
    # for a scan from the last step to the first, which may be chosen at run time: BIDIR)
    it_t = it + rev * (T - 1 - 2 * it)
    inr = tl.arange(0, NR)[None, :, None, None, None, None]
    idr = tl.arange(0, DR)[None, None, :, None, None, None]
    iw = tl.arange(0, W)[None, None, None, :, None, None]
    inl = tl.arange(0, NL)[None, None, None, None, :, None]
    idl = tl.arange(0, DL)[None, None, None, None, None, :]
    # The index maps run backwards inside a tile: the compiler then sees no contiguous axis (it would lay
    # the tile out along one), while a unit stride still folds into immediate address offsets.
    n_s = inl * NR + (NR - 1 - inr)                                                   # [1,NR,1,1,NL,1]
    d_s = pid_d * (DR * W * DL) + (DR * W * DL - 1) - ((idr * W + iw) * DL + idl)    # [1,1,DR,W,1,DL]
    d_x = d_s + inl * 0                                                               # [1,1,DR,W,NL,DL]
    n_x = n_s + iw * 0 + idl * 0                                                      # [1,NR,1,W,NL,DL]
    dn = d_s * nstate + n_s                                                           # [1,NR,DR,W,NL,DL]
    if EVEN_D:
        m_d = tl.full([1, 1, DR, W, NL, DL], 1, tl.int1)
    else:
        m_d = d_x < dim
    if EVEN_N:
        m_n = tl.full([1, NR, 1, W, NL, DL], 1, tl.int1)
    else:
        m_n = n_x < nstate
    if EVEN_D and EVEN_N:
        m_dn = tl.full([1, NR, DR, W, NL, DL], 1, tl.int1)
    else:
        m_dn = (d_s < dim) & (n_s < nstate)

    # exp(dt * A) = exp2(dt * A * log2(e)); padded states get B = C = 0 (and A = 0, or -1 from A_log = 0), so
    # they stay 0. A_LOG: the tensor holds A_log, A = -exp(A_log) (Mamba's parameterisation), computed here
    # instead of by two more launches per direction and block
    A2 = tl.load(_lane_ptr(A_ptr, dn, NL, DL), mask=m_dn, other=0.0).to(tl.float32)
    if A_LOG:
        A2 = -tl.exp2(A2 * 1.4426950408889634)
    A2 = A2 * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + d_x, mask=m_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d_x, mask=m_d, other=0.0).to(tl.float32)
    if VEC:  # every element of a group of four points at the group's first state: one address per load
        n_v = inl * NR + (NR - 4) - 4 * (inr // 4) + iw * 0 + idl * 0
        B_off = n_v * s_Bn
        C_off = n_v * s_Cn
    else:
        B_off = n_x * s_Bn
        C_off = n_x * s_Cn
    # Addressing: every pointer is carried from one chunk to the next by a constant increment (two
    # instructions each) instead of being recomputed from a clamped step index (four or five each: ~50 of
    # the loop's 166 SASS instructions at (1,8,1,1,2,16,2) before). Loads ahead of the sequence's end are
    # masked off by one scalar test per chunk; with PAD the last chunk's steps past L are masked too.
    sgn = 1 - 2 * rev
    c_lo = seg * seg_chunks
    n_mine = tl.minimum(seg_chunks, n_chunks - c_lo)  # this segment's chunks (all of them when not split)
    c = c_lo + rev * (n_mine - 1)
    # With several steps a chunk, the per-(channel, step) pointers are declared contiguous along the lanes where
    # they are made and at every step (the loop-carried pointer's layout follows both): Triton 3.6 otherwise
    # spread the step axis over lanes, which at one lane a channel computed every state twice (519 instead of 343
    # instructions for two steps, offline sm_90) and at four lanes cost 287 instead of 221 (the rule's tile for
    # small batches). One step a chunk compiles as before (run 16 of NOTES_triton.md).
    MANY: tl.constexpr = T > 1
    o_p = _lane_ptr(out_ptr, pid_b * s_ob + d_x * s_od + (c * T) * s_ol + it_t * s_ol, NL, DL, MANY)
    B_p = B_ptr + pid_b * s_Bb + B_off + (c * T) * s_Bl
    C_p = C_ptr + pid_b * s_Cb + C_off + (c * T) * s_Cl
    u_row = u_ptr + pid_b * s_ub + d_x * s_ud
    t_row = dt_ptr + pid_b * s_tb + d_x * s_td
    z_row = z_ptr + pid_b * s_zb + d_x * s_zd
    u_f = _lane_ptr(u_row, (c * T) * s_ul + it_t * s_ul, NL, DL, MANY)
    t_f = _lane_ptr(t_row, (c * T) * s_tl + it_t * s_tl, NL, DL, MANY)
    z_f = _lane_ptr(z_row, (c * T) * s_zl + it_t * s_zl, NL, DL, MANY)
    a_f = _lane_ptr(add_ptr, pid_b * s_ab + d_x * s_ad + (c * T) * s_al + it_t * s_al, NL, DL, MANY)
    # one (step of a chunk, state) per lane, for the touch and the B/C prefetch (a row's states over the lanes)
    lane_t = idl % T
    lane_n = (idl // T) % nstate
    if TOUCH:  # B and C rows touched AHEAD chunks early (one element per lane, summed into a value never
        # stored) are in the caches when the per-step loads below ask for them
        touch = tl.full([1, 1, 1, 1, 1, DL], 0.0, tl.float32)
        tB_f = B_ptr + pid_b * s_Bb + lane_n * s_Bn + (c * T) * s_Bl + lane_t * s_Bl
        tC_f = C_ptr + pid_b * s_Cb + lane_n * s_Cn + (c * T) * s_Cl + lane_t * s_Cl
    step_u = (sgn * T) * s_ul
    step_t = (sgn * T) * s_tl
    step_z = (sgn * T) * s_zl
    step_a = (sgn * T) * s_al
    step_B = (sgn * T) * s_Bl
    step_C = (sgn * T) * s_Cl
    step_o = (sgn * T) * s_ol

    # The chunk's per-channel tiles are loaded AHEAD chunks before their use, so that enough memory requests
    # are in flight: chunk c here, then (AHEAD = 2) chunk c + sgn, masked off where it lies past either end.
    if PAD:
        m_f = m_d & ((c * T + it_t) < L)
    else:
        m_f = m_d
    u_n = tl.load(u_f, mask=m_f, other=0.0)
    dt_n = tl.load(t_f, mask=m_f, other=0.0)
    if HAS_Z:
        z_n = tl.load(z_f, mask=m_f, other=0.0)
    if HAS_ADD:
        a_n = tl.load(a_f, mask=m_f, other=0.0)
    u_f = _lane_ptr(u_f, step_u, NL, DL, MANY)
    t_f = _lane_ptr(t_f, step_t, NL, DL, MANY)
    z_f = _lane_ptr(z_f, step_z, NL, DL, MANY)
    a_f = _lane_ptr(a_f, step_a, NL, DL, MANY)
    if AHEAD == 2:  # a second chunk in flight: twice the bytes in flight at the same code size
        t_far = (c + sgn) * T
        m_f = m_d & (t_far >= 0) & (t_far < L)
        if PAD:
            m_f = m_f & ((t_far + it_t) < L)
        u_nn = tl.load(u_f, mask=m_f, other=0.0)
        dt_nn = tl.load(t_f, mask=m_f, other=0.0)
        if HAS_Z:
            z_nn = tl.load(z_f, mask=m_f, other=0.0)
        if HAS_ADD:
            a_nn = tl.load(a_f, mask=m_f, other=0.0)
        u_f = _lane_ptr(u_f, step_u, NL, DL, MANY)
        t_f = _lane_ptr(t_f, step_t, NL, DL, MANY)
        z_f = _lane_ptr(z_f, step_z, NL, DL, MANY)
        a_f = _lane_ptr(a_f, step_a, NL, DL, MANY)
    if TOUCH:
        tB_f += AHEAD * step_B
        tC_f += AHEAD * step_C

    h = tl.full([1, NR, DR, W, NL, DL], 0.0, tl.float32)
    if PASS == 2:  # the state entering this segment: the end states of the segments before it, composed
        # PASS 1's results: [direction (grid axis 2), batch element x segment, channel(, state)], fp32
        seg_base = (tl.program_id(2) * tl.num_programs(1) + pid_b * n_seg) * dim
        for i in range(0, seg + rev * (n_seg - 1 - 2 * seg)):
            j = i + rev * (n_seg - 1 - 2 * i)  # the i-th segment in scan order
            sdt = tl.load(segdt_ptr + seg_base + j * dim + d_x, mask=m_d, other=0.0)
            hj = tl.load(_lane_ptr(segh_ptr, (seg_base + j * dim) * nstate + dn, NL, DL), mask=m_dn, other=0.0)
            h = tl.exp2(sdt * A2) * h + hj
    if PASS == 1:
        dt_sum = tl.full([T, 1, DR, W, NL, DL], 0.0, tl.float32)  # dt's shape: compiled, a carried value keeps its type
    for _i in range(0, n_mine):
        t0 = c * T
        if PAD:
            m_t = (t0 + it_t) < L
            m_dt = m_d & m_t
        else:
            m_dt = m_d
        u = u_n.to(tl.float32)
        dt = dt_n.to(tl.float32)
        if HAS_Z:
            zz = z_n.to(tl.float32)
        if HAS_ADD:
            addv = a_n.to(tl.float32)
        t_far = t0 + sgn * (AHEAD * T)
        far_ok = (t_far >= 0) & (t_far < L)
        m_f = m_d & far_ok
        if PAD:
            m_f = m_f & ((t_far + it_t) < L)
        if AHEAD == 2:
            u_n = u_nn
            dt_n = dt_nn
            u_nn = tl.load(u_f, mask=m_f, other=0.0)
            dt_nn = tl.load(t_f, mask=m_f, other=0.0)
            if HAS_Z:
                z_n = z_nn
                z_nn = tl.load(z_f, mask=m_f, other=0.0)
            if HAS_ADD:
                a_n = a_nn
                a_nn = tl.load(a_f, mask=m_f, other=0.0)
        else:
            u_n = tl.load(u_f, mask=m_f, other=0.0)
            dt_n = tl.load(t_f, mask=m_f, other=0.0)
            if HAS_Z:
                z_n = tl.load(z_f, mask=m_f, other=0.0)
            if HAS_ADD:
                a_n = tl.load(a_f, mask=m_f, other=0.0)
        if TOUCH:
            if PAD:
                m_tf = far_ok & ((t_far + lane_t) < L)
            else:
                m_tf = far_ok
            touch += tl.load(tB_f, mask=m_tf, other=0.0).to(tl.float32)
            touch += tl.load(tC_f, mask=m_tf, other=0.0).to(tl.float32)
            tB_f += step_B
            tC_f += step_C
        u_f = _lane_ptr(u_f, step_u, NL, DL, MANY)
        t_f = _lane_ptr(t_f, step_t, NL, DL, MANY)
        z_f = _lane_ptr(z_f, step_z, NL, DL, MANY)
        a_f = _lane_ptr(a_f, step_a, NL, DL, MANY)
        if PREFETCH > 0:  # u, delta (and z) PREFETCH chunks ahead to L2: a hint with no register to wait on
            t_pf = tl.minimum(tl.maximum(t0 + sgn * (PREFETCH * T) + it_t, 0), L - 1)
            _prefetch(u_row + t_pf * s_ul, False)
            _prefetch(t_row + t_pf * s_tl, False)
            if HAS_Z:
                _prefetch(z_row + t_pf * s_zl, False)
        if BC_PREFETCH > 0:  # B's and C's rows BC_PREFETCH chunks ahead to L2, a lane per (state, step) (see
            # FWD_BC_PREFETCH)
            t_bc = tl.minimum(tl.maximum(t0 + sgn * (BC_PREFETCH * T) + lane_t, 0), L - 1)
            _prefetch(B_ptr + pid_b * s_Bb + lane_n * s_Bn + t_bc * s_Bl, False)
            _prefetch(C_ptr + pid_b * s_Cb + lane_n * s_Cn + t_bc * s_Cl, False)

        # per (channel, step): the whole chunk at once
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        if PAD:
            dt = tl.where(m_t, dt, 0.0)  # padded steps: decay 1, input 0, the identity of the scan
        du = dt * u
        if PASS == 1:
            dt_sum += dt

        if STORE_HS:  # state entering each backward segment (HS_EVERY of these chunks), in scan order
            if rev == 1:
                at_entry = (((c + 1) % HS_EVERY) == 0) | (c == n_chunks - 1)
            else:
                at_entry = (c % HS_EVERY) == 0
            if at_entry:
                tl.store(_lane_ptr(hs_ptr, (pid_b * n_hs + c // HS_EVERY) * dim * nstate + dn, NL, DL), h, mask=m_dn)

        # The recurrence, step by step inside each thread. Picking step j out of a tile and putting it back
        # are selects on compile-time constants plus adds of -0.0, which the compiler folds away.
        y = tl.full([T, 1, DR, W, 1, DL], 0.0, tl.float32)
        for j in tl.static_range(T):
            e_j = j + rev * (T - 1 - 2 * j)  # its time offset in the chunk
            if PAD:  # steps past L (their results are not stored) read the last step's B and C
                e_j = tl.minimum(e_j, L - 1 - t0)
            B_j = _load_states(B_p + e_j * s_Bl, m_n, VEC)
            dt_j = tl.reduce(tl.where(it == j, dt, -0.0), 0, _sum_comb, keep_dims=True)
            du_j = tl.reduce(tl.where(it == j, du, -0.0), 0, _sum_comb, keep_dims=True)
            h = tl.exp2(dt_j * A2) * h + du_j * B_j
            if PASS != 1:
                C_j = _load_states(C_p + e_j * s_Cl, m_n, VEC)
                y_j = tl.reduce(tl.reduce(h * C_j, 1, _sum_comb, keep_dims=True), 4, _sum_comb, keep_dims=True)
                y = tl.where(it == j, y_j, y)
        if PASS != 1:
            if HAS_D:
                y = y + Dv * u
            if HAS_Z:
                y = y * zz / (1.0 + tl.exp2(-zz * 1.4426950408889634))
            y = y + tl.full([1, 1, 1, 1, NL, 1], 0.0, tl.float32)
            if HAS_ADD:  # Vim's two branches summed here, before the one rounding, not in another pass
                y = y + addv
            tl.store(o_p, y.to(out_ptr.dtype.element_ty), mask=m_dt)
        o_p = _lane_ptr(o_p, step_o, NL, DL, MANY)
        B_p += step_B
        C_p += step_C
        c = c + sgn

    if TOUCH:
        if never != 0:  # keeps the touches (never true)
            tl.store(out_ptr + idl * 0, touch.to(out_ptr.dtype.element_ty))

    if PASS == 1:
        seg_row = (tl.program_id(2) * tl.num_programs(1) + pid_b * n_seg + seg) * dim
        tl.store(_lane_ptr(segh_ptr, seg_row * nstate + dn, NL, DL), h, mask=m_dn)
        dt_seg = tl.reduce(dt_sum, 0, _sum_comb, keep_dims=True)
        tl.store(segdt_ptr + seg_row + d_x, dt_seg, mask=m_d)
    if STORE_LAST:  # (split in time: the last segment in scan order holds the final state)
        tl.store(_lane_ptr(last_ptr, pid_b * dim * nstate + dn, NL, DL), h, mask=m_dn & (seg == (1 - rev) * (n_seg - 1)))


def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, g_ptr, hs_ptr, dlast_ptr, scr_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    u_r_ptr, dt_r_ptr, A_r_ptr, B_r_ptr, C_r_ptr, D_r_ptr, bias_r_ptr, g_r_ptr, hs_r_ptr, du_r_ptr, ddt_r_ptr,
    dim, nstate, L, n_seg, never, off_x, off_p,
    s_ub, s_ud, s_ul,
    s_tb, s_td, s_tl,
    s_zb, s_zd, s_zl,
    s_Bb, s_Bn, s_Bl,
    s_Cb, s_Cn, s_Cl,
    s_gb, s_gd, s_gl,
    s_xb, s_xd, s_xl,
    s_pp, s_pb, s_pn, s_pl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, HAS_DLAST: tl.constexpr, ATOMIC_BC: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, PAD: tl.constexpr, K: tl.constexpr, TA: tl.constexpr,
    T: tl.constexpr, NR: tl.constexpr, DR: tl.constexpr, W: tl.constexpr, NL: tl.constexpr, DL: tl.constexpr,
    BIDIR: tl.constexpr, A_LOG: tl.constexpr, BC_PREFETCH: tl.constexpr = False,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    # tile: the per-program scratch's size, in fp32 elements per chunk
    tile = NR * DR * W * NL * DL
    if BIDIR:
        # Both directions of Vim's mixer in one launch (grid axis 2), as in the forward: the second reads its
        # own inputs (the _r pointers, same strides) and runs as a reverse scan. Its dz, dA, dD, dbias, dB and
        # dC partials go to the second half of buffers stacked over the direction (off_x: dz's, off_p: dB's
        # and dC's direction stride), its scratch after the first direction's.
        rev = tl.program_id(2)
        if rev == 1:
            u_ptr = u_r_ptr
            dt_ptr = dt_r_ptr
            A_ptr = A_r_ptr
            B_ptr = B_r_ptr
            C_ptr = C_r_ptr
            D_ptr = D_r_ptr
            bias_ptr = bias_r_ptr
            g_ptr = g_r_ptr
            hs_ptr = hs_r_ptr
            du_ptr = du_r_ptr
            ddt_ptr = ddt_r_ptr
            n_batch = tl.num_programs(1).to(tl.int64)
            dz_ptr += off_x
            dB_ptr += off_p
            dC_ptr += off_p
            dA_ptr += n_batch * dim * nstate
            dD_ptr += n_batch * dim
            dbias_ptr += n_batch * dim
            scr_ptr += n_batch * tl.num_programs(0) * (K * tile)
    else:
        rev = REVERSE
    sgn = 1 - 2 * rev  # +1: the scan runs forward in time, -1: backward
    it = tl.arange(0, T)[:, None, None, None, None, None]
    inr = tl.arange(0, NR)[None, :, None, None, None, None]
    idr = tl.arange(0, DR)[None, None, :, None, None, None]
    iw = tl.arange(0, W)[None, None, None, :, None, None]
    inl = tl.arange(0, NL)[None, None, None, None, :, None]
    idl = tl.arange(0, DL)[None, None, None, None, None, :]
    # Row i of a chunk's tile is its i-th step in scan order; it_t is that step's time offset in the chunk
    # (reversed for a reverse scan, which BIDIR decides at run time), so the unrolled loops below pick rows by
    # compile-time index in either direction.
    it_t = it + rev * (T - 1 - 2 * it)
    n_s = inl * NR + (NR - 1 - inr)                                                   # [1,NR,1,1,NL,1]
    d_s = pid_d * (DR * W * DL) + (DR * W * DL - 1) - ((idr * W + iw) * DL + idl)    # [1,1,DR,W,1,DL]
    d_x = d_s + inl * 0                                                               # [1,1,DR,W,NL,DL]
    n_x = n_s + iw * 0 + idl * 0                                                      # [1,NR,1,W,NL,DL]
    dn = d_s * nstate + n_s                                                           # [1,NR,DR,W,NL,DL]
    if EVEN_D:
        m_d = tl.full([1, 1, DR, W, NL, DL], 1, tl.int1)
    else:
        m_d = d_x < dim
    if EVEN_N:
        m_n = tl.full([1, NR, 1, W, NL, DL], 1, tl.int1)
    else:
        m_n = n_x < nstate
    if EVEN_D and EVEN_N:
        m_dn = tl.full([1, NR, DR, W, NL, DL], 1, tl.int1)
    else:
        m_dn = (d_s < dim) & (n_s < nstate)

    A = tl.load(_lane_ptr(A_ptr, dn, NL, DL), mask=m_dn, other=0.0).to(tl.float32)
    if A_LOG:  # the tensor holds A_log (see the forward); its gradient is dA * A
        A = -tl.exp2(A * 1.4426950408889634)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(_lane_ptr(D_ptr, d_x, NL, DL), mask=m_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(_lane_ptr(bias_ptr, d_x, NL, DL), mask=m_d, other=0.0).to(tl.float32)
    u_b = u_ptr + pid_b * s_ub + d_x * s_ud
    t_b = dt_ptr + pid_b * s_tb + d_x * s_td
    z_b = z_ptr + pid_b * s_zb + d_x * s_zd
    g_b = g_ptr + pid_b * s_gb + d_x * s_gd
    x_b = pid_b * s_xb + d_x * s_xd
    # (lanes of a channel block share B and C: "+ idl * never", zero, keeps Triton from seeing that their
    # addresses are equal, which would undo _lane_ptr's hint; likewise for the dB, dC partials below)
    B_b = B_ptr + pid_b * s_Bb + n_x * s_Bn + idl * never
    C_b = C_ptr + pid_b * s_Cb + n_x * s_Cn + idl * never
    hs_b = hs_ptr + pid_b * n_seg * dim * nstate + dn
    # per-program scratch: the state entering each of the K chunks of the current segment
    scr_b = scr_ptr + ((pid_b * tl.num_programs(0) + pid_d) * (K * tile)
                       + (((inr * DR + idr) * W + iw) * NL + inl) * DL + (DL - 1 - idl))
    # dB, dC: sums over this program's channels; one row per channel block and warp (W), or atomics
    # (at full tile width: lanes sharing a value write it to the same address, one transaction, and the
    # store keeps the layout of the computation; atomics let only the first of those lanes add)
    if ATOMIC_BC:
        p_b = pid_b * s_pb + n_s * s_pn + iw * 0 + idl * never
        m_nb = (n_x < nstate) & (idl == 0)
    else:
        p_b = (pid_d * W + iw).to(tl.int64) * s_pp + pid_b * s_pb + n_s * s_pn + idl * never
        m_nb = m_n

    # mu: what the later steps (in scan order) pass back, a[t+1] * lambda[t+1]
    if HAS_DLAST:
        mu = tl.load(_lane_ptr(dlast_ptr, pid_b * dim * nstate + dn, NL, DL), mask=m_dn, other=0.0).to(tl.float32)
    else:
        mu = tl.full([1, NR, DR, W, NL, DL], 0.0, tl.float32)
    dA_acc = tl.full([1, NR, DR, W, NL, DL], 0.0, tl.float32)
    dD_acc = tl.full([1, 1, DR, W, NL, DL], 0.0, tl.float32)
    dbias_acc = tl.full([1, 1, DR, W, NL, DL], 0.0, tl.float32)
    zero_dl = tl.full([1, 1, 1, 1, 1, DL], 0.0, tl.float32)

    # Touching a segment's B and C rows (one element per lane, summed into a value never stored) brings
    # them to the caches a segment ahead of the per-step loads.
    lane_t = idl % (T * K)
    lane_n = (idl // (T * K)) % nstate
    touch = tl.full([1, 1, 1, 1, 1, DL], 0.0, tl.float32)
    ita = tl.arange(0, TA)[:, None, None, None, None, None]
    ita_t = ita + rev * (TA - 1 - 2 * ita)
    KA = (T * K) // TA

    for si in range(0, n_seg):
        # segments in the opposite order to the forward scan
        seg = rev * si + (1 - rev) * (n_seg - 1 - si)
        seg_nx = seg - sgn
        tn = tl.minimum(tl.maximum(seg_nx * (T * K) + lane_t, 0), L - 1)
        touch += tl.load(B_ptr + pid_b * s_Bb + tn * s_Bl + lane_n * s_Bn).to(tl.float32)
        touch += tl.load(C_ptr + pid_b * s_Cb + tn * s_Cl + lane_n * s_Cn).to(tl.float32)

        # Phase A: run the forward recurrence through the segment from its saved entry state, in chunks of
        # TA steps loaded one chunk ahead, and keep the state entering each chunk of T steps (scratch: the
        # thread that writes a value reads it back, no barrier needed)
        h = tl.load(_lane_ptr(hs_b, seg * dim * nstate, NL, DL), mask=m_dn, other=0.0)
        ka = rev * (KA - 1)
        tt = tl.minimum(seg * (T * K) + ka * TA + ita_t, L - 1)
        uA_n = tl.load(_lane_ptr(u_b, tt * s_ul, NL, DL), mask=m_d, other=0.0)
        dA_n = tl.load(_lane_ptr(t_b, tt * s_tl, NL, DL), mask=m_d, other=0.0)
        for _ka in range(0, KA):
            t0 = seg * (T * K) + ka * TA
            u = uA_n.to(tl.float32)
            dt = dA_n.to(tl.float32)
            ka_nx = ka + sgn
            if BC_PREFETCH:  # the next chunk's B rows into L1 (a lane per step; the rest repeat them)
                t_pf = tl.minimum(tl.maximum(seg * (T * K) + ka_nx * TA + idl % TA, 0), L - 1)
                _prefetch(B_ptr + pid_b * s_Bb + t_pf * s_Bl, True)
            tt = tl.minimum(tl.maximum(seg * (T * K) + ka_nx * TA + ita_t, 0), L - 1)
            uA_n = tl.load(_lane_ptr(u_b, tt * s_ul, NL, DL), mask=m_d, other=0.0)
            dA_n = tl.load(_lane_ptr(t_b, tt * s_tl, NL, DL), mask=m_d, other=0.0)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            if PAD:
                dt = tl.where((t0 + ita_t) < L, dt, 0.0)
            du = dt * u
            for j in tl.static_range(TA):  # j: scan order; e_j: time offset in the chunk
                e_j = j + rev * (TA - 1 - 2 * j)
                if j % T == 0:  # the first step of a chunk of T in scan order: keep the state entering it
                    tl.store(_lane_ptr(scr_b, (ka * (TA // T) + e_j // T) * tile, NL, DL), h)
                B_j = tl.load(_lane_ptr(B_b, tl.minimum(t0 + e_j, L - 1) * s_Bl, NL, DL), mask=m_n, other=0.0).to(tl.float32)
                dt_j = tl.reduce(tl.where(ita == j, dt, -0.0), 0, _sum_comb, keep_dims=True)
                du_j = tl.reduce(tl.where(ita == j, du, -0.0), 0, _sum_comb, keep_dims=True)
                h = tl.exp2(dt_j * A2) * h + du_j * B_j
            ka = ka_nx

        # Phase B: the chunks of T steps of the segment in reverse scan order, tiles loaded one chunk ahead
        k = (1 - rev) * (K - 1)
        tt = tl.minimum(seg * (T * K) + k * T + it_t, L - 1)
        u_n = tl.load(_lane_ptr(u_b, tt * s_ul, NL, DL), mask=m_d, other=0.0)
        dt_n = tl.load(_lane_ptr(t_b, tt * s_tl, NL, DL), mask=m_d, other=0.0)
        g_n = tl.load(_lane_ptr(g_b, tt * s_gl, NL, DL), mask=m_d, other=0.0)
        if HAS_Z:
            z_n = tl.load(_lane_ptr(z_b, tt * s_zl, NL, DL), mask=m_d, other=0.0)
        h_n = tl.load(_lane_ptr(scr_b, k * tile, NL, DL))
        for _kk in range(0, K):
            t0 = seg * (T * K) + k * T
            if PAD:
                m_t = (t0 + it_t) < L
            else:
                m_t = it >= 0
            # the chunk's B and C rows, each loaded once for both loops below
            tb = tl.minimum(t0 + it_t, L - 1)
            B_c = tl.load(_lane_ptr(B_b, tb * s_Bl, NL, DL), mask=m_n, other=0.0).to(tl.float32)
            C_c = tl.load(_lane_ptr(C_b, tb * s_Cl, NL, DL), mask=m_n, other=0.0).to(tl.float32)
            u = u_n.to(tl.float32)
            dt_raw = dt_n.to(tl.float32)
            g = g_n.to(tl.float32)
            if HAS_Z:
                zz = z_n.to(tl.float32)
            k_nx = k - sgn
            if BC_PREFETCH:  # the next chunk's B and C rows into L1 (even lanes B, odd lanes C, a lane per step)
                t_pf = tl.minimum(tl.maximum(seg * (T * K) + k_nx * T + (idl // 2) % T, 0), L - 1)
                _prefetch(tl.where(idl % 2 == 0, B_ptr + pid_b * s_Bb + t_pf * s_Bl, C_ptr + pid_b * s_Cb + t_pf * s_Cl),
                          True)
            tt = tl.minimum(tl.maximum(seg * (T * K) + k_nx * T + it_t, 0), L - 1)
            u_n = tl.load(_lane_ptr(u_b, tt * s_ul, NL, DL), mask=m_d, other=0.0)
            dt_n = tl.load(_lane_ptr(t_b, tt * s_tl, NL, DL), mask=m_d, other=0.0)
            g_n = tl.load(_lane_ptr(g_b, tt * s_gl, NL, DL), mask=m_d, other=0.0)
            if HAS_Z:
                z_n = tl.load(_lane_ptr(z_b, tt * s_zl, NL, DL), mask=m_d, other=0.0)
            # the state entering the chunk, read a chunk ahead too: the scratch outgrows L1 (K x 1 KB a warp at
            # the 224 tile), and this read starts each chunk's chain (the last chunk's read is of a valid slot,
            # unused)
            h = h_n
            h_n = tl.load(_lane_ptr(scr_b, tl.minimum(tl.maximum(k_nx, 0), K - 1) * tile, NL, DL))
            if PAD:
                g = tl.where(m_t, g, 0.0)
            if HAS_BIAS:
                dt_raw = dt_raw + bias
            if SOFTPLUS:
                dt = _softplus(dt_raw)
            else:
                dt = dt_raw
            if PAD:
                dt = tl.where(m_t, dt, 0.0)
            du_ = dt * u
            if HAS_Z:
                sig = 1.0 / (1.0 + tl.exp2(-zz * 1.4426950408889634))
                gy = g * zz * sig
            else:
                gy = g
            a = tl.exp2(dt * A2)

            # forward through the chunk: states (kept as hb = a[t] h[t-1] = h[t] - b[t]), dC, and dz
            hb = tl.full([T, NR, DR, W, NL, DL], 0.0, tl.float32)
            for j in tl.static_range(T):  # j: scan order; e_j: time offset in the chunk
                e_j = j + rev * (T - 1 - 2 * j)
                B_j = tl.reduce(tl.where(it == j, B_c, -0.0), 0, _sum_comb, keep_dims=True)
                a_j = tl.reduce(tl.where(it == j, a, -0.0), 0, _sum_comb, keep_dims=True)
                du_j = tl.reduce(tl.where(it == j, du_, -0.0), 0, _sum_comb, keep_dims=True)
                gy_j = tl.reduce(tl.where(it == j, gy, -0.0), 0, _sum_comb, keep_dims=True)
                hb_j = a_j * h
                h = hb_j + du_j * B_j
                hb = tl.where(it == j, hb_j, hb)
                dC_j = tl.reduce(gy_j * h, 2, _sum_comb, keep_dims=True)
                dC_j = tl.reduce(dC_j, 5, _sum_comb, keep_dims=True) + zero_dl
                m_bc = m_nb & ((t0 + e_j) < L)
                if ATOMIC_BC:
                    tl.atomic_add(_lane_ptr(dC_ptr, (t0 + e_j) * s_pl + p_b, NL, DL), dC_j, mask=m_bc)
                else:
                    tl.store(_lane_ptr(dC_ptr, (t0 + e_j) * s_pl + p_b, NL, DL), dC_j, mask=m_bc)
                if HAS_Z:
                    C_j = tl.reduce(tl.where(it == j, C_c, -0.0), 0, _sum_comb, keep_dims=True)
                    y0_j = tl.reduce(tl.reduce(C_j * h, 1, _sum_comb, keep_dims=True), 4, _sum_comb, keep_dims=True)
                    u_j = tl.reduce(tl.where(it == j, u, -0.0), 0, _sum_comb, keep_dims=True)
                    z_j = tl.reduce(tl.where(it == j, zz, -0.0), 0, _sum_comb, keep_dims=True)
                    s_j = tl.reduce(tl.where(it == j, sig, -0.0), 0, _sum_comb, keep_dims=True)
                    g_j = tl.reduce(tl.where(it == j, g, -0.0), 0, _sum_comb, keep_dims=True)
                    if HAS_D:
                        y0_j = y0_j + Dv * u_j
                    dz_j = g_j * y0_j * s_j * (1.0 + z_j * (1.0 - s_j))
                    tl.store(_lane_ptr(dz_ptr, x_b + (t0 + e_j) * s_xl, NL, DL), dz_j.to(dz_ptr.dtype.element_ty),
                             mask=m_d & ((t0 + e_j) < L))

            # adjoint, backwards in scan order: lambda[t] = C[t] gy[t] + mu, then mu = a[t] lambda[t] is what
            # step t passes on to the step before it
            for jj in tl.static_range(T):
                j = T - 1 - jj  # scan order
                e_j = j + rev * (T - 1 - 2 * j)
                B_j = tl.reduce(tl.where(it == j, B_c, -0.0), 0, _sum_comb, keep_dims=True)
                C_j = tl.reduce(tl.where(it == j, C_c, -0.0), 0, _sum_comb, keep_dims=True)
                a_j = tl.reduce(tl.where(it == j, a, -0.0), 0, _sum_comb, keep_dims=True)
                hb_j = tl.reduce(tl.where(it == j, hb, -0.0), 0, _sum_comb, keep_dims=True)
                u_j = tl.reduce(tl.where(it == j, u, -0.0), 0, _sum_comb, keep_dims=True)
                dt_j = tl.reduce(tl.where(it == j, dt, -0.0), 0, _sum_comb, keep_dims=True)
                du_j = tl.reduce(tl.where(it == j, du_, -0.0), 0, _sum_comb, keep_dims=True)
                gy_j = tl.reduce(tl.where(it == j, gy, -0.0), 0, _sum_comb, keep_dims=True)
                lam = gy_j * C_j + mu
                mu = a_j * lam
                q = lam * hb_j
                dA_acc += q * dt_j
                dB_j = tl.reduce(lam * du_j, 2, _sum_comb, keep_dims=True)
                dB_j = tl.reduce(dB_j, 5, _sum_comb, keep_dims=True) + zero_dl
                lb = tl.reduce(tl.reduce(lam * B_j, 1, _sum_comb, keep_dims=True), 4, _sum_comb, keep_dims=True)
                aq = tl.reduce(tl.reduce(q * A, 1, _sum_comb, keep_dims=True), 4, _sum_comb, keep_dims=True)
                m_bc = m_nb & ((t0 + e_j) < L)
                if ATOMIC_BC:
                    tl.atomic_add(_lane_ptr(dB_ptr, (t0 + e_j) * s_pl + p_b, NL, DL), dB_j, mask=m_bc)
                else:
                    tl.store(_lane_ptr(dB_ptr, (t0 + e_j) * s_pl + p_b, NL, DL), dB_j, mask=m_bc)
                ddt_j = u_j * lb + aq
                du_o = dt_j * lb
                if HAS_D:
                    du_o = du_o + gy_j * Dv
                    dD_acc += gy_j * u_j
                if SOFTPLUS:
                    r_j = tl.reduce(tl.where(it == j, dt_raw, -0.0), 0, _sum_comb, keep_dims=True)
                    ddt_j = ddt_j / (1.0 + tl.exp2(-r_j * 1.4426950408889634))
                m_j = m_d & ((t0 + e_j) < L)
                if PAD:
                    ddt_j = tl.where(m_j, ddt_j, 0.0)
                if HAS_BIAS:
                    dbias_acc += ddt_j
                tl.store(_lane_ptr(du_ptr, x_b + (t0 + e_j) * s_xl, NL, DL), du_o.to(du_ptr.dtype.element_ty), mask=m_j)
                tl.store(_lane_ptr(ddt_ptr, x_b + (t0 + e_j) * s_xl, NL, DL), ddt_j.to(ddt_ptr.dtype.element_ty), mask=m_j)
            k = k_nx

    if A_LOG:
        dA_acc = dA_acc * A
    tl.store(_lane_ptr(dA_ptr, pid_b * dim * nstate + dn, NL, DL), dA_acc, mask=m_dn)
    if HAS_D:
        tl.store(_lane_ptr(dD_ptr, pid_b * dim + d_x, NL, DL), dD_acc, mask=m_d)
    if HAS_BIAS:
        tl.store(_lane_ptr(dbias_ptr, pid_b * dim + d_x, NL, DL), dbias_acc, mask=m_d)
    if never != 0:  # keeps the touches (never true)
        tl.store(dA_ptr + idl * 0, touch)


# ----------------------------------------------------------------------------------------------------------
# Lazy decoration and tile shapes
# ----------------------------------------------------------------------------------------------------------

def _interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


_KERNELS: dict = {}
_HELPERS: dict = {}
# Strides along time and batch are never specialised (a unit time stride would make the compiler lay tiles
# out along time); channel and state strides are (a unit stride becomes an immediate address offset).
_STRIDE_ARGS = ("s_ub s_ul s_tb s_tl s_zb s_zl s_Bb s_Bl s_Cb s_Cl s_ob s_ol s_gb s_gl s_xb s_xl s_pp s_pb s_pl "
                "never").split()

# Chunks ahead of their use at which the forward prefetches u, delta and z (FWD_PREFETCH) and B and C
# (FWD_BC_PREFETCH) to L2 (0: none; see _prefetch_impl), for sequences of at least FWD_PREFETCH_MIN_LENGTH steps.
# Timed inside the model, round-robin in one process (benchmarks/model_variants.py, model_variants-h200-v13):
# Vim-Ti 1248 forward, batch 64, 125.4 -> 118.1 ms (1.062x), batch 8 30.95 -> 24.33 ms; u/delta/z alone
# (with B/C planes) 1.036x. Alone the pair at batch 64 runs 3.23 -> 2.96 ms (scan_sweep_v13-h200-v13). Session
# 11's in-model trial without the B/C prefetch (B and C packed in rows) had shown nothing (profile-h100-v12c).
# _CONFIG_OVERRIDE["prefetch"] / ["bc_prefetch_fwd"] replace these rules.
FWD_PREFETCH = 8
FWD_BC_PREFETCH = 8
FWD_PREFETCH_MIN_LENGTH = 1024

# The backward's register cap (see _launch_bwd)
_BWD_REGISTERS = 168

# Tile shapes (T, NR, DR, W, NL, DL); num_warps = W. Benchmarks and tests may set
# _CONFIG_OVERRIDE = {"fwd": (...), "bwd": (...), "atomic_bc": bool} to force a choice; "maxnreg" /
# "maxnreg_bwd" (an int, 0 = no option) replace the forward's register rule / the backward's _BWD_REGISTERS;
# "bidir_bwd": False runs the two directions' backward as two launches.
_CONFIG_OVERRIDE: Optional[dict] = None


def _get_kernels():
    global _softplus, _load_states, _lane_ptr, _prefetch
    interp = _interpret_mode()
    if interp not in _HELPERS:
        _HELPERS[interp] = tuple(triton.jit(f) for f in (_softplus_impl, _load_states_impl, _lane_ptr_impl,
                                                         _prefetch_impl))
    _softplus, _load_states, _lane_ptr, _prefetch = _HELPERS[interp]
    kern = _KERNELS.get(interp)
    if kern is None:
        fwd_args = [p for p in _STRIDE_ARGS if p in _scan_fwd_kernel.__code__.co_varnames]
        bwd_args = [p for p in _STRIDE_ARGS if p in _scan_bwd_kernel.__code__.co_varnames]
        kern = (triton.jit(_scan_fwd_kernel, do_not_specialize=fwd_args),
                triton.jit(_scan_bwd_kernel, do_not_specialize=bwd_args))
        _KERNELS[interp] = kern
    return kern[0], kern[1], interp


def _config(kind: str, dim: int, nstate: int, length: int, interp: bool, rows_per_sm: float = 0.0):
    """Tile shape (T, NR, DR, W, NL, DL[, AHEAD[, TOUCH]]) of the forward ("fwd") kernel, or (T, NR, DR, W, NL, DL, K)
    of the backward ("bwd"), whose segments of T * K steps are also the spacing of the states the forward saves.

    ``rows_per_sm``: the (batch element, channel) rows of the problem per streaming multiprocessor."""
    if _override(kind) is not None:
        return tuple(_override(kind))
    bn = next_pow2(nstate)
    if interp:  # the interpreter's cost is per element: small tiles, no lane split
        t = min(4, next_pow2(length))
        cfg = (t, bn, min(next_pow2(dim), 4), 1, 1, 1)
        return cfg + (2,) if kind == "bwd" else cfg
    # From the H100 sweep (NOTES_triton.md, run 3): the scans are latency-bound, so what counts is the
    # number of threads kept busy. Spreading a channel's states over NL lanes multiplies the threads by NL
    # at the price of shuffles for the sum over states; the best tiles at batch 8, 64 and 128 (length 6085
    # and 197) all ran ~384 threads per SM in the forward and ~744 in the backward. NL is the power of 2
    # that comes closest to that. Segments are always 32 steps, so the states the forward saves do not
    # depend on the batch.
    rows = max(rows_per_sm, 1e-3)
    if kind == "bwd":
        nl = 1 << max(0, round(math.log2(744.0 / rows)))
        nl = max(min(2, bn), min(nl, 8, bn))
        return (1, bn // nl, 1, 1, nl, 32 // nl, 32)
    nl = 1 << max(0, round(math.log2(384.0 / rows)))
    nl = min(nl, 16, bn)
    # Run 7 (session 4, H200; NOTES_triton.md): with the leaner loop, one lane per channel wants one chunk in
    # flight (3.65 ms for the pair at Vim-Ti 1248, batch 64; 5.35 with two), two lanes want two chunks and
    # no B/C touch (3.70; 4.16 with it). Short sequences keep the touch (single scan at 128 x 197: 0.121 ms
    # with it, 0.180 without).
    long_seq = length >= 1024
    ahead = 2 if long_seq and nl >= 2 else 1
    touch = not (long_seq and nl == 2)
    return (1 if nl <= 2 else 2, bn // nl, 1, 1, nl, 32 // nl, ahead, touch)


def _check_tile(T, NR, DR, W, NL, DL, nstate):
    for v in (T, NR, DR, W, NL, DL):
        if v < 1 or v & (v - 1):
            raise ValueError(f"tile sizes must be powers of 2, got {(T, NR, DR, W, NL, DL)}")
    if NL * DL != 32 and not _interpret_mode():
        raise ValueError(f"NL * DL must be 32 (the lanes of a warp), got {(T, NR, DR, W, NL, DL)}")
    if NR * NL < nstate:
        raise ValueError(f"tile {(T, NR, DR, W, NL, DL)} covers {NR * NL} states, fewer than {nstate}")


def _vec_ok(x: torch.Tensor, NR: int, NL: int, nstate: int) -> bool:
    """Whether B or C (batch, state, length) can be read four states per load: unit state stride, every row
    aligned to the load's width (8 bytes for 16-bit types, 16 for fp32), all states present."""
    width = 16 if x.dtype == torch.float32 else 8
    el = x.element_size()
    return (NR % 4 == 0 and NR * NL == nstate and x.stride(1) == 1 and x.data_ptr() % width == 0
            and (x.stride(0) * el) % width == 0 and (x.stride(2) * el) % width == 0)


def _override(key: str, default=None):
    """An entry of _CONFIG_OVERRIDE, or ``default`` where it has none."""
    value = _CONFIG_OVERRIDE.get(key) if _CONFIG_OVERRIDE else None
    return default if value is None else value


def _atomic_bc() -> bool:
    return bool(_override("atomic_bc"))


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------

def _launch_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, want_last, want_hs, add=None, out=None,
                second=None, out_second=None, a_log=False):
    """One forward launch. ``second``: (u, delta, A, B, C, D, delta_bias) of a second scan over the same z that
    runs from the last step to the first, in the same launch (Vim's backward branch; ``reverse``, ``add`` and
    the last state are then not used); its output goes to ``out_second``, its saved states are returned too."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    fwd, _, interp = _get_kernels()
    n_dir = 2 if second is not None else 1
    rows = n_dir * batch * dim / num_sms(u.device)
    want_seg = _time_segments(length, rows, interp)
    # a split grid has want_seg times the rows: its tile is the one the rule gives for that many
    cfg = _config("fwd", dim, nstate, length, interp, rows * want_seg)
    if second is not None and not interp and _override("fwd") is None:
        # the rule's tiles for the pair were measured at one step per chunk (runs 5-8); longer chunks (which
        # the interpreter tests run) are a sweep's to choose
        cfg = (1,) + tuple(cfg[1:])
    T, NR, DR, W, NL, DL = cfg[:6]
    ahead = cfg[6] if len(cfg) > 6 else 1  # chunks of u, delta, z loaded ahead of their use: 1 or 2
    touch = bool(cfg[7]) if len(cfg) > 7 else True  # B and C rows touched AHEAD chunks before their use
    scans = [(u, delta, A, B, C, D, delta_bias)] + ([tuple(second)] if second is not None else [])
    vec = not interp and all(_vec_ok(x, NR, NL, nstate) for sc in scans for x in sc[3:5])
    if _override("vec") is not None:
        vec = vec and bool(_override("vec"))
    # u, delta and z (prefetch), B and C (bc_prefetch) prefetched to L2 this many chunks ahead (compiled only: a
    # PTX hint)
    long_enough = length >= FWD_PREFETCH_MIN_LENGTH
    prefetch = 0 if interp else int(_override("prefetch", FWD_PREFETCH if long_enough else 0))
    bc_prefetch = 0 if interp else int(_override("bc_prefetch_fwd", FWD_BC_PREFETCH if long_enough else 0))
    # the L2 prefetch of B and C replaces the touch (model_variants-h100-v13b: Vim-Ti 1248 b64 +2% without it)
    touch = bool(_override("touch", touch and not bc_prefetch))
    _check_tile(T, NR, DR, W, NL, DL, nstate)
    if want_hs:  # the states entering each segment of the backward
        cfg_b = _config("bwd", dim, nstate, length, interp, batch * dim / num_sms(u.device))
        seg = cfg_b[0] * cfg_b[6]
    else:
        seg = T
    if seg % T:
        raise ValueError(f"the backward's segment ({seg} steps) must be a multiple of the forward's chunk ({T})")
    n_chunks = cdiv(length, T)
    n_hs = cdiv(length, seg)
    dev = u.device
    if out is None:  # written time-major, returned as a (batch, dim, length) view: lanes store consecutive channels
        out = torch.empty((batch, length, dim), device=dev, dtype=u.dtype).transpose(1, 2)
    last = torch.empty((batch, dim, nstate), device=dev, dtype=torch.float32) if want_last else None
    hs = [torch.empty((batch, n_hs, dim, nstate), device=dev, dtype=torch.float32) if want_hs else A
          for _ in scans]
    zz = z if z is not None else u
    aa = add if add is not None else u
    if second is not None:
        _check_pair((u, delta, B, C, out, D, delta_bias), (*second[:2], *second[3:5], out_second, *second[5:7]),
                    ("u", "delta", "B", "C", "out", "D", "delta_bias"))
        u_r, delta_r, A_r, B_r, C_r, D_r, bias_r = second
        out_r = out_second
    else:
        u_r, delta_r, A_r, B_r, C_r, D_r, bias_r, out_r = u, delta, A, B, C, D, delta_bias, out
    seg_chunks = cdiv(n_chunks, min(want_seg, n_chunks))
    n_seg = cdiv(n_chunks, seg_chunks)  # (no empty segment)
    grid = (cdiv(dim, DR * W * DL), batch * n_seg, n_dir)
    # Registers: long sequences get all that one wave of the grid leaves (run 8, H200: the Vim-Ti and Vim-S
    # 1248 pairs 3.65 -> 3.14 ms); short ones keep ptxas's choice (a single scan at 128 x 197 ran 0.121 ms
    # with it and 0.146 with 168 registers; the 224 pair 0.198 against 0.193 at 80).
    warps_per_sm = grid[0] * grid[1] * grid[2] * W / num_sms(dev)
    if interp or (length < 1024 and _override("maxnreg") is None):
        regs = {}
    else:
        regs = register_cap(warps_per_sm, _override("maxnreg"))
    if n_seg > 1:  # [direction, batch element x segment, channel(, state)]
        seg_h = torch.empty((n_dir, batch * n_seg, dim, nstate), device=dev, dtype=torch.float32)
        seg_dt = torch.empty((n_dir, batch * n_seg, dim), device=dev, dtype=torch.float32)
    else:
        seg_h = seg_dt = A
    common = (
        u_r, delta_r, A_r, B_r, C_r, D_r if D_r is not None else A_r, bias_r if bias_r is not None else A_r,
        out_r, hs[-1], seg_h, seg_dt,
        dim, nstate, length, n_chunks, n_hs, 0, n_seg, seg_chunks,
        u.stride(0), u.stride(1), u.stride(2),
        delta.stride(0), delta.stride(1), delta.stride(2),
        zz.stride(0), zz.stride(1), zz.stride(2),
        aa.stride(0), aa.stride(1), aa.stride(2),
        B.stride(0), B.stride(1), B.stride(2),
        C.stride(0), C.stride(1), C.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
    )
    flags = dict(
        HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus), REVERSE=bool(reverse) and second is None,
        HS_EVERY=seg // T, EVEN_D=dim % (DR * W * DL) == 0, EVEN_N=nstate == NR * NL, PAD=length % T != 0,
        T=T, NR=NR, DR=DR, W=W, NL=NL, DL=DL, AHEAD=ahead, VEC=vec, BIDIR=second is not None, TOUCH=touch,
        A_LOG=bool(a_log), PREFETCH=prefetch, BC_PREFETCH=bc_prefetch,
        num_warps=W, **regs,
    )
    first = (u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A, aa)
    if n_seg > 1:  # each segment's end state from a zero start, and its dt sum: no output, no gate
        fwd[grid](*first, out, A, A, *common, HAS_D=False, HAS_Z=False, HAS_ADD=False, STORE_HS=False,
                  STORE_LAST=False, PASS=1, **flags)
    fwd[grid](
        *first, out, last if last is not None else A, hs[0], *common,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_ADD=add is not None, STORE_HS=bool(want_hs),
        STORE_LAST=bool(want_last), PASS=2 if n_seg > 1 else 0, **flags,
    )
    hs = [h if want_hs else None for h in hs]
    if second is not None:
        return out, out_second, hs[0], hs[1], seg
    return out, last, hs[0], seg


# Splitting the sequence in time (two launches, see the forward kernel's PASS) for grids short of rows: on by
# default since session 8 (H200, `results/scan_sweep_split_v9-h200.log`: the Vim-Ti 1248 pair at batch 1 2.48 ->
# 0.29 ms, batch 2 2.53 -> 0.24, batch 8 2.93 -> 0.65, Vim-S batch 8 2.64 -> 1.26; every split agrees with the
# whole sequence to 1.5e-5). ``VIMAMBA_SCAN_SPLIT=0`` in the environment at import, or ``SPLIT_IN_TIME = False``,
# turns it off; ``_CONFIG_OVERRIDE["segments"]`` forces a number of segments (1 = whole sequences) for tests and
# sweeps.
SPLIT_IN_TIME = os.environ.get("VIMAMBA_SCAN_SPLIT", "1").strip() != "0"


def _time_segments(length: int, rows_per_sm: float, interp: bool) -> int:
    """How many segments to split each sequence into, for the forward (1: whole sequences).

    Without a split, a grid short of (batch element, channel) rows gets few warps: the tile rule spreads each
    channel's states over lanes, and the pair at batch 8 (46.5 rows per SM) took 2.93 ms, 93% of batch 64's
    time for an eighth of the work. Every split costs a first pass of ~2/3 of a scan (PASS 1: forced at batch
    64, 372 rows per SM, 1.6x the whole sequence), so only grids under 128 rows per SM are split, into the
    power of two of segments nearest ~768 rows per SM (the best of 2-32 segments measured at batch 8 with 384
    and with 768 channels), each of >= 192 steps. Between 128 and 372 rows per SM nothing was measured."""
    want = _override("segments")
    if want is None:
        if interp or not SPLIT_IN_TIME or rows_per_sm >= 128:
            return 1
        want = min(32, 1 << max(0, round(math.log2(768.0 / max(rows_per_sm, 1e-3)))), length // 192)
    return max(1, int(want))


def _check_pair(first, second, names):
    """The two scans of a two-direction launch share strides and dtypes (one set of strides reaches both)."""
    for name, x, y in zip(names, first, second):
        if name in ("D", "delta_bias"):
            if (x is None) != (y is None):
                raise ValueError(f"{name} must be given for both scans or for neither")
        elif x.shape != y.shape or x.stride() != y.stride() or x.dtype != y.dtype:
            raise ValueError(f"the two scans' {name} differ in shape, strides or dtype: "
                             f"{tuple(x.shape)}/{x.stride()}/{x.dtype} and {tuple(y.shape)}/{y.stride()}/{y.dtype}")


def _launch_bwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, hs, chunk, dout, dlast, second=None,
                a_log=False):
    """One backward launch. Returns (du, ddelta, dA, dB, dC, dD, dz, dbias), dz of u's layout and the
    optional ones None when their input is None.

    ``second``: (u, delta, A, B, C, D, delta_bias, hs, dout) of the reverse scan that ran in the same forward
    launch over the same z (Vim's backward branch; ``reverse`` and ``dlast`` then do not apply). Both
    directions run in this one launch; the result is then (du, ddelta, du_r, ddelta_r, dA, dB, dC, dD, dbias,
    dz) where dA ... dbias hold both directions' gradients stacked on a leading axis of 2 and dz is their sum
    (z is shared). ``a_log``: A holds A_log (A = -exp(A_log)); dA is then the gradient of A_log."""
    batch, dim, length = u.shape
    nstate = A.shape[1]
    _, bwd, interp = _get_kernels()
    n_dir = 2 if second is not None else 1
    if second is not None:
        u_r, delta_r, A_r, B_r, C_r, D_r, bias_r, hs_r, dout_r = second
        _check_pair((u, delta, B, C, dout, hs, D, delta_bias), (u_r, delta_r, B_r, C_r, dout_r, hs_r, D_r, bias_r),
                    ("u", "delta", "B", "C", "dout", "hs", "D", "delta_bias"))
        if dlast is not None:
            raise ValueError("the two-direction backward takes no gradient of a last state")
    else:
        u_r, delta_r, A_r, B_r, C_r, D_r, bias_r, hs_r, dout_r = u, delta, A, B, C, D, delta_bias, hs, dout
    cfg = _config("bwd", dim, nstate, length, interp, n_dir * batch * dim / num_sms(u.device))
    T, NR, DR, W, NL, DL, K = cfg[:7]
    _check_tile(T, NR, DR, W, NL, DL, nstate)
    # phase A (the states entering the segment's chunks) walks the segment in chunks of TA steps: the
    # largest power of 2 up to 4 (or the 8th entry of the tile) that is a multiple of T and divides T * K.
    # Up to 8 before run 7: the unrolled chunk's loads took registers (148 per thread against 128 at 4) and
    # the backward at 128 x 197 ran 5% slower.
    if len(cfg) > 7:
        TA = cfg[7]
    else:
        TA = T
        while TA * 2 <= max(4, T) and (T * K) % (TA * 2) == 0:
            TA *= 2
    if TA % T or (T * K) % TA or TA & (TA - 1):
        raise ValueError(f"phase-A chunk {TA} must be a power of 2, a multiple of {T} and divide {T * K}")
    if T * K != chunk:
        raise RuntimeError(f"selective_scan_triton: states were saved every {chunk} steps, the backward's "
                           f"segments have {T * K}")
    n_seg = cdiv(length, T * K)
    n_dblocks = cdiv(dim, DR * W * DL)
    dev = u.device
    scratch = torch.empty((n_dir * batch * n_dblocks * K * DR * W * DL * NR * NL,), device=dev, dtype=torch.float32)
    n_parts = n_dblocks * W
    atomic = _atomic_bc()

    def tm(dtype, *lead):  # time-major (..., batch, length, dim) storage seen as (..., batch, dim, length)
        return torch.empty((*lead, batch, length, dim), device=dev, dtype=dtype).transpose(-2, -1)

    def per_dir(*shape, zero=False):  # fp32 partials, one block per direction
        return (torch.zeros if zero else torch.empty)((n_dir, *shape), device=dev, dtype=torch.float32)

    du, ddelta = tm(u.dtype), tm(delta.dtype)
    du_r, ddelta_r = (tm(u.dtype), tm(delta.dtype)) if second is not None else (du, ddelta)
    dz2 = tm(z.dtype, n_dir) if z is not None else None
    dA_part = per_dir(batch, dim, nstate)
    dD_part = per_dir(batch, dim) if D is not None else None
    db_part = per_dir(batch, dim) if delta_bias is not None else None
    dB_part = per_dir(1 if atomic else n_parts, batch, length, nstate, zero=atomic)
    dC_part = per_dir(1 if atomic else n_parts, batch, length, nstate, zero=atomic)
    zz = z if z is not None else u
    if dlast is not None:
        dlast = dlast.to(torch.float32).contiguous()
    grid = (n_dblocks, batch, n_dir)
    # 168 registers, unless a sweep asks otherwise (run 9, H200: the pair's forward + backward at Vim-Ti 224,
    # batch 128 took 3.407 ms at 168, 3.555 with ptxas's own ~160, 3.667 at 128; Vim-S 6.610 / 6.860 / 7.138).
    # Offline, nothing spills at 168; below 128 the loops spill (120-256 bytes of stack at 80-96 registers, v5).
    maxnreg = _override("maxnreg_bwd")
    regs = {} if interp else register_cap(0, _BWD_REGISTERS if maxnreg is None else maxnreg)
    dz_arg = dz2[0] if dz2 is not None else du

    def opt(t, like):
        return t if t is not None else like

    bwd[grid](
        u, delta, A, B, C, opt(D, A), zz, opt(delta_bias, A), dout, hs, opt(dlast, A), scratch,
        du, ddelta, dz_arg, dA_part, opt(dD_part, dA_part), opt(db_part, dA_part), dB_part, dC_part,
        u_r, delta_r, A_r, B_r, C_r, opt(D_r, A_r), opt(bias_r, A_r), dout_r, hs_r, du_r, ddelta_r,
        dim, nstate, length, n_seg, 0, dz2.stride(0) if dz2 is not None else 0, dB_part.stride(0),
        u.stride(0), u.stride(1), u.stride(2),
        delta.stride(0), delta.stride(1), delta.stride(2),
        zz.stride(0), zz.stride(1), zz.stride(2),
        B.stride(0), B.stride(1), B.stride(2),
        C.stride(0), C.stride(1), C.stride(2),
        dout.stride(0), dout.stride(1), dout.stride(2),
        du.stride(0), du.stride(1), du.stride(2),
        0 if atomic else dB_part.stride(1), dB_part.stride(2), dB_part.stride(4), dB_part.stride(3),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
        REVERSE=bool(reverse) and second is None, HAS_DLAST=dlast is not None, ATOMIC_BC=atomic,
        EVEN_D=dim % (DR * W * DL) == 0, EVEN_N=nstate == NR * NL, PAD=length % (T * K) != 0, K=K, TA=TA,
        T=T, NR=NR, DR=DR, W=W, NL=NL, DL=DL, BIDIR=second is not None, A_LOG=bool(a_log),
        BC_PREFETCH=bool(_override("bc_prefetch")) and not interp, num_warps=W, **regs,
    )
    # the partials of both directions summed in one reduction each
    dA = dA_part.sum(1)
    dD = dD_part.sum(1) if dD_part is not None else None
    dbias = db_part.sum(1) if db_part is not None else None
    dB = (dB_part[:, 0] if atomic else dB_part.sum(1)).transpose(-2, -1).to(B.dtype)
    dC = (dC_part[:, 0] if atomic else dC_part.sum(1)).transpose(-2, -1).to(C.dtype)
    if second is not None:
        dz = dz2[0] + dz2[1] if dz2 is not None else None
        return du, ddelta, du_r, ddelta_r, dA, dB, dC, dD, dbias, dz

    def first(t):
        return t[0] if t is not None else None

    return du, ddelta, dA[0], dB[0], dC[0], first(dD), first(dz2), first(dbias)


# ----------------------------------------------------------------------------------------------------------
# Autograd and the public function
# ----------------------------------------------------------------------------------------------------------

def _segment(dim: int, nstate: int, length: int) -> int:
    """Steps between the states the forward saves for the backward (the backward's segment length)."""
    cfg = _config("bwd", dim, nstate, length, _interpret_mode())
    return cfg[0] * cfg[6]


def _time_major(batch: int, dim: int, length: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return like.new_empty((batch, length, dim), dtype=dtype).transpose(1, 2)


# Registered as custom ops (``eager_op``), so torch.compile keeps a whole model in one graph (the op is opaque
# to it); eager calls skip torch.library's dispatch; CUDA graphs capture the launches as they are. Absent outputs are empty tensors (custom ops return tensors).
def _scan_fwd_impl(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                 softplus: bool, reverse: bool, want_last: bool, want_hs: bool,
                 add: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with _on_device(u):
        out, last, hs, _ = _launch_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, want_last, want_hs,
                                       add)
    return out, last if last is not None else u.new_empty(0, dtype=torch.float32), \
        hs if hs is not None else u.new_empty(0, dtype=torch.float32)


def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, want_last, want_hs, add):
    batch, dim, length = u.shape
    nstate = A.shape[1]
    last = u.new_empty((batch, dim, nstate) if want_last else (0,), dtype=torch.float32)
    n_hs = -(-length // _segment(dim, nstate, length)) if want_hs else 0
    hs = u.new_empty((batch, n_hs, dim, nstate) if want_hs else (0,), dtype=torch.float32)
    return _time_major(batch, dim, length, u, u.dtype), last, hs


# Inference without a new output tensor: the result goes into ``out``, which may be ``add`` itself (each
# element of add is read by the lanes that later store that element's output, a chunk or two before, so an
# in-place sum is safe): a branch sum under no_grad with one (batch, length, dim) tensor fewer alive.
def _scan_fwd_out_impl(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                     softplus: bool, reverse: bool, add: Optional[torch.Tensor], out: torch.Tensor) -> None:
    with _on_device(u):
        _launch_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, False, False, add, out)


def _scan_fwd_out_fake(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, add, out):
    return None


_scan_fwd_out_op = eager_op("vimamba::selective_scan_fwd_out", _scan_fwd_out_impl, mutates_args=("out",))
_scan_fwd_out_op.op.register_fake(_scan_fwd_out_fake)


def _scan_bwd_impl(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                 softplus: bool, reverse: bool, hs: torch.Tensor, dout: torch.Tensor,
                 dlast: Optional[torch.Tensor], a_log: bool = False) -> List[torch.Tensor]:
    batch, dim, length = u.shape
    with _on_device(u):
        grads = _launch_bwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, hs,
                            _segment(dim, A.shape[1], length), dout, dlast, a_log=a_log)
    return [g if g is not None else u.new_empty(0) for g in grads]


def _scan_bwd_fake(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, hs, dout, dlast, a_log=False):
    batch, dim, length = u.shape
    nstate = A.shape[1]

    def state_major(dtype):  # dB, dC: (batch, length, state) buffers seen as (batch, state, length)
        return u.new_empty((batch, length, nstate), dtype=dtype).transpose(1, 2)

    return [
        _time_major(batch, dim, length, u, u.dtype), _time_major(batch, dim, length, u, delta.dtype),
        A.new_empty((dim, nstate), dtype=torch.float32), state_major(B.dtype), state_major(C.dtype),
        u.new_empty((dim,) if D is not None else (0,), dtype=torch.float32),
        _time_major(batch, dim, length, u, z.dtype) if z is not None else u.new_empty(0),
        u.new_empty((dim,) if delta_bias is not None else (0,), dtype=torch.float32),
    ]


_scan_bwd_op = eager_op("vimamba::selective_scan_bwd", _scan_bwd_impl)
_scan_bwd_op.op.register_fake(_scan_bwd_fake)


def _scan_setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, reverse, want_last, want_hs, add = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.softplus, ctx.reverse, ctx.want_last = softplus, reverse, want_last
    ctx.add_dtype = add.dtype if add is not None else None
    ctx.set_materialize_grads(False)


def _scan_backward(ctx, dout, dlast, _dhs):
    u, delta, A, B, C, D, z, delta_bias, hs = ctx.saved_tensors
    dadd = dout.to(ctx.add_dtype) if ctx.add_dtype is not None and dout is not None else None  # out = y + add
    if not any(ctx.needs_input_grad[:8]):  # only add asked for a gradient (no states were saved)
        return (None,) * 12 + (dadd,)
    if hs.numel() == 0:
        raise RuntimeError("selective_scan_triton: the forward ran without saving states for a backward")
    if dout is None:
        dout = torch.zeros_like(u)
    if not ctx.want_last or (dlast is not None and dlast.numel() == 0):
        dlast = None
    du, ddelta, dA, dB, dC, dD, dz, dbias = _scan_bwd_op(
        u, delta, A, B, C, D, z, delta_bias, ctx.softplus, ctx.reverse, hs, dout, dlast)
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
            dbias if delta_bias is not None else None, None, None, None, None, dadd)


_scan_fwd_op = eager_op("vimamba::selective_scan_fwd", _scan_fwd_impl,
                        backward=_scan_backward, setup_context=_scan_setup_context)
_scan_fwd_op.op.register_fake(_scan_fwd_fake)


# Both branches of Vim's mixer in one launch (the second scans from the last step to the first). Inputs are
# the two scans' (u, delta, A, B, C, D, delta_bias) in a row, then the shared z. a_log: both A's hold A_log
# (A = -exp(A_log), computed in the kernels; the gradients go to A_log).
def _bidir_fwd_impl(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                  u_r: torch.Tensor, delta_r: torch.Tensor, A_r: torch.Tensor, B_r: torch.Tensor,
                  C_r: torch.Tensor, D_r: Optional[torch.Tensor], delta_bias_r: Optional[torch.Tensor],
                  z: Optional[torch.Tensor], softplus: bool, want_hs: bool,
                  a_log: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, dim, length = u.shape
    out_r = _time_major(batch, dim, length, u, u.dtype)
    with _on_device(u):
        out, out_r, hs, hs_r, _ = _launch_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, False, False, want_hs,
                                              second=(u_r, delta_r, A_r, B_r, C_r, D_r, delta_bias_r),
                                              out_second=out_r, a_log=a_log)
    def given(h):  # each absent output its own empty tensor (outputs of a custom op may not alias)
        return h if h is not None else u.new_empty(0, dtype=torch.float32)

    return out, out_r, given(hs), given(hs_r)


def _bidir_fwd_fake(u, delta, A, B, C, D, delta_bias, u_r, delta_r, A_r, B_r, C_r, D_r, delta_bias_r, z, softplus,
                    want_hs, a_log=False):
    batch, dim, length = u.shape
    nstate = A.shape[1]
    n_hs = -(-length // _segment(dim, nstate, length)) if want_hs else 0
    shape = (batch, n_hs, dim, nstate) if want_hs else (0,)
    return (_time_major(batch, dim, length, u, u.dtype), _time_major(batch, dim, length, u, u.dtype),
            u.new_empty(shape, dtype=torch.float32), u.new_empty(shape, dtype=torch.float32))


# Inference: the two results go into out and out_r, which may be u and u_r themselves (each element of u is
# read by the thread that later stores that element's output, one or two steps before: an in-place scan is
# safe). Vim's mixer uses it under no_grad, so both branches' outputs take no memory of their own.
def _bidir_fwd_out_impl(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                      u_r: torch.Tensor, delta_r: torch.Tensor, A_r: torch.Tensor, B_r: torch.Tensor,
                      C_r: torch.Tensor, D_r: Optional[torch.Tensor], delta_bias_r: Optional[torch.Tensor],
                      z: Optional[torch.Tensor], softplus: bool, out: torch.Tensor, out_r: torch.Tensor,
                      a_log: bool = False) -> None:
    with _on_device(u):
        _launch_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, False, False, False, out=out,
                    second=(u_r, delta_r, A_r, B_r, C_r, D_r, delta_bias_r), out_second=out_r, a_log=a_log)


def _bidir_fwd_out_fake(u, delta, A, B, C, D, delta_bias, u_r, delta_r, A_r, B_r, C_r, D_r, delta_bias_r, z,
                        softplus, out, out_r, a_log=False):
    return None


_bidir_fwd_out_op = eager_op("vimamba::selective_scan_bidir_fwd_out", _bidir_fwd_out_impl,
                             mutates_args=("out", "out_r"))
_bidir_fwd_out_op.op.register_fake(_bidir_fwd_out_fake)


def _bidir_setup_context(ctx, inputs, output):
    *tensors, softplus, _want_hs, a_log = inputs
    ctx.save_for_backward(*tensors, output[2], output[3])
    ctx.softplus, ctx.a_log = softplus, a_log
    ctx.set_materialize_grads(False)


# The backward of both branches in one launch (the reverse scan's programs on grid axis 2), like the forward.
# Returns du, ddelta of each scan, then dA, dB, dC, dD, d(delta_bias) stacked over the two directions (one
# reduction each for both), then dz summed over both.
def _bidir_bwd_impl(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                    u_r: torch.Tensor, delta_r: torch.Tensor, A_r: torch.Tensor, B_r: torch.Tensor,
                    C_r: torch.Tensor, D_r: Optional[torch.Tensor], delta_bias_r: Optional[torch.Tensor],
                    z: Optional[torch.Tensor], softplus: bool, hs: torch.Tensor, hs_r: torch.Tensor,
                    dout: torch.Tensor, dout_r: torch.Tensor, a_log: bool = False) -> List[torch.Tensor]:
    batch, dim, length = u.shape
    with _on_device(u):
        grads = _launch_bwd(u, delta, A, B, C, D, z, delta_bias, softplus, False, hs,
                            _segment(dim, A.shape[1], length), dout, None,
                            second=(u_r, delta_r, A_r, B_r, C_r, D_r, delta_bias_r, hs_r, dout_r), a_log=a_log)
    return [g if g is not None else u.new_empty(0) for g in grads]


def _bidir_bwd_fake(u, delta, A, B, C, D, delta_bias, u_r, delta_r, A_r, B_r, C_r, D_r, delta_bias_r, z, softplus,
                    hs, hs_r, dout, dout_r, a_log=False):
    batch, dim, length = u.shape
    nstate = A.shape[1]

    def tm(dtype):
        return _time_major(batch, dim, length, u, dtype)

    def stacked_state_major(dtype):  # (2, batch, length, state) buffers seen as (2, batch, state, length)
        return u.new_empty((2, batch, length, nstate), dtype=dtype).transpose(-2, -1)

    def per_channel(given):
        return u.new_empty((2, dim) if given is not None else (0,), dtype=torch.float32)

    return [tm(u.dtype), tm(delta.dtype), tm(u.dtype), tm(delta.dtype),
            A.new_empty((2, dim, nstate), dtype=torch.float32), stacked_state_major(B.dtype),
            stacked_state_major(C.dtype), per_channel(D), per_channel(delta_bias),
            tm(z.dtype) if z is not None else u.new_empty(0)]


_bidir_bwd_op = eager_op("vimamba::selective_scan_bidir_bwd", _bidir_bwd_impl)
_bidir_bwd_op.op.register_fake(_bidir_bwd_fake)


def _bidir_backward(ctx, dout, dout_r, _dhs, _dhs_r):
    saved = ctx.saved_tensors
    fwd, bwd = saved[:7], saved[7:14]
    z, hs, hs_r = saved[14], saved[15], saved[16]
    if hs.numel() == 0:
        raise RuntimeError("selective_scan_triton: the forward ran without saving states for a backward")
    dout = dout if dout is not None else torch.zeros_like(fwd[0])
    dout_r = dout_r if dout_r is not None else torch.zeros_like(bwd[0])
    D, bias = fwd[5], fwd[6]

    def given(t, param):  # the gradient of an optional parameter, None where it was not given
        return t if param is not None else None

    if _override("bidir_bwd") is False:  # two launches, for sweeps that compare
        grads = []
        for (uu, dd, AA, BB, CC, DD, bb), h, g, rev in ((fwd, hs, dout, False), (bwd, hs_r, dout_r, True)):
            du, ddelta, dA, dB, dC, dD, dz, dbias = _scan_bwd_op(uu, dd, AA, BB, CC, DD, z, bb, ctx.softplus, rev,
                                                                 h, g, None, ctx.a_log)
            grads.append((du, ddelta, dA, dB, dC, given(dD, D), given(dbias, bias), dz))
        g_f, g_r = grads[0][:7], grads[1][:7]
        dz = grads[0][7] + grads[1][7]
    else:
        du, ddelta, du_r, ddelta_r, dA, dB, dC, dD, dbias, dz = _bidir_bwd_op(*fwd, *bwd, z, ctx.softplus, hs, hs_r,
                                                                              dout, dout_r, ctx.a_log)
        g_f, g_r = [(du_i, ddelta_i, dA[i], dB[i], dC[i], dD[i] if D is not None else None,
                     dbias[i] if bias is not None else None)
                    for i, du_i, ddelta_i in ((0, du, ddelta), (1, du_r, ddelta_r))]
    return (*g_f, *g_r, dz if z is not None else None, None, None, None)


_bidir_fwd_op = eager_op("vimamba::selective_scan_bidir_fwd", _bidir_fwd_impl,
                         backward=_bidir_backward, setup_context=_bidir_setup_context)
_bidir_fwd_op.op.register_fake(_bidir_fwd_fake)


def selective_scan_bidir_triton(fwd, bwd, z=None, delta_softplus=False, *, out=None, a_log=False):
    """Vim's two scans in one launch: ``fwd`` = (u, delta, A, B, C, D, delta_bias) scanned from the first step
    to the last, ``bwd`` (same shapes, strides and dtypes) from the last to the first (``reverse=True``), both
    gated by the same ``z``. Returns (y_fwd, y_bwd), each what ``selective_scan_triton`` gives for its scan.
    ``out``: inference only, a pair of tensors that receive the results and may be the two u's themselves.
    ``a_log``: both A's are given as A_log, A = -exp(A_log) (Mamba's parameters as they are stored), computed
    inside the kernels; gradients then reach A_log."""
    if not HAS_TRITON:
        raise RuntimeError("selective_scan_bidir_triton needs the triton package")
    fwd, bwd = _scan_tuple(fwd, "fwd"), _scan_tuple(bwd, "bwd")
    for name, sc in (("fwd", fwd), ("bwd", bwd)):
        u, delta, A, B, C, D, bias = sc
        check_scan_inputs(u, delta, A, B, C, D, z, bias)
        if B.dim() != 3 or C.dim() != 3:
            raise NotImplementedError(f"selective_scan_bidir_triton: {name} needs input-dependent B and C of shape "
                                      f"(batch, state, length); got B {tuple(B.shape)}, C {tuple(C.shape)}")
    if not fwd[0].is_cuda and not _interpret_mode():
        raise NotImplementedError("selective_scan_bidir_triton on CPU tensors runs in Triton's interpreter only: "
                                  "set TRITON_INTERPRET=1, or use selective_scan_bidir_ref")
    fwd, bwd = _fp32_params(fwd), _fp32_params(bwd)
    if out is not None:
        out_f, out_r = out
        for o in (out_f, out_r):
            check_scan_out(fwd[0], o, (*fwd, *bwd, z), False)
        if fwd[0].numel():
            _bidir_fwd_out_op(*fwd, *bwd, z, bool(delta_softplus), out_f, out_r, bool(a_log))
        return out_f, out_r
    if fwd[0].numel() == 0:
        return torch.empty_like(fwd[0]), torch.empty_like(bwd[0])
    want_hs = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*fwd, *bwd, z))
    y_f, y_r, _, _ = _bidir_fwd_op(*fwd, *bwd, z, bool(delta_softplus), want_hs, bool(a_log))
    return y_f, y_r


def _scan_tuple(sc, name):
    sc = tuple(sc)
    if len(sc) == 5:
        sc = sc + (None, None)
    if len(sc) != 7:
        raise ValueError(f"{name} must be (u, delta, A, B, C[, D, delta_bias]), got {len(sc)} items")
    return sc


def _per_channel_fp32(*params):
    """The small per-channel parameters (A, D, delta_bias) in fp32, contiguous (a copy only when they are not
    already); absent ones stay None. Checked in Python first: six per block and call, and on this project's CPU
    machine a no-op ``.to(...).contiguous()`` took 1.05 us against 0.17 for the check."""
    return tuple(t if t is None or (t.dtype == torch.float32 and t.is_contiguous())
                 else t.to(torch.float32).contiguous() for t in params)


def _fp32_params(sc):
    u, delta, A, B, C, D, bias = sc
    A, D, bias = _per_channel_fp32(A, D, bias)
    return (u, delta, A, B, C, D, bias)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    reverse: bool = False,
    *,
    add: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
):
    """Selective scan with Triton kernels; same arguments and result as ``selective_scan_ref``.

    Only input-dependent B and C of shape (batch, state, length) are handled; others raise
    ``NotImplementedError``. u, delta, B, C, z may be fp32, fp16 or bf16 and any strided view; A, D and
    delta_bias are used in fp32. The output has u's dtype; the last state (``return_last_state``) is fp32.
    """
    if not HAS_TRITON:
        raise RuntimeError("selective_scan_triton needs the triton package")
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    check_scan_add(u, add)
    check_scan_out(u, out, (u, delta, A, B, C, D, z, delta_bias, add), return_last_state)
    if B.dim() != 3 or C.dim() != 3:
        raise NotImplementedError(
            "selective_scan_triton handles input-dependent B and C of shape (batch, state, length) only; "
            f"got B {tuple(B.shape)}, C {tuple(C.shape)} (use selective_scan_ref for time-invariant or grouped B/C)")
    ok = (torch.float32, torch.float16, torch.bfloat16)
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z), ("add", add)):
        if t is not None and t.dtype not in ok:
            raise NotImplementedError(f"selective_scan_triton takes fp32, fp16 or bf16 {name}, got {t.dtype}")
    if not u.is_cuda and not _interpret_mode():
        raise NotImplementedError("selective_scan_triton on CPU tensors runs in Triton's interpreter only: "
                                  "set TRITON_INTERPRET=1, or use selective_scan_ref")
    A, D, delta_bias = _per_channel_fp32(A, D, delta_bias)
    if out is not None:
        if u.numel():
            _scan_fwd_out_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(reverse), add, out)
        return out
    if u.numel() == 0:
        out = torch.empty_like(u, memory_format=torch.contiguous_format)
        if add is not None:
            out = out + add  # keeps autograd's connection to add
        last = u.new_zeros((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)
        return (out, last) if return_last_state else out
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    want_hs = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    out, last, _ = _scan_fwd_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(reverse),
                                bool(return_last_state), want_hs, add)
    return (out, last) if return_last_state else out


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (the backward, run by autograd on the
    forward's device, is guarded the same way)."""
    import contextlib

    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
