"""vimamba bench: Vim against timm's DeiT (fused SDPA and eager attention), speed and memory, one process.

Inference images/s and peak memory at fixed batch sizes for 224 to 1248 pixels, and a training step
(forward, backward, AdamW) at 224, all under autocast. Prints a table with the ratios that the project's
targets are stated in, and writes the results as JSON and a PNG like the paper's speed/memory figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import benchmark
from .common import CLIError

NAME = "bench"
HELP = "speed and memory against timm DeiT on the GPU"

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(benchmark.MODELS), choices=list(benchmark.MODELS),
                        metavar="NAME", help=f"what to measure (default: all of {', '.join(benchmark.MODELS)})")
    parser.add_argument("--img-size", nargs="+", type=int, metavar="SIZE",
                        help="only these inference sizes (default: 224 512 738 1024 1248)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="inference batch for every size (default: the anchors' batches, 128 at 224 down to 8 at "
                             "1024 and 1248, and 64 / 32 at 1248 for the targets); training steps keep batch 128")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step measurements")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time every inference case as the replay of a CUDA graph (mode 'graph'), and every "
                             "training step as the replay of a graph of the whole step (mode 'train-graph', bf16), all "
                             "models alike: the GPU's own time, without Python and launch overhead")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="autocast dtype (default: bf16)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"),
                        help="folder for bench.json and bench.png (default: benchmarks/results)")
    parser.add_argument("--tag", default="", help="suffix for the file names, e.g. the device")


def run(args: argparse.Namespace) -> int:
    try:
        cases = benchmark.default_cases(args.models, args.img_size, train=not args.no_train, graph=args.cuda_graph,
                                        batch=args.batch_size)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if not torch.cuda.is_available():
        raise CLIError("bench measures GPU speed and needs a CUDA device; none is visible to PyTorch")
    dtype = DTYPES[args.dtype]
    env = benchmark.environment(dtype)
    print(f"device: {env['device']}  torch {env['torch']}  triton {env.get('triton', '-')}  timm {env['timm']}  "
          f"dtype {env['dtype']}", flush=True)

    args.output.mkdir(parents=True, exist_ok=True)
    stem = f"bench{'-' + args.tag if args.tag else ''}"
    done: list[benchmark.BenchResult] = []

    def report(result: benchmark.BenchResult) -> None:
        print(benchmark.format_table([result]).splitlines()[-1], flush=True)
        done.append(result)
        benchmark.write_json(done, env, args.output / f"{stem}.json")  # a cut-off run keeps what it measured

    results = benchmark.run_benchmark(cases, dtype, progress=report)
    print()
    print(benchmark.format_table(results))
    benchmark.plot_results(results, args.output / f"{stem}.png",
                           title=f"vimamba vs timm DeiT, {env['device']}, {env['dtype']} autocast")
    print(f"\nwrote {args.output / (stem + '.json')} and {args.output / (stem + '.png')}")
    return 0
