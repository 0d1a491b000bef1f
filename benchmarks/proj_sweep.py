"""Time the scan's input projections (x_proj, then dt_proj, both branches of a Vim block) on the GPU: the fused
Triton kernel at each tile the autotuner is offered against the reference's four cuBLAS products (bf16
autocast), at Vim-Ti 1248 batch 64, Vim-S 1248 batch 32 and Vim-Ti 224 batch 128, with each problem's byte
floor (u read, x_dbl and delta written, at the device's measured copy bandwidth). Prints a table, writes JSON.

    PYTHONPATH=src python benchmarks/proj_sweep.py --out benchmarks/results/proj_sweep-h200.json
"""

from __future__ import annotations

import argparse
import json
import os

import torch

PROBLEMS = (("vim_tiny 1248", 64, 384, 6085), ("vim_small 1248", 32, 768, 6085), ("vim_tiny 224", 128, 384, 197))


def _copy_bandwidth(triton) -> float:
    """Bytes per second of a large device-to-device copy (read + write), the floor's yardstick."""
    x = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=5, rep=50, return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    args = p.parse_args()
    import triton

    from vimamba.ops.ssm_proj import ssm_projections_ref
    from vimamba.ops.ssm_proj import triton_ssm_proj as mod

    bandwidth = _copy_bandwidth(triton)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "copy_bandwidth_GBps": bandwidth / 1e9, "rows": []}
    print(f"{report['device']}: copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    os.environ["VIMAMBA_TRITON_AUTOTUNE"] = "0"  # each tile forced in turn below
    for name, batch, dim, length in PROBLEMS:
        rank, nstate = 12 if dim == 384 else 24, 16
        dirs = []
        for _ in range(2):
            u = torch.randn(batch, length, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            wx = torch.randn(rank + 2 * nstate, dim, device="cuda") * dim ** -0.5
            wdt = torch.randn(dim, rank, device="cuda") * rank ** -0.5
            dirs.append((u, wx, wdt))
        tokens = batch * length
        floor_bytes = 2 * tokens * 2 * (dim + rank + 2 * nstate + dim)  # two branches, bf16
        floor_ms = floor_bytes / bandwidth * 1e3

        def reference():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return [ssm_projections_ref(*d) for d in dirs]

        with torch.no_grad():
            want = reference()
            ref_ms = triton.testing.do_bench(reference, warmup=10, rep=60, return_mode="median")
            rows = [{"problem": name, "variant": "cuBLAS (reference, 4 products)", "ms": ref_ms, "rel_diff": 0.0}]
            for cfg in mod._configs(False):
                orig = mod._configs
                mod._configs = lambda ieee, cfg=cfg: [cfg]
                mod._KERNELS.clear()
                try:
                    got = mod.ssm_projections_triton(*dirs[0], second=dirs[1])
                    err = max(((g.float() - w.float()).abs().max() / w.float().abs().max()).item()
                              for pair_g, pair_w in zip(got, want) for g, w in zip(pair_g, pair_w))
                    ms = triton.testing.do_bench(lambda: mod.ssm_projections_triton(*dirs[0], second=dirs[1]),
                                                 warmup=10, rep=60, return_mode="median")
                    rows.append({"problem": name, "variant": f"triton {cfg}", "ms": ms, "rel_diff": err})
                except Exception as exc:  # noqa: BLE001 - a tile this GPU or Triton refuses: record it, go on
                    rows.append({"problem": name, "variant": f"triton {cfg}", "error": repr(exc)[:200]})
                finally:
                    mod._configs = orig
                    mod._KERNELS.clear()
        for r in rows:
            r["floor_ms"] = floor_ms
            print(r, flush=True)
        report["rows"] += rows
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print("\n| problem | variant | ms | x floor | rel. diff |")
    print("| --- | --- | --- | --- | --- |")
    for r in report["rows"]:
        if "ms" in r:
            print(f"| {r['problem']} | {r['variant']} | {r['ms']:.3f} | {r['ms'] / r['floor_ms']:.2f} "
                  f"| {r['rel_diff']:.1e} |")


if __name__ == "__main__":
    main()
