"""The Triton residual add + RMSNorm (forward and backward) against the plain-PyTorch reference.

Without a GPU the kernels run in Triton's interpreter: TRITON_INTERPRET=1 is set below before the module is
used. The kernels are jitted on first call and use only builtins of triton.language, so this works even
when triton was imported earlier in the process (as importing vimamba does); when it was, the test that
compiles the kernels for sm_90 (no GPU needed: Triton's passes and ptxas) runs too, otherwise it is skipped.
On a CUDA machine the same tests run the compiled kernels (heuristic configs; test_autotuned autotunes).

Expected values: ``add_rms_norm_ref`` run on the CPU on the same inputs in their own dtypes (its dtype rules,
such as a half-precision stream rounded before it is normalised, are part of what is tested), and its
autograd gradients for the same output gradients, which reach BOTH outputs (the normalised tensor and the
residual stream) unless a test says otherwise. Errors are ``max|got - expected| / max|expected|`` per tensor.
The tolerance of a case (TOL below) is that of the least precise dtype among x, the residual and the stream:

* fp32: 1e-5 (the reference computes in fp32 too; differences are summation order and rsqrt);
* fp16: 1e-2 (outputs and gradients rounded to fp16; the reference also rounds its intermediate gradients);
* bf16: 1e-2 compiled; 2e-2 in the interpreter, which converts fp32 to bf16 by truncation (up to one bf16
  ulp, 2^-7 relative, where the GPU rounds to nearest; a half-precision stream is rounded twice).
"""


import pytest
import torch
from triton_helpers import (  # noqa: F401 - heuristic_configs is an autouse fixture
    DEVICE, DTYPES, LENGTHS, TOL, compile_for_sm90, heuristic_configs, rel_err)

from vimamba.ops.rms_norm.reference import add_rms_norm_ref
from vimamba.ops.rms_norm.triton_rms_norm import HAS_TRITON, add_rms_norm_triton

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
HIDDEN = 192  # Vim-tiny


def make(shape, dtype, layout, gen):
    """A leaf tensor and the (possibly non-contiguous) view of it that is passed to the op."""
    *lead, hidden = shape
    if layout == "contiguous":
        base = torch.randn(*shape, generator=gen)
        view = lambda t: t  # noqa: E731
    elif layout == "slice":  # rows longer than hidden: a view with row stride != hidden
        base = torch.randn(*lead, hidden + 5, generator=gen)
        view = lambda t: t[..., 2:hidden + 2]  # noqa: E731
    elif layout == "strided":  # every other element along hidden
        base = torch.randn(*lead, 2 * hidden, generator=gen)
        view = lambda t: t[..., ::2]  # noqa: E731
    elif layout == "transpose":  # (batch, hidden, length) transposed: no (rows, hidden) view exists
        base = torch.randn(lead[0], hidden, *lead[1:], generator=gen)
        view = lambda t: t.transpose(1, -1)  # noqa: E731
    else:
        raise ValueError(layout)
    base = base.to(DEVICE, dtype).requires_grad_(True)
    return base, view


