"""The fused input projections (x_proj, then dt_proj; both directions in one launch) against the reference:
values and the gradients of every input, each dtype, odd token counts and sizes that are no multiple of the
tiles, one and two directions; the dispatcher; the compiled sm_90 kernel (registers, no spills); and on a GPU
Vim-Ti's full size at 1248."""

import pytest
import torch

from triton_helpers import DEVICE, DTYPES, TOL, compile_for_sm90, pointer_types, rel_err, sass_resources
from vimamba.ops import ssm_projections_fn
from vimamba.ops.ssm_proj import ssm_projections_ref
from vimamba.ops.ssm_proj import triton_ssm_proj as mod

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(batch, dim, length, rank, nstate, dtype, seed, time_major=True):
    g = torch.Generator().manual_seed(seed)
    if time_major:  # the conv's layout: (batch, length, dim) storage seen as (batch, dim, length)
        u = torch.randn(batch, length, dim, generator=g).to(dtype).transpose(1, 2)
    else:
        u = torch.randn(batch, dim, length, generator=g).to(dtype)
    wx = torch.randn(rank + 2 * nstate, dim, generator=g) * dim ** -0.5
    wdt = torch.randn(dim, rank, generator=g) * rank ** -0.5
    return [t.to(DEVICE).requires_grad_(True) for t in (u, wx, wdt)]


def _leaves(ins):
    return [t.detach().clone().requires_grad_(True) for t in ins]


def _autocast(dtype):
    """The reference as the mixer runs it: 16-bit u under autocast to its dtype (fp32 weights), fp32 plain."""
    return torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32)


def _loss(outs, seed):
    g = torch.Generator().manual_seed(seed)
    total = 0
    for t in outs:
        w = torch.randn(t.shape, generator=g).to(t.device)
        total = total + (t.float() * w).sum()
    return total


