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
import sys

import torch
from _timing import (add_timing_arguments, environment, param_millions, print_table, time_steps, training_step,
                     write_results)

from vimamba.det.config import resolve_det_config
from vimamba.det.model import build_det_model, detection_loss
from vimamba.det.optim import build_det_optimizer

PRESETS = {"vim_tiny": "coco-vim-ti", "vim_small": "coco-vim-s"}


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
    images, targets = synthetic_batch(batch, size, objects, num_classes, torch.Generator().manual_seed(0))
    step = training_step(model, optimizer, scheduler, lambda: detection_loss(model(images, targets)), amp)
    return {"model": name, "preset": PRESETS[name], "architecture": architecture, "img_size": size, "batch": batch,
            "amp": amp, "objects_per_image": objects, "params_M": param_millions(model),
            **time_steps(step, batch, warmup, iters)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(PRESETS), default=["vim_tiny"])
    parser.add_argument("--architectures", nargs="+", choices=("cascade_mask_rcnn", "mask_rcnn"),
                        default=["cascade_mask_rcnn"])
    parser.add_argument("--batch", type=int, default=2, help="images per GPU (ViTDet: 64 over 32 GPUs)")
    parser.add_argument("--size", type=int, default=1024)
    add_timing_arguments(parser)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--objects", type=int, default=8, help="objects per image (COCO averages about 7)")
    parser.add_argument("--out", default=None, metavar="JSON", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("det_train_speed: needs a CUDA GPU", file=sys.stderr)
        return 2
    import torchvision

    env = environment(torchvision=torchvision.__version__)
    print(json.dumps(env), flush=True)
    rows = []
    for name in args.models:
        for architecture in args.architectures:
            rows.append(measure(name, architecture, args.batch, args.size, args.warmup, args.iters, args.amp,
                                args.num_classes, args.objects))
            print(json.dumps(rows[-1]), flush=True)
            torch.cuda.empty_cache()
    print_table(f"Vim + R-CNN training, {args.size}x{args.size}, batch {args.batch}, {args.amp}, {env['device']}",
                rows, {"model": 10, "architecture": 18})
    write_results(args.out, env, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
