"""Training speed and peak memory of Vim + Cascade Mask R-CNN at 1024x1024 on one GPU (the paper's COCO setting).

The ``coco-vim-ti`` preset's model (ViTDet simple pyramid, RPN, three cascade box stages, mask head; 80 classes,
drop path 0.1, rotary embedding) with its optimiser groups (AdamW, layer decay 0.837) and schedule, batch 2 per GPU,
bf16 autocast: a few warm-up iterations (Triton compiles and tunes its kernels there), then N timed iterations
(forward, losses, backward, optimiser and schedule step) between CUDA events. Inputs are random 1024x1024 images
already on the GPU, each with a few random boxes and box-shaped masks, so data loading is not in the figure. No
pretrained weights, data set or pycocotools are needed.

    PYTHONPATH=src python benchmarks/det_train_speed.py --out benchmarks/results/det_train_speed-h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from vimamba.det.config import resolve_det_config
from vimamba.det.model import build_det_model, detection_loss
from vimamba.det.optim import build_det_optimizer

PRESETS = {"vim_tiny": "coco-vim-ti", "vim_small": "coco-vim-s"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def synthetic_batch(batch: int, size: int, objects: int, num_classes: int, generator: torch.Generator):
    """Random images, each with ``objects`` boxes (16 to size/2 pixels a side) and masks filling them."""
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=generator).cuda())
        wh = torch.randint(16, size // 2, (objects, 2), generator=generator).float()
        xy = torch.rand(objects, 2, generator=generator) * (size - wh)
        boxes = torch.cat([xy, xy + wh], dim=1).floor()
        masks = torch.zeros(objects, size, size, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = 1
        labels = torch.randint(1, num_classes + 1, (objects,), generator=generator)
        targets.append({"boxes": boxes.cuda(), "labels": labels.cuda(), "masks": masks.cuda()})
    return images, targets


def measure(name: str, architecture: str, batch: int, size: int, warmup: int, iters: int, amp: str,
            num_classes: int, objects: int) -> dict:
    config = resolve_det_config(PRESETS[name], overrides={"data": "synthetic", "img_size": size, "batch_size": batch,
                                                          "architecture": architecture})
    torch.manual_seed(0)
    model = build_det_model(config, num_classes).cuda().train()
    optimizer, scheduler = build_det_optimizer(model, config)
    dtype = DTYPES[amp]
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    images, targets = synthetic_batch(batch, size, objects, num_classes, torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = detection_loss(model(images, targets))
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
        "model": name, "preset": PRESETS[name], "architecture": architecture, "img_size": size, "batch": batch,
        "amp": amp, "objects_per_image": objects,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "it_per_s": iters / total, "img_per_s": iters * batch / total,
        "median_iter_ms": 1000 * statistics.median(per_iter), "min_iter_ms": 1000 * min(per_iter),
        "max_iter_ms": 1000 * max(per_iter), "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
        "warmup_iters": warmup, "warmup_s": warmup_s, "timed_iters": iters,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(PRESETS), default=["vim_tiny"])
    parser.add_argument("--architectures", nargs="+", choices=("cascade_mask_rcnn", "mask_rcnn"),
                        default=["cascade_mask_rcnn"])
    parser.add_argument("--batch", type=int, default=2, help="images per GPU (ViTDet: 64 over 32 GPUs)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first (kernel compilation)")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations")
    parser.add_argument("--amp", choices=list(DTYPES), default="bf16")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--objects", type=int, default=8, help="objects per image (COCO averages about 7)")
    parser.add_argument("--out", default=None, metavar="JSON", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("det_train_speed: needs a CUDA GPU", file=sys.stderr)
        return 2
    import timm
    import torchvision

    from vimamba.ops import resolve_backend, triton_available

    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "timm": timm.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "triton": triton_available(), "backend": resolve_backend(torch.empty(0, device="cuda"))}
    print(json.dumps(env), flush=True)
    rows = []
    for name in args.models:
        for architecture in args.architectures:
            rows.append(measure(name, architecture, args.batch, args.size, args.warmup, args.iters, args.amp,
                                args.num_classes, args.objects))
            print(json.dumps(rows[-1]), flush=True)
            torch.cuda.empty_cache()
    print(f"\nVim + R-CNN training, {args.size}x{args.size}, batch {args.batch}, {args.amp}, {env['device']}")
    print(f"{'model':<10} {'architecture':<18} {'params':>8} {'it/s':>7} {'img/s':>7} {'ms/it (median)':>15} "
          f"{'peak GiB':>9}")
    for r in rows:
        print(f"{r['model']:<10} {r['architecture']:<18} {r['params_M']:>7.2f}M {r['it_per_s']:>7.2f} "
              f"{r['img_per_s']:>7.1f} {r['median_iter_ms']:>15.1f} {r['peak_mem_gib']:>9.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
