"""Where the time of a small batch goes: host (Python, dispatch, kernel launches) against GPU.

    PYTHONPATH=src python benchmarks/host_overhead.py --out results/host_overhead.json [--size 224 --batch 128]
    PYTHONPATH=src python benchmarks/host_overhead.py --train --out results/host_overhead_train.json

For Vim-Ti and timm's DeiT-Ti (SDPA), inference under bf16 autocast: milliseconds per batch run eagerly
(events around back-to-back calls: the host's launch rate shows when it is the slower side) and as the
replay of a CUDA graph of the same forward (the GPU's own time, launches gone). Their difference is the
host overhead per batch. Then a cProfile of Vim's eager forward, the functions with the most own time, to
say where the host spends it. Prints a table; writes JSON.

``--train``: the bench's training step instead (forward, backward, fused AdamW, bf16 autocast): milliseconds
per step run eagerly against the GPU time of its kernels (torch.profiler, summed), the kernel launches per
step, and the cProfile of Vim's step.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "src"))

from vimamba import benchmark  # noqa: E402


def _graph_ms(model, images, dtype):
    """Milliseconds per replay of a CUDA graph of one forward (captured after warm-up on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        for _ in range(3):
            model(images)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        model(images)
    return benchmark._time_cuda(graph.replay, warmup=3, iters=30)


def _train_step(model, images, dtype):
    targets = torch.randint(0, 1000, (images.shape[0],), device=images.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _kernel_profile(step, steps=3):
    """(GPU milliseconds per step summed over kernels, kernel launches per step), by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time_total for e in kernels)
    return gpu_us / 1000.0 / steps, len(kernels) / steps


def _cprofile(step, steps):
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
    return text.getvalue()


def _inference(model, images, dtype):
    """(step, row): the eager forward against the replay of its CUDA graph."""
    model.eval()

    def step():
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
            model(images)

    eager = benchmark._time_cuda(step, warmup=3, iters=20)
    graph = _graph_ms(model, images, dtype)
    return step, {"eager_ms": eager, "graph_ms": graph, "host_overhead_ms": eager - graph}


def _training(model, images, dtype):
    """(step, row): the eager training step against the GPU time of its kernels, and its launches."""
    model.train()
    step = _train_step(model, images, dtype)
    eager = benchmark._time_cuda(step, warmup=3, iters=10)
    gpu_ms, launches = _kernel_profile(step)
    return step, {"eager_ms": eager, "gpu_kernel_ms": gpu_ms, "launches_per_step": launches}


# mode -> (title, table columns as (header, row key, format))
_TABLES = {
    "infer": ("", [("eager ms/batch", "eager_ms", ".2f"), ("CUDA-graph ms/batch", "graph_ms", ".2f"),
                   ("host overhead ms", "host_overhead_ms", ".2f")]),
    "train": ("training step ", [("eager ms/step", "eager_ms", ".2f"), ("kernel ms/step", "gpu_kernel_ms", ".2f"),
                                 ("launches/step", "launches_per_step", ".0f")]),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--train", action="store_true", help="the training step instead of inference")
    args = p.parse_args()
    mode = "train" if args.train else "infer"
    dtype = torch.bfloat16
    device = torch.device("cuda")
    report = {"env": benchmark.environment(dtype), "size": args.size, "batch": args.batch, "mode": mode,
              "models": {}}
    for name in ("vim_tiny", "deit_tiny_sdpa"):
        model = benchmark.build_model(name, args.size, device)
        images = torch.randn(args.batch, 3, args.size, args.size, device=device)
        step, row = (_training if args.train else _inference)(model, images, dtype)
        if name.startswith("vim"):
            row["cprofile_top_tottime"] = _cprofile(step, 3 if args.train else 5)
        report["models"][name] = row
        del model, step
        torch.cuda.empty_cache()
    title, columns = _TABLES[mode]
    print(f"device: {report['env']['device']}, {title}{args.size}x{args.size}, batch {args.batch}, bf16")
    print("| model | " + " | ".join(c[0] for c in columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for name, row in report["models"].items():
        print(f"| {name} | " + " | ".join(format(row[key], fmt) for _, key, fmt in columns) + " |")
    print(report["models"]["vim_tiny"]["cprofile_top_tottime"][:8000])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
