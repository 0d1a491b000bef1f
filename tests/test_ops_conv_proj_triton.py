"""The one-launch convs + projections kernel (inference) against the two ops it replaces and the reference: every
output, each dtype, odd token counts and channel counts that are no multiple of the tiles, conv widths 1-4 with
and without bias, both layouts of x, fp32 B/C; the dispatcher's choice and its refusals; the compiled sm_90
kernel (tensor cores, no spills); a whole mixer with and without it; on a GPU Vim-Ti's full size at 1248."""

import pytest
import torch

from triton_helpers import DEVICE, DTYPES, TOL, compile_for_sm90, pointer_types, rel_err, sass_resources
from vimamba.ops import (causal_conv1d_pair_fn, conv_ssm_projections_fn, conv_ssm_projections_fused,
                         ssm_projections_fn)
from vimamba.ops.ssm_proj import triton_conv_proj as mod

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
NAMES = ("u_f", "u_b", "delta_f", "B_f", "C_f", "delta_b", "B_b", "C_b")


def _inputs(batch, dim, length, rank, nstate, dtype, seed, width=4, bias=True, time_major=True):
    """x as in_proj gives it (time-major storage seen as (batch, dim, length)), fp32 conv weights and biases as
    the module holds them, projection weights in x's dtype (what autocast hands the kernel)."""
    g = torch.Generator().manual_seed(seed)
    if time_major:
        x = torch.randn(batch, length, dim, generator=g).to(dtype).transpose(1, 2)
    else:
        x = torch.randn(batch, dim, length, generator=g).to(dtype)
    conv = [torch.randn(dim, width, generator=g) * 0.5, torch.randn(dim, generator=g) if bias else None,
            torch.randn(dim, width, generator=g) * 0.5, torch.randn(dim, generator=g) if bias else None]
    proj = []
    for _ in range(2):
        proj += [torch.randn(rank + 2 * nstate, dim, generator=g) * dim ** -0.5,
                 torch.randn(dim, rank, generator=g) * rank ** -0.5]
    to = lambda t, dt=None: None if t is None else t.to(DEVICE, dt)  # noqa: E731
    return to(x), [to(t) for t in conv], [to(t, dtype) for t in proj]


def _flat(result):
    u_f, u_b, proj_f, proj_b = result
    return [u_f, u_b, *proj_f, *proj_b]


def _separate(x, conv, proj, states_fp32, backend):
    """The two ops the kernel replaces, as the mixer called them before (per backend)."""
    import vimamba.ops

    u_f, u_b = causal_conv1d_pair_fn(x, *conv, "silu", backend=backend)
    rule = 1 if states_fp32 else None
    old = vimamba.ops.SCAN_STATES_FP32_MIN_LENGTH
    vimamba.ops.SCAN_STATES_FP32_MIN_LENGTH = rule
    try:
        return [u_f, u_b, *(t for p in ssm_projections_fn(u_f, proj[0], proj[1], second=(u_b, *proj[2:]),
                                                          backend=backend) for t in p)]
    finally:
        vimamba.ops.SCAN_STATES_FP32_MIN_LENGTH = old


def _layout(t):
    """Strides of the dimensions that have more than one element (the others' strides mean nothing)."""
    return [s for s, n in zip(t.stride(), t.shape) if n > 1]


def _compare(x, conv, proj, dtype, states_fp32=False, same_layout=True):
    with torch.no_grad():
        got = _flat(mod.conv_ssm_projections_triton(x, conv, proj, "silu", states_fp32=states_fp32))
        apart = _separate(x, conv, proj, states_fp32, "triton")
        ref = _separate(x, conv, proj, False, "reference")
    for name, g, a, r in zip(NAMES, got, apart, ref):
        assert g.shape == a.shape and g.dtype == a.dtype, (name, g.shape, a.shape, g.dtype, a.dtype)
        assert not same_layout or _layout(g) == _layout(a), (name, g.stride(), a.stride())
        # the separate Triton ops compute the same values in the same order: only a rounding's tie may differ
        assert rel_err(g, a) <= TOL[dtype], (name, rel_err(g, a))
        # the reference rounds the conv's output, then SiLU's, where the kernels round once: two roundings of
        # the dtype's apart in 16 bits
        assert rel_err(g, r) <= (1e-5 if dtype == torch.float32 else 2 * TOL[dtype]), (name, rel_err(g, r))
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("length", [1, 2, 7, 197])
def test_matches_separate_ops_and_reference(length, dtype):
    """Vim's shapes scaled down (dt_rank 12, 16 states, 4 taps); blocks of tokens cross batch elements."""
    _compare(*_inputs(3, 40, length, 12, 16, dtype, seed=length), dtype)


