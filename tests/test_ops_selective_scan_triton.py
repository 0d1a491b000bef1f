"""Triton selective scan (``vimamba.ops.selective_scan.triton_scan``) against ``selective_scan_ref``.

Without a GPU the kernels run in Triton's interpreter on the CPU: this file sets TRITON_INTERPRET=1 itself when
no CUDA device is present (the kernels are built on first call, so this works even when triton was imported
earlier by another test file). Sizes stay small there; the full-size checks are marked ``gpu``.

Tolerances, as relative errors ||got - want|| / ||want|| (and the largest elementwise error over the largest
reference value): the reference runs in fp32 on the same (rounded) inputs, so
  fp32 inputs:       norm 2e-5, max 1e-4  (only the summation order differs; observed ~1e-7)
  fp16 inputs:       norm 3e-3, max 1e-2  (the output and the gradients are rounded to fp16, 2^-11)
  bf16 inputs:       norm 1e-2, max 3e-2  (rounded to bf16, 2^-8)
Values and the gradients of every input (u, delta, A, B, C, D, z, delta_bias) are checked, and the gradient
through the returned last state when it is returned.

The timing sweep over tile shapes is ``benchmarks/scan_sweep.py`` (GPU).
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from vimamba.ops.selective_scan import triton_scan  # noqa: E402
from vimamba.ops.selective_scan.reference import selective_scan_ref  # noqa: E402
from vimamba.ops.selective_scan.triton_scan import selective_scan_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (2e-5, 1e-4), torch.float16: (3e-3, 1e-2), torch.bfloat16: (1e-2, 3e-2)}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _errors(got: torch.Tensor, want: torch.Tensor):
    got, want = got.detach().double(), want.detach().double()
    diff = got - want
    scale = want.norm()
    if scale == 0:  # e.g. dA at length 1 (no previous state): exactly zero in both
        return diff.norm().item(), diff.abs().max().item() if diff.numel() else 0.0
    return (diff.norm() / scale).item(), (diff.abs().max() / want.abs().max()).item()


def _check(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    tol_norm, tol_max = TOL[dtype]
    err_norm, err_max = _errors(got, want)
    assert err_norm <= tol_norm and err_max <= tol_max, (
        f"{name}: relative error {err_norm:.2e} (max {err_max:.2e}) over tolerance {tol_norm:.0e} ({tol_max:.0e})")


def _inputs(batch, dim, state, length, dtype, *, seed=0, time_major=False, device=DEVICE):
    """Vim-like inputs: A = -exp(A_log) with S4D-real init, delta around softplus^-1 of 0.001..0.1."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    u = rnd(batch, dim, length)
    delta = rnd(batch, dim, length, scale=0.5)
    A = -torch.exp(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(dim, 1)
                   + rnd(dim, state, scale=0.1))
    B = rnd(batch, state, length)
    C = rnd(batch, state, length)
    D = rnd(dim)
    z = rnd(batch, dim, length)
    delta_bias = torch.log(torch.expm1(torch.exp(torch.rand(dim, generator=g) * 4.6 - 6.9))) + rnd(dim, scale=0.1)

    def place(t):
        t = t.to(dtype)
        if time_major:  # (batch, length, x) memory seen as (batch, x, length), as Linear outputs give it
            t = t.transpose(1, 2).contiguous().transpose(1, 2)
        return t.to(device)

    return dict(u=place(u), delta=place(delta), A=A.to(device), B=place(B), C=place(C), D=D.to(device),
                z=place(z), delta_bias=delta_bias.to(device))


def _leaves(inputs, use):
    """Fresh leaf tensors (those in ``use``; the others None) that require grad."""
    return {k: (v.detach().clone().requires_grad_(True) if k in use else None) for k, v in inputs.items()}


def _run(fn, args, flags, dout, dlast):
    out = fn(**args, **flags)
    if flags.get("return_last_state"):
        y, last = out
        loss = (y.float() * dout.float()).sum() + (last * dlast).sum()
    else:
        y, last = out, None
        loss = (y.float() * dout.float()).sum()
    names = [k for k, v in args.items() if v is not None]
    grads = torch.autograd.grad(loss, [args[k] for k in names])
    return y, last, dict(zip(names, grads))


