"""Triton kernels for Vim's depthwise causal conv1d (forward and backward), with SiLU fused.

``causal_conv1d_triton(x, weight, bias=None, activation=None, reverse=False)`` has the semantics of
``causal_conv1d_ref``: x (batch, dim, length) with any strides (a channel slice of the (batch, 2*dim, length)
projection, or the transpose of a (batch, length, 2*dim) tensor, is read in place, not copied), weight
(dim, width), bias (dim,), activation None / "silu" / "swish". The output is a new (batch, dim, length) tensor in x's dtype, laid
out as x is (channel-contiguous for a transposed x, as Vim passes it; contiguous otherwise); the input
gradient likewise. All arithmetic is in fp32.

Indexing. With ``sgn = -1`` (causal) or ``+1`` (``reverse``, the anti-causal conv that Vim's backward branch
uses instead of flipping copies) and the tap for lag ``m`` being ``w[width - 1 - m]``::

    y[t]   = bias + sum_m w[width-1-m] * x[t + sgn*m]          (x outside [0, length) reads as 0)
    out[t] = silu(y[t]) if activation else y[t]

so ``reverse=True`` equals ``flip(conv(flip(x)))``. ``causal_conv1d_pair_triton`` computes Vim's two convs of
one x (causal with one weight, anti-causal with the other) in one pass (the lag-0 tile serves both), and their
backward in one pass too (the shifted x tiles serve both, dx is summed before its one store). Backward, with
``dy = dout * silu'(y)``::

    dx[t]          = sum_m w[width-1-m] * dy[t - sgn*m]
    dw[width-1-m]  = sum_{b,t} dy[t] * x[t + sgn*m]
    dbias          = sum_{b,t} dy[t]

The backward kernel recomputes ``y`` at the ``width`` output steps each x feeds, from the ``2*width - 1``
shifted x tiles it loads once per length tile (the shifts overlap and come from L1/L2), so forward stores
nothing but its output. Each backward program walks a chunk of length tiles of one (batch, channel block),
accumulating the weight and bias gradients in registers; it writes them as one fp32 partial row per
(batch, chunk), and torch sums the rows: deterministic, and safe to rerun under the autotuner. The number of
chunks is the smallest that still gives about four programs per SM.

Memory traffic: forward reads x once and writes the output once; backward reads x and dout once each and
writes dx once (plus the small partial rows). Tiles are 2-D (channels x steps); Triton specialises a stride
equal to 1, so accesses vectorise (16 bytes) along whichever of the two dimensions is contiguous in memory,
where sizes and alignment allow, and the tile shape is picked for that case. Loads shifted along a
contiguous length dimension, and the stores of length-contiguous rows when the length is not a multiple of
the vector (Vim's 197), stay scalar but coalesced across the warp. Widths 1 to 4. For channel-contiguous x
the forward also has SLIDE tiles (offered to the autotuner beside the 2-D ones): one thread per channel
walks a run of steps in order with the last four x values in registers, so x is loaded once per step instead
of once per tap (66 SASS instructions per step for the pair, both outputs, against ~39 per output of the 2-D
tile; offline sm_90 compile).

Kernels are turned into Triton functions on first use, not at import, and their bodies call only
``triton.language`` builtins: ``ops/_triton.py`` says why.
"""

from typing import Optional

import torch

from .._triton import HAS_TRITON, cdiv, eager_op, lazy_kernel, next_pow2, num_sms, tl, triton
from .reference import check_conv_inputs

__all__ = ["HAS_TRITON", "causal_conv1d_pair_triton", "causal_conv1d_triton"]


# ----------------------------------------------------------------------------------------------------------
# Kernels (plain functions; decorated lazily by _get_kernel)
# ----------------------------------------------------------------------------------------------------------

