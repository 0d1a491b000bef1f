"""vimamba info: sizes, parameter counts and FLOPs of the Vim variants, computed from their configurations."""

from __future__ import annotations

import argparse
import json

from ..models import VARIANT_ALIASES, VARIANT_ARGS
from .common import CLIError, add_model_kwargs_argument, resolve_model_name
from .flops import arch_of_variant, count_flops, count_params

NAME = "info"
HELP = "sizes, parameters and FLOPs of the Vim variants"

FLOP_NOTE = (
    "GFLOPs per image count a multiply-add as 2 FLOPs (tables that count it once, as fvcore and the papers do, "
    "show half); 'scan' is the selective scans' share (element-wise, exp counted as 1 FLOP), 'exps' the "
    "exponentials they evaluate.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", nargs="+", action="extend", metavar="NAME",
                        help="variants to show (short or reference names); all of them by default")
    parser.add_argument("--img-size", nargs="+", action="extend", type=int, metavar="SIZE",
                        help="square input sizes to count tokens and FLOPs at (default: 224)")
    add_model_kwargs_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def describe(name: str, img_size: int, **model_kwargs) -> dict:
    """Everything ``info`` shows about one variant at one input size."""
    try:
        arch = arch_of_variant(name, **model_kwargs)
        flops = count_flops(arch, img_size)
    except (TypeError, ValueError) as err:
        raise CLIError(f"{name} at {img_size}: {err}") from err
    aliases = [alias for alias, short in VARIANT_ALIASES.items() if short == name]
    return {
        "model": name,
        "reference_name": aliases[0] if aliases else None,
        "embed_dim": arch.embed_dim,
        "depth": arch.depth,
        "patch_size": arch.patch_size,
        "stride": arch.stride,
        "d_state": arch.d_state,
        "d_inner": arch.d_inner,
        "dt_rank": arch.rank,
        "num_classes": arch.num_classes,
        "img_size": img_size,
        "tokens": arch.num_tokens(img_size),
        "params": count_params(arch, img_size),
        "gflops": round(flops["total"] / 1e9, 4),
        "flops": flops,
    }


def run(args: argparse.Namespace) -> int:
    names = [resolve_model_name(n) for n in args.model] if args.model else list(VARIANT_ARGS)
    names = list(dict.fromkeys(names))
    sizes = list(dict.fromkeys(args.img_size or [224]))
    rows = [describe(name, size, **args.model_kwargs) for name in names for size in sizes]
    if args.json:
        print(json.dumps({"flop_convention": "multiply-add = 2 FLOPs", "models": rows}, indent=2))
        return 0
    header = ("model", "dim", "depth", "patch/stride", "img", "tokens", "params", "GFLOPs", "scan", "exps (G)")
    table = [header] + [
        (r["model"], str(r["embed_dim"]), str(r["depth"]), f"{r['patch_size']}/{r['stride']}", str(r["img_size"]),
         str(r["tokens"]), f"{r['params'] / 1e6:.2f}M", f"{r['flops']['total'] / 1e9:.2f}",
         f"{r['flops']['scan'] / 1e9:.2f}", f"{r['flops']['exps'] / 1e9:.3f}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    print()
    print(FLOP_NOTE)
    aliased = [(n, a) for n in names for a, s in VARIANT_ALIASES.items() if s == n]
    if aliased:
        print("\nreference names (accepted everywhere):")
        for name, alias in aliased:
            print(f"  {name}: {alias}")
    return 0