@pytest.mark.parametrize("width, bias", [(1, True), (2, False), (3, True), (4, False)])
def test_conv_widths_and_no_bias(width, bias):
    _compare(*_inputs(2, 24, 9, 2, 4, torch.float32, seed=width, width=width, bias=bias), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fp32_states(dtype):
    """B and C from the fp32 accumulator, as the separate projection kernel gives them for long sequences."""
    got = _compare(*_inputs(2, 70, 11, 5, 3, dtype, seed=3), dtype, states_fp32=True)
    assert [t.dtype for t in got] == [dtype] * 3 + [torch.float32] * 2 + [dtype] + [torch.float32] * 2


def test_channel_major_x():
    """x stored (batch, dim, length) instead of in_proj's transposed layout: read through its strides (u is
    written time-major either way, where the conv pair would follow x's layout)."""
    got = _compare(*_inputs(2, 24, 13, 3, 4, torch.float32, seed=5, time_major=False), torch.float32,
                   same_layout=False)
    assert got[0].transpose(1, 2).is_contiguous()


def test_dispatch(monkeypatch):
    """``conv_ssm_projections_fn`` takes the kernel where the fused projections run and nothing needs
    gradients and CONV_IN_PROJECTIONS is on (``VIMAMBA_CONV_IN_PROJ=1``); otherwise (autograd, the reference
    backend, CONV_IN_PROJECTIONS off, the projections' rule off) the separate ops, with the same results."""
    from vimamba.ops import ssm_proj

    calls = []
    real = mod._conv_proj_op
    monkeypatch.setattr(mod, "_conv_proj_op", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", True)
    monkeypatch.setattr(ssm_proj, "CONV_IN_PROJECTIONS", True)
    monkeypatch.setenv("VIMAMBA_BACKEND", "triton")
    x, conv, proj = _inputs(2, 24, 6, 3, 4, torch.float32, seed=8)
    with torch.no_grad():
        assert conv_ssm_projections_fused(x, proj[0], proj[1])
        fused = _flat(conv_ssm_projections_fn(x, conv, proj))
        assert calls == [1]
        ref = _flat(conv_ssm_projections_fn(x, conv, proj, backend="reference"))
        monkeypatch.setattr(ssm_proj, "CONV_IN_PROJECTIONS", False)
        apart = _flat(conv_ssm_projections_fn(x, conv, proj))
        monkeypatch.setattr(ssm_proj, "CONV_IN_PROJECTIONS", True)
        monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", False)
        assert not conv_ssm_projections_fused(x, proj[0], proj[1])
        conv_ssm_projections_fn(x, conv, proj)
    assert calls == [1]
    for name, g, r, a in zip(NAMES, fused, ref, apart):
        assert rel_err(g, r) <= 1e-5 and rel_err(g, a) <= 1e-5, name
    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", True)
    x.requires_grad_(True)
    assert not conv_ssm_projections_fused(x, proj[0], proj[1])  # autograd: the differentiable ops
    out = _flat(conv_ssm_projections_fn(x, conv, proj))
    sum(t.sum() for t in out).backward()
    assert calls == [1] and x.grad is not None


def test_refusals():
    x, conv, proj = _inputs(2, 24, 6, 3, 4, torch.float32, seed=9)
    with pytest.raises(RuntimeError, match="no backward"):
        mod.conv_ssm_projections_triton(x.requires_grad_(True), conv, proj)
    x = x.detach()
    with torch.no_grad():
        with pytest.raises(ValueError, match="one shape"):
            mod.conv_ssm_projections_triton(x, [conv[0], conv[1], conv[2][:, :3], conv[3]], proj)
        with pytest.raises(ValueError, match="agree"):
            mod.conv_ssm_projections_triton(x, conv, [*proj[:2], proj[2][:-2], proj[3]])
        with pytest.raises(ValueError, match="dt_proj_weight"):
            mod.conv_ssm_projections_triton(x, conv, [proj[0], proj[1][:5], *proj[2:]])
        with pytest.raises(ValueError, match="weight"):
            mod.conv_ssm_projections_triton(x, [conv[0][:5], *conv[1:]], proj)


def test_custom_op_passes_opcheck():
    """Schema and fake tensor of the op (torch.compile sees it, not the kernel)."""
    x, conv, proj = _inputs(2, 24, 5, 3, 4, torch.bfloat16, seed=6)
    for states_fp32 in (False, True):
        torch.library.opcheck(mod._conv_proj_op.op, (x, *conv, *proj, True, states_fp32),
                              test_utils=("test_schema", "test_faketensor"))


def test_mixer_with_and_without_it(monkeypatch):
    """A whole mixer without autograd (per-branch path, fused projections on): the same output with the convs
    inside the projection kernel as with them apart, in fp32 and under bf16 autocast."""
    import vimamba.layers.mamba_mixer as mixer_module
    from vimamba.layers import BiMambaMixer
    from vimamba.ops import ssm_proj

    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", True)
    monkeypatch.setattr(mixer_module, "ONE_IN_PROJ_MAX_ELEMENTS", 0)
    monkeypatch.setenv("VIMAMBA_BACKEND", "triton")
    calls = []
    real = mod._conv_proj_op
    monkeypatch.setattr(mod, "_conv_proj_op", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4).to(DEVICE)
    hidden = torch.randn(2, 9, 16, device=DEVICE)
    for autocast, tol in ((False, 1e-5), (True, TOL[torch.bfloat16])):
        outs = []
        for inside in (True, False):
            monkeypatch.setattr(ssm_proj, "CONV_IN_PROJECTIONS", inside)
            with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
                outs.append(mixer(hidden).float())
        assert rel_err(*outs) <= tol, (autocast, rel_err(*outs))
    assert calls == [1, 1]


@pytest.mark.parametrize("dtype", ["bf16", "bf16-fp32-states", "fp32"])
def test_compiles_for_sm90_without_spills(dtype):
    """Every tile the autotuner is offered, compiled for Hopper (offline): tensor-core products for 16-bit
    inputs, no spills."""
    ieee = dtype == "fp32"
    # 16-bit activations with fp32 conv and projection weights (the kernel rounds the latter as it loads them)
    fp32_outputs = ("c", "w", "xdbl") if dtype == "bf16-fp32-states" else ("c", "w")
    types = pointer_types(mod._conv_proj_kernel, fp32_outputs) if not ieee else {
        n: "*fp32" for n in pointer_types(mod._conv_proj_kernel, ())}
    aligned = list(types) + ["E", "s_xl", "s_xb"]
    for bm, bk, bn, nw in mod._configs(ieee):
        consts = dict(W=4, HAS_BIAS=True, SILU=True, IEEE=ieee, WIDEN=False, RP=16, NP=32, BLOCK_M=bm,
                      BLOCK_K=bk, BLOCK_N=bn, s_xd=1, s_ck=1)
        if not ieee:
            ptx = compile_for_sm90(mod._conv_proj_kernel, types, consts, aligned, num_warps=nw)
            assert "wgmma" in ptx or "mma.sync" in ptx, "no tensor-core product"
        cubin = compile_for_sm90(mod._conv_proj_kernel, types, consts, aligned, num_warps=nw, asm="cubin")
        res = sass_resources(cubin)
        assert res["STACK"] == 0, (bm, bk, bn, nw, res)


@pytest.mark.gpu
@gpu
def test_full_size_gpu():
    """Vim-Ti at 1248 (6,085 tokens), batch 2, bf16, fp32 B/C as the model takes them there."""
    _compare(*_inputs(2, 384, 6085, 12, 16, torch.bfloat16, seed=7), torch.bfloat16, states_fp32=True)
