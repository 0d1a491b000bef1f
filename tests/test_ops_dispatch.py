"""Backend choice, the custom-op registrations, and a whole model on the Triton path.

Without a GPU the Triton path runs in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so these
tests use a small model: 2 blocks, 16 tokens. Tolerances: both paths accumulate in fp32 and differ only in
summation order, so fp32 results agree to ~1e-5 relative.
"""

from __future__ import annotations

import os

import pytest
import torch

from vimamba import VisionMamba
from vimamba.ops import add_rms_norm, causal_conv1d_fn, causal_conv1d_pair_fn, resolve_backend, selective_scan_fn

# These run the Triton path on CPU tensors, in the interpreter; tests/test_gpu.py covers a CUDA machine.
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


def test_resolve_backend(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("VIMAMBA_BACKEND", raising=False)
    assert resolve_backend(cpu) == "reference"
    assert resolve_backend(cpu, "reference") == "reference"
    assert resolve_backend(cpu, "triton") == "triton"  # the interpreter is on
    monkeypatch.setenv("VIMAMBA_BACKEND", "Triton")
    assert resolve_backend(cpu) == "triton"
    monkeypatch.setenv("VIMAMBA_BACKEND", "cuda")
    with pytest.raises(ValueError, match="VIMAMBA_BACKEND must be one of auto, triton, reference; got 'cuda'"):
        resolve_backend(cpu)
    with pytest.raises(ValueError, match="backend argument must be one of"):
        resolve_backend(cpu, "fast")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend(cpu, "triton")


def test_forced_triton_rejects_what_it_cannot_run():
    u = torch.randn(1, 4, 5)
    with pytest.raises(NotImplementedError, match="time-invariant"):
        selective_scan_fn(u, u.abs(), -torch.ones(4, 3), torch.randn(4, 3), torch.randn(4, 3), backend="triton")
    # auto falls back to the reference for the same call
    selective_scan_fn(u, u.abs(), -torch.ones(4, 3), torch.randn(4, 3), torch.randn(4, 3))


def test_public_ops_agree_across_backends():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 11)
    w, b = torch.randn(6, 4), torch.randn(6)
    for reverse in (False, True):
        torch.testing.assert_close(causal_conv1d_fn(x, w, b, "silu", reverse, backend="triton"),
                                   causal_conv1d_fn(x, w, b, "silu", reverse, backend="reference"))
    w2, b2 = torch.randn(6, 4), torch.randn(6)
    with torch.no_grad():  # one pass for both on the Triton path
        for got, want in zip(causal_conv1d_pair_fn(x, w, b, w2, b2, "silu", backend="triton"),
                             causal_conv1d_pair_fn(x, w, b, w2, b2, "silu", backend="reference")):
            torch.testing.assert_close(got, want)
    h, r, nw = torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.rand(16)
    for got, want in zip(add_rms_norm(h, r, nw, backend="triton"), add_rms_norm(h, r, nw, backend="reference")):
        torch.testing.assert_close(got, want)
    u, dt, z = torch.randn(2, 6, 11), torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    A, Bm, Cm, D = -torch.rand(6, 4) - 0.5, torch.randn(2, 4, 11), torch.randn(2, 4, 11), torch.randn(6)
    for reverse in (False, True):
        torch.testing.assert_close(
            selective_scan_fn(u, dt, A, Bm, Cm, D, z, None, True, reverse=reverse, backend="triton"),
            selective_scan_fn(u, dt, A, Bm, Cm, D, z, None, True, reverse=reverse, backend="reference"),
            rtol=1e-5, atol=1e-5)


def test_custom_ops_pass_opcheck():
    from vimamba.ops.causal_conv1d import triton_conv1d
    from vimamba.ops.rms_norm import triton_rms_norm

    x = torch.randn(2, 6, 9, requires_grad=True)
    w, b = torch.randn(6, 4, requires_grad=True), torch.randn(6, requires_grad=True)
    torch.library.opcheck(triton_conv1d._conv_fwd_op.op, (x, w, b, True, True))
    w2, b2 = (w.detach() * 2).requires_grad_(True), (b.detach() + 1).requires_grad_(True)
    torch.library.opcheck(triton_conv1d._conv_pair_op.op, (x, w, b, w2, b2, True))  # both convs, one pass each way
    torch.library.opcheck(triton_conv1d._conv_pair_stacked_op.op, (x, w, b, w2, b2, True))  # side by side
    with torch.no_grad():
        douts = [torch.randn(2, 6, 9) for _ in range(2)]
        torch.library.opcheck(triton_conv1d._conv_pair_bwd_op.op,
                              (x.detach(), w.detach(), b.detach(), w2.detach(), b2.detach(), *douts, True, True, True,
                               True), test_utils=("test_schema", "test_faketensor"))
    h = torch.randn(3, 16, requires_grad=True)
    r = torch.randn(3, 16, requires_grad=True)
    nw = torch.rand(16, requires_grad=True)
    torch.library.opcheck(triton_rms_norm._norm_fwd_op.op, (h, r, nw, 1e-5, True, torch.float32))