def _conv1d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, w2_ptr, b2_ptr, out2_ptr,
    D, L,
    stride_xb, stride_xd, stride_xl,
    stride_wd, stride_wk,
    stride_ob, stride_od, stride_ol,
    W: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, PAIR: tl.constexpr = False, SLIDE: tl.constexpr = False,
    PREFETCH: tl.constexpr = 0,
):
    # PAIR: Vim's two convs of one x in one pass (w, b -> out causal; w2, b2 -> out2 anti-causal, REVERSE
    # False): the lag-0 tile serves both and x comes from memory once instead of twice
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    if SLIDE:
        # The forward's SLIDE tiles (channel-contiguous x): each thread walks BLOCK_L consecutive steps of its
        # channels in order, keeping the last four x values in registers, so x is loaded once per step (plus a
        # three-step halo per program) instead of once per tap and output; every load and store is one
        # coalesced row of channels. Taps are held by lag, lag m = w[W-1-m] (lags >= W are zero), and step t
        # gives the causal output at t and the anti-causal one at t - 3, whose inputs are then all in the window.
        t0 = pid_l * BLOCK_L
        w_rows = offs_d * stride_wd
        # the masks of lags past the width and of an absent bias are compile-time False: zeros, no loads
        wa0 = tl.load(w_ptr + w_rows + (W - 1) * stride_wk, mask=mask_d, other=0.0).to(tl.float32)
        wa1 = tl.load(w_ptr + w_rows + (W - 2) * stride_wk, mask=mask_d & (W > 1), other=0.0).to(tl.float32)
        wa2 = tl.load(w_ptr + w_rows + (W - 3) * stride_wk, mask=mask_d & (W > 2), other=0.0).to(tl.float32)
        wa3 = tl.load(w_ptr + w_rows + (W - 4) * stride_wk, mask=mask_d & (W > 3), other=0.0).to(tl.float32)
        ba = tl.load(b_ptr + offs_d, mask=mask_d & HAS_BIAS, other=0.0).to(tl.float32)
        if PAIR:
            wb0 = tl.load(w2_ptr + w_rows + (W - 1) * stride_wk, mask=mask_d, other=0.0).to(tl.float32)
            wb1 = tl.load(w2_ptr + w_rows + (W - 2) * stride_wk, mask=mask_d & (W > 1), other=0.0).to(tl.float32)
            wb2 = tl.load(w2_ptr + w_rows + (W - 3) * stride_wk, mask=mask_d & (W > 2), other=0.0).to(tl.float32)
            wb3 = tl.load(w2_ptr + w_rows + (W - 4) * stride_wk, mask=mask_d & (W > 3), other=0.0).to(tl.float32)
            bb = tl.load(b2_ptr + offs_d, mask=mask_d & HAS_BIAS, other=0.0).to(tl.float32)
        # x[t-1], x[t-2], x[t-3]. Three separate zero tensors, not one: Triton's front end (3.6 and 3.8) takes a
        # variable as loop-carried only when the loop gives it a value whose handle differs from its value on
        # entry, so with one shared zero `x2 = x1` looked unchanged and x2, x3 stayed zero when compiled
        # (the interpreter runs Python's semantics and never saw it); test_slide_window_is_loop_carried pins it
        x1 = tl.full([BLOCK_D], 0.0, tl.float32)
        x2 = tl.full([BLOCK_D], 0.0, tl.float32)
        x3 = tl.full([BLOCK_D], 0.0, tl.float32)
        # steps t0-3 .. t0+BLOCK_L-1 for a causal output, up to t0+BLOCK_L+2 when an anti-causal one is asked
        if PAIR or REVERSE:
            n_steps = BLOCK_L + 6
        else:
            n_steps = BLOCK_L + 3
        t = t0 - 3
        x_row = x_ptr + pid_b * stride_xb + offs_d * stride_xd
        x_p = x_row + t * stride_xl
        o_c = out_ptr + pid_b * stride_ob + offs_d * stride_od + t * stride_ol  # causal output at t
        if PAIR:
            o_a = out2_ptr + pid_b * stride_ob + offs_d * stride_od + (t - 3) * stride_ol  # anti-causal at t-3
        else:
            o_a = o_c - 3 * stride_ol
        end = tl.minimum(t0 + BLOCK_L, L)
        x_n = tl.load(x_p, mask=mask_d & (t >= 0) & (t < L), other=0.0)
        for _i in range(0, n_steps):
            x0 = x_n.to(tl.float32)
            x_p += stride_xl  # the next step's row is in flight while this one is computed
            x_n = tl.load(x_p, mask=mask_d & (t + 1 >= 0) & (t + 1 < L), other=0.0)
            if PREFETCH > 0:
                # The row PREFETCH steps ahead asked into L2 (a PTX hint: no register waits on it; compiled only).
                # Each step's load is issued one step before its use, and a step is a few dozen instructions:
                # without the hint a short walk waits on a full memory round trip per step (see _tiles_fwd).
                t_pf = tl.minimum(tl.maximum(t + PREFETCH, 0), L - 1)
                tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l",
                                          [x_row + t_pf * stride_xl], dtype=tl.int32, is_pure=False, pack=1)
            if not REVERSE:
                y = ba + wa0 * x0 + wa1 * x1 + wa2 * x2 + wa3 * x3
                if SILU:
                    y = y / (1.0 + tl.exp(-y))
                tl.store(o_c, y.to(out_ptr.dtype.element_ty), mask=mask_d & (t >= t0) & (t < end))
            if PAIR or REVERSE:
                if PAIR:
                    y2 = bb + wb0 * x3 + wb1 * x2 + wb2 * x1 + wb3 * x0
                else:
                    y2 = ba + wa0 * x3 + wa1 * x2 + wa2 * x1 + wa3 * x0
                if SILU:
                    y2 = y2 / (1.0 + tl.exp(-y2))
                tl.store(o_a, y2.to(out_ptr.dtype.element_ty), mask=mask_d & (t - 3 >= t0) & (t - 3 < end))
            x3 = x2
            x2 = x1
            x1 = x0
            t += 1
            o_c += stride_ol
            o_a += stride_ol
    else:
        offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        x_rows = x_ptr + pid_b * stride_xb + offs_d[:, None] * stride_xd

        acc = tl.full([BLOCK_D, BLOCK_L], 0.0, tl.float32)
        acc2 = acc
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
            acc += bias[:, None]
            if PAIR:
                bias2 = tl.load(b2_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
                acc2 += bias2[:, None]
        for m in tl.static_range(W):  # lag m: tap w[W-1-m] times x[t + sgn*m]
            if REVERSE:
                pos = offs_l + m
            else:
                pos = offs_l - m
            w_m = tl.load(w_ptr + offs_d * stride_wd + (W - 1 - m) * stride_wk, mask=mask_d, other=0.0).to(tl.float32)
            mask_x = mask_d[:, None] & ((pos >= 0) & (pos < L))[None, :]
            x_m = tl.load(x_rows + pos[None, :] * stride_xl, mask=mask_x, other=0.0).to(tl.float32)
            acc += w_m[:, None] * x_m
            if PAIR:
                w2_m = tl.load(w2_ptr + offs_d * stride_wd + (W - 1 - m) * stride_wk, mask=mask_d,
                               other=0.0).to(tl.float32)
                if m > 0:
                    pos2 = offs_l + m
                    mask_x2 = mask_d[:, None] & (pos2 < L)[None, :]
                    x_m = tl.load(x_rows + pos2[None, :] * stride_xl, mask=mask_x2, other=0.0).to(tl.float32)
                acc2 += w2_m[:, None] * x_m
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))
            if PAIR:
                acc2 = acc2 / (1.0 + tl.exp(-acc2))

        out_off = pid_b * stride_ob + offs_d[:, None] * stride_od + offs_l[None, :] * stride_ol
        mask_out = mask_d[:, None] & (offs_l < L)[None, :]
        tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask_out)
        if PAIR:
            tl.store(out2_ptr + out_off, acc2.to(out2_ptr.dtype.element_ty), mask=mask_out)