def _compare(batch, dim, state, length, dtype, flags, use, *, time_major=False, seed=0, device=DEVICE,
             ref_batch=None):
    inputs = _inputs(batch, dim, state, length, dtype, seed=seed, time_major=time_major, device=device)
    g = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(batch, dim, length, generator=g).to(dtype).to(device)
    dlast = torch.randn(batch, dim, state, generator=g).to(device)

    mine = _leaves(inputs, use)
    y, last, grads = _run(selective_scan_triton, mine, flags, dout, dlast)

    # reference: fp32 on the same rounded inputs, a slice of the batch at a time when asked (its memory
    # grows with batch x length x channels x states)
    ref_in = {k: (v.float() if v is not None else None) for k, v in _leaves(inputs, use).items()}
    ref_in = {k: (v.detach().requires_grad_(True) if v is not None else None) for k, v in ref_in.items()}
    step = ref_batch or batch
    ys, lasts, grads_ref = [], [], {}
    for b0 in range(0, batch, step):
        sl = slice(b0, b0 + step)
        part = {k: (v[sl] if v is not None and k in ("u", "delta", "B", "C", "z") else v) for k, v in ref_in.items()}
        out = selective_scan_ref(**part, **flags)
        y_p, last_p = out if flags.get("return_last_state") else (out, None)
        loss = (y_p * dout[sl].float()).sum() + ((last_p * dlast[sl]).sum() if last_p is not None else 0)
        names = [k for k, v in ref_in.items() if v is not None]
        for k, gr in zip(names, torch.autograd.grad(loss, [ref_in[k] for k in names])):
            grads_ref[k] = gr if k not in grads_ref else grads_ref[k] + gr
        ys.append(y_p.detach())
        lasts.append(last_p.detach() if last_p is not None else None)
        del out, y_p, last_p, loss
    y_ref = torch.cat(ys)
    last_ref = torch.cat(lasts) if lasts[0] is not None else None

    assert y.dtype == dtype
    _check("out", y, y_ref, dtype)
    if last is not None:
        assert last.dtype == torch.float32
        _check("last_state", last, last_ref, dtype)
    for name in GRAD_NAMES:
        if name in grads:
            assert grads[name].dtype == mine[name].dtype, f"grad {name} dtype"
            _check(f"grad {name}", grads[name], grads_ref[name], dtype)


ALL = set(GRAD_NAMES)
FLAGS_FULL = dict(delta_softplus=True, return_last_state=True)


# ------------------------------------------------------------------------------------------------------------
# Short sequences: every option, every dtype, both directions
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("length", [1, 2, 7])
def test_short_all_options(length, dtype, reverse):
    _compare(2, 5, 16, length, dtype, dict(FLAGS_FULL, reverse=reverse), ALL)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("use,softplus,last", [
    ({"u", "delta", "A", "B", "C"}, False, False),              # bare scan: no D, z, delta_bias
    ({"u", "delta", "A", "B", "C", "D"}, True, False),          # + skip
    ({"u", "delta", "A", "B", "C", "z"}, False, True),          # + gate, last state
    ({"u", "delta", "A", "B", "C", "delta_bias"}, True, True),  # + bias
], ids=["bare", "D", "z-last", "bias"])
def test_optional_inputs(use, softplus, last, reverse):
    _compare(1, 6, 4, 11, torch.float32,
             dict(delta_softplus=softplus, return_last_state=last, reverse=reverse), use)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_time_major_views(reverse):
    """Channel-contiguous views (the transposes of Linear outputs), Vim's layout, read in place."""
    _compare(2, 6, 16, 9, torch.float32, dict(FLAGS_FULL, reverse=reverse), ALL, time_major=True)


def test_odd_state_and_channels():
    """State not a power of two and channels not a multiple of the tile: masked lanes."""
    _compare(1, 7, 5, 10, torch.float32, dict(FLAGS_FULL), ALL)


