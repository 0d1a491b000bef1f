"""Side-by-side speed and memory of Vim and DeiT, in one process on one GPU.

Measures inference images/s and peak memory at fixed batch sizes over a range of resolutions, and
training-step images/s (forward, backward, AdamW step under autocast) at 224, for vimamba's Vim and timm's
DeiT with fused (SDPA) and eager attention. Results are ratios against DeiT with fused attention, the
comparison the paper's speed claim has to survive.

With ``graph=True`` the inference cases are also measured as replays of a CUDA graph of one forward (mode
``graph``), and the training cases as replays of a graph of the whole step (mode ``train-graph``: forward,
backward and a capturable fused AdamW update, bf16 only), for every model alike: at small images Vim's ~35
kernel launches per block make an eager step bound by the host (Python and launches) rather than the GPU, and
a graph shows what the GPU itself needs.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

__all__ = ["BenchCase", "BenchResult", "default_cases", "run_benchmark", "format_table", "plot_results", "target_ratios"]

# (image size, batch) for inference; the batches of shared/spec/anchors.md so the numbers compare.
TINY_INFER = [(224, 128), (512, 32), (738, 16), (1024, 8), (1248, 8), (1248, 64)]
SMALL_INFER = [(224, 128), (512, 32), (738, 16), (1024, 8), (1248, 32)]
TRAIN = [(224, 128)]

# name shown -> (timm or vimamba model name, attention kind or None)
MODELS = {
    "vim_tiny": ("vim_tiny_patch16_224", None),
    "vim_small": ("vim_small_patch16_224", None),
    "deit_tiny_sdpa": ("deit_tiny_patch16_224", "sdpa"),
    "deit_tiny_eager": ("deit_tiny_patch16_224", "eager"),
    "deit_small_sdpa": ("deit_small_patch16_224", "sdpa"),
    "deit_small_eager": ("deit_small_patch16_224", "eager"),
}


@dataclass
class BenchCase:
    model: str
    mode: str  # "infer", "graph" (inference replayed from a CUDA graph), "train" or "train-graph"
    img_size: int
    batch: int


@dataclass
class BenchResult:
    model: str
    mode: str
    img_size: int
    batch: int
    img_per_s: float | None = None
    ms_per_iter: float | None = None
    peak_gib: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def default_cases(models: Iterable[str], sizes: Iterable[int] | None = None, train: bool = True,
                  graph: bool = False, batch: int | None = None) -> list[BenchCase]:
    """The cases to time: inference at the anchors' (size, batch) pairs, or at ``batch`` for every size (one
    batch along the whole curve; the training steps keep theirs), and the training steps unless ``train`` is
    False."""
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be a positive number of images, got {batch}")
    sizes = set(sizes) if sizes is not None else None
    cases = []
    for name in models:
        if name not in MODELS:
            raise ValueError(f"unknown benchmark model {name!r}; choose from {', '.join(MODELS)}")
        grid = TINY_INFER if "tiny" in name else SMALL_INFER
        if batch is not None:
            grid = [(s, batch) for s in sorted({s for s, _ in grid})]
        cases += [BenchCase(name, "infer", s, b) for s, b in grid if sizes is None or s in sizes]
        if graph:
            cases += [BenchCase(name, "graph", s, b) for s, b in grid if sizes is None or s in sizes]
        if train and "eager" not in name:
            cases += [BenchCase(name, "train", s, b) for s, b in TRAIN]
            if graph:
                cases += [BenchCase(name, "train-graph", s, b) for s, b in TRAIN]
    # The target comparisons first, every model of a size together, so a cut-off run still has its ratios.
    targets = {(mode, size, batch) for _, _, _, mode, size, batch, _, _ in TARGETS}
    order = {name: i for i, name in enumerate(MODELS)}
    return sorted(cases, key=lambda c: ((c.mode, c.img_size, c.batch) not in targets, c.mode, c.img_size, c.batch,
                                        order[c.model]))


def build_model(name: str, img_size: int, device: torch.device) -> torch.nn.Module:
    import timm

    import vimamba  # noqa: F401 - registers the Vim models

    arch, attention = MODELS[name]
    model = timm.create_model(arch, img_size=img_size, num_classes=1000)
    if attention == "eager":
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
    return model.to(device)


def _time_cuda(fn: Callable[[], None], warmup: int, iters: int) -> float:
    """Milliseconds per call, by CUDA events around ``iters`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


ROUNDS = 5  # timing windows per case (see median_of_rounds)


def median_of_rounds(step: Callable[[], None], min_ms: float, timer=_time_cuda) -> tuple[float, int, list[float]]:
    """(median ms per call, calls per window, every window's ms sorted) over ROUNDS windows of >= min_ms / ROUNDS
    each, after a probe that sizes them. Why several windows: with one window per case, the host-bound eager
    rows (Vim-Ti at 224) ran 13.9-23.5 ms a batch in three runs on the same lent H200 (session 10); the spread
    of the windows within a run shows how much of such a difference is noise. ``timer(fn, warmup, iters)``:
    milliseconds per call (a fake in the tests)."""
    probe = timer(step, 1, 2)
    iters = max(2, min(200, math.ceil(min_ms / ROUNDS / max(probe, 1e-3))))
    timer(step, 2, 1)
    rounds = sorted(timer(step, 0, iters) for _ in range(ROUNDS))
    return rounds[len(rounds) // 2], iters, rounds


def _graph_of(forward: Callable[[], object], autocast) -> Callable[[], None]:
    """A CUDA graph of one inference forward (warmed up on a side stream, as PyTorch's graph docs ask), returned
    as its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode(), autocast:
        for _ in range(3):  # first calls compile kernels and fill caches outside the capture
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode(), autocast:
        forward()
    return graph.replay


def _train_graph_of(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                    dtype: torch.dtype) -> Callable[[], None]:
    """A CUDA graph of one whole training step (forward, backward, fused AdamW update), captured the way
    PyTorch's CUDA-graph notes capture a whole network: warm-up steps on a side stream, gradients set to None
    before the capture so the graph allocates them, a capturable optimizer, autocast without its weight-cast
    cache (the casts are recorded in the graph). Returned as its replay."""
    if dtype != torch.bfloat16:
        raise ValueError(f"graph-captured training steps are timed in bf16 only, not {dtype}: fp16 needs a "
                         "GradScaler, whose inf check waits on the host")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True, capturable=True)

    def step():
        with torch.autocast("cuda", dtype=dtype, cache_enabled=False):
            loss = torch.nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # compile and autotune the kernels, create the optimizer's state, outside the capture
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def run_case(case: BenchCase, dtype: torch.dtype, device: torch.device, min_ms: float = 500.0) -> BenchResult:
    result = BenchResult(case.model, case.mode, case.img_size, case.batch)
    model = None
    try:
        torch.cuda.empty_cache()
        model = build_model(case.model, case.img_size, device)
        images = torch.randn(case.batch, 3, case.img_size, case.img_size, device=device)
        autocast = torch.autocast("cuda", dtype=dtype)
        if case.mode == "infer":
            model.eval()

            def step():
                with torch.inference_mode(), autocast:
                    model(images)
        elif case.mode == "graph":
            model.eval()
            step = _graph_of(lambda: model(images), autocast)
        elif case.mode == "train-graph":
            model.train()
            targets = torch.randint(0, 1000, (case.batch,), device=device)
            step = _train_graph_of(model, images, targets, dtype)
        elif case.mode == "train":
            model.train()
            targets = torch.randint(0, 1000, (case.batch,), device=device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

            def step():
                with autocast:
                    loss = torch.nn.functional.cross_entropy(model(images), targets)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
        else:
            raise ValueError(f"unknown benchmark mode {case.mode!r}: infer, graph, train or train-graph")

        step()  # first call: kernel compilation and autotuning, not timed
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ms, iters, rounds = median_of_rounds(step, min_ms)
        result.ms_per_iter = ms
        result.img_per_s = case.batch / ms * 1000.0
        result.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        result.extra["iters"] = iters
        result.extra["ms_rounds"] = [round(r, 4) for r in rounds]
    except torch.cuda.OutOfMemoryError:
        result.error = "out of memory"
    except Exception as err:  # noqa: BLE001 - one failing case must not lose the rest of the table
        result.error = f"{type(err).__name__}: {err}"[:300]
    finally:
        model = step = None  # the step closures share these cells: model and graph go before the next case
        gc.collect()  # a captured graph's memory pool lives until the graph object is collected
        torch.cuda.empty_cache()
    return result


def environment(dtype: torch.dtype) -> dict:
    import timm

    import vimamba

    info = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "vimamba": vimamba.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "vimamba_backend": os.environ.get("VIMAMBA_BACKEND", "auto"),
    }
    with contextlib.suppress(ImportError):
        import triton

        info["triton"] = triton.__version__
    return info


def run_benchmark(cases: list[BenchCase], dtype: torch.dtype = torch.bfloat16,
                  progress: Callable[[BenchResult], None] | None = None) -> list[BenchResult]:
    if not torch.cuda.is_available():
        raise RuntimeError("the benchmark needs a CUDA GPU; none is visible to PyTorch")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    results = []
    for case in cases:
        result = run_case(case, dtype, device)
        results.append(result)
        if progress:
            progress(result)
    return results


def _lookup(results, model, mode, size, batch):
    for r in results:
        if (r.model, r.mode, r.img_size, r.batch) == (model, mode, size, batch) and r.img_per_s:
            return r
    return None


# (description, vim model, deit model, mode, size, batch, speed target, memory target or None)
TARGETS = [
    ("Vim-Ti inference 1248, batch 64", "vim_tiny", "deit_tiny_sdpa", "infer", 1248, 64, 1.7, 1.0),
    ("Vim-Ti inference 224, batch 128", "vim_tiny", "deit_tiny_sdpa", "infer", 224, 128, 1.0, None),
    ("Vim-Ti training step 224, batch 128", "vim_tiny", "deit_tiny_sdpa", "train", 224, 128, 0.8, None),
    ("Vim-S inference 1248, batch 32", "vim_small", "deit_small_sdpa", "infer", 1248, 32, 1.5, None),
    # the same targets with both models replayed from CUDA graphs (``vimamba bench --cuda-graph``)
    ("Vim-Ti inference 224, batch 128, graphs", "vim_tiny", "deit_tiny_sdpa", "graph", 224, 128, 1.0, None),
    ("Vim-Ti inference 1248, batch 64, graphs", "vim_tiny", "deit_tiny_sdpa", "graph", 1248, 64, 1.7, 1.0),
    ("Vim-S inference 1248, batch 32, graphs", "vim_small", "deit_small_sdpa", "graph", 1248, 32, 1.5, None),
    ("Vim-Ti training step 224, batch 128, graphs", "vim_tiny", "deit_tiny_sdpa", "train-graph", 224, 128, 0.8, None),
]


def target_ratios(results: list[BenchResult]) -> list[dict]:
    rows = []
    for desc, vim, deit, mode, size, batch, speed_target, mem_target in TARGETS:
        a, b = _lookup(results, vim, mode, size, batch), _lookup(results, deit, mode, size, batch)
        if not (a and b):
            continue
        speed = a.img_per_s / b.img_per_s
        memory = a.peak_gib / b.peak_gib
        rows.append(dict(
            measure=desc, speed_ratio=round(speed, 3), speed_target=speed_target, speed_met=speed >= speed_target,
            memory_ratio=round(memory, 3), memory_target=mem_target,
            memory_met=None if mem_target is None else memory <= mem_target))
    return rows


def format_table(results: list[BenchResult]) -> str:
    lines = [f"{'model':<18}{'mode':<7}{'size':>6}{'batch':>7}{'img/s':>11}{'ms/iter':>10}{'peak GiB':>10}"]
    for r in results:
        if r.error:
            lines.append(f"{r.model:<18}{r.mode:<7}{r.img_size:>6}{r.batch:>7}  {r.error}")
        else:
            lines.append(f"{r.model:<18}{r.mode:<7}{r.img_size:>6}{r.batch:>7}{r.img_per_s:>11,.1f}"
                         f"{r.ms_per_iter:>10.2f}{r.peak_gib:>10.2f}")
    ratios = target_ratios(results)
    if ratios:
        lines.append("")
        lines.append(f"{'target (vs DeiT with SDPA)':<42}{'speed':>8}{'goal':>7}{'memory':>9}{'goal':>7}")
        for row in ratios:
            mem_goal = "" if row["memory_target"] is None else f"<={row['memory_target']}"
            lines.append(f"{row['measure']:<42}{row['speed_ratio']:>7.2f}x{'>=' + str(row['speed_target']):>7}"
                         f"{row['memory_ratio']:>8.2f}x{mem_goal:>7}"
                         f"  {'met' if row['speed_met'] and row['memory_met'] is not False else 'MISSED'}")
    return "\n".join(lines)


def plot_results(results: list[BenchResult], path: str | os.PathLike, title: str = "") -> None:
    """Images/s and peak memory against resolution, one line per model (as the paper's Figure 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    models = sorted({r.model for r in results})
    for name in models:
        # One batch per resolution: the largest measured, so 1248 shows the batch-64/32 case.
        points = {}
        for r in results:
            if r.model == name and r.mode == "infer" and r.img_per_s:
                if r.img_size not in points or r.batch > points[r.img_size].batch:
                    points[r.img_size] = r
        if not points:
            continue
        sizes = sorted(points)
        style = "-o" if name.startswith("vim") else ("--s" if "sdpa" in name else ":^")
        ax_speed.plot(sizes, [points[s].img_per_s for s in sizes], style, label=name)
        ax_mem.plot(sizes, [points[s].peak_gib for s in sizes], style, label=name)
    for ax, ylabel in ((ax_speed, "images / s (log)"), (ax_mem, "peak GPU memory, GiB (log)")):
        ax.set_xlabel("image size (pixels per side)")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title or "Inference speed and memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(results: list[BenchResult], env: dict, path: str | os.PathLike) -> None:
    payload = {"environment": env, "results": [asdict(r) for r in results], "targets": target_ratios(results)}
    Path(path).write_text(json.dumps(payload, indent=2))