def _conv1d_bwd_kernel(
    x_ptr, w_ptr, b_ptr, dout_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
    w2_ptr, b2_ptr, dout2_ptr, dw2_part_ptr, db2_part_ptr,
    D, L, n_lblocks, tiles_per_prog,
    stride_xb, stride_xd, stride_xl,
    stride_wd, stride_wk,
    stride_gb, stride_gd, stride_gl,
    stride_dxb, stride_dxd, stride_dxl,
    W: tl.constexpr, WP: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    WANT_DX: tl.constexpr, WANT_DW: tl.constexpr, WANT_DB: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, PAIR: tl.constexpr = False,
):
    # program (chunk c, channel block, batch b) handles length tiles [c*tiles_per_prog, (c+1)*tiles_per_prog)
    # PAIR: the backward of Vim's two convs of one x (w, b, dout: causal; w2, b2, dout2: anti-causal, REVERSE
    # then False) in one pass: x's seven shifted tiles are loaded once for both, dx is their sum, written once
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    x_rows = x_ptr + pid_b * stride_xb + offs_d[:, None] * stride_xd
    g_rows = dout_ptr + pid_b * stride_gb + offs_d[:, None] * stride_gd
    g2_rows = dout2_ptr + pid_b * stride_gb + offs_d[:, None] * stride_gd
    bias = tl.full([BLOCK_D], 0.0, tl.float32)
    bias2 = bias
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        if PAIR:
            bias2 = tl.load(b2_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    taps = tl.arange(0, WP)
    db_acc = tl.full([BLOCK_D], 0.0, tl.float32)
    dw_acc = tl.full([BLOCK_D, WP], 0.0, tl.float32)  # column k: the gradient of w[:, k]
    db2_acc = db_acc
    dw2_acc = dw_acc
    # the taps, w[:, k] for k < W, of each conv (tuples are indexed with compile-time constants only)
    for dirn in tl.static_range(2 if PAIR else 1):
        if dirn == 1:
            w_rows = w2_ptr + offs_d * stride_wd
        else:
            w_rows = w_ptr + offs_d * stride_wd
        w0 = tl.load(w_rows, mask=mask_d, other=0.0).to(tl.float32)
        w1 = w0
        w2 = w0
        w3 = w0
        if W > 1:
            w1 = tl.load(w_rows + stride_wk, mask=mask_d, other=0.0).to(tl.float32)
        if W > 2:
            w2 = tl.load(w_rows + 2 * stride_wk, mask=mask_d, other=0.0).to(tl.float32)
        if W > 3:
            w3 = tl.load(w_rows + 3 * stride_wk, mask=mask_d, other=0.0).to(tl.float32)
        if dirn == 1:
            ws2 = (w0, w1, w2, w3)
        else:
            ws = (w0, w1, w2, w3)
            ws2 = ws

    tile_start = pid_c * tiles_per_prog
    tile_end = tl.minimum(tile_start + tiles_per_prog, n_lblocks)
    for tile in range(tile_start, tile_end):
        offs_l = tile * BLOCK_L + tl.arange(0, BLOCK_L)
        # x at t + sgn*k for k = -3..3 (tuple index k + 3), each distinct shift loaded once; k < 0 only feeds
        # the recomputed pre-activations, k >= 0 those and the weight gradient
        zero = tl.full([BLOCK_D, BLOCK_L], 0.0, tl.float32)
        xm3 = zero
        xm2 = zero
        xm1 = zero
        x0 = zero
        xp1 = zero
        xp2 = zero
        xp3 = zero
        if SILU or WANT_DW:
            q = offs_l
            x0 = tl.load(x_rows + q[None, :] * stride_xl, mask=mask_d[:, None] & ((q >= 0) & (q < L))[None, :],
                         other=0.0).to(tl.float32)
            if W > 1:
                if REVERSE:
                    q = offs_l + 1
                else:
                    q = offs_l - 1
                xp1 = tl.load(x_rows + q[None, :] * stride_xl,
                              mask=mask_d[:, None] & ((q >= 0) & (q < L))[None, :], other=0.0).to(tl.float32)
            if W > 2:
                if REVERSE:
                    q = offs_l + 2
                else:
                    q = offs_l - 2
                xp2 = tl.load(x_rows + q[None, :] * stride_xl,
                              mask=mask_d[:, None] & ((q >= 0) & (q < L))[None, :], other=0.0).to(tl.float32)
            if W > 3:
                if REVERSE:
                    q = offs_l + 3
                else:
                    q = offs_l - 3
                xp3 = tl.load(x_rows + q[None, :] * stride_xl,
                              mask=mask_d[:, None] & ((q >= 0) & (q < L))[None, :], other=0.0).to(tl.float32)
        if SILU or (PAIR and WANT_DW):  # (the anti-causal conv of a pair reads these for its weight gradient)
            if W > 1:
                if REVERSE:
                    q = offs_l - 1
                else:
                    q = offs_l + 1
                xm1 = tl.load(x_rows + q[None, :] * stride_xl,
                              mask=mask_d[:, None] & ((q >= 0) & (q < L))[None, :], other=0.0).to(tl.float32)
            if W > 2:
                if REVERSE:
                    q = offs_l - 2
                else:
                    q = offs_l + 2
                xm2 = tl.load(x_rows + q[None, :] * stride_xl,
                              mask=mask_d[:, None] & ((q >= 0) & (q < L))[None, :], other=0.0).to(tl.float32)
            if W > 3:
                if REVERSE:
                    q = offs_l - 3
                else:
                    q = offs_l + 3
                xm3 = tl.load(x_rows + q[None, :] * stride_xl,
                              mask=mask_d[:, None] & ((q >= 0) & (q < L))[None, :], other=0.0).to(tl.float32)
        xs = (xm3, xm2, xm1, x0, xp1, xp2, xp3)

        dx = tl.full([BLOCK_D, BLOCK_L], 0.0, tl.float32)
        for dirn in tl.static_range(2 if PAIR else 1):
            # the pair's second conv runs the other way: its shifted tiles are the first's, mirrored
            if dirn == 1:
                rev = True
                xd = (xp3, xp2, xp1, x0, xm1, xm2, xm3)
                wd = ws2
                bd = bias2
                gd_rows = g2_rows
            else:
                rev = REVERSE
                xd = xs
                wd = ws
                bd = bias
                gd_rows = g_rows
            for m in tl.static_range(W):
                # dy at p = t - sgn*m, the output step whose lag-m tap reads x[t]
                if rev:
                    p = offs_l - m
                else:
                    p = offs_l + m
                mask_p = mask_d[:, None] & ((p >= 0) & (p < L))[None, :]
                dy = tl.load(gd_rows + p[None, :] * stride_gl, mask=mask_p, other=0.0).to(tl.float32)
                if SILU:  # recompute the pre-activation at p: y[p] = bias + sum_j w[W-1-j] * x[p + sgn*j]
                    y = tl.full([BLOCK_D, BLOCK_L], 0.0, tl.float32)
                    if HAS_BIAS:
                        y += bd[:, None]
                    for j in tl.static_range(W):
                        y += wd[W - 1 - j][:, None] * xd[j - m + 3]
                    sig = 1.0 / (1.0 + tl.exp(-y))
                    dy = dy * (sig * (1.0 + y * (1.0 - sig)))
                if WANT_DX:
                    dx += wd[W - 1 - m][:, None] * dy
                if m == 0:  # dy at t itself: this tile's share of the weight and bias gradients
                    if WANT_DB:
                        db_t = tl.reduce(dy, 1, tl.standard._sum_combine)
                        if dirn == 1:
                            db2_acc += db_t
                        else:
                            db_acc += db_t
                    if WANT_DW:
                        for j in tl.static_range(W):
                            dw_j = tl.reduce(dy * xd[j + 3], 1, tl.standard._sum_combine)
                            dw_t = tl.where(taps[None, :] == (W - 1 - j), dw_j[:, None], 0.0)
                            if dirn == 1:
                                dw2_acc += dw_t
                            else:
                                dw_acc += dw_t
        if WANT_DX:
            dx_ptrs = dx_ptr + pid_b * stride_dxb + offs_d[:, None] * stride_dxd + offs_l[None, :] * stride_dxl
            mask_out = mask_d[:, None] & (offs_l < L)[None, :]
            tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask_out)

    # one partial row per (batch, chunk): layouts (parts, D) and (parts, W, D)
    part = pid_b * tl.num_programs(0) + pid_c
    if WANT_DB:
        tl.store(db_part_ptr + part * D + offs_d, db_acc, mask=mask_d)
        if PAIR:
            tl.store(db2_part_ptr + part * D + offs_d, db2_acc, mask=mask_d)
    if WANT_DW:
        dw_off = part * (W * D) + taps[None, :] * D + offs_d[:, None]
        tl.store(dw_part_ptr + dw_off, dw_acc, mask=mask_d[:, None] & (taps < W)[None, :])
        if PAIR:
            tl.store(dw2_part_ptr + dw_off, dw2_acc, mask=mask_d[:, None] & (taps < W)[None, :])


