"""Does a time-parallel backward scan beat the shipped one at the training size? One GPU, one process.

    PYTHONPATH=src python benchmarks/time_parallel_probe.py --out results/time_parallel_probe-h200.json

For Vim-Ti and Vim-S at 224 (batch 128, 197 steps, bf16, time-major inputs as the mixer gives them) it times
the shipped two-direction backward (the pair's forward + backward through autograd, less its no-grad forward,
as ``scan_sweep.py --grid v7`` does) against ``selective_scan_bwd_time_parallel`` for both directions (two
launches and their torch reductions) over channels per program x warps, checks every gradient of the probe
against the shipped kernel's (relative L2 difference), prints a markdown table and writes JSON. The probe
recomputes the forward itself, so its time is the whole of a backward.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))

from test_ops_selective_scan_triton import _inputs

KEYS = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def probe(batch, dim, length, variants):
    import triton

    from vimamba.ops.selective_scan.time_parallel import selective_scan_bwd_time_parallel
    from vimamba.ops.selective_scan.triton_scan import selective_scan_bidir_triton

    fwd = _inputs(batch, dim, 16, length, torch.bfloat16, time_major=True, device="cuda", seed=1)
    bwd = _inputs(batch, dim, 16, length, torch.bfloat16, time_major=True, device="cuda", seed=2)
    lf = [fwd[k].detach().requires_grad_(True) for k in KEYS]
    lb = [bwd[k].detach().requires_grad_(True) for k in KEYS]
    z = fwd["z"].detach().requires_grad_(True)
    g_f, g_b = torch.randn_like(fwd["u"]), torch.randn_like(bwd["u"])

    def shipped():
        y_f, y_b = selective_scan_bidir_triton(lf, lb, z, True)
        return torch.autograd.grad((y_f, y_b), lf + lb + [z], (g_f, g_b))

    ref = shipped()
    with torch.no_grad():
        fwd_ms = triton.testing.do_bench(lambda: selective_scan_bidir_triton(lf, lb, z, True), warmup=10, rep=60,
                                         return_mode="median")
    shipped_ms = triton.testing.do_bench(shipped, warmup=10, rep=60, return_mode="median") - fwd_ms
    rows = [{"batch": batch, "dim": dim, "length": length, "kernel": "shipped pair", "bwd_ms": shipped_ms,
             "fwd_ms": fwd_ms}]
    print(f"\n{batch}x{dim}x{length}: shipped pair backward {shipped_ms:.3f} ms (its forward {fwd_ms:.3f})",
          flush=True)
    for cpp, warps in variants:
        def both():
            a = selective_scan_bwd_time_parallel(*(fwd[k] for k in KEYS[:6]), fwd["z"], fwd["delta_bias"], g_f,
                                                 True, False, False, cpp, warps)
            b = selective_scan_bwd_time_parallel(*(bwd[k] for k in KEYS[:6]), fwd["z"], bwd["delta_bias"], g_b,
                                                 True, True, False, cpp, warps)
            return a, b
        try:
            (a, b) = both()
            # shipped order: u, delta, A, B, C, D, delta_bias of each direction, then z (the sum of both)
            ours = [a[0], a[1], a[2], a[3], a[4], a[5], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[7], a[6] + b[6]]
            err = max(_rel(o, r) for o, r in zip(ours, ref))
            ms = triton.testing.do_bench(both, warmup=10, rep=60, return_mode="median")
        except Exception as exc:  # noqa: BLE001 - a variant this Triton or GPU refuses: record it, go on
            rows.append({"batch": batch, "dim": dim, "length": length, "kernel": "time-parallel",
                         "channels_per_program": cpp, "num_warps": warps, "error": repr(exc)[:300]})
            print(rows[-1], flush=True)
            continue
        rows.append({"batch": batch, "dim": dim, "length": length, "kernel": "time-parallel",
                     "channels_per_program": cpp, "num_warps": warps, "bwd_ms": ms, "max_rel_err": err,
                     "vs_shipped": shipped_ms / ms})
        print(f"  time-parallel cpp={cpp:3d} warps={warps}: {ms:.3f} ms ({shipped_ms / ms:.2f}x the shipped), "
              f"max rel. difference {err:.1e}", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--quick", action="store_true", help="Vim-Ti only, three variants")
    args = p.parse_args()
    import triton

    # 8 warps: lanes and warps along the 256 padded steps, one step's 16 states per thread, 255 registers and
    # no spill on sm_90 (offline, Triton 3.8); 4 and 16 warps spill
    variants = [(16, 8), (8, 8), (32, 8)] if args.quick else [(8, 8), (16, 8), (32, 8), (16, 4), (16, 16)]
    problems = [(128, 384, 197)] if args.quick else [(128, 384, 197), (128, 768, 197)]
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "rows": []}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for batch, dim, length in problems:
        report["rows"] += probe(batch, dim, length, variants)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print("\n| problem | kernel | channels/program | warps | backward ms | vs shipped | max rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in report["rows"]:
        if "bwd_ms" in r:
            print(f"| {r['batch']}x{r['dim']}x{r['length']} | {r['kernel']} | {r.get('channels_per_program', '')} | "
                  f"{r.get('num_warps', '')} | {r['bwd_ms']:.3f} | {r.get('vs_shipped', 1.0):.2f}x | "
                  f"{r.get('max_rel_err', 0.0):.1e} |")


if __name__ == "__main__":
    main()