def _compare(dirs, dtype, seed=0, states_fp32=False):
    """dirs: one or two input triples. Values and gradients of the fast path against the reference
    (``states_fp32``: B and C in fp32 from both)."""
    fast = [_leaves(d) for d in dirs]
    ref = [_leaves(d) for d in dirs]
    if len(dirs) == 2:
        got = [t for triple in mod.ssm_projections_triton(*fast[0], second=fast[1], states_fp32=states_fp32)
               for t in triple]
    else:
        got = list(mod.ssm_projections_triton(*fast[0], states_fp32=states_fp32))
    with _autocast(dtype):
        want = [t for d in ref for t in ssm_projections_ref(*d, torch.float32 if states_fp32 else None)]
    assert len(got) == len(want) == 3 * len(dirs)
    for name, g, w in zip(("delta", "B", "C") * 2, got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
        # (the reference's fp32 B and C from a cast are copies; the kernel's are x_dbl's columns either way)
        assert states_fp32 or g.stride() == w.stride(), (name, g.stride(), w.stride())
        assert rel_err(g, w) <= TOL[dtype], (name, rel_err(g, w))
    _loss(got, seed).backward()
    _loss(want, seed).backward()
    for d_fast, d_ref in zip(fast, ref):
        for name, a, b in zip(("u", "x_proj_weight", "dt_proj_weight"), d_fast, d_ref):
            assert a.grad.dtype == b.grad.dtype, (name, a.grad.dtype, b.grad.dtype)
            assert rel_err(a.grad, b.grad) <= TOL[dtype], (name, rel_err(a.grad, b.grad))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("length", [1, 2, 7, 197])
def test_pair_matches_reference(length, dtype):
    """Vim's shapes scaled down (dt_rank 12, 16 states), both directions in one launch."""
    dirs = [_inputs(2, 40, length, 12, 16, dtype, seed=length + s) for s in (0, 100)]
    _compare(dirs, dtype, seed=length)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("dim, rank, nstate", [(24, 2, 4), (192, 12, 16), (70, 5, 3)])
def test_single_direction_odd_sizes(dim, rank, nstate, dtype):
    """One direction; channels no multiple of the K and N tiles, dt_rank and 2 * states under a tl.dot's 16."""
    _compare([_inputs(3, dim, 11, rank, nstate, dtype, seed=dim)], dtype, seed=dim)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("length", [7, 197])
def test_pair_with_fp32_states(length, dtype):
    """B and C in fp32 (the scan's choice from 1,024 tokens): the kernel writes its fp32 accumulator where the
    reference casts its rounded product (so they agree to the 16-bit rounding), dt is rounded before dt_proj as
    without it, and gradients reach u and both weights as through the reference's cast."""
    dirs = [_inputs(2, 40, length, 12, 16, dtype, seed=length + s) for s in (0, 100)]
    _compare(dirs, dtype, seed=length, states_fp32=True)


def test_channel_major_u_and_mixed_layouts():
    """u stored (batch, dim, length) (not the conv's layout) is read through a copy; a pair whose two u's
    differ in layout, or whose token rows differ in stride, too."""
    a = _inputs(2, 24, 9, 3, 4, torch.float32, seed=1, time_major=False)
    b = _inputs(2, 24, 9, 3, 4, torch.float32, seed=2, time_major=True)
    _compare([a], torch.float32)
    _compare([a, b], torch.float32)
    # token rows of unequal strides (a column slice of a wider token-major buffer beside a plain one; not
    # through _compare, whose clones would make the slice dense): both read through copies
    wide = torch.randn(2, 9, 48, generator=torch.Generator().manual_seed(3)).to(DEVICE)[..., :24].transpose(1, 2)
    assert mod._rows(wide).stride() != mod._rows(b[0]).stride()
    with torch.no_grad():
        got = mod.ssm_projections_triton(wide, *b[1:], second=b)
        want = (ssm_projections_ref(wide, *b[1:]), ssm_projections_ref(*b))
    for g, w in zip((t for triple in got for t in triple), (t for triple in want for t in triple)):
        assert rel_err(g, w) <= 1e-5


def test_only_some_outputs_used():
    """Gradients when only delta (or only B) reaches the loss: no gradient for dt_proj's weight without delta."""
    for used in (0, 1):
        fast, ref = _inputs(2, 24, 5, 3, 4, torch.float32, seed=3), None
        ref = _leaves(fast)
        out_f = mod.ssm_projections_triton(*fast)[used]
        out_r = ssm_projections_ref(*ref)[used]
        _loss([out_f], 1).backward()
        _loss([out_r], 1).backward()
        for a, b in zip(fast, ref):
            assert (a.grad is None) == (b.grad is None)
            if b.grad is not None:
                assert rel_err(a.grad, b.grad) <= 1e-5


def test_no_grad_and_dispatch():
    u, wx, wdt = _inputs(2, 24, 6, 3, 4, torch.float32, seed=4)
    with torch.no_grad():
        got = ssm_projections_fn(u, wx, wdt, backend="triton")
        want = ssm_projections_fn(u, wx, wdt, backend="reference")
        pair = ssm_projections_fn(u, wx, wdt, second=(u, wx, wdt), backend="triton")
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-5
    assert len(pair) == 2 and all(rel_err(g, w) <= 1e-5 for p in pair for g, w in zip(p, want))


def test_custom_op_passes_opcheck():
    """Schema, fake tensor and autograd registration of the op (torch.compile sees it, not the kernel)."""
    one = _inputs(2, 24, 5, 3, 4, torch.float32, seed=6)
    two = _inputs(2, 24, 5, 3, 4, torch.float32, seed=7)
    torch.library.opcheck(mod._proj_fwd_op.op, (*one, *two), test_utils=("test_schema", "test_faketensor",
                                                                         "test_autograd_registration"))
    torch.library.opcheck(mod._proj_fwd_op.op, (*one, None, None, None), test_utils=("test_schema",
                                                                                     "test_faketensor"))
    half = [t.detach().to(torch.bfloat16).requires_grad_(True) for t in (*one, *two)]
    torch.library.opcheck(mod._proj_fwd_op.op, (*half, True), test_utils=("test_schema", "test_faketensor",
                                                                          "test_autograd_registration"))


def test_fused_by_default_rule(monkeypatch):
    """Unset, the automatic choice takes the kernel for u of more than FUSED_ABOVE_ELEMENTS elements on Hopper
    GPUs only (compute capability 9); VIMAMBA_FUSED_PROJ's True / False override it everywhere."""
    import types

    from vimamba.ops import ssm_proj

    major = {"cuda:0": 9, "cuda:1": 8}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(major=major[device]))
    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", None)

    def u(numel, device="cuda:0", is_cuda=True):
        return types.SimpleNamespace(is_cuda=is_cuda, numel=lambda: numel, device=device)

    big = ssm_proj.FUSED_ABOVE_ELEMENTS + 1
    assert ssm_proj.fused_by_default(u(big))
    assert not ssm_proj.fused_by_default(u(ssm_proj.FUSED_ABOVE_ELEMENTS))
    assert not ssm_proj.fused_by_default(u(big, "cuda:1"))
    assert not ssm_proj.fused_by_default(u(big, "cpu", is_cuda=False))
    for forced in (True, False):
        monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", forced)
        assert ssm_proj.fused_by_default(u(1, "cuda:1")) is forced