# ----------------------------------------------------------------------------------------------------------
# Lazy decoration, autotuning and tile shapes
# ----------------------------------------------------------------------------------------------------------

def _tiles_fwd(l_contig: bool):
    """Candidate (BLOCK_D, BLOCK_L, num_warps, SLIDE, PREFETCH) for the forward kernel, the heuristic choice first.

    2-D tiles: 8-16 elements per thread, 56-98 registers on sm_90 (Triton 3.8, width 4, SiLU), no spills.
    SLIDE tiles (channels contiguous only): one channel per thread walking BLOCK_L steps with a window of x in
    registers (30 registers). Compiled, they were wrong until session 7 (the window was not loop-carried, see
    the kernel); since the fix the whole conv test file passes on an H200 (session 8:
    gpu_conv_tests_v9-h200.log), and offered to the autotuner they gave Vim-Ti 0.81x and Vim-S 0.84x DeiT at
    1248 where the 2-D tiles gave 0.75x and 0.72x (bench-h200-v8-slide, bench-h200-v7). PREFETCH (SLIDE only,
    compiled only): x's row that many steps ahead asked into L2; the two-channel SLIDE tile with it ran the pair
    at Vim-Ti 224, batch 128 in 0.047 ms where the autotuner's best without it took 0.058, and at Vim-S 1248,
    batch 32 in 0.337 against 0.371 (H200, conv_sweep-h200-v12; no gain at Vim-Ti 1248)."""
    if l_contig:  # steps contiguous: long rows along L
        return [(4, 256, 4, False, 0), (8, 128, 4, False, 0), (8, 256, 8, False, 0)]
    # channels contiguous: wide along D, or one channel per thread along L
    return [(64, 16, 4, False, 0), (32, 32, 4, False, 0), (128, 16, 8, False, 0), (128, 64, 4, True, 0),
            (256, 64, 4, True, 0), (256, 64, 4, True, 4)]


