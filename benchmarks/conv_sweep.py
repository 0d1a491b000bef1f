"""The forward conv pair (Vim's two depthwise convs of one x, with SiLU) over its tiles and the SLIDE tiles' L2
prefetch distance, at the bench's sizes, against the bytes it must move and a plain copy's bandwidth.

    python benchmarks/conv_sweep.py --out benchmarks/results/conv_sweep-h200.json

Why: at Vim-Ti 1248, batch 64 the conv pair took 10.4 ms of the 124.7 ms batch against 4.5 ms of bytes
(docs/performance.md, v9). A SLIDE tile walks its steps in order with each row loaded one step before its use,
and a step is a few dozen instructions, so every step may wait on a full memory round trip; the prefetch
(a SLIDE tile's fifth entry) asks L2 for the row some steps ahead. The autotuned default is timed first
and last (a first row can run before the clocks settle). Prints a table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "src"))

PROBLEMS = ((64, 384, 6085), (32, 768, 6085), (128, 384, 197))  # (batch, channels, length): the bench's rows


def variants(tiles):
    """("default" or a (BLOCK_D, BLOCK_L, num_warps, SLIDE) tile, prefetch distance) in timing order."""
    tiles = sorted({tuple(t[:4]) for t in tiles}, key=[tuple(t[:4]) for t in tiles].index)
    out = [("default", 0)]
    for tile in tiles:
        out.append((tile, 0))
    longer = (128, 128, 4, True)  # a longer walk: less of the three-step halo per step
    out.append((longer, 0))
    for tile in [t for t in tiles if t[3]] + [longer]:
        for distance in (4, 8, 16):
            out.append((tile, distance))
    out.append(("default", 0))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    args = p.parse_args()
    import triton

    from vimamba.ops.causal_conv1d import triton_conv1d as conv

    device = torch.cuda.get_device_name()
    rows = []

    def save():
        with open(args.out, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "triton": triton.__version__, "rows": rows},
                      f, indent=1)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for batch, dim, length in PROBLEMS:
        gen = torch.Generator(device="cuda").manual_seed(3)
        x = torch.randn(batch, length, dim, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(1, 2)
        w, w2 = (torch.randn(dim, 4, device="cuda", generator=gen) * 0.5 for _ in range(2))
        b, b2 = (torch.randn(dim, device="cuda", generator=gen) * 0.1 for _ in range(2))
        moved = 3 * x.numel() * x.element_size()  # x in, two outputs out
        copy_dst = torch.empty_like(x)
        copy_ms = triton.testing.do_bench(lambda: copy_dst.copy_(x), warmup=10, rep=60, return_mode="median")
        copy_tbs = 2 * x.numel() * x.element_size() / copy_ms / 1e9
        first = None
        for tile, distance in variants(conv._tiles_fwd(False)):
            conv._FWD_TILE_OVERRIDE = None if tile == "default" else (*tile, distance)
            try:
                with torch.no_grad():
                    out = conv.causal_conv1d_pair_triton(x, w, b, w2, b2, "silu")
                    first = out if first is None else first
                    err = max(((o.float() - f.float()).abs().max() / f.float().abs().max()).item()
                              for o, f in zip(out, first))
                    ms = triton.testing.do_bench(lambda: conv.causal_conv1d_pair_triton(x, w, b, w2, b2, "silu"),
                                                 warmup=10, rep=60, return_mode="median")
            except Exception as exc:  # noqa: BLE001 - a tile this Triton or GPU refuses: record it, go on
                rows.append({"batch": batch, "dim": dim, "length": length, "tile": tile, "prefetch": distance,
                             "error": repr(exc)[:200]})
                print(rows[-1], flush=True)
                continue
            finally:
                conv._FWD_TILE_OVERRIDE = None
            rows.append({"batch": batch, "dim": dim, "length": length, "tile": tile, "prefetch": distance, "ms": ms,
                         "tb_s": moved / ms / 1e9, "copy_tb_s": copy_tbs, "of_copy": moved / ms / 1e9 / copy_tbs,
                         "rel_diff": err})
            print(rows[-1], flush=True)
        save()
    save()
    print(f"\n{device}, triton {triton.__version__}: conv pair forward (x in, two outputs out)")
    print("| batch | dim | length | tile | prefetch | ms | TB/s | of a copy's | rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "ms" in r:
            print(f"| {r['batch']} | {r['dim']} | {r['length']} | {r['tile']} | {r['prefetch']} | {r['ms']:.3f} | "
                  f"{r['tb_s']:.2f} | {r['of_copy']:.2f} | {r['rel_diff']:.1e} |")


if __name__ == "__main__":
    main()