def tiny_vim(**kwargs):
    torch.manual_seed(0)
    return VisionMamba(img_size=32, patch_size=8, embed_dim=32, depth=2, num_classes=5, **kwargs)


def _logits_and_grads(model, images, backend, monkeypatch):
    monkeypatch.setenv("VIMAMBA_BACKEND", backend)
    model.zero_grad(set_to_none=True)
    logits = model(images)
    logits.square().mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("fused_proj", [False, True], ids=["cublas-proj", "fused-proj"])
def test_whole_model_triton_path_matches_reference(fused_proj, monkeypatch):
    from vimamba.ops import ssm_proj

    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", fused_proj)
    model = tiny_vim()
    images = torch.randn(2, 3, 32, 32)
    fast, fast_grads = _logits_and_grads(model, images, "triton", monkeypatch)
    ref, ref_grads = _logits_and_grads(model, images, "reference", monkeypatch)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    # inference takes other routes on the Triton path (both convs in one pass, scans written over their inputs)
    with torch.no_grad():
        monkeypatch.setenv("VIMAMBA_BACKEND", "triton")
        fast = model(images)
        monkeypatch.setenv("VIMAMBA_BACKEND", "reference")
        torch.testing.assert_close(fast, model(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused_proj", [False, True], ids=["batched-proj", "fused-proj"])
def test_stacked_inference_path_on_both_backends(fused_proj, monkeypatch):
    """Without autograd under autocast with the product weights cast once (on CUDA by default, forced here), a
    small problem runs the branches side by side (one conv output, batched x_proj/dt_proj products or the fused
    kernel, one out_proj product): the Triton kernels (interpreted) agree with the references, and both with
    the plain per-branch path up to bf16 rounding (each within 3% of the largest fp32 logit; 1-2% measured)."""
    from vimamba.ops import ssm_proj

    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", fused_proj)
    model = tiny_vim().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(images)
    got = {}
    for backend in ("triton", "reference"):
        monkeypatch.setenv("VIMAMBA_BACKEND", backend)
        for once in (True, False):
            model.cast_products_once = once
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                got[backend, once] = model(images).float()
    for key, logits in got.items():
        assert (logits - want).abs().max() / want.abs().max() < 3e-2, key


def _mixer_under_autocast(monkeypatch, configs):
    """A small mixer's bf16-autocast runs, one per (backend, SCAN_STATES_FP32_MIN_LENGTH) of ``configs``, each
    with autograd and once without (per branch, not side by side): {config: (output, no-grad output, input's
    gradient, every parameter's gradient...)}, and the (B, C, delta) dtypes each scan call was handed."""
    import vimamba.layers.mamba_mixer as mixer_module
    import vimamba.ops
    from vimamba.layers import BiMambaMixer

    seen = []
    scan = mixer_module.bidirectional_selective_scan_fn

    def spy(fwd, bwd, *args, **kwargs):
        seen.append((fwd.B.dtype, bwd.C.dtype, fwd.delta.dtype))
        return scan(fwd, bwd, *args, **kwargs)

    monkeypatch.setattr(mixer_module, "bidirectional_selective_scan_fn", spy)
    monkeypatch.setattr(mixer_module, "ONE_IN_PROJ_MAX_ELEMENTS", 0)
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4)
    hidden = torch.randn(2, 9, 16)
    results = {}
    for backend, rule in configs:
        monkeypatch.setenv("VIMAMBA_BACKEND", backend)
        monkeypatch.setattr(vimamba.ops, "SCAN_STATES_FP32_MIN_LENGTH", rule)
        mixer.zero_grad(set_to_none=True)
        x = hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mixer(x)
            with torch.no_grad():
                plain = mixer(hidden)
        out.float().square().sum().backward()
        results[backend, rule] = (out.float(), plain.float(), x.grad, *(p.grad for p in mixer.parameters()))
    names = ["output", "no-grad output", "input"] + [n for n, _ in mixer.named_parameters()]
    return results, seen, names


def test_mixer_with_fp32_states_matches_16_bit_states(monkeypatch):
    """With B and C handed to the Triton scan in fp32 (SCAN_STATES_FP32_MIN_LENGTH) under bf16 autocast, the scan
    reads 16-bit u and delta beside fp32 states. On the CPU they come from a cast of the bf16 product (the fp32
    accumulator route needs CUDA), exact, and the kernel computes in fp32 either way: outputs and gradients equal
    those with 16-bit states, bit for bit, with autograd and on the no-grad path."""
    results, seen, names = _mixer_under_autocast(monkeypatch, [("triton", 9), ("triton", None)])
    fp32, bf16 = torch.float32, torch.bfloat16
    assert seen == [(fp32, fp32, bf16)] * 2 + [(bf16, bf16, bf16)] * 2
    for name, got, want in zip(names, results["triton", 9], results["triton", None]):
        assert torch.equal(got, want), name


def test_mixer_with_fused_projections_and_fp32_states_close_to_reference(monkeypatch):
    """The fused projection kernel writing fp32 B and C (its accumulator, unrounded) into the Triton scan, under
    bf16 autocast, with and without autograd: the mixer's output and every gradient at least as close to the
    reference backend's (16-bit B and C) as the same kernel with 16-bit B and C is. (bf16's own distance between
    the paths reaches ~6% on dt_proj's small gradients at this size.)"""
    from vimamba.ops import ssm_proj

    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", True)
    configs = [("triton", 9), ("triton", None), ("reference", 9)]
    results, seen, names = _mixer_under_autocast(monkeypatch, configs)
    assert [dtypes[0] for dtypes in seen] == [torch.float32] * 2 + [torch.bfloat16] * 4

    def error(got, want):
        return ((got - want).norm() / want.norm()).item()

    for name, fp32, bf16, want in zip(names, *(results[c] for c in configs)):
        assert error(fp32, want) <= 1.25 * error(bf16, want) + 1e-2, name
        assert error(fp32, want) < 0.1, name


def test_projections_give_fp32_states_where_the_rule_says(monkeypatch):
    """``ssm_projections_fn`` hands B and C over in fp32 to the Triton scan of sequences of at least
    SCAN_STATES_FP32_MIN_LENGTH steps (values as x_proj's, gradients back to x_proj); delta keeps the product's
    dtype; shorter sequences, the reference backend and None get the product's dtype throughout."""
    import vimamba.ops
    from vimamba.ops import ssm_projections_fn

    torch.manual_seed(0)
    u = torch.randn(2, 16, 9)
    wx = torch.randn(3 + 2 * 4, 16, requires_grad=True)
    wdt = torch.randn(16, 3)

    def dtypes(backend):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            delta, B, C = ssm_projections_fn(u, wx, wdt, backend=backend)
        return delta.dtype, B.dtype, C.dtype, (delta, B, C)

    monkeypatch.setattr(vimamba.ops, "SCAN_STATES_FP32_MIN_LENGTH", 9)
    *kinds, (delta, B, C) = dtypes("triton")
    assert kinds == [torch.bfloat16, torch.float32, torch.float32]
    *_, (_, B16, C16) = dtypes("reference")
    assert B16.dtype == torch.bfloat16 and torch.equal(B, B16.float()) and torch.equal(C, C16.float())
    (B.sum() + 2 * C.sum()).backward()
    want = torch.cat([torch.zeros(3, 16), torch.ones(4, 16) * u.sum((0, 2)), 2 * torch.ones(4, 16) * u.sum((0, 2))])
    torch.testing.assert_close(wx.grad, want, rtol=2e-2, atol=2e-2)
    for rule in (10, None):
        monkeypatch.setattr(vimamba.ops, "SCAN_STATES_FP32_MIN_LENGTH", rule)
        assert dtypes("triton")[:3] == (torch.bfloat16,) * 3


def test_torch_compile_keeps_one_graph(monkeypatch):
    from vimamba.ops import ssm_proj

    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", True)  # every kernel of the model in the graph
    monkeypatch.setenv("VIMAMBA_BACKEND", "triton")
    model = tiny_vim().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(images)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(images), want)