@pytest.mark.parametrize("cfg", [
    dict(fwd=(2, 8, 2, 2, 2, 2), bwd=(4, 4, 1, 2, 4, 2, 3)),
    dict(fwd=(4, 8, 1, 1, 2, 4), bwd=(2, 8, 2, 1, 2, 1, 4, 8), atomic_bc=True),
    dict(fwd=(1, 16, 1, 1, 1, 4), bwd=(1, 16, 1, 1, 1, 4, 6, 2)),
    dict(fwd=(2, 4, 1, 1, 4, 2, 2), bwd=(1, 4, 1, 1, 4, 2, 8)),
    dict(fwd=(2, 8, 1, 1, 2, 2, 2, False), bwd=(1, 8, 1, 1, 2, 2, 8, 4)),
    dict(fwd=(1, 8, 1, 1, 2, 2, 2, False), bwd=(1, 8, 1, 1, 2, 2, 8, 4)),
], ids=["split-lanes", "atomics", "one-step", "two-ahead", "two-ahead-no-touch", "one-step-two-ahead"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_tile_shapes(cfg, reverse, monkeypatch):
    """Other tile shapes: states and channels split over lanes and warps, chunks of 1-4 steps, segments
    not dividing the length, phase-A chunks longer than the backward's chunks, dB/dC by atomics, inputs
    loaded two chunks ahead (with a partial last chunk, and with the B/C touch off)."""
    monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", cfg)
    _compare(2, 13, 16, 13, torch.float32, dict(FLAGS_FULL, reverse=reverse), ALL)


@pytest.mark.parametrize("length", [1, 197, 1024, 6085])
@pytest.mark.parametrize("rows", [1.0, 23.3, 186.2, 372.4, 744.7, 5000.0])
def test_tile_rule_gives_legal_tiles(length, rows):
    """The shipped GPU tile rule: every tile it picks is legal (lanes of one warp, all 16 states covered),
    and the forward's segment spacing divides the backward's segments."""
    fwd = triton_scan._config("fwd", 384, 16, length, False, rows)
    bwd = triton_scan._config("bwd", 384, 16, length, False, rows)
    for cfg in (fwd, bwd):
        T, NR, DR, W, NL, DL = cfg[:6]
        assert NL * DL == 32 and NR * NL == 16 and W >= 1 and DR >= 1
    assert len(fwd) == 8 and fwd[6] in (1, 2) and isinstance(fwd[7], bool)
    assert (bwd[0] * bwd[6]) % fwd[0] == 0


@pytest.mark.parametrize("warps_per_sm, expected", [(11.6, 168), (23.3, 80), (0.2, 248), (32, None), (64, None)])
def test_register_cap_fits_the_grid_in_one_wave(warps_per_sm, expected, monkeypatch):
    """maxnreg: the most registers (a multiple of 8, at most 255) that still keep every warp of the grid resident
    in one wave of a 64K-register SM; nothing at or under ptxas's own 64; an override replaces the rule."""
    from vimamba.ops import _triton

    monkeypatch.setattr(_triton, "_has_maxnreg", lambda: True)
    cap = _triton.register_cap(warps_per_sm)
    assert cap == ({} if expected is None else {"maxnreg": expected})
    if expected is not None:
        regs = cap["maxnreg"]
        assert regs % 8 == 0 and math.ceil(warps_per_sm) * 32 * regs <= 65536
    assert _triton.register_cap(warps_per_sm, override=96) == {"maxnreg": 96}
    assert _triton.register_cap(warps_per_sm, override=0) == {}
    monkeypatch.setattr(_triton, "_has_maxnreg", lambda: False)  # a Triton without the option: never asked
    assert _triton.register_cap(warps_per_sm) == {} and _triton.register_cap(1, override=96) == {}


# ------------------------------------------------------------------------------------------------------------
# Longer sequences (kept narrow so that the interpreter stays fast)
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_length_197(dtype, reverse):
    _compare(1, 4, 4, 197, dtype, dict(FLAGS_FULL, reverse=reverse), ALL, time_major=reverse)


def test_length_197_fp16():
    _compare(1, 4, 4, 197, torch.float16, dict(delta_softplus=True), ALL)


def test_length_730():
    _compare(1, 2, 4, 730, torch.float32, dict(FLAGS_FULL), ALL)


def test_length_730_reverse_values():
    inputs = _inputs(1, 3, 4, 730, torch.float32, time_major=True)
    with torch.no_grad():
        y, last = selective_scan_triton(**inputs, delta_softplus=True, return_last_state=True, reverse=True)
        y_ref, last_ref = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True, reverse=True)
    _check("out", y, y_ref, torch.float32)
    _check("last_state", last, last_ref, torch.float32)


@pytest.mark.slow
def test_length_730_reverse_grads():
    _compare(1, 2, 4, 730, torch.float32, dict(FLAGS_FULL, reverse=True), ALL)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_length_730_wide(dtype, reverse):
    _compare(2, 8, 16, 730, dtype, dict(FLAGS_FULL, reverse=reverse), ALL, time_major=True)


# ------------------------------------------------------------------------------------------------------------
# API
# ------------------------------------------------------------------------------------------------------------

def test_no_grad_forward_matches():
    inputs = _inputs(2, 5, 16, 9, torch.float32)
    with torch.no_grad():
        y = selective_scan_triton(**inputs, delta_softplus=True)
    _check("out", y, selective_scan_ref(**inputs, delta_softplus=True), torch.float32)


def test_other_bc_shapes_not_implemented():
    inputs = _inputs(1, 4, 4, 5, torch.float32)
    time_invariant = dict(inputs, B=torch.randn(4, 4, device=DEVICE), C=torch.randn(4, 4, device=DEVICE))
    with pytest.raises(NotImplementedError, match="batch, state, length"):
        selective_scan_triton(**time_invariant)
    grouped = dict(inputs, B=inputs["B"][:, None], C=inputs["C"][:, None])
    with pytest.raises(NotImplementedError):
        selective_scan_triton(**grouped)
    with pytest.raises(NotImplementedError, match="fp32, fp16 or bf16"):
        selective_scan_triton(**{k: (v.double() if k in ("u", "delta") else v) for k, v in inputs.items()})
    with pytest.raises(ValueError):
        selective_scan_triton(**dict(inputs, delta=inputs["delta"][:, :, :-1]))


def test_imports_without_triton():
    """The module imports, with HAS_TRITON False, where triton is absent."""
    import subprocess

    code = ("import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
            "from vimamba.ops.selective_scan import triton_scan as t\n"
            "assert t.HAS_TRITON is False\n"
            "try:\n    t.selective_scan_triton(None, None, None, None, None)\nexcept RuntimeError:\n    pass\n"
            "else:\n    raise SystemExit('no error')\n")
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# ------------------------------------------------------------------------------------------------------------
# Full size on a GPU
# ------------------------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_full_size_gpu(dtype, reverse):
    """Vim-Ti at 1248x1248: batch 64, 384 channels, 16 states, 6085 steps; Vim's time-major layout."""
    _compare(64, 384, 16, 6085, dtype, dict(FLAGS_FULL, reverse=reverse), ALL, time_major=True, seed=3,
             ref_batch=16)


@pytest.mark.gpu
@gpu
def test_full_size_gpu_length_contiguous():
    _compare(8, 384, 16, 6085, torch.bfloat16, dict(delta_softplus=True, reverse=True), ALL, seed=4, ref_batch=8)


# ------------------------------------------------------------------------------------------------------------
# add=: the other branch's output summed into the scan's output inside the kernel
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", [None, dict(fwd=(2, 4, 1, 1, 4, 2, 2), bwd=(1, 4, 1, 1, 4, 2, 8))],
                         ids=["default-tile", "two-ahead"])