def test_default_choice_is_cublas_for_small_inputs(monkeypatch):
    """The automatic choice keeps the reference's products for small inputs (and on the CPU) unless
    VIMAMBA_FUSED_PROJ turned the kernel on; backend="triton" takes the kernel either way."""
    from vimamba.ops import ssm_proj

    calls = []
    real = mod._proj_fwd_op
    monkeypatch.setattr(mod, "_proj_fwd_op", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", None)
    u, wx, wdt = _inputs(2, 24, 6, 3, 4, torch.float32, seed=8)
    monkeypatch.setenv("VIMAMBA_BACKEND", "triton")
    with torch.no_grad():
        ssm_projections_fn(u, wx, wdt)
        assert calls == []
        ssm_projections_fn(u, wx, wdt, backend="triton")
        assert calls == [1]
        monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", True)
        ssm_projections_fn(u, wx, wdt)
        assert calls == [1, 1]
        with torch.autocast(DEVICE, dtype=torch.bfloat16):  # autocast to another dtype than u's: reference
            ssm_projections_fn(u, wx, wdt)
        assert calls == [1, 1]


def test_bad_shapes_are_refused():
    u, wx, wdt = _inputs(2, 24, 6, 3, 4, torch.float32, seed=5)
    with pytest.raises(ValueError, match="dt_proj_weight"):
        mod.ssm_projections_triton(u, wx, wdt[:5])
    with pytest.raises(ValueError, match="agree"):
        mod.ssm_projections_triton(u, wx, wdt, second=(u[:1], wx, wdt))
    with pytest.raises(ValueError, match=r"\(batch, channels, length\)"):
        mod.ssm_projections_triton(u[0], wx, wdt)


@pytest.mark.parametrize("dtype", ["bf16", "bf16-fp32-states", "fp32"])
def test_compiles_for_sm90_without_spills(dtype):
    """Every tile the autotuner is offered, compiled for Hopper (offline): tensor-core products for 16-bit
    inputs (also with x_dbl in fp32, for fp32 B and C), no spills."""
    ieee = dtype == "fp32"
    # 16-bit activations with the fp32 weights of autocast (the kernel rounds them as it loads them)
    fp32_outputs = ("w", "xdbl") if dtype == "bf16-fp32-states" else ("w",)
    types = pointer_types(mod._ssm_proj_kernel, fp32_outputs) if not ieee else {
        n: "*fp32" for n in pointer_types(mod._ssm_proj_kernel, ())}
    aligned = [n for n in types] + ["E", "s_um"]
    for bm, bk, bn, nw in mod._configs(ieee):
        consts = dict(IEEE=ieee, WIDEN=False, RP=16, NP=32, BLOCK_M=bm, BLOCK_K=bk, BLOCK_N=bn, s_ue=1)
        if not ieee:
            ptx = compile_for_sm90(mod._ssm_proj_kernel, types, consts, aligned, num_warps=nw)
            assert "wgmma" in ptx or "mma.sync" in ptx, "no tensor-core product"
        cubin = compile_for_sm90(mod._ssm_proj_kernel, types, consts, aligned, num_warps=nw, asm="cubin")
        res = sass_resources(cubin)
        assert res["STACK"] == 0, (bm, bk, bn, nw, res)


@pytest.mark.gpu
@gpu
def test_full_size_gpu():
    """Vim-Ti at 1248 (6,085 tokens), batch 2, both directions, bf16: values and every gradient."""
    dirs = [_inputs(2, 384, 6085, 12, 16, torch.bfloat16, seed=s) for s in (7, 8)]
    _compare(dirs, torch.bfloat16)
