"""The plain-PyTorch references against naive float64 loops, values and gradients.

Tolerances: the references run in fp32 for fp32/fp16/bf16 inputs, so against fp64 loops fp32 inputs agree to
about 1e-5 relative; half-precision inputs are compared with the fp32 result of the same (rounded) inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vimamba.ops import add_rms_norm_ref, causal_conv1d_ref, rms_norm_ref, selective_scan_ref


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Element by element, in float64, straight from the recurrence. Returns (y, last_state)."""
    u, delta, A = u.double(), delta.double(), A.double()
    batch, dim, length = u.shape
    state_size = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.double()[None, :, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))

    def coeff(mat, b, d, t):
        if mat.dim() == 2:
            return mat[d].double()
        if mat.dim() == 3:
            return mat[b, :, t].double()
        groups = mat.shape[1]
        return mat[b, d // (dim // groups), :, t].double()

    ys, last = [], []
    for b in range(batch):
        rows, lasts = [], []
        for d in range(dim):
            s = torch.zeros(state_size, dtype=torch.float64)
            row = []
            for t in range(length):
                s = torch.exp(delta[b, d, t] * A[d]) * s + delta[b, d, t] * coeff(B, b, d, t) * u[b, d, t]
                y = (coeff(C, b, d, t) * s).sum()
                if D is not None:
                    y = y + D[d].double() * u[b, d, t]
                if z is not None:
                    zz = z[b, d, t].double()
                    y = y * zz * torch.sigmoid(zz)
                row.append(y)
            rows.append(torch.stack(row))
            lasts.append(s)
        ys.append(torch.stack(rows))
        last.append(torch.stack(lasts))
    return torch.stack(ys), torch.stack(last)


def make_scan_inputs(batch, dim, state, length, bc="variable", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale)

    u = rnd(batch, dim, length).to(dtype)
    delta = (rnd(batch, dim, length, scale=0.5) - 1.0).to(dtype)
    A = -torch.exp(rnd(dim, state, scale=0.5))
    shapes = {"variable": (batch, state, length), "grouped": (batch, 2, state, length), "constant": (dim, state)}
    B = rnd(*shapes[bc]).to(dtype if bc != "constant" else torch.float32)
    C = rnd(*shapes[bc]).to(dtype if bc != "constant" else torch.float32)
    D = rnd(dim)
    z = rnd(batch, dim, length).to(dtype)
    delta_bias = rnd(dim, scale=0.5)
    return u, delta, A, B, C, D, z, delta_bias


@pytest.mark.parametrize("length", [1, 7, 197])
@pytest.mark.parametrize("bc", ["variable", "grouped", "constant"])
@pytest.mark.parametrize("options", ["all", "bare"])
def test_scan_matches_naive_loop(length, bc, options):
    u, delta, A, B, C, D, z, delta_bias = make_scan_inputs(2, 4, 3, length, bc)
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=True) if options == "all" else {}
    if options == "bare":
        delta = delta.abs()  # without softplus the step sizes must already be positive, or states blow up
    y, last = selective_scan_ref(u, delta, A, B, C, return_last_state=True, **kwargs)
    y_ref, last_ref = naive_scan(u, delta, A, B, C, **kwargs)
    assert y.dtype == torch.float32 and y.shape == u.shape
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.double(), last_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 7, 197])
def test_scan_gradients_match_naive_loop(length):
    inputs = make_scan_inputs(2, 3, 4, length)
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    u, delta, A, B, C, D, z, delta_bias = leaves
    y = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, grad_out)

    leaves64 = [t.detach().double().requires_grad_(True) for t in inputs]
    y_ref, _ = naive_scan(*leaves64[:5], D=leaves64[5], z=leaves64[6], delta_bias=leaves64[7], delta_softplus=True)
    grads_ref = torch.autograd.grad(y_ref, leaves64, grad_out.double())
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    for name, got, want in zip(names, grads, grads_ref):
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5, msg=lambda m: f"grad {name}: {m}")


def test_scan_gradcheck_float64():
    inputs = make_scan_inputs(1, 2, 3, 5)
    leaves = tuple(t.double().requires_grad_(True) for t in inputs)

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scan_half_inputs_accumulate_in_fp32(dtype):
    u, delta, A, B, C, D, z, delta_bias = make_scan_inputs(2, 8, 16, 64, dtype=dtype)
    y = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)
    assert y.dtype == dtype
    y32 = selective_scan_ref(u.float(), delta.float(), A, B.float(), C.float(), D, z.float(), delta_bias,
                             delta_softplus=True)
    torch.testing.assert_close(y.float(), y32, rtol=1e-2, atol=1e-2)