def test_add_is_summed_before_rounding(reverse, dtype, cfg, monkeypatch):
    """out = scan(...) + add, rounded once; add's gradient is the output's; the other gradients as without."""
    if cfg is not None:
        monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", cfg)
    inputs = _inputs(2, 6, 4, 13, dtype, time_major=True, seed=3)
    g = torch.Generator().manual_seed(9)
    add = torch.randn(2, 13, 6, generator=g).to(DEVICE, dtype).transpose(1, 2).requires_grad_(True)
    dout = torch.randn(2, 6, 13, generator=g).to(DEVICE, dtype)
    mine = _leaves(inputs, ALL)
    y = selective_scan_triton(**mine, delta_softplus=True, reverse=reverse, add=add)
    names = [k for k, v in mine.items() if v is not None]
    grads = torch.autograd.grad(y, [mine[k] for k in names] + [add], dout)

    ref = {k: v.detach().float().requires_grad_(True) for k, v in mine.items() if v is not None}
    add_ref = add.detach().float().requires_grad_(True)
    y_ref = selective_scan_ref(**ref, delta_softplus=True, reverse=reverse, add=add_ref)
    grads_ref = torch.autograd.grad(y_ref, [ref[k] for k in names] + [add_ref], dout.float())
    assert y.dtype == dtype
    _check("out", y, y_ref, dtype)
    for name, got, want in zip(names + ["add"], grads, grads_ref):
        _check(f"grad {name}", got, want, dtype)
    assert grads[-1].dtype == dtype


def test_add_alone_requires_grad():
    """Only add asks for a gradient: the forward saves no states and the backward still answers."""
    inputs = _inputs(1, 4, 4, 7, torch.float32)
    add = torch.randn(1, 4, 7, device=DEVICE, requires_grad=True)
    y = selective_scan_triton(**inputs, delta_softplus=True, add=add)
    (grad,) = torch.autograd.grad(y, [add], torch.ones_like(y))
    assert torch.equal(grad, torch.ones_like(add))


def test_add_shape_mismatch_is_named():
    inputs = _inputs(1, 4, 4, 7, torch.float32)
    with pytest.raises(ValueError, match="add must have u's shape"):
        selective_scan_triton(**inputs, add=torch.zeros(1, 4, 6, device=DEVICE))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_out_receives_the_result_even_over_add(reverse):
    """out= (inference) writes what the plain call returns, also when out is add itself (the mixer's use)."""
    inputs = _inputs(2, 6, 4, 13, torch.bfloat16, time_major=True, seed=5)
    add = torch.randn(2, 13, 6).to(DEVICE, torch.bfloat16).transpose(1, 2)
    with torch.no_grad():
        want = selective_scan_triton(**inputs, delta_softplus=True, reverse=reverse, add=add)
        out = torch.full_like(add, float("nan"))
        got = selective_scan_triton(**inputs, delta_softplus=True, reverse=reverse, add=add, out=out)
        assert got is out and torch.equal(out, want)
        in_place = add.clone()
        selective_scan_triton(**inputs, delta_softplus=True, reverse=reverse, add=in_place, out=in_place)
        assert torch.equal(in_place, want)
        ref_out = torch.empty_like(add)
        selective_scan_ref(**inputs, delta_softplus=True, reverse=reverse, add=add, out=ref_out)
        _check("reference out", ref_out, want.float(), torch.bfloat16)


def test_out_is_refused_where_it_cannot_serve():
    inputs = _inputs(1, 4, 4, 7, torch.float32)
    u = inputs["u"].clone().requires_grad_(True)
    args = {**inputs, "u": u}
    with pytest.raises(ValueError, match="out= is for inference"):
        selective_scan_triton(**args, out=torch.empty_like(u))
    with torch.no_grad(), pytest.raises(ValueError, match="out must be a torch.float32 tensor"):
        selective_scan_triton(**inputs, out=torch.empty(1, 4, 7, dtype=torch.bfloat16, device=DEVICE))
    with torch.no_grad(), pytest.raises(ValueError, match="return_last_state"):
        selective_scan_ref(**inputs, return_last_state=True, out=torch.empty_like(inputs["u"]))