def _tile_l_bwd(l_contig: bool) -> int:
    # Fixed per layout, not autotuned: with BLOCK_L fixed, the partial buffers do not depend on the config.
    return 128 if l_contig else 16


def _tiles_bwd_d(l_contig: bool):
    """Candidate (BLOCK_D, num_warps) for the backward kernel: 2-4 elements per thread (it holds the 2W-1
    shifted x tiles, W dout tiles and dx at once): 48-170 registers on sm_90, no spills."""
    if l_contig:
        return [(4, 4), (2, 4), (8, 8)]
    return [(32, 4), (64, 8), (16, 4)]


# The interpreter runs programs one after another in Python: fewer, larger tiles (same for both kernels).
_INTERP_TILES = {True: (8, 256), False: (64, 256)}  # l_contig -> (BLOCK_D, BLOCK_L)
# (BLOCK_D, BLOCK_L, num_warps, SLIDE[, PREFETCH]) forced on every forward launch, compiled or interpreted (tests,
# sweeps; PREFETCH is dropped in the interpreter, which cannot run PTX)
_FWD_TILE_OVERRIDE = None

_KERNELS = {}


def _autotune_configs(name: str, l_contig: bool) -> list:
    if name == "fwd":
        return [triton.Config({"BLOCK_D": bd, "BLOCK_L": bl, "SLIDE": slide, "PREFETCH": pf}, num_warps=nw)
                for bd, bl, nw, slide, pf in _tiles_fwd(l_contig)]
    return [triton.Config({"BLOCK_D": bd}, num_warps=nw) for bd, nw in _tiles_bwd_d(l_contig)]


def _get_kernel(name: str, l_contig: bool, tune: Optional[bool] = None):
    """(kernel, interpreted, autotuned) for the current mode (``lazy_kernel``); compiled, it is autotuned over
    a few tiles, the interpreter runs the fixed _INTERP_TILES."""
    fn = _conv1d_fwd_kernel if name == "fwd" else _conv1d_bwd_kernel
    # (one conv and the pair tune apart)
    return lazy_kernel(_KERNELS, (name, l_contig), fn, _autotune_configs,
                       ("D", "L", "W", "stride_xd", "stride_xl", "PAIR"), tune)


def _check_device(x: torch.Tensor) -> None:
    if not HAS_TRITON:
        raise RuntimeError("causal_conv1d_triton needs the triton package")
    if not x.is_cuda and not _get_kernel("fwd", True)[1]:
        raise RuntimeError("causal_conv1d_triton on CPU tensors runs in Triton's interpreter only: "
                           "set TRITON_INTERPRET=1 before the first call")


