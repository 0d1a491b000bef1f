"""Multi-GPU training check: a folder data set made on the spot, `vimamba train` on 1 GPU, then on all GPUs
with DDP (NCCL) and with FSDP2, images/s per GPU and the scaling.

    PYTHONPATH=src python benchmarks/ddp_scaling.py --out results/ddp_scaling.json [--per-class 640]

The data set: ImageNet layout (train/ and val/ class folders of JPEGs, 256x256), each class a colour with
noise, so the run also shows the model learning. Each configuration trains the `imagenet-vim-ti` recipe
(augmentation, mixup/cutmix, repeated augmentation, EMA; bf16) for two epochs with the same total batch;
the second epoch's images/s (compiled kernels, warm caches) is the figure. Prints a table; writes JSON with
every run's metrics and summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = 10


def _write_images(args):
    folder, cls, count, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = np.array([(cls * 97) % 256, (cls * 57 + 80) % 256, (cls * 23 + 160) % 256], dtype=np.float32)
    for i in range(count):
        img = base + rng.normal(0, 40, size=(256, 256, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{cls}_{i}.jpg", quality=90)


def make_dataset(root: Path, per_class: int) -> Path:
    jobs = [(root / split / f"class_{c:02d}", c, n, c + (0 if split == "train" else 1000))
            for split, n in (("train", per_class), ("val", max(per_class // 10, 8))) for c in range(CLASSES)]
    with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_images, jobs))
    return root


def train(data: Path, out: Path, gpus: int, extra: list[str], batch: int, workers: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "-m", "vimamba", "train",
           "--preset", "imagenet-vim-ti", "--data", str(data), "--epochs", "2", "--warmup-epochs", "1",
           "-b", str(batch), "-j", str(workers), "--no-progress", "-o", str(out), "--force", *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row = {"gpus": gpus, "extra": extra, "command": " ".join(cmd[1:]), "wall_s": time.time() - t0,
           "returncode": proc.returncode}
    if proc.returncode != 0:
        row["error"] = (proc.stdout + proc.stderr)[-3000:]
        return row
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    row["epochs"] = metrics
    row["summary"] = json.loads((out / "summary.json").read_text())
    row["images_per_s"] = metrics[-1]["images_per_s"]
    row["images_per_s_per_gpu"] = row["images_per_s"] / gpus
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=640)
    p.add_argument("--batch", type=int, default=256, help="total batch, the same for every configuration")
    p.add_argument("--workers", type=int, default=8, help="data-loading workers per process")
    p.add_argument("--work", default="/tmp/ddp_scaling")
    args = p.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    work = Path(args.work)
    t0 = time.time()
    data = make_dataset(work / "data", args.per_class)
    report = {"device": torch.cuda.get_device_name(0), "gpus": gpus, "torch": torch.__version__,
              "train_images": CLASSES * args.per_class, "dataset_seconds": time.time() - t0, "runs": []}
    configs = [(1, [])] + ([(gpus, []), (gpus, ["--fsdp"])] if gpus > 1 else [])
    for n, extra in configs:
        row = train(data, work / f"run_{n}{'_fsdp' if extra else ''}", n, extra, args.batch, args.workers)
        report["runs"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("epochs", "summary", "command")})[:600],
              flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    base = report["runs"][0].get("images_per_s")
    print(f"\n{report['device']} x {gpus}, {report['train_images']} training images, total batch {args.batch}")
    print("| GPUs | mode | img/s (epoch 2) | img/s per GPU | scaling vs 1 GPU | val top-1 | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in report["runs"]:
        mode = "FSDP2" if "--fsdp" in row["extra"] else "DDP"
        if "images_per_s" not in row:
            print(f"| {row['gpus']} | {mode} | failed (rc {row['returncode']}) | | | | {row['wall_s']:.0f} |")
            continue
        scale = row["images_per_s"] / base if base else float("nan")
        print(f"| {row['gpus']} | {mode} | {row['images_per_s']:.0f} | {row['images_per_s_per_gpu']:.0f} | "
              f"{scale:.2f}x | {row['summary']['val_top1']:.3f} | {row['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