# ------------------------------------------------------------------------------------------------------------
# Both of Vim's scans in one launch (selective_scan_bidir_triton): each direction equals its own scan
# ------------------------------------------------------------------------------------------------------------

SCAN_KEYS = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def _bidir_grads(la, lb, keys, z, softplus=True, seed=0, a_log=False):
    """Outputs of the one-launch pair and the gradients of every leaf (the scans' ``keys``, then z) for a fixed
    random weighting of both outputs."""
    from vimamba.ops.selective_scan.triton_scan import selective_scan_bidir_triton

    y_f, y_b = selective_scan_bidir_triton([la.get(k) for k in SCAN_KEYS], [lb.get(k) for k in SCAN_KEYS], z, softplus,
                                           a_log=a_log)
    g = torch.Generator().manual_seed(seed + 7)
    g_f = torch.randn(y_f.shape, generator=g).to(y_f.device)
    g_b = torch.randn(y_b.shape, generator=g).to(y_b.device)
    leaves = [la[k] for k in keys] + [lb[k] for k in keys] + ([z] if z is not None else [])
    got = torch.autograd.grad((y_f.float() * g_f).sum() + (y_b.float() * g_b).sum(), leaves)
    return (y_f, y_b), (g_f, g_b), got


def _bidir_compare(batch, dim, state, length, dtype, *, seed=0, device=DEVICE, ref_batch=None, keys=SCAN_KEYS,
                   gate=True, a_log=False):
    """The one-launch pair against selective_scan_ref run per direction (fwd, then bwd reversed), values and
    the gradients of all inputs (``keys`` of each scan, the optional ones left out when absent, and z when
    ``gate``; z is shared: its gradient sums both directions'). ``a_log``: the pair is given A_log and the
    reference A = -exp(A_log), so the gradients compared are A_log's."""
    a = _inputs(batch, dim, state, length, dtype, seed=seed, time_major=True, device=device)
    b = _inputs(batch, dim, state, length, dtype, seed=seed + 1, time_major=True, device=device)
    b["z"] = a["z"]
    if a_log:
        a["A"], b["A"] = torch.log(-a["A"]), torch.log(-b["A"])
    la = {k: a[k].detach().clone().requires_grad_(True) for k in keys + ("z",)}
    lb = {k: b[k].detach().clone().requires_grad_(True) for k in keys}
    z = la["z"] if gate else None
    (y_f, y_b), (g_f, g_b), got = _bidir_grads(la, lb, keys, z, seed=seed, a_log=a_log)

    n = ref_batch or batch  # the reference on the first n batch elements (its memory grows with the length)
    ra = {k: (v[:n] if v.dim() == 3 else v).detach().float().cpu().requires_grad_(True) for k, v in la.items()}
    rb = {k: (v[:n] if v.dim() == 3 else v).detach().float().cpu().requires_grad_(True) for k, v in lb.items()}
    kw = dict(delta_softplus=True, z=ra["z"] if gate else None)

    def scan_args(r):
        args = [r[k] for k in SCAN_KEYS[:5]]
        if a_log:
            args[2] = -torch.exp(args[2])
        return args

    r_f = selective_scan_ref(*scan_args(ra), D=ra.get("D"), delta_bias=ra.get("delta_bias"), **kw)
    r_b = selective_scan_ref(*scan_args(rb), D=rb.get("D"), delta_bias=rb.get("delta_bias"), reverse=True, **kw)
    r_leaves = [ra[k] for k in keys] + [rb[k] for k in keys] + ([ra["z"]] if gate else [])
    want = torch.autograd.grad((r_f * g_f[:n].float().cpu()).sum() + (r_b * g_b[:n].float().cpu()).sum(), r_leaves)
    _check("y_fwd", y_f[:n].cpu(), r_f, dtype)
    _check("y_bwd", y_b[:n].cpu(), r_b, dtype)
    names = [f"{k}_fwd" for k in keys] + [f"{k}_bwd" for k in keys] + (["z"] if gate else [])
    assert len(got) == len(want) == len(names)
    for name, g, w in zip(names, got, want):
        if g.dim() == 3 and ref_batch:
            g = g[:n]
        elif ref_batch and (name.split("_")[0] in ("A", "D") or name.startswith("delta_bias")):
            continue  # summed over the whole batch: not comparable with a reference on part of it
        _check(name, g.cpu(), w, dtype)
    return (la, lb), (y_f, y_b)


