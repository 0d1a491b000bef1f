"""The selective scan's kernels compiled for sm_90 without a GPU: registers, spills and each loop's instruction mix.

    python benchmarks/scan_sass.py fwd --tile 1,16,1,1,1,32 --maxnreg 168       # the 1248 pair's forward
    python benchmarks/scan_sass.py bwd --tile 1,8,1,1,2,16,32 --maxnreg 168     # the training-size backward
    python benchmarks/scan_sass.py fwd --set PASS=1 --sass /tmp/fwd.sass       # a flag changed; full SASS kept

The notes' offline figures ("207 instructions a step", "phase B 448 a step") come from this: Triton's front end,
its GPU passes and ptxas need no GPU, and the CUDA binary utilities bundled with Triton print the SASS. A loop is
a backward branch; the longest ones are the step loops (forward: one chunk of T steps; backward: the segment
loop holding both phases, phase B's chunk of T steps and phase A's chunk of TA steps, whose count per element
is TA / T times the one printed). Pointers are bf16 (``--dtype`` for another) except the fp32
ones the launchers pass (A, D, the bias, states, scratch, partials), unit channel and state strides are constant
1 and pointers 16-byte aligned, as the launchers' specialisation sees them. Prints a table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import re
import subprocess
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "src"))

# flags of the shipped kernels at the tiles the rules pick (bidirectional pair, softplus, D, z, bias, A_log; the
# forward's as for 1,024 steps or more: prefetches on, no touch; such sequences get fp32 B and C from the model,
# --bc-dtype fp32)
FWD_FLAGS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, HAS_ADD=False, SOFTPLUS=True, REVERSE=False,
                 STORE_HS=False, STORE_LAST=False, HS_EVERY=1, EVEN_D=True, EVEN_N=True, PAD=False, AHEAD=1,
                 VEC=True, BIDIR=True, TOUCH=False, A_LOG=True, PASS=0, PREFETCH=8, BC_PREFETCH=8)
BWD_FLAGS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, REVERSE=False, HAS_DLAST=False,
                 ATOMIC_BC=False, EVEN_D=True, EVEN_N=True, PAD=True, TA=4, BIDIR=True, A_LOG=True, BC_PREFETCH=False)
TILE_NAMES = {"fwd": ("T", "NR", "DR", "W", "NL", "DL"), "bwd": ("T", "NR", "DR", "W", "NL", "DL", "K")}
FP32_POINTERS = ("A", "D", "bias", "last", "hs", "dlast", "scr", "segh", "segdt", "dA", "dD", "dbias", "dB", "dC")
UNIT_STRIDES = ("s_ud", "s_td", "s_zd", "s_od", "s_ad", "s_Bn", "s_Cn", "s_gd", "s_xd", "s_pn")


def compile_scan(kind: str, flags: dict, dtype: str = "bf16", maxnreg: int = 0, bc_dtype: str = ""):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import vimamba.ops.selective_scan.triton_scan as scan

    fwd, bwd, interp = scan._get_kernels()
    if interp:
        raise SystemExit("TRITON_INTERPRET is set in this process: nothing to compile")
    kernel = fwd if kind == "fwd" else bwd
    names = list(inspect.signature(scan._scan_fwd_kernel if kind == "fwd" else scan._scan_bwd_kernel).parameters)
    signature, constants = {}, {}
    for i, name in enumerate(names):
        if name in flags:
            signature[name], constants[(i,)] = "constexpr", flags[name]
        elif name in UNIT_STRIDES:
            signature[name], constants[(i,)] = "constexpr", 1
        elif name.endswith("_ptr"):
            if name.startswith(FP32_POINTERS):
                signature[name] = "*fp32"
            elif bc_dtype and name.startswith(("B_", "C_")):
                signature[name] = f"*{bc_dtype}"
            else:
                signature[name] = f"*{dtype}"
        else:
            signature[name] = "i32"
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names) if name.endswith("_ptr")}
    options = {"num_warps": flags["W"], **({"maxnreg": maxnreg} if maxnreg else {})}
    return triton.compile(ASTSource(kernel, signature, constants, aligned), target=GPUTarget("cuda", 90, 32),
                          options=options)


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_INSTRUCTION = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def loops(sass: str) -> list[dict]:
    """Each backward branch's body: start and end address, instruction count and mix, longest first."""
    body = [(int(m.group(1), 16), m.group(2), line) for line in sass.splitlines()
            if (m := _INSTRUCTION.match(line))]
    found = []
    for address, _op, line in body:
        target = re.search(r"\bBRA\b[^;]*?(0x[0-9a-f]+)", line)
        if target and int(target.group(1), 16) < address:
            start = int(target.group(1), 16)
            ops = [op for a, op, _ in body if start <= a <= address]
            found.append({"start": hex(start), "end": hex(address), "instructions": len(ops),
                          "mix": dict(collections.Counter(ops).most_common())})
    return sorted(found, key=lambda loop: -loop["instructions"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("fwd", "bwd"))
    p.add_argument("--tile", help="comma-separated tile: T,NR,DR,W,NL,DL (fwd) or T,NR,DR,W,NL,DL,K (bwd); "
                                  "default the rule's at Vim-Ti 1248 batch 64 (fwd) / 224 batch 128 (bwd)")
    p.add_argument("--set", nargs="*", default=[], metavar="FLAG=VALUE", help="other constexpr flags")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--bc-dtype", default="", choices=("", "bf16", "fp16", "fp32"),
                   help="B and C pointers' type where it differs from --dtype (the mixer may hand them over in fp32)")
    p.add_argument("--maxnreg", type=int, default=168, help="register cap (0: ptxas's choice)")
    p.add_argument("--sass", help="write the whole SASS here")
    p.add_argument("--ttgir", help="write Triton's GPU IR (the layouts it chose) here")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()

    default_tile = {"fwd": "1,16,1,1,1,32", "bwd": "1,8,1,1,2,16,32"}[args.kind]
    values = [int(v) for v in (args.tile or default_tile).split(",")]
    names = TILE_NAMES[args.kind]
    if len(values) != len(names):
        p.error(f"--tile takes {len(names)} values for {args.kind}: {','.join(names)}")
    flags = dict(FWD_FLAGS if args.kind == "fwd" else BWD_FLAGS, **dict(zip(names, values)))
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in flags and key not in ("TA",):
            p.error(f"unknown flag {key!r}; known: {', '.join(sorted(flags))}")
        flags[key] = value == "True" if value in ("True", "False") else int(value)

    import triton

    compiled = compile_scan(args.kind, flags, args.dtype, args.maxnreg, args.bc_dtype)
    cubin = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"vimamba_scan_{args.kind}_{os.getpid()}.cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    try:
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True).stdout
    finally:
        os.remove(cubin)
    if args.sass:
        with open(args.sass, "w") as f:
            f.write(sass)
    if args.ttgir:
        with open(args.ttgir, "w") as f:
            f.write(compiled.asm["ttgir"])
    registers = int(m.group(1)) if (m := re.search(r"REG:(\d+)", usage)) else None
    stack = int(m.group(1)) if (m := re.search(r"STACK:(\d+)", usage)) else None
    found = loops(sass)
    elements = flags["T"] * flags["NR"] * flags["DR"]  # (step, state, channel) elements per thread and chunk
    print(f"{args.kind} tile {dict(zip(names, values))}, {args.dtype}{' B/C ' + args.bc_dtype if args.bc_dtype else ''}, maxnreg {args.maxnreg or 'ptxas'}: "
          f"{registers} registers, {stack} bytes of stack")
    print("| loop | instructions | per element of a T-step chunk | most frequent |")
    print("| --- | --- | --- | --- |")
    for loop in found[:4]:
        top = ", ".join(f"{op} {n}" for op, n in list(loop["mix"].items())[:8])
        print(f"| {loop['start']}-{loop['end']} | {loop['instructions']} | {loop['instructions'] / elements:.1f} | "
              f"{top} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"kind": args.kind, "triton": triton.__version__, "flags": flags, "dtype": args.dtype, "bc_dtype": args.bc_dtype or args.dtype, "maxnreg": args.maxnreg,
                       "registers": registers, "stack": stack, "loops": found}, f, indent=1)


if __name__ == "__main__":
    main()