def test_scan_custom_op_passes_opcheck():
    from vimamba.ops.selective_scan import triton_scan

    torch.manual_seed(0)
    u, dt, z = (torch.randn(2, 6, 11, requires_grad=True) for _ in range(3))
    A = (-torch.rand(6, 4) - 0.5).requires_grad_(True)
    Bm, Cm = torch.randn(2, 4, 11, requires_grad=True), torch.randn(2, 4, 11, requires_grad=True)
    D, bias = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    torch.library.opcheck(triton_scan._scan_fwd_op.op, (u, dt, A, Bm, Cm, D, z, bias, True, True, True, True, None))
    add = torch.randn(2, 11, 6).transpose(1, 2).requires_grad_(True)  # time-major, as a Linear layer's output
    torch.library.opcheck(triton_scan._scan_fwd_op.op, (u, dt, A, Bm, Cm, D, z, bias, True, True, True, True, add))
    with torch.no_grad():  # the inference variant writes into out (here: add itself, an in-place branch sum)
        args = [t.detach() if isinstance(t, torch.Tensor) else t for t in (u, dt, A, Bm, Cm, D, z, bias)]
        target = add.detach().clone()
        torch.library.opcheck(triton_scan._scan_fwd_out_op.op, (*args, True, True, target, target),
                              test_utils=("test_schema", "test_faketensor"))