def test_scan_rejects_mismatched_shapes():
    u, delta, A, B, C, *_ = make_scan_inputs(2, 4, 3, 7)
    with pytest.raises(ValueError, match="delta must have u's shape"):
        selective_scan_ref(u, delta[..., :5], A, B, C)
    with pytest.raises(ValueError, match=r"B must be \(batch=2, state=3, length=7\)"):
        selective_scan_ref(u, delta, A, B[..., :6], C)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_ref(u, delta, A[:3], B, C)
    with pytest.raises(ValueError, match="D must be"):
        selective_scan_ref(u, delta, A, B, C, D=torch.ones(5))


@pytest.mark.parametrize("length", [1, 2, 7, 30])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_matches_loop(length, activation):
    x = torch.randn(2, 5, length, dtype=torch.float64)
    weight = torch.randn(5, 4, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    out = causal_conv1d_ref(x, weight, bias, activation)
    want = torch.zeros_like(x)
    for t in range(length):
        for k in range(4):
            src = t - 3 + k
            if src >= 0:
                want[:, :, t] += weight[:, k] * x[:, :, src]
    want += bias[None, :, None]
    if activation:
        want = F.silu(want)
    torch.testing.assert_close(out, want)


def test_causal_conv1d_is_causal():
    x = torch.randn(1, 3, 10, requires_grad=True)
    out = causal_conv1d_ref(x, torch.randn(3, 4), None, "silu")
    out[0, :, 4].sum().backward()
    assert torch.all(x.grad[..., 5:] == 0) and torch.any(x.grad[..., 1:5] != 0)


def test_causal_conv1d_rejects_bad_activation():
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_ref(torch.randn(1, 2, 3), torch.randn(2, 4), None, "relu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm(dtype):
    x = torch.randn(2, 7, 16).to(dtype)
    residual = torch.randn(2, 7, 16)
    weight = torch.rand(16) + 0.5
    out, stream = add_rms_norm_ref(x, residual, weight, eps=1e-5, residual_in_fp32=True)
    want_stream = residual.double() + x.double()
    want = want_stream / torch.sqrt(want_stream.pow(2).mean(-1, keepdim=True) + 1e-5) * weight.double()
    assert stream.dtype == torch.float32 and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(stream.double(), want_stream, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    out0, stream0 = add_rms_norm_ref(x, None, weight)
    assert stream0.dtype == torch.float32
    torch.testing.assert_close(out0, rms_norm_ref(x.float(), weight).to(dtype))


def test_reverse_equals_flipped_forward():
    u, delta, A, B, C, D, z, delta_bias = make_scan_inputs(2, 4, 3, 9)
    y, last = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, return_last_state=True, reverse=True)
    y_f, last_f = selective_scan_ref(u.flip(-1), delta.flip(-1), A, B.flip(-1), C.flip(-1), D, z.flip(-1),
                                     delta_bias, True, return_last_state=True)
    torch.testing.assert_close(y, y_f.flip(-1))
    torch.testing.assert_close(last, last_f)
    x, w = torch.randn(2, 3, 8), torch.randn(3, 4)
    torch.testing.assert_close(causal_conv1d_ref(x, w, None, "silu", reverse=True),
                               causal_conv1d_ref(x.flip(-1), w, None, "silu").flip(-1))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_scan_add_is_summed_before_one_rounding(reverse):
    """add= gives scan + add, rounded once to u's dtype (exact sum in float64; one bf16 rounding)."""
    u, delta, A, B, C, D, z, delta_bias = (t.double() if t is not None else None
                                           for t in make_scan_inputs(2, 4, 3, 9))
    add = torch.randn(2, 4, 9, dtype=torch.float64)
    y = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, reverse=reverse)
    y_add = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, reverse=reverse, add=add)
    torch.testing.assert_close(y_add, y + add, rtol=1e-12, atol=1e-12)
    y_bf16 = selective_scan_ref(u.bfloat16(), delta, A, B, C, D, z, delta_bias, True, reverse=reverse,
                                add=add.bfloat16())
    want = (selective_scan_ref(u.bfloat16().float(), delta, A, B, C, D, z, delta_bias, True, reverse=reverse)
            + add.bfloat16().float()).bfloat16()
    torch.testing.assert_close(y_bf16, want, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="add must have u's shape"):
        selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, add=add[..., :5])
