"""Seconds for the first Vim-Ti forward at a new input shape (kernel compilation/autotuning) against the next.

    PYTHONPATH=src python benchmarks/first_call.py [--out first_call.json]       # on a CUDA machine
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "src"))


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the rows to this JSON file")
    args = p.parse_args()
    import timm

    import vimamba  # noqa: F401 - registers the Vim models

    rows = []
    model = timm.create_model("vim_tiny_patch16_224", dynamic_img_size=True).cuda().eval()
    for size, batch in ((224, 32), (512, 8), (1248, 2)):
        images = torch.randn(batch, 3, size, size, device="cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            first = timed(lambda: model(images))
            second = timed(lambda: model(images))
        rows.append({"img_size": size, "batch": batch, "first_s": round(first, 3), "second_s": round(second, 4)})
        print(rows[-1], flush=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    print(json.dumps(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
