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
@pytest.mark.parametrize("fused_proj", [False, True], ids=["cublas-proj", "fused-proj"])
def test_whole_model_fast_path_matches_reference(name, img_size, batch, fused_proj, monkeypatch):
    import timm

    import vimamba  # noqa: F401
    from vimamba.ops import ssm_proj

    monkeypatch.setattr(ssm_proj, "FUSED_BY_DEFAULT", fused_proj)

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
    # inference takes other routes (both convs in one pass, scans written over their inputs)
    with torch.no_grad():
        monkeypatch.setenv("VIMAMBA_BACKEND", "triton")
        fast = model(images[:1])
        monkeypatch.setenv("VIMAMBA_BACKEND", "reference")
        assert _relative_error(fast, model(images[:1])) < 1e-4


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


@pytest.mark.parametrize("stacked", [False, True], ids=["branches", "stacked"])
def test_product_weight_casts_match_autocasts_own(monkeypatch, stacked):
    """On CUDA a forward without autograd under autocast casts every mixer's product weights by one copy
    (``ProductWeightCasts``): the same logits as autocast's cast per product (bit for bit where each branch keeps
    its products; up to bf16 rounding where small problems batch them over the branches), and a weight changed
    between two replays of a captured graph is seen by the second."""
    if not stacked:
        monkeypatch.setattr("vimamba.layers.mamba_mixer.ONE_IN_PROJ_MAX_ELEMENTS", 0)
    model = _vim_tiny_cuda(monkeypatch)
    images = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.cast_products_once = False
        want = model(images)
        model.cast_products_once = None
        got = model(images)
    assert model._product_casts._buffers, "no casts were made on CUDA"
    assert torch.equal(got, want) if not stacked else _relative_error(got, want) < 2e-2
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(images)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(images)
        model.layers[3].mixer.in_proj.weight.mul_(1.5)
        graph.replay()
        torch.cuda.synchronize()
        model.cast_products_once = False
        want = model(images)
    assert torch.equal(captured, want) if not stacked else _relative_error(captured, want) < 2e-2


@pytest.mark.parametrize("fp32_states", [False, True], ids=["plain", "fp32-states-autocast"])
def test_whole_model_torch_compile(monkeypatch, fp32_states):
    """One graph for a whole Vim; also under autocast with B and C from x_proj's fp32 accumulator (torch.mm's
    out_dtype, taken at 1,024 tokens and more: lowered here to the 224 model's 197)."""
    import contextlib

    model = _vim_tiny_cuda(monkeypatch)
    if fp32_states:
        monkeypatch.setattr("vimamba.ops.SCAN_STATES_FP32_MIN_LENGTH", 1)
        monkeypatch.setattr("vimamba.layers.mamba_mixer.ONE_IN_PROJ_MAX_ELEMENTS", 0)
    images = torch.randn(8, 3, 224, 224, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if fp32_states else contextlib.nullcontext()
    with torch.no_grad(), cast:
        want = model(images)
        got = compiled(images)
    assert _relative_error(got, want) < (2e-2 if fp32_states else 1e-4)


def test_whole_training_step_cuda_graph_replay(monkeypatch):
    """``vimamba bench --cuda-graph``'s training step (forward, backward, capturable AdamW in one CUDA graph):
    a replay moves the parameters as an eager step from the same state does."""
    import copy

    from vimamba import benchmark

    model = _vim_tiny_cuda(monkeypatch).train()
    eager = copy.deepcopy(model)
    images = torch.randn(8, 3, 224, 224, device="cuda")
    targets = torch.randint(0, 1000, (8,), device="cuda")
    replay = benchmark._train_graph_of(model, images, targets, torch.bfloat16)  # three warm-up steps, then capture
    optimizer = torch.optim.AdamW(eager.parameters(), lr=1e-4, fused=True)

    def eager_step():
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            loss = torch.nn.functional.cross_entropy(eager(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # the warm-up steps
        eager_step()
    start_graph = [p.detach().clone() for p in model.parameters()]
    start_eager = [p.detach().clone() for p in eager.parameters()]
    replay()
    eager_step()
    torch.cuda.synchronize()
    names = [n for n, _ in model.named_parameters()]
    for name, p, p0, q, q0 in zip(names, model.parameters(), start_graph, eager.parameters(), start_eager):
        step_graph, step_eager = p.detach() - p0, q.detach() - q0
        assert step_graph.abs().max() > 0, f"{name} did not move in the replay"
        assert _relative_error(step_graph, step_eager) < 2e-2, name


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_fp32_scan_states_close_to_16_bit_ones(grad, monkeypatch):
    """B and C handed to the scan in fp32 (``vimamba.ops.SCAN_STATES_FP32_MIN_LENGTH``): without autograd
    straight from x_proj's fp32 accumulator (torch.mm's out_dtype), with it by a cast; either way the bf16
    model stays as close to the fp32 one as with 16-bit B and C, and gradients flow."""
    import timm

    import vimamba  # noqa: F401
    from vimamba import ops
    from vimamba.ops.ssm_proj import reference

    made = []
    real = reference.x_proj_fp32

    def spy(rows, weight, **kwargs):
        out = real(rows, weight, **kwargs)
        made.append(out is not None)
        return out

    monkeypatch.setattr(reference, "x_proj_fp32", spy)
    monkeypatch.setattr("vimamba.layers.mamba_mixer.ONE_IN_PROJ_MAX_ELEMENTS", 0)  # the branches' own products
    monkeypatch.setenv("VIMAMBA_BACKEND", "triton")
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224", img_size=512).cuda().eval()  # 1,025 tokens
    images = torch.randn(2, 3, 512, 512, device="cuda")
    monkeypatch.setattr(ops, "SCAN_STATES_FP32_MIN_LENGTH", None)  # (the default takes them from 1,024 tokens)
    with torch.no_grad():
        want = model(images)

    def run():
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad), torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(images)
        if grad:
            logits.float().square().mean().backward()
        return logits.detach().float()

    base = run()
    assert not made
    monkeypatch.setattr(ops, "SCAN_STATES_FP32_MIN_LENGTH", 1024)
    got = run()
    assert made and all(m == (not grad) for m in made)  # the accumulator without autograd, a cast with it
    assert _relative_error(got, base) < 2e-2
    assert _relative_error(got, want) < max(5e-2, 1.5 * _relative_error(base, want))
    if grad:
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
