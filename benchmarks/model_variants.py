"""A Vim model's inference forward under several kernel settings, interleaved in one process: kernel sweeps time
the scan alone, and session 11 found their gains need not survive inside the model (docs/performance.md, v12).

    python benchmarks/model_variants.py --out benchmarks/results/model_variants-h100.json

Each variant is a dict of the selective scan's _CONFIG_OVERRIDE entries plus "module:ATTRIBUTE" constants (as
``_override_run.py`` takes them). Variants run round-robin, ``--rounds`` times each, and each round times
``--iters`` forwards with CUDA events; the table gives the median round per variant and its ratio to the
first variant. bf16 autocast, no grad, as ``vimamba bench`` runs inference.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "src"))
from _override_run import apply_settings  # noqa: E402  (benchmarks/ is this script's directory)
from _timing import gpu_kernels  # noqa: E402

# Session 12 timed three sets (model_variants-h200-v13 and -h100-v13b: the prefetches and fp32 B/C, adopted; -v14:
# prefetch distances and inputs two steps ahead, not; -v15: the decays a step early, 12% slower, removed; v16: the
# fused projections, then the default for large inputs on Hopper). Session 13 (-h100-v17): two channels a thread
# in the forward scan (the tile {"fwd": [1, 16, 2, 1, 1, 32, 1, False]}: 0.873x, with 2 warps 0.906x; Vim-S
# 0.877x), not adopted; the convs inside the projection kernel (-h200-v18: 0.839x, removed; the kernel is in commit
# dd976f0); -h200-v20: the sum over states as four chains (0.988x, Vim-S 0.972x), softplus's polynomial by Estrin's
# scheme (1.000x / 0.976x), both (0.970x / 0.971x; commit aa8aa3d has them), two lanes a channel ({"fwd": [1, 8,
# 1, 1, 2, 16, 2, False]}: 0.749x / 0.754x), one in_proj product and the stacked branches at every size
# ({"vimamba.layers.mamba_mixer:ONE_IN_PROJ_MAX_ELEMENTS": 1 << 40}: 1.025x / 0.995x): none adopted. Session 14
# (-h100-v21): two steps a chunk at one lane a channel, below. Standing here: the defaults against cuBLAS's
# projections and the 16-bit B/C of before.
VARIANTS = {
    "defaults": {},
    "cuBLAS projections": {"vimamba.ops.ssm_proj:FUSED_BY_DEFAULT": False},
    "B/C in 16 bits": {"vimamba.ops:SCAN_STATES_FP32_MIN_LENGTH": None},
    # two steps a chunk at one lane a channel, now that Triton 3.6 keeps the step axis inside the thread there
    # (the forward's u/delta/z/output pointers declared contiguous along the lanes): 343 instructions for two
    # steps (519 before, 70 MUFU where 38 are due). In the model (-h100-v21) 0.994x for Vim-Ti and 0.952x for
    # Vim-S; with two chunks ahead 0.960x / 0.950x (the longer loop body's schedule was not examined)
    "two steps a chunk": {"fwd": [2, 16, 1, 1, 1, 32, 1, False]},
    "two steps a chunk, two chunks ahead": {"fwd": [2, 16, 1, 1, 1, 32, 2, False]},
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vim_tiny_patch16_224")
    p.add_argument("--img-size", type=int, default=1248)
    p.add_argument("--batch", type=int, nargs="+", default=[64, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--variants", nargs="+", metavar="NAME", help="only these (default: all)")
    p.add_argument("--profile", action="store_true",
                   help="then one forward of each variant under torch.profiler: its largest kernels")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    chosen = {name: VARIANTS[name] for name in args.variants or VARIANTS if name in VARIANTS}
    if args.variants and len(chosen) != len(args.variants):
        raise SystemExit(f"unknown variant among {args.variants}; known: {list(VARIANTS)}")
    import timm

    import vimamba  # noqa: F401  (registers the models)

    # a variant that leaves a module constant out gets its value as imported (apply_settings keeps what it set)
    constants = {key for settings in chosen.values() for key in settings if ":" in key}
    as_imported = {key: getattr(importlib.import_module(key.partition(":")[0]), key.partition(":")[2])
                   for key in constants}
    variants = {name: {**as_imported, **settings} for name, settings in chosen.items()}
    model = timm.create_model(args.model, img_size=args.img_size).cuda().eval()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
              "img_size": args.img_size, "variants": chosen, "rows": []}
    for batch in args.batch:
        x = torch.randn(batch, 3, args.img_size, args.img_size, device="cuda")
        times = {name: [] for name in chosen}
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            logits = {}
            for name, settings in variants.items():  # compile and warm each variant once; keep its logits
                apply_settings(settings)
                logits[name] = model(x).float()
            for _ in range(args.rounds):
                for name, settings in variants.items():
                    apply_settings(settings)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(args.iters):
                        model(x)
                    end.record()
                    end.synchronize()
                    times[name].append(start.elapsed_time(end) / args.iters)
        base = statistics.median(times[next(iter(chosen))])
        print(f"\n{report['device']}: {args.model} {args.img_size}, batch {batch}, ms a forward (median of "
              f"{args.rounds} rounds of {args.iters})")
        print("| variant | ms | img/s | vs first | logits' largest difference from the first's, relative |")
        print("| --- | --- | --- | --- | --- |")
        first = logits[next(iter(chosen))]
        for name, ts in times.items():
            ms = statistics.median(ts)
            # a variant is a kernel option, not a new model: its logits must agree with the first's to bf16's
            # rounding (relative to the largest logit, as the GPU tests compare)
            diff = ((logits[name] - first).abs().max() / first.abs().max()).item()
            report["rows"].append({"batch": batch, "variant": name, "ms": ms, "ms_rounds": ts, "logits_diff": diff})
            print(f"| {name} | {ms:.2f} | {batch * 1000 / ms:.1f} | {base / ms:.3f}x | {diff:.1e} |")
        del logits, first
        if args.profile:
            for name, settings in variants.items():
                apply_settings(settings)
                kernels = _profile_forward(model, x)
                report["rows"].append({"batch": batch, "variant": name, "profile": kernels})
                print(f"\n{name}, batch {batch}: GPU {sum(k['ms'] for k in kernels):.2f} ms in its largest kernels")
                for k in kernels:
                    print(f"  {k['ms']:8.2f} ms {k['calls']:4d}x  {k['name']}")
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    apply_settings(as_imported)
    from vimamba.ops.ssm_proj import reference

    print(f"torch.mm with out_dtype (fp32 B/C without a cast): {'available' if reference._MM_OUT_DTYPE else 'missing'}")


def _profile_forward(model, x, top: int = 10) -> list:
    """One forward (bf16 autocast, no grad) under torch.profiler: its ``top`` kernels by GPU time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    return gpu_kernels(prof, top)[0]


if __name__ == "__main__":
    main()
