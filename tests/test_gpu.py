"""Fast (Triton) path against the reference at full size, on a CUDA GPU.

Run on a GPU machine with ``PYTHONPATH=src python -m pytest -m gpu tests/test_gpu.py``; skipped elsewhere.
Tolerances: the two paths differ only in summation order (fp32 state in both), so fp32 logits agree to
~1e-4 relative; gradients of 24 stacked layers to ~1e-3 of each tensor's scale.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-12)).item()


def _run(model, images, backend, monkeypatch):
    monkeypatch.setenv("VIMAMBA_BACKEND", backend)
    model.zero_grad(set_to_none=True)
    logits = model(images)
    logits.float().square().mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return logits.detach(), grads


@pytest.mark.parametrize("name,img_size,batch", [
    ("vim_tiny_patch16_224", 1248, 1),
    ("vim_small_patch16_224", 224, 128),
])
def test_whole_model_fast_path_matches_reference(name, img_size, batch, monkeypatch):
    import timm

    import vimamba  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model(name, img_size=img_size).cuda()
    # The reference scan keeps every step's state for autograd: block by block, batch 128 fits.
    model.set_grad_checkpointing(True)
    images = torch.randn(batch, 3, img_size, img_size, device="cuda")
    fast_logits, fast_grads = _run(model, images, "triton", monkeypatch)
    ref_logits, ref_grads = _run(model, images, "reference", monkeypatch)
    assert _relative_error(fast_logits, ref_logits) < 1e-4
    worst = max(((_relative_error(fast_grads[n], ref_grads[n]), n) for n in ref_grads))
    assert worst[0] < 2e-3, f"largest relative gradient error {worst[0]:.2e} in {worst[1]}"


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_whole_model_autocast_close_to_fp32(dtype, monkeypatch):
    import timm

    import vimamba  # noqa: F401

    monkeypatch.setenv("VIMAMBA_BACKEND", "triton")
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224").cuda().eval()
    images = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.no_grad():
        want = model(images)
        with torch.autocast("cuda", dtype=dtype):
            got = model(images)
    assert _relative_error(got, want) < 5e-2


def _vim_tiny_cuda(monkeypatch):
    import timm

    import vimamba  # noqa: F401

    monkeypatch.setenv("VIMAMBA_BACKEND", "triton")
    torch.manual_seed(0)
    return timm.create_model("vim_tiny_patch16_224").cuda().eval()


def test_whole_model_cuda_graph_replay(monkeypatch):
    model = _vim_tiny_cuda(monkeypatch)
    static = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # first calls compile the kernels outside the capture
            for _ in range(2):
                model(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(static)
        fresh = torch.randn_like(static)
        static.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        want = model(fresh)
    assert _relative_error(captured, want) < 1e-3


def test_whole_model_torch_compile(monkeypatch):
    model = _vim_tiny_cuda(monkeypatch)
    images = torch.randn(8, 3, 224, 224, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        want = model(images)
        got = compiled(images)
    assert _relative_error(got, want) < 1e-4
