"""The experimental time-parallel backward (``ops/selective_scan/time_parallel.py``) against the reference's
autograd: every gradient, each dtype, both directions, odd lengths, the optional inputs absent, A given as A_log.

Without a GPU the kernel runs in Triton's interpreter (conftest.py sets TRITON_INTERPRET=1); tolerances and the
error measure are the shipped scan's (test_ops_selective_scan_triton.py). Its timing against the shipped backward
is ``benchmarks/time_parallel_probe.py`` (GPU).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_ops_selective_scan_triton import DEVICE, _check, _inputs  # noqa: E402

from vimamba.ops.selective_scan.reference import selective_scan_ref  # noqa: E402
from vimamba.ops.selective_scan.time_parallel import MAX_LENGTH, selective_scan_bwd_time_parallel  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _compare(batch, dim, state, length, dtype, *, reverse, use=NAMES, softplus=True, a_log=False, seed=0,
             channels_per_program=2, time_major=True):
    inputs = _inputs(batch, dim, state, length, dtype, seed=seed, time_major=time_major)
    if a_log:
        inputs["A"] = torch.log(-inputs["A"])
    inputs = {k: (v if k in use else None) for k, v in inputs.items()}
    dout = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(DEVICE)
    got = dict(zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), selective_scan_bwd_time_parallel(
        inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
        inputs["delta_bias"], dout, softplus, reverse, a_log, channels_per_program)))
    ref = {k: v.float().detach().requires_grad_(True) for k, v in inputs.items() if v is not None}
    A = -torch.exp(ref["A"]) if a_log else ref["A"]
    y = selective_scan_ref(ref["u"], ref["delta"], A, ref["B"], ref["C"], ref.get("D"), ref.get("z"),
                           ref.get("delta_bias"), delta_softplus=softplus, reverse=reverse)
    want = dict(zip(ref, torch.autograd.grad(y, list(ref.values()), dout.float())))
    for name in NAMES:
        if name not in use:
            assert got[name] is None, name
            continue
        assert got[name].dtype == (inputs[name].dtype if name in ("u", "delta", "z") else torch.float32), name
        _check(name, got[name], want[name], dtype)


@pytest.mark.parametrize("length", [1, 2, 7, 197])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradients(length, dtype, reverse):
    _compare(2, 4, 16, length, dtype, reverse=reverse, seed=length)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_optional_inputs_absent_no_softplus(reverse):
    _compare(2, 4, 8, 13, torch.float32, reverse=reverse, use=("u", "delta", "A", "B", "C"), softplus=False, seed=3)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_a_log_and_length_contiguous_inputs(reverse):
    """A passed as A_log (the mixer's parameter), inputs laid out length-contiguous, one channel per program."""
    _compare(1, 3, 4, 11, torch.float32, reverse=reverse, a_log=True, seed=5, channels_per_program=1,
             time_major=False)


def test_refuses_what_it_cannot_do():
    x = _inputs(1, 4, 16, 3, torch.float32)
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    with pytest.raises(ValueError, match="must divide"):
        selective_scan_bwd_time_parallel(*args, x["u"], channels_per_program=3)
    with pytest.raises(ValueError, match="dout has shape"):
        selective_scan_bwd_time_parallel(*args, x["u"][:, :, :2])
    long = _inputs(1, 2, 16, MAX_LENGTH + 1, torch.float32)
    with pytest.raises(NotImplementedError, match="over its"):
        selective_scan_bwd_time_parallel(*(long[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                                         long["u"], channels_per_program=2)
    odd = _inputs(1, 2, 6, 3, torch.float32)
    with pytest.raises(NotImplementedError, match="power of 2"):
        selective_scan_bwd_time_parallel(*(odd[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                                         odd["u"], channels_per_program=2)