@pytest.mark.parametrize("bidir", [False, True], ids=["one-direction", "two-directions"])
def test_backward_compiles_for_hopper_within_its_registers(bidir, monkeypatch):
    """The backward at the rule's 224 tile, built for sm_90 with the launcher's register cap: within the cap,
    and (one direction) nothing on the stack; the two-direction kernel may keep a few pointers there (it did at
    a 128 cap: reloaded once per segment, outside the step loops), so only its size is bounded. Runs where triton is imported
    before the interpreter is switched on (a GPU machine; see triton_helpers)."""
    from triton_helpers import compile_for_sm90, pointer_types, sass_resources

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    triton_scan._get_kernels()  # the helpers the kernel calls, jitted for compilation (the next call resets them)
    tile = triton_scan._config("bwd", 384, 16, 197, False, 745.0)
    T, NR, DR, W, NL, DL, K = tile[:7]
    consts = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, REVERSE=False, HAS_DLAST=False,
                  ATOMIC_BC=False, EVEN_D=True, EVEN_N=True, PAD=True, K=K, TA=4, T=T, NR=NR, DR=DR, W=W, NL=NL,
                  DL=DL, BIDIR=bidir, s_ud=1, s_td=1, s_zd=1, s_Bn=1, s_Cn=1, s_gd=1, s_xd=1, s_pn=1)
    types = pointer_types(triton_scan._scan_bwd_kernel,
                          ("A", "D", "bias", "hs", "dlast", "scr", "dA", "dD", "dbias", "dB", "dC"))
    cap = triton_scan._BWD_REGISTERS
    cubin = compile_for_sm90(triton_scan._scan_bwd_kernel, types, consts, list(types), num_warps=W,
                             options={"maxnreg": cap}, asm="cubin")
    res = sass_resources(cubin)
    assert res["REG"] <= cap
    assert res["STACK"] <= (128 if bidir else 0), res


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("length", [1, 2, 7, 197])
def test_bidir_matches_two_scans(length, dtype):
    _bidir_compare(2, 5, 3, length, dtype, seed=length)


@pytest.mark.parametrize("cfg", [
    dict(fwd=(2, 4, 1, 1, 4, 2), bwd=(2, 4, 1, 1, 4, 2, 4, 4)),
    dict(fwd=(4, 8, 1, 1, 2, 4), bwd=(2, 8, 2, 1, 2, 1, 4, 8), atomic_bc=True),
    dict(fwd=(1, 16, 1, 1, 1, 4), bwd=(1, 16, 1, 1, 1, 4, 6, 2)),
], ids=["two-step-chunks", "atomics", "segments-not-dividing"])
def test_bidir_tile_shapes(cfg, monkeypatch):
    """The two-direction backward at other tiles: chunks of several steps (the reverse scan's programs read
    each chunk's rows in reverse time order), phase-A chunks longer than a chunk, dB/dC by atomics into the
    stacked buffers, a length no segment divides."""
    monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", cfg)
    _bidir_compare(2, 13, 16, 13, torch.float32, seed=3)


