"""What the training-speed scripts (``seg_train_speed.py``, ``det_train_speed.py``) share: one optimiser step
under autocast, its timing between CUDA events after untimed warm-up, the timing flags, the environment line,
the printed table and the JSON file; the host-side timer of the CPU scripts (``wrapper_overhead.py``,
``host_profile_cpu.py``); and the kernel table of the profiling scripts (``model_variants.py``, ``scan_sweep.py``).

The scripts import it by name: Python puts a script's own folder first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def training_step(model: torch.nn.Module, optimizer, scheduler, loss_fn: Callable[[], torch.Tensor],
                  amp: str) -> Callable[[], None]:
    """One iteration as the training loop runs it: forward and loss under autocast, backward (scaled under fp16),
    optimiser and schedule step."""
    dtype = DTYPES[amp]
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()

    return step


def time_steps(step: Callable[[], None], batch: int, warmup: int, iters: int) -> dict:
    """``warmup`` untimed calls (Triton compiles and tunes there), then ``iters`` timed between CUDA events:
    rates, per-iteration times and the peak memory allocated while timing."""
    first = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - first
    torch.cuda.reset_peak_memory_stats()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    events[0].record()
    for i in range(iters):
        step()
        events[i + 1].record()
    torch.cuda.synchronize()
    per_iter = [events[i].elapsed_time(events[i + 1]) / 1000 for i in range(iters)]
    total = events[0].elapsed_time(events[-1]) / 1000
    return {
        "it_per_s": iters / total, "img_per_s": iters * batch / total,
        "median_iter_ms": 1000 * statistics.median(per_iter), "min_iter_ms": 1000 * min(per_iter),
        "max_iter_ms": 1000 * max(per_iter), "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
        "warmup_iters": warmup, "warmup_s": warmup_s, "timed_iters": iters,
    }


def host_seconds_per_call(fn: Callable[[], object], calls: int, rounds: int = 7, warmup: int = 3) -> float:
    """Wall seconds per call of ``fn`` on the host: the median over ``rounds`` of ``calls`` back-to-back calls,
    after ``warmup`` untimed ones (no device synchronisation: for CPU work)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def param_millions(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 3)


def environment(**versions: str) -> dict:
    """Device, library versions (``versions`` after torch's) and the selective-scan backend in use."""
    import timm

    from vimamba.ops import resolve_backend, triton_available

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, **versions, "timm": timm.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "triton": triton_available(),
            "backend": resolve_backend(torch.empty(0, device="cuda"))}


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first (kernel compilation)")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations")
    parser.add_argument("--amp", choices=list(DTYPES), default="bf16")


def print_table(title: str, rows: list[dict], labels: dict[str, int]) -> None:
    """``title``, then a row per measurement: its ``labels`` (column: width), parameters, rates, time, memory."""
    head = "".join(f"{key:<{width}} " for key, width in labels.items())
    print(f"\n{title}")
    print(f"{head}{'params':>8} {'it/s':>7} {'img/s':>7} {'ms/it (median)':>15} {'peak GiB':>9}")
    for r in rows:
        print("".join(f"{r[key]:<{width}} " for key, width in labels.items())
              + f"{r['params_M']:>7.2f}M {r['it_per_s']:>7.2f} {r['img_per_s']:>7.1f} "
              f"{r['median_iter_ms']:>15.1f} {r['peak_mem_gib']:>9.2f}")


def write_results(path: str | None, env: dict, rows: list[dict]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
            f.write("\n")


def gpu_kernels(prof, top: int) -> tuple[list[dict], float]:
    """A torch.profiler run's ``top`` kernels by GPU time (name, calls, ms) and the GPU milliseconds of all."""
    events = sorted((e for e in prof.key_averages() if e.device_time_total > 0), key=lambda e: -e.device_time_total)
    kernels = [{"name": e.key[:90], "calls": e.count, "ms": e.device_time_total / 1e3} for e in events[:top]]
    return kernels, sum(e.device_time_total for e in events) / 1e3
