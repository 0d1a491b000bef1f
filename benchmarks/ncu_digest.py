"""A digest of Nsight Compute's source page (``ncu --import R --page source --csv --print-source sass``): where a
kernel's warps waited, by stall reason, by opcode and by instruction, and what it executed per step.

    python benchmarks/ncu_digest.py results/ncu_src_bwd224-h100-v10.csv --warps 6144 --steps 224
    python benchmarks/ncu_digest.py ncu_src_pair_T1.csv --warps 1536 --steps 6085 --out digest.json

``--warps`` and ``--steps`` (programs x warps, and the steps each walks) turn executed counts into a per-step
instruction mix, comparable with ``scan_sass.py``'s offline loop counts. The raw CSVs run to ~0.7 MB a kernel;
device_session.sh keeps this digest of each (session 10 read them by hand: NOTES_triton.md run 13).
"""

from __future__ import annotations

import argparse
import collections
import csv
import json

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def _num(row: dict, key: str) -> float:
    try:
        return float(row.get(key) or 0.0)
    except ValueError:
        return 0.0


def _opcode(source: str) -> str:
    parts = source.strip().split()
    if not parts:
        return "?"
    op = parts[1] if parts[0].startswith("@") and len(parts) > 1 else parts[0]
    return op.split(".")[0]


def digest(path: str, warps: float = 0.0, steps: float = 0.0, top: int = 20) -> dict:
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    # the first line names the kernel, the second holds the column names
    start = next(i for i, line in enumerate(lines) if "Address" in line and "Source" in line)
    header = lines[start]
    rows = [dict(zip(header, line)) for line in lines[start + 1:] if len(line) == len(header)]
    stall_keys = [k for k in header if k.startswith("stall_") and "Not Issued" not in k]
    total = sum(_num(r, SAMPLES) for r in rows) or 1.0
    by_reason = collections.Counter({k: sum(_num(r, k) for r in rows) for k in stall_keys})
    by_opcode = collections.Counter()
    executed = collections.Counter()
    for r in rows:
        by_opcode[_opcode(r["Source"])] += _num(r, SAMPLES)
        executed[_opcode(r["Source"])] += _num(r, EXECUTED)
    per = warps * steps if warps and steps else 0.0
    hot = sorted(rows, key=lambda r: -_num(r, SAMPLES))[:top]
    return {
        "file": path,
        "samples": total,
        "stall_reasons_pct": {k: 100 * v / total for k, v in by_reason.most_common() if v},
        "samples_by_opcode_pct": {k: 100 * v / total for k, v in by_opcode.most_common(15)},
        "executed_per_warp_step": ({k: v / per for k, v in executed.most_common(25)} if per else None),
        "executed_per_warp_step_total": sum(executed.values()) / per if per else None,
        "local_memory_instructions": sum(_num(r, EXECUTED) for r in rows if _opcode(r["Source"]) in ("LDL", "STL")),
        "hottest": [{"address": r["Address"][-5:], "pct": 100 * _num(r, SAMPLES) / total,
                     "source": r["Source"].strip()[:70],
                     "reason": max(stall_keys, key=lambda k: _num(r, k)) if stall_keys else ""} for r in hot],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--warps", type=float, default=0.0, help="warps of the launch (for per-step counts)")
    p.add_argument("--steps", type=float, default=0.0, help="steps each warp walks (for per-step counts)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", help="write the digest as JSON here")
    args = p.parse_args()
    d = digest(args.csv, args.warps, args.steps, args.top)
    print(f"{d['file']}: {d['samples']:.0f} stall samples; local-memory instructions executed: "
          f"{d['local_memory_instructions']:.0f}")
    print("stall reasons: " + ", ".join(f"{k[6:]} {v:.1f}%" for k, v in list(d["stall_reasons_pct"].items())[:8]))
    print("samples by opcode: " + ", ".join(f"{k} {v:.1f}%" for k, v in list(d["samples_by_opcode_pct"].items())[:10]))
    if d["executed_per_warp_step"]:
        print(f"executed per warp and step: {d['executed_per_warp_step_total']:.1f} ("
              + ", ".join(f"{k} {v:.1f}" for k, v in list(d["executed_per_warp_step"].items())[:14]) + ")")
    print("| address | % of samples | instruction | main reason |")
    print("| --- | --- | --- | --- |")
    for h in d["hottest"]:
        print(f"| {h['address']} | {h['pct']:.1f} | `{h['source']}` | {h['reason'][6:]} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(d, f, indent=1)


if __name__ == "__main__":
    main()
