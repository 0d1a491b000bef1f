"""Training speed and peak memory of Vim + UperNet at 512x512 on one GPU (the paper's ADE20K setting).

For Vim-Ti and Vim-S with the ADE20K presets' heads (150 classes, auxiliary FCN head, drop path 0.1), batch 8,
bf16 autocast, AdamW with the preset's parameter groups: a few warm-up iterations (Triton compiles and tunes
its kernels there), then N timed iterations (forward, loss, backward, optimiser and schedule step) between CUDA
events. Inputs are random tensors already on the GPU, so data loading is not in the figure. No pretrained
weights are needed.

    PYTHONPATH=src python benchmarks/seg_train_speed.py --out benchmarks/results/seg_train_speed-h100.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from _timing import (add_timing_arguments, environment, param_millions, print_table, time_steps, training_step,
                     write_results)

from vimamba.seg import build_seg_model, resolve_seg_config, seg_loss
from vimamba.seg.optim import build_seg_optimizer

PRESETS = {"vim_tiny": "ade20k-vim-ti", "vim_small": "ade20k-vim-s"}


def measure(name: str, batch: int, size: int, warmup: int, iters: int, amp: str, num_classes: int) -> dict:
    config = resolve_seg_config(PRESETS[name], overrides={"data": "synthetic", "crop_size": size, "batch_size": batch})
    torch.manual_seed(0)
    model = build_seg_model(config, num_classes).cuda().train()
    optimizer, scheduler = build_seg_optimizer(model, config)
    images = torch.randn(batch, 3, size, size, device="cuda")
    labels = torch.randint(0, num_classes, (batch, size, size), device="cuda")
    labels[:, :, : size // 16] = 255  # some ignored pixels, as ADE20K's "other"
    step = training_step(model, optimizer, scheduler, lambda: seg_loss(model(images), labels, config.aux_weight), amp)
    return {"model": name, "preset": PRESETS[name], "img_size": size, "batch": batch, "amp": amp,
            "params_M": param_millions(model), **time_steps(step, batch, warmup, iters)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    add_timing_arguments(parser)
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--out", default=None, metavar="JSON", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("seg_train_speed: needs a CUDA GPU", file=sys.stderr)
        return 2
    env = environment()
    print(json.dumps(env), flush=True)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.batch, args.size, args.warmup, args.iters, args.amp, args.num_classes))
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    print_table(f"Vim + UperNet training, {args.size}x{args.size}, batch {args.batch}, {args.amp}, {env['device']}",
                rows, {"model": 10})
    write_results(args.out, env, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