# ------------------------------------------------------------------------------------------------------------
# The forward split in time (PASS 1 + PASS 2 of the forward kernel; off by default until timed on a GPU):
# forced here with the segments override, values, the last state and every gradient (the backward reads the
# states that the split forward saves)
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("segments", [2, 3, 7])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_split_in_time(segments, reverse, monkeypatch):
    monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", {"segments": segments})
    _compare(2, 5, 16, 29, torch.float32, dict(FLAGS_FULL, reverse=reverse, return_last_state=True), ALL,
             time_major=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("segments", [2, 5])
def test_bidir_split_in_time(segments, dtype, monkeypatch):
    monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", {"segments": segments})
    _bidir_compare(2, 6, 16, 37, dtype, seed=segments, a_log=True)


def test_bidir_split_in_time_in_place(monkeypatch):
    """Split in time, the mixer's no-grad call that writes each scan's output over its own u: PASS 2 reads u
    only inside its segment (and prefetches past it, unused), so the result is the whole-sequence one."""
    from vimamba.ops.selective_scan.triton_scan import selective_scan_bidir_triton

    a = _inputs(2, 6, 16, 45, torch.float32, seed=21, time_major=True)
    b = _inputs(2, 6, 16, 45, torch.float32, seed=22, time_major=True)
    with torch.no_grad():
        whole = selective_scan_bidir_triton([a[k] for k in SCAN_KEYS], [b[k] for k in SCAN_KEYS], a["z"], True)
        monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", {"segments": 4})
        fa = [a[k].clone() for k in SCAN_KEYS]
        fb = [b[k].clone() for k in SCAN_KEYS]
        got = selective_scan_bidir_triton(fa, fb, a["z"], True, out=(fa[0], fb[0]))
    assert got[0] is fa[0] and got[1] is fb[0]
    for g, w in zip(got, whole):
        _check("y", g, w, torch.float32)


def test_split_rule(monkeypatch):
    """On by default; splits only grids short of rows (where the tile rule would spread states over lanes),
    into the power of two of segments nearest ~768 rows per SM, each of >= 192 steps."""
    monkeypatch.setattr(triton_scan, "SPLIT_IN_TIME", True)
    assert triton_scan._time_segments(6085, 372.4, False) == 1  # Vim-Ti 1248 pair, batch 64: whole
    assert triton_scan._time_segments(6085, 186.2, False) == 1  # batch 32: not measured, left whole
    assert triton_scan._time_segments(6085, 46.5, False) == 16  # batch 8 (the best measured: 0.65 ms)
    assert triton_scan._time_segments(6085, 93.1, False) == 8  # Vim-S batch 8 (1.26 ms)
    assert triton_scan._config("fwd", 384, 16, 6085, False, 46.5 * 16)[4] == 1  # ... then one lane per channel
    assert triton_scan._time_segments(6085, 5.8, False) == 31  # batch 1: segments of >= 192 steps
    assert triton_scan._time_segments(197, 5.8, False) == 1  # too short to pay for the first pass
    assert triton_scan._time_segments(6085, 5.8, True) == 1  # the interpreter: never
    monkeypatch.setattr(triton_scan, "SPLIT_IN_TIME", False)  # VIMAMBA_SCAN_SPLIT=0
    assert triton_scan._time_segments(6085, 5.8, False) == 1


@pytest.mark.parametrize("pass_", [1, 2])
def test_split_passes_are_loop_carried(pass_, monkeypatch):
    """Compiled (TTIR, sm_90) at the small-batch tile (states over 8 lanes, chunks of 2 steps), the split
    forward's loops carry what they accumulate: PASS 1 the state and the dt sum, PASS 2 the composed entry
    state into the step loop (a start value shared between two carried variables hides one of them from
    Triton's front end: the SLIDE conv bug of session 6). At this tile a dt sum started narrower than dt
    (no lane axis) failed to compile on the GPU in session 7; the interpreter broadcast it, and the NL = 1 tile
    of the first version of this test could not see it."""
    import re

    from triton_helpers import compile_for_sm90, loop_iter_args, pointer_types

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    triton_scan._get_kernels()
    consts = dict(HAS_D=pass_ == 2, HAS_Z=pass_ == 2, HAS_BIAS=True, HAS_ADD=False, SOFTPLUS=True, REVERSE=False,
                  STORE_HS=False, STORE_LAST=False, HS_EVERY=1, EVEN_D=True, EVEN_N=True, PAD=False, T=2, NR=2,
                  DR=1, W=1, NL=8, DL=4, AHEAD=1, VEC=False, BIDIR=True, TOUCH=True, A_LOG=True, PASS=pass_,
                  s_ud=1, s_td=1, s_zd=1, s_od=1, s_Bn=1, s_Cn=1, s_ad=1)
    types = pointer_types(triton_scan._scan_fwd_kernel, ("A", "D", "bias", "last", "hs", "seg"))
    ttir = compile_for_sm90(triton_scan._scan_fwd_kernel, types, consts, list(types), asm="ttir")
    loops = loop_iter_args(ttir)
    step_loop = loops[-1]  # the loop over the segment's chunks
    assert re.search(r"%h\w* = ", step_loop), step_loop
    if pass_ == 1:
        assert re.search(r"%dt_sum\w* = ", step_loop), step_loop
    else:
        assert len(loops) == 2 and re.search(r"%h\w* = ", loops[0]), loops  # the composition loop before it
        assert re.search(r"%h\w* = %h\b", step_loop), step_loop  # and the step loop starts from its result


@pytest.mark.gpu
@gpu
def test_bidir_split_in_time_gpu(monkeypatch):
    """The split forward where the rule would use it: Vim-Ti at 1248, batch 2 (values and gradients)."""
    monkeypatch.setattr(triton_scan, "SPLIT_IN_TIME", True)
    _bidir_compare(2, 384, 16, 6085, torch.bfloat16, seed=12, ref_batch=1)


@pytest.mark.parametrize("keys, gate", [(SCAN_KEYS[:5], True), (SCAN_KEYS, False), (SCAN_KEYS[:5], False)],
                         ids=["no-D-no-bias", "no-gate", "bare"])
def test_bidir_optional_inputs(keys, gate):
    _bidir_compare(2, 6, 4, 37, torch.float32, seed=11, keys=keys, gate=gate)


@pytest.mark.parametrize("cfg, dtype", [
    (None, torch.float32),
    (dict(fwd=(2, 4, 1, 1, 4, 2), bwd=(2, 4, 1, 1, 4, 2, 4, 4)), torch.bfloat16),
    ({"bidir_bwd": False}, torch.float32),
], ids=["rule-fp32", "two-step-chunks-bf16", "two-launch-backward-fp32"])
def test_bidir_takes_a_log(cfg, dtype, monkeypatch):
    """A given as Mamba's A_log (A = -exp(A_log) inside the kernels, the mixer's call): values and every
    gradient, A_log's included, against the reference on -exp(A_log)."""
    monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", cfg)
    _bidir_compare(2, 5, 16, 41, dtype, seed=13, a_log=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bidir_backward_one_launch_equals_two(dtype, monkeypatch):
    """Both directions' backward in one launch is the two single-direction launches' arithmetic, program for
    program: the gradients agree bit for bit."""
    a = _inputs(2, 7, 16, 41, dtype, seed=2, time_major=True)
    b = _inputs(2, 7, 16, 41, dtype, seed=3, time_major=True)

    def grads():
        la = {k: a[k].detach().clone().requires_grad_(True) for k in SCAN_KEYS + ("z",)}
        lb = {k: b[k].detach().clone().requires_grad_(True) for k in SCAN_KEYS}
        return _bidir_grads(la, lb, SCAN_KEYS, la["z"], seed=2)[2]

    # one backward tile for both runs (the GPU rule counts both directions' rows when it picks the pair's)
    tile = {"bwd": (1, 8, 1, 1, 2, 16, 32)}
    monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", tile)
    calls = []
    for name in ("_bidir_bwd_op", "_scan_bwd_op"):
        op = getattr(triton_scan, name)
        monkeypatch.setattr(triton_scan, name, lambda *args, _op=op, _name=name: calls.append(_name) or _op(*args))
    one = grads()
    assert calls == ["_bidir_bwd_op"]
    monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", dict(tile, bidir_bwd=False))
    two = grads()
    assert calls == ["_bidir_bwd_op", "_scan_bwd_op", "_scan_bwd_op"]
    for g1, g2 in zip(one, two):
        assert g1.dtype == g2.dtype and g1.shape == g2.shape
        assert torch.equal(g1, g2)


def test_bidir_out_in_place_and_no_grad_equal():
    """Under no_grad each scan may write over its own u (Vim's mixer does): same values as the autograd path."""
    from vimamba.ops.selective_scan.triton_scan import selective_scan_bidir_triton

    (la, lb), (y_f, y_b) = _bidir_compare(2, 6, 4, 33, torch.float32, seed=5)
    with torch.no_grad():
        fa = [la[k].detach().clone() for k in SCAN_KEYS]
        fb = [lb[k].detach().clone() for k in SCAN_KEYS]
        got = selective_scan_bidir_triton(fa, fb, la["z"].detach(), True, out=(fa[0], fb[0]))
        plain = selective_scan_bidir_triton([la[k].detach() for k in SCAN_KEYS], [lb[k].detach() for k in SCAN_KEYS],
                                            la["z"].detach(), True)
    assert got[0] is fa[0] and got[1] is fb[0]
    for g, p, w in zip(got, plain, (y_f, y_b)):
        assert torch.equal(g, w.detach()) and torch.equal(p, w.detach())


def test_bidir_refuses_mismatched_pairs():
    from vimamba.ops.selective_scan.triton_scan import selective_scan_bidir_triton

    a = _inputs(1, 4, 4, 7, torch.float32, time_major=True)
    b = _inputs(1, 4, 4, 7, torch.float32)  # length-contiguous: other strides
    with pytest.raises(ValueError, match="the two scans' u differ in shape, strides or dtype"):
        selective_scan_bidir_triton([a[k] for k in SCAN_KEYS], [b[k] for k in SCAN_KEYS], a["z"], True)
    with pytest.raises(ValueError, match="fwd must be"):
        selective_scan_bidir_triton([a["u"], a["delta"]], [b[k] for k in SCAN_KEYS], a["z"], True)
    with pytest.raises(ValueError, match="D must be given for both scans or for neither"):
        selective_scan_bidir_triton([a[k] for k in SCAN_KEYS[:5]] + [a["D"], None],
                                    [a[k] for k in SCAN_KEYS[:5]] + [None, None], a["z"], True)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bidir_full_size_gpu(dtype):
    """Vim-Ti at 1248x1248, both directions in one launch (batch 64, 384 channels, 16 states, 6085 steps)."""
    _bidir_compare(64, 384, 16, 6085, dtype, seed=9, ref_batch=4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("batch, length", [(4, 6085), (16, 197)], ids=["1248-b4", "224-b16"])
def test_multi_step_rule_tiles_gpu(batch, length, monkeypatch):
    """A single scan at small batches, where the rule takes two steps a chunk over several lanes a channel; the
    per-step pointers are declared contiguous along the lanes there (without that Triton 3.6 spread the step axis
    over lanes). Unsplit in time: the split would give the long sequence's segments one lane a channel."""
    monkeypatch.setattr(triton_scan, "SPLIT_IN_TIME", False)
    rows = batch * 384 / triton_scan.num_sms(torch.device("cuda"))
    assert triton_scan._config("fwd", 384, 16, length, False, rows)[0] == 2
    _compare(batch, 384, 16, length, torch.bfloat16, dict(FLAGS_FULL, reverse=True), ALL, time_major=True,
             seed=14, ref_batch=4)


@pytest.mark.gpu
@gpu
def test_bidir_two_steps_a_chunk_gpu(monkeypatch):
    """The pair with two steps a chunk at one lane a channel (a candidate tile, not the rule's) at Vim-Ti 1248."""
    monkeypatch.setattr(triton_scan, "_CONFIG_OVERRIDE", {"fwd": (2, 16, 1, 1, 1, 32, 1, False)})
    _bidir_compare(64, 384, 16, 6085, torch.bfloat16, seed=15, ref_batch=4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dim", [384, 768], ids=["vim-ti", "vim-s"])
def test_bidir_training_size_gpu(dim):
    """The training target's size, forward and both directions' backward each in one launch: Vim-Ti and Vim-S
    at 224x224 (197 steps), batch 128, bf16."""
    _bidir_compare(128, dim, 16, 197, torch.bfloat16, seed=10, ref_batch=16)