def _empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised (batch, dim, length) tensor laid out as x is: channel-contiguous (the transpose of a
    (batch, length, dim) buffer) when x is, else length-contiguous.

    Vim feeds the conv the transpose of a Linear output and hands the result to the next Linear (x_proj)
    through a transpose: a channel-contiguous result makes that transpose a contiguous tensor, where a
    length-contiguous one cost a strided copy per branch (~1.1 ms each, 55 ms per Vim-Ti batch of 64 at
    1248, on an H100), and the scan reads it with coalesced loads.
    """
    batch, dim, length = x.shape
    if x.stride(1) == 1 and length > 1 and dim > 1:
        return torch.empty((batch, length, dim), device=x.device, dtype=x.dtype).transpose(1, 2)
    return torch.empty((batch, dim, length), device=x.device, dtype=x.dtype)


def _launch_fwd(x, weight, bias, silu, reverse, second=None, stacked=False):
    """One forward launch. ``second``: (weight, bias) of an anti-causal conv of the same x, computed in the same
    pass (``reverse`` is then False); returns both outputs, or with ``stacked`` one (batch, 2 dim, length) view of
    a (batch, length, 2 dim) tensor holding them side by side."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    if stacked:
        both = torch.empty((batch, length, 2 * dim), device=x.device, dtype=x.dtype).transpose(1, 2)
        out, out2 = both[:, :dim], both[:, dim:]
    else:
        out = _empty_like_layout(x)
        out2 = _empty_like_layout(x) if second is not None else out
    if out.numel() == 0:
        return both if stacked else out if second is None else (out, out2)
    w2, b2 = second if second is not None else (weight, bias)  # (the pair's caller checked they match)
    l_contig = x.stride(2) == 1 or length == 1
    kern, interp, tuned = _get_kernel("fwd", l_contig, False if _FWD_TILE_OVERRIDE else None)
    grid = lambda meta: (cdiv(length, meta["BLOCK_L"]), cdiv(dim, meta["BLOCK_D"]), batch)  # noqa: E731
    extra = {}
    if _FWD_TILE_OVERRIDE:
        bd, bl, nw, slide, pf = (*_FWD_TILE_OVERRIDE, 0)[:5]
        extra = {"BLOCK_D": bd, "BLOCK_L": bl, "SLIDE": slide, **({} if interp else {"num_warps": nw, "PREFETCH": pf})}
    elif interp:
        bd, bl = _INTERP_TILES[l_contig]
        extra = {"BLOCK_D": bd, "BLOCK_L": bl}
    elif not tuned:
        bd, bl, nw, slide, pf = _tiles_fwd(l_contig)[0]
        extra = {"BLOCK_D": bd, "BLOCK_L": bl, "num_warps": nw, "SLIDE": slide, "PREFETCH": pf}
    kern[grid](
        x, weight, bias if bias is not None else weight, out,
        w2, b2 if b2 is not None else w2, out2,
        dim, length,
        x.stride(0), x.stride(1), x.stride(2),
        weight.stride(0), weight.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        W=width, REVERSE=bool(reverse), HAS_BIAS=bias is not None, SILU=bool(silu), PAIR=second is not None,
        **extra,
    )
    return both if stacked else out if second is None else (out, out2)


def _length_chunks(n_lblocks: int, batch: int, dim: int, l_contig: bool, device, interp: bool):
    """Length tiles per backward program: enough programs to fill the GPU (about 4 per SM), otherwise as few
    partial rows as possible (each program accumulates its tiles' weight/bias gradients in registers)."""
    if interp:
        return 2  # exercises the loop over tiles
    n_dblocks = cdiv(dim, _tiles_bwd_d(l_contig)[0][0])
    sms = num_sms(device)
    chunks = min(n_lblocks, max(1, cdiv(4 * sms, batch * n_dblocks)))
    return cdiv(n_lblocks, chunks)