def test_bidir_scan_custom_ops_pass_opcheck():
    from vimamba.ops.selective_scan import triton_scan

    torch.manual_seed(0)

    def scan():
        u, dt = (torch.randn(2, 9, 6).transpose(1, 2).requires_grad_(True) for _ in range(2))
        A = (-torch.rand(6, 4) - 0.5).requires_grad_(True)
        Bm, Cm = (torch.randn(2, 9, 4).transpose(1, 2).requires_grad_(True) for _ in range(2))
        return [u, dt, A, Bm, Cm, torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)]

    fwd, bwd = scan(), scan()
    z = torch.randn(2, 9, 6).transpose(1, 2).requires_grad_(True)
    torch.library.opcheck(triton_scan._bidir_fwd_op.op, (*fwd, *bwd, z, True, True))
    a_log = [[t.detach().neg().log().requires_grad_(True) if i == 2 else t for i, t in enumerate(sc)]
             for sc in (fwd, bwd)]
    torch.library.opcheck(triton_scan._bidir_fwd_op.op, (*a_log[0], *a_log[1], z, True, True, True))
    with torch.no_grad():  # the backward op on its own (the forward's checks reach it only through autograd)
        plain = [t.detach() for t in (*fwd, *bwd, z)]
        _, _, hs, hs_r = triton_scan._bidir_fwd_impl(*plain, True, True)
        douts = [torch.randn(2, 9, 6).transpose(1, 2) for _ in range(2)]
        torch.library.opcheck(triton_scan._bidir_bwd_op.op, (*plain, True, hs, hs_r, *douts, False),
                              test_utils=("test_schema", "test_faketensor"))
    with torch.no_grad():  # the inference variant writes each result over its own u, as the mixer does
        fwd = [t.detach().clone() for t in fwd]
        bwd = [t.detach().clone() for t in bwd]
        torch.library.opcheck(triton_scan._bidir_fwd_out_op.op, (*fwd, *bwd, z.detach(), True, fwd[0], bwd[0]),
                              test_utils=("test_schema", "test_faketensor"))


def test_eager_op_autograd_binds_defaults_and_keeps_context():
    """The eager autograd path (``forward(ctx, *args)`` around the op's impl and setup_context): arguments left
    out take the impl's defaults, setup_context sees the full inputs, and gradients are the op's."""
    from vimamba.ops._triton import eager_op

    seen = []

    def impl(x: torch.Tensor, scale: float = 3.0) -> torch.Tensor:
        return x * scale

    def setup_context(ctx, inputs, output):
        seen.append(len(inputs))
        ctx.scale = inputs[1]

    def backward(ctx, grad):
        return grad * ctx.scale, None

    op = eager_op("vimamba_test::scale_by", impl, backward=backward, setup_context=setup_context)
    x = torch.randn(5, requires_grad=True)
    (gx,) = torch.autograd.grad(op(x).sum(), [x])
    assert torch.equal(gx, torch.full_like(x, 3.0)) and seen == [2]
    (gx,) = torch.autograd.grad(op(x, 0.5).sum(), [x])
    assert torch.equal(gx, torch.full_like(x, 0.5)) and seen == [2, 2]
    with torch.no_grad():  # no autograd: the impl itself, no context
        assert torch.equal(op(x, 2.0), x.detach() * 2.0) and seen == [2, 2]
