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
import platform
import statistics
import sys
import time

import torch

from vimamba.seg import build_seg_model, resolve_seg_config, seg_loss
from vimamba.seg.optim import build_seg_optimizer

PRESETS = {"vim_tiny": "ade20k-vim-ti", "vim_small": "ade20k-vim-s"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def measure(name: str, batch: int, size: int, warmup: int, iters: int, amp: str, num_classes: int) -> dict:
    config = resolve_seg_config(PRESETS[name], overrides={"data": "synthetic", "crop_size": size, "batch_size": batch})
    torch.manual_seed(0)
    model = build_seg_model(config, num_classes).cuda().train()
    optimizer, scheduler = build_seg_optimizer(model, config)
    dtype = DTYPES[amp]
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    images = torch.randn(batch, 3, size, size, device="cuda")
    labels = torch.randint(0, num_classes, (batch, size, size), device="cuda")
    labels[:, :, : size // 16] = 255  # some ignored pixels, as ADE20K's "other"

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = seg_loss(model(images), labels, config.aux_weight)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()

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
        "model": name, "preset": PRESETS[name], "img_size": size, "batch": batch, "amp": amp,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "it_per_s": iters / total, "img_per_s": iters * batch / total,
        "median_iter_ms": 1000 * statistics.median(per_iter), "min_iter_ms": 1000 * min(per_iter),
        "max_iter_ms": 1000 * max(per_iter), "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
        "warmup_iters": warmup, "warmup_s": warmup_s, "timed_iters": iters,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first (kernel compilation)")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations")
    parser.add_argument("--amp", choices=list(DTYPES), default="bf16")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--out", default=None, metavar="JSON", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("seg_train_speed: needs a CUDA GPU", file=sys.stderr)
        return 2
    import timm

    from vimamba.ops import resolve_backend, triton_available

    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "timm": timm.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(), "triton": triton_available(),
           "backend": resolve_backend(torch.empty(0, device="cuda"))}
    print(json.dumps(env), flush=True)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.batch, args.size, args.warmup, args.iters, args.amp, args.num_classes))
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    print(f"\nVim + UperNet training, {args.size}x{args.size}, batch {args.batch}, {args.amp}, {env['device']}")
    print(f"{'model':<10} {'params':>8} {'it/s':>7} {'img/s':>7} {'ms/it (median)':>15} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['model']:<10} {r['params_M']:>7.2f}M {r['it_per_s']:>7.2f} {r['img_per_s']:>7.1f} "
              f"{r['median_iter_ms']:>15.1f} {r['peak_mem_gib']:>9.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