def _launch_bwd(x, weight, bias, dout, silu, reverse, want_dx, want_dw, want_db, second=None):
    """One backward launch: (dx, dw, db), None where not wanted. ``second``: (weight, bias, dout) of the
    anti-causal conv of the same x (``reverse`` is then False): both in one pass, dx the sum of their input
    gradients, dw and db stacked over the two convs."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    dx = _empty_like_layout(x) if want_dx else None
    l_contig = x.stride(2) == 1 or length == 1
    kern, interp, tuned = _get_kernel("bwd", l_contig)
    block_l = _INTERP_TILES[l_contig][1] if interp else _tile_l_bwd(l_contig)
    n_lblocks = cdiv(length, block_l)
    tiles_per_prog = _length_chunks(n_lblocks, batch, dim, l_contig, x.device, interp) if n_lblocks else 1
    n_chunks = cdiv(n_lblocks, tiles_per_prog)
    n_parts = batch * n_chunks
    n_conv = 2 if second is not None else 1
    dw_part = torch.empty((n_conv, n_parts, width, dim), device=x.device, dtype=torch.float32) if want_dw else None
    db_part = torch.empty((n_conv, n_parts, dim), device=x.device, dtype=torch.float32) if want_db else None
    w2, b2, dout2 = second if second is not None else (weight, bias, dout)
    if dout2.stride() != dout.stride():  # one set of strides reaches both output gradients
        dout, dout2 = dout.contiguous(), dout2.contiguous()
    if x.numel() > 0:
        grid = lambda meta: (n_chunks, cdiv(dim, meta["BLOCK_D"]), batch)  # noqa: E731
        extra = {}
        if interp:
            extra = {"BLOCK_D": _INTERP_TILES[l_contig][0]}
        elif not tuned:
            bd, nw = _tiles_bwd_d(l_contig)[0]
            extra = {"BLOCK_D": bd, "num_warps": nw}
        dummy = dout
        kern[grid](
            x, weight, bias if bias is not None else weight, dout,
            dx if dx is not None else dummy,
            dw_part[0] if dw_part is not None else dummy,
            db_part[0] if db_part is not None else dummy,
            w2, b2 if b2 is not None else w2, dout2,
            dw_part[-1] if dw_part is not None else dummy,
            db_part[-1] if db_part is not None else dummy,
            dim, length, n_lblocks, tiles_per_prog,
            x.stride(0), x.stride(1), x.stride(2),
            weight.stride(0), weight.stride(1),
            dout.stride(0), dout.stride(1), dout.stride(2),
            *(dx.stride() if dx is not None else (0, 0, 0)),
            W=width, WP=next_pow2(width), REVERSE=bool(reverse), HAS_BIAS=bias is not None,
            SILU=bool(silu), WANT_DX=bool(want_dx), WANT_DW=bool(want_dw), WANT_DB=bool(want_db),
            BLOCK_L=block_l, PAIR=second is not None, **extra,
        )
    dw = db = None
    if want_dw:  # (n_conv, dim, width), one reduction for both convs
        dw = (dw_part.sum(1).transpose(1, 2).contiguous().to(weight.dtype) if n_parts
              else torch.zeros((n_conv, *weight.shape), device=x.device, dtype=weight.dtype))
    if want_db:
        db = (db_part.sum(1).to(bias.dtype) if n_parts
              else torch.zeros((n_conv, *bias.shape), device=x.device, dtype=bias.dtype))
    if second is not None:
        return dx, dw, db
    return dx, dw[0] if dw is not None else None, db[0] if db is not None else None


# Registered as custom ops (``eager_op``), so torch.compile keeps a whole model in one graph (it treats the op
# as opaque); eager calls skip torch.library's dispatch. CUDA-graph capture replays the kernels as they are.
def _conv_fwd_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], silu: bool,
                 reverse: bool) -> torch.Tensor:
    return _launch_fwd(x, weight, bias, silu, reverse)


def _conv_fwd_fake(x, weight, bias, silu, reverse):
    return _empty_like_layout(x)


def _conv_bwd_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dout: torch.Tensor,
                 silu: bool, reverse: bool, want_dx: bool, want_dw: bool,
                 want_db: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = _launch_bwd(x, weight, bias, dout, silu, reverse, want_dx, want_dw, want_db)
    # custom ops return tensors only: an empty tensor stands for a gradient that was not asked for
    return (dx if dx is not None else x.new_empty(0), dw if dw is not None else weight.new_empty(0),
            db if db is not None else weight.new_empty(0))


def _conv_bwd_fake(x, weight, bias, dout, silu, reverse, want_dx, want_dw, want_db):
    return (_empty_like_layout(x) if want_dx else x.new_empty(0), weight.new_empty(weight.shape if want_dw else (0,)),
            weight.new_empty(bias.shape if want_db else (0,)))


_conv_bwd_op = eager_op("vimamba::causal_conv1d_bwd", _conv_bwd_impl)
_conv_bwd_op.op.register_fake(_conv_bwd_fake)


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, silu, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu, ctx.reverse = silu, reverse


def _conv_backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    want_dx, want_dw, want_db = ctx.needs_input_grad[:3]
    want_db = want_db and bias is not None
    if not (want_dx or want_dw or want_db):
        return None, None, None, None, None
    dx, dw, db = _conv_bwd_op(x, weight, bias, dout, ctx.silu, ctx.reverse, want_dx, want_dw, want_db)
    return dx if want_dx else None, dw if want_dw else None, db if want_db else None, None, None


_conv_fwd_op = eager_op("vimamba::causal_conv1d_fwd", _conv_fwd_impl,
                        backward=_conv_backward, setup_context=_conv_setup_context)
_conv_fwd_op.op.register_fake(_conv_fwd_fake)


def _conv_pair_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], weight2: torch.Tensor,
                    bias2: Optional[torch.Tensor], silu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_fwd(x, weight, bias, silu, False, second=(weight2, bias2))


def _conv_pair_fake(x, weight, bias, weight2, bias2, silu):
    return _empty_like_layout(x), _empty_like_layout(x)


def _conv_pair_bwd_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], weight2: torch.Tensor,
                        bias2: Optional[torch.Tensor], dout: torch.Tensor, dout2: torch.Tensor, silu: bool,
                        want_dx: bool, want_dw: bool,
                        want_db: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = _launch_bwd(x, weight, bias, dout, silu, False, want_dx, want_dw, want_db,
                             second=(weight2, bias2, dout2))
    return (dx if dx is not None else x.new_empty(0), dw if dw is not None else weight.new_empty(0),
            db if db is not None else weight.new_empty(0))


def _conv_pair_bwd_fake(x, weight, bias, weight2, bias2, dout, dout2, silu, want_dx, want_dw, want_db):
    return (_empty_like_layout(x) if want_dx else x.new_empty(0),
            weight.new_empty((2, *weight.shape) if want_dw else (0,)),
            weight.new_empty((2, *bias.shape) if want_db else (0,)))


_conv_pair_bwd_op = eager_op("vimamba::causal_conv1d_bwd_pair", _conv_pair_bwd_impl)
_conv_pair_bwd_op.op.register_fake(_conv_pair_bwd_fake)


def _conv_pair_setup_context(ctx, inputs, output):
    x, weight, bias, weight2, bias2, silu = inputs
    ctx.save_for_backward(x, weight, bias, weight2, bias2)
    ctx.silu = silu
    ctx.set_materialize_grads(False)


def _conv_pair_backward(ctx, dout, dout2):
    """Both convs' backward in one pass over x (dx summed in the kernel; a missing output gradient is zero)."""
    x, weight, bias, weight2, bias2 = ctx.saved_tensors
    need = ctx.needs_input_grad
    want_dx, want_dw = need[0], need[1] or need[3]
    want_db = bias is not None and (need[2] or need[4])
    if not (want_dx or want_dw or want_db) or (dout is None and dout2 is None):
        return None, None, None, None, None, None
    dout = dout if dout is not None else torch.zeros_like(dout2)
    dout2 = dout2 if dout2 is not None else torch.zeros_like(dout)
    dx, dw, db = _conv_pair_bwd_op(x, weight, bias, weight2, bias2, dout, dout2, ctx.silu, want_dx, want_dw, want_db)
    return (dx if want_dx else None, dw[0] if need[1] else None, db[0] if want_db and need[2] else None,
            dw[1] if need[3] else None, db[1] if want_db and need[4] else None, None)


