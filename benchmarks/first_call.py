"""Seconds for the first Vim-Ti forward at a new input shape (kernel compilation/autotuning) against the next.

    PYTHONPATH=src python benchmarks/first_call.py        # on a CUDA machine
"""

import json
import time

import timm
import torch

import vimamba  # noqa: F401


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    rows = []
    model = timm.create_model("vim_tiny_patch16_224", dynamic_img_size=True).cuda().eval()
    for size, batch in ((224, 32), (512, 8), (1248, 2)):
        images = torch.randn(batch, 3, size, size, device="cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            first = timed(lambda: model(images))
            second = timed(lambda: model(images))
        rows.append({"img_size": size, "batch": batch, "first_s": round(first, 3), "second_s": round(second, 4)})
        print(rows[-1], flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}))


if __name__ == "__main__":
    main()