def check(shape, dtype, res_dtype, residual_in_fp32, *, layout="contiguous", res_layout="contiguous",
          weight_dtype=torch.float32, grad_outputs=("normed", "stream"), eps=1e-5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_base, x_view = make(shape, dtype, layout, gen)
    x = x_view(x_base)
    if res_dtype is not None:
        r_base, r_view = make(shape, res_dtype, res_layout, gen)
        residual = r_view(r_base)
    else:
        r_base = residual = None
    weight = (1 + 0.2 * torch.randn(shape[-1], generator=gen)).to(DEVICE, weight_dtype).requires_grad_(True)

    normed, stream = add_rms_norm_triton(x, residual, weight, eps, residual_in_fp32)

    # the reference, on CPU copies of the same leaves
    x_base_r = x_base.detach().cpu().requires_grad_(True)
    r_base_r = r_base.detach().cpu().requires_grad_(True) if r_base is not None else None
    w_r = weight.detach().cpu().requires_grad_(True)
    normed_r, stream_r = add_rms_norm_ref(x_view(x_base_r), r_view(r_base_r) if r_base is not None else None,
                                          w_r, eps, residual_in_fp32)

    assert normed.dtype == normed_r.dtype and stream.dtype == stream_r.dtype
    assert normed.shape == normed_r.shape and stream.shape == stream_r.shape
    tol = max(TOL[d] for d in {dtype, res_dtype or dtype, stream.dtype} if d in TOL)
    assert rel_err(normed, normed_r) <= tol, f"normed: {rel_err(normed, normed_r):.3g}"
    assert rel_err(stream, stream_r) <= tol, f"stream: {rel_err(stream, stream_r):.3g}"

    outs, outs_r, gouts = [], [], []
    if "normed" in grad_outputs:
        g = torch.randn(normed.shape, generator=gen).to(normed.dtype)
        outs.append(normed), outs_r.append(normed_r), gouts.append(g)
    if "stream" in grad_outputs:
        g = torch.randn(stream.shape, generator=gen).to(stream.dtype)
        outs.append(stream), outs_r.append(stream_r), gouts.append(g)
    leaves = [x_base, weight] + ([r_base] if r_base is not None else [])
    leaves_r = [x_base_r, w_r] + ([r_base_r] if r_base_r is not None else [])
    grads = torch.autograd.grad(outs, leaves, [g.to(DEVICE) for g in gouts], allow_unused=True)
    grads_r = torch.autograd.grad(outs_r, leaves_r, gouts, allow_unused=True)
    for name, g, g_r, leaf in zip(["x", "weight", "residual"], grads, grads_r, leaves):
        if g_r is None:  # e.g. the weight when only the stream gets a gradient
            assert g is None or g.abs().max() == 0, name
            continue
        assert g is not None, name
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, name
        err = rel_err(g, g_r)
        assert err <= tol, f"grad {name}: {err:.3g}"
    return normed, stream, x


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("residual", ["none", "same", "fp32"])
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_add_rms_norm(length, dtype, residual, residual_in_fp32):
    res_dtype = {"none": None, "same": dtype, "fp32": torch.float32}[residual]
    check((2, length, HIDDEN), dtype, res_dtype, residual_in_fp32, seed=length)


@pytest.mark.parametrize("layout,res_layout", [("slice", "contiguous"), ("strided", "slice"),
                                               ("transpose", "transpose"), ("contiguous", "strided")])
@pytest.mark.parametrize("dtype,res_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                             (torch.float16, torch.float16)], ids=str)
def test_noncontiguous(layout, res_layout, dtype, res_dtype):
    check((2, 197, HIDDEN), dtype, res_dtype, True, layout=layout, res_layout=res_layout, seed=3)


@pytest.mark.parametrize("hidden", [1, 33, 100, 384, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_hidden_sizes(hidden, dtype):
    check((3, 7, hidden), dtype, torch.float32, True, seed=hidden)


@pytest.mark.parametrize("grad_outputs", [("normed",), ("stream",)])
@pytest.mark.parametrize("residual", [None, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_one_output_gets_gradient(grad_outputs, residual, residual_in_fp32):
    check((2, 197, HIDDEN), torch.bfloat16, residual, residual_in_fp32, grad_outputs=grad_outputs, seed=4)


@pytest.mark.parametrize("shape", [(HIDDEN,), (13, HIDDEN), (2, 3, 5, HIDDEN)], ids=str)
def test_shapes(shape):
    check(shape, torch.float32, torch.float32, True, seed=5)


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_weight(weight_dtype):
    check((2, 7, HIDDEN), torch.bfloat16, torch.float32, True, weight_dtype=weight_dtype, eps=1e-6, seed=6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_stream_is_x_when_reference_returns_x(dtype, residual_in_fp32):
    """With no residual and no dtype change the reference's stream is x itself; so is ours (nothing written)."""
    x = torch.randn(2, 7, HIDDEN, device=DEVICE).to(dtype)
    _, stream = add_rms_norm_triton(x, None, torch.ones(HIDDEN, device=DEVICE), 1e-5, residual_in_fp32)
    _, stream_r = add_rms_norm_ref(x, None, torch.ones(HIDDEN, device=DEVICE), 1e-5, residual_in_fp32)
    assert (stream is x) == (stream_r is x)


def test_partial_requires_grad():
    """Only the residual needs a gradient (x and weight frozen)."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 9, HIDDEN, generator=gen).to(DEVICE, torch.bfloat16)
    r = torch.randn(2, 9, HIDDEN, generator=gen).to(DEVICE).requires_grad_(True)
    w = torch.randn(HIDDEN, generator=gen).to(DEVICE)
    normed, stream = add_rms_norm_triton(x, r, w)
    (gr,) = torch.autograd.grad(normed.float().sum() + stream.square().sum(), [r])
    r_r = r.detach().cpu().requires_grad_(True)
    normed_r, stream_r = add_rms_norm_ref(x.cpu(), r_r, w.cpu())
    (gr_r,) = torch.autograd.grad(normed_r.float().sum() + stream_r.square().sum(), [r_r])
    assert rel_err(gr, gr_r) <= TOL[torch.bfloat16]


def test_no_grad_and_empty():
    with torch.no_grad():
        normed, stream = add_rms_norm_triton(torch.randn(4, HIDDEN, device=DEVICE), None,
                                             torch.ones(HIDDEN, device=DEVICE))
    assert normed.shape == (4, HIDDEN)
    normed, stream = add_rms_norm_triton(torch.randn(0, HIDDEN, device=DEVICE).half(),
                                         torch.randn(0, HIDDEN, device=DEVICE), torch.ones(HIDDEN, device=DEVICE))
    assert normed.shape == (0, HIDDEN) and normed.dtype == torch.float16 and stream.dtype == torch.float32


def test_bad_arguments():
    x = torch.randn(3, HIDDEN, device=DEVICE)
    with pytest.raises(ValueError):
        add_rms_norm_triton(x, None, torch.ones(HIDDEN + 1, device=DEVICE))
    with pytest.raises(ValueError):
        add_rms_norm_triton(x, torch.randn(4, HIDDEN, device=DEVICE), torch.ones(HIDDEN, device=DEVICE))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("res_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_normalises_the_stream_as_stored(x_dtype, res_dtype):
    """With a half-precision stream (residual_in_fp32=False) the rounded stream is what gets normalised."""
    from vimamba.ops.rms_norm.reference import rms_norm_ref

    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 197, HIDDEN, generator=gen).to(DEVICE, x_dtype)
    r = torch.randn(2, 197, HIDDEN, generator=gen).to(DEVICE, res_dtype)
    w = (1 + 0.2 * torch.randn(HIDDEN, generator=gen)).to(DEVICE)
    normed, stream = add_rms_norm_triton(x, r, w, 1e-5, residual_in_fp32=False)
    assert stream.dtype == res_dtype
    want = rms_norm_ref(stream.cpu(), w.cpu(), 1e-5, out_dtype=x_dtype)
    assert rel_err(normed, want) <= (1e-5 if x_dtype == torch.float32 else TOL[x_dtype])


@pytest.mark.skipif(DEVICE != "cuda", reason="the interpreter does not autotune")
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_autotuned(residual_in_fp32):
    """The autotuned kernels (what the model gets) on a Vim-tiny-sized problem."""
    check((8, 197, HIDDEN), torch.bfloat16, torch.float32 if residual_in_fp32 else torch.bfloat16,
          residual_in_fp32, seed=11)
    check((8, 197, HIDDEN), torch.bfloat16, None, residual_in_fp32, seed=12)


# --------------------------------------------------------------------------------------------------------
# Compiled for Hopper without a GPU: Triton's front end, its GPU passes and ptxas run on any machine, so the
# compiled path (which the interpreter does not exercise) is at least built here. Uses Triton's compiler
# entry points (ASTSource, GPUTarget), which are less stable than the language: skipped if they changed.
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("res_dtype,residual_in_fp32", [("fp32", True), ("bf16", False)])
def test_compiles_for_hopper(res_dtype, residual_in_fp32):
    import re

    from vimamba.ops.rms_norm import triton_rms_norm as mod

    block_h = mod._block_h(HIDDEN)
    ptx = compile_for_sm90(
        mod._add_rms_norm_fwd_kernel,
        {"x_ptr": "*bf16", "r_ptr": f"*{res_dtype}", "w_ptr": "*fp32", "y_ptr": "*bf16", "s_ptr": f"*{res_dtype}",
         "eps": "fp32"},
        dict(HAS_RES=True, ADD_FP32=residual_in_fp32, STORE_STREAM=True, BLOCK_M=mod._fwd_configs(block_h)[0][0],
             BLOCK_H=block_h, stride_xh=1, stride_rh=1),
        ["x_ptr", "r_ptr", "w_ptr", "y_ptr", "s_ptr", "H", "stride_xm", "stride_rm", "stride_ym", "stride_sm"])
    assert re.search(r"ld\.global[.\w]*\.v4", ptx) and re.search(r"st\.global[.\w]*\.v4", ptx), "not vectorised"
    ptx = compile_for_sm90(
        mod._add_rms_norm_bwd_kernel,
        {"s_ptr": f"*{res_dtype}", "w_ptr": "*fp32", "gy_ptr": "*bf16", "gs_ptr": f"*{res_dtype}",
         "dx_ptr": "*bf16", "dr_ptr": f"*{res_dtype}", "dw_part_ptr": "*fp32", "eps": "fp32"},
        dict(HAS_GY=True, HAS_GS=True, WANT_DX=True, WANT_DR=True, WANT_DW=True,
             BLOCK_M=mod._bwd_block_m(block_h), BLOCK_H=block_h, stride_sh=1, stride_gyh=1, stride_gsh=1),
        ["s_ptr", "w_ptr", "gy_ptr", "gs_ptr", "dx_ptr", "dr_ptr", "dw_part_ptr", "H",
         "stride_sm", "stride_gym", "stride_gsm", "stride_dxm", "stride_drm"])
    assert re.search(r"ld\.global[.\w]*\.v4", ptx), "not vectorised"