# Both outputs come from one pass over x, and the backward is one pass too
_conv_pair_op = eager_op("vimamba::causal_conv1d_fwd_pair", _conv_pair_impl,
                         backward=_conv_pair_backward, setup_context=_conv_pair_setup_context)
_conv_pair_op.op.register_fake(_conv_pair_fake)


def _conv_pair_stacked_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            weight2: torch.Tensor, bias2: Optional[torch.Tensor], silu: bool) -> torch.Tensor:
    return _launch_fwd(x, weight, bias, silu, False, second=(weight2, bias2), stacked=True)


def _conv_pair_stacked_fake(x, weight, bias, weight2, bias2, silu):
    batch, dim, length = x.shape
    return x.new_empty((batch, length, 2 * dim)).transpose(1, 2)


def _conv_pair_stacked_backward(ctx, dboth):
    dim = ctx.saved_tensors[0].shape[1]
    return _conv_pair_backward(ctx, dboth[:, :dim], dboth[:, dim:])


# The pair's two outputs side by side in one tensor, for batched products over the two branches
_conv_pair_stacked_op = eager_op("vimamba::causal_conv1d_fwd_pair_stacked", _conv_pair_stacked_impl,
                                 backward=_conv_pair_stacked_backward, setup_context=_conv_pair_setup_context)
_conv_pair_stacked_op.op.register_fake(_conv_pair_stacked_fake)


def _check_conv_call(x, weight, bias, activation):
    check_conv_inputs(x, weight, activation)
    if not 1 <= weight.shape[1] <= 4:
        raise ValueError(f"weight must have 1 to 4 taps (width), got {weight.shape[1]}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != x.shape[1]):
        raise ValueError(f"expected bias of shape ({x.shape[1]},), got {tuple(bias.shape)}")
    _check_device(x)
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        raise ValueError("x, weight and bias must be on the same device")


def causal_conv1d_pair_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    weight_rev: torch.Tensor,
    bias_rev: Optional[torch.Tensor],
    activation: Optional[str] = None,
    stacked: bool = False,
):
    """``(causal_conv1d_triton(x, weight, bias, activation), causal_conv1d_triton(x, weight_rev, bias_rev,
    activation, reverse=True))``: Vim's two convs of one x. Both come from one pass over x (x read once), and
    their backward is one pass too (dx summed in the kernel, written once). ``stacked``: the two side by side
    in one tensor instead (see ``causal_conv1d_pair_fn``)."""
    _check_conv_call(x, weight, bias, activation)
    _check_conv_call(x, weight_rev, bias_rev, activation)
    # one kernel reads both weights through one set of strides: refused in either mode, so that a pair that
    # works in training also works at inference
    if (weight_rev.shape != weight.shape or weight_rev.stride() != weight.stride()
            or (bias_rev is None) != (bias is None)):
        raise ValueError("the two convs need weights (and biases) of one shape and layout: got "
                         f"{tuple(weight.shape)}/{weight.stride()} with bias {bias is not None} and "
                         f"{tuple(weight_rev.shape)}/{weight_rev.stride()} with bias {bias_rev is not None}")
    silu = activation is not None
    if bias is not None:
        bias = bias.contiguous()  # as in causal_conv1d_triton
    if bias_rev is not None:
        bias_rev = bias_rev.contiguous()
    if stacked:
        return _conv_pair_stacked_op(x, weight, bias, weight_rev, bias_rev, silu)
    return _conv_pair_op(x, weight, bias, weight_rev, bias_rev, silu)


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Depthwise causal (``reverse=False``) or anti-causal (``reverse=True``) conv1d, SiLU optionally fused.

    Same arguments and result as ``causal_conv1d_ref``; differentiable in x, weight and bias.
    """
    _check_conv_call(x, weight, bias, activation)
    if bias is not None:
        bias = bias.contiguous()  # a no-op for a parameter; autograd sees through it otherwise
    return _conv_fwd_op(x, weight, bias, activation is not None, bool(reverse))
