"""Tile sweep of the Triton selective scan and a per-kernel profile of a whole Vim, on one GPU.

    PYTHONPATH=src python benchmarks/scan_sweep.py --out results/scan_sweep.json [--quick] [--profile]

For each problem (Vim-Ti sizes: dim 384, 16 states, bf16, time-major inputs as Vim's Linear layers give
them) it times the forward (no grad) and forward + backward over a grid of tile shapes, checks that every
tile gives the result of the first one (relative difference printed), and reports G steps/s: (batch x
channel x state x step) updates per second, one exp each, against the H100's ~4.1 T exp2/s. With
``--profile`` it also runs torch.profiler over Vim-Ti inference at 1248 (batch 64) and a training step at 224
(batch 128) and lists the kernels by total GPU time, so the time outside the scan can be set against its own
floor. Prints markdown tables; writes everything to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))

from _timing import gpu_kernels
from test_ops_selective_scan_triton import _inputs

from vimamba.ops.selective_scan import triton_scan
from vimamba.ops.selective_scan.triton_scan import selective_scan_triton

LAYOUTS = ((16, 1, 32), (8, 2, 16), (4, 4, 8), (2, 8, 4), (1, 16, 2))  # (NR, NL, DL): states over regs/lanes


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _override(kind, cfg, batch, dim, nstate, length):
    """A tile tuple, "default" (the shipped rule for this problem), or a dict of _CONFIG_OVERRIDE entries on
    top of the default tile ("tile": another tile, "ahead": the default tile with that many chunks in
    flight)."""
    rows = batch * dim / torch.cuda.get_device_properties(0).multi_processor_count
    default = triton_scan._config(kind, dim, nstate, length, False, rows)
    if cfg == "default":
        return {kind: default}
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        tile = cfg.pop("tile", default)
        if "ahead" in cfg:
            tile = tuple(tile[:6]) + (cfg.pop("ahead"),)
        return {kind: tuple(tile), **cfg}
    return {kind: cfg}


# input layouts a forward variant may ask for: "xdbl": B and C as column views of one (batch, length,
# dt_rank + 2 * state) buffer, as Vim's x_proj gives them (dt_rank 12: rows of 88 bytes); "bc32": B and C in fp32;
# "packed": B and C side by side in one (batch, length, 2 * state) buffer (64-byte rows: what session 11 tried in
# the model and dropped; planes of their own, each (batch, length, state), are what _inputs makes anyway);
# for sweep_bidir also, as the mixer calls the pair: "inplace": each output written over its own u (copies of
# the inputs' u), "a_log": A given as A_log (A = -exp(A_log) inside the kernel)
INPUT_KEYS = ("xdbl", "bc32", "packed", "inplace", "a_log")


def _xdbl_views(B, C, requires_grad=False):
    """B and C (batch, state, length) copied into the columns of an x_proj-like (batch, length, 12 + 2 * state)
    buffer behind 12 dt values, returned as views of it; ``requires_grad``: the buffer is a leaf that does."""
    batch, nstate, length = B.shape
    buf = torch.empty(batch, length, 12 + 2 * nstate, device=B.device, dtype=B.dtype)
    buf[..., 12:12 + nstate] = B.detach().transpose(1, 2)
    buf[..., 12 + nstate:] = C.detach().transpose(1, 2)
    buf.requires_grad_(requires_grad)
    return buf[..., 12:12 + nstate].transpose(1, 2), buf[..., 12 + nstate:].transpose(1, 2)


def _transform_inputs(ins, cfg):
    if not isinstance(cfg, dict) or not any(k in cfg for k in INPUT_KEYS):
        return ins
    out = dict(ins)
    B, C = ins["B"], ins["C"]
    if cfg.get("bc32"):
        B = B.float().transpose(1, 2).contiguous().transpose(1, 2)
        C = C.float().transpose(1, 2).contiguous().transpose(1, 2)
    if cfg.get("packed"):
        packed = torch.cat([B.transpose(1, 2), C.transpose(1, 2)], dim=2)
        nstate = B.shape[1]
        B, C = packed[..., :nstate].transpose(1, 2), packed[..., nstate:].transpose(1, 2)
    if cfg.get("xdbl"):
        B, C = _xdbl_views(B, C)
    out["B"], out["C"] = B, C
    return out


def sweep(problems, fwd_cfgs, bwd_cfgs, dim=384, nstate=16):
    import triton

    def timeit(fn):
        return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")

    rows = []
    for batch, length in problems:
        ins = _inputs(batch, dim, nstate, length, torch.bfloat16, time_major=True, device="cuda", seed=7)
        steps = batch * dim * nstate * length
        first = None
        for cfg in fwd_cfgs:
            run_ins = _transform_inputs(ins, cfg)
            cfg_k = {k: v for k, v in cfg.items() if k not in INPUT_KEYS} if isinstance(cfg, dict) else cfg
            triton_scan._CONFIG_OVERRIDE = _override("fwd", cfg_k or "default", batch, dim, nstate, length)
            try:
                with torch.no_grad():
                    t0 = time.perf_counter()
                    y = selective_scan_triton(**run_ins, delta_softplus=True)
                    torch.cuda.synchronize()
                    compile_s = time.perf_counter() - t0
                    first = y if first is None else first
                    err = _rel(y, first)
                    ms = timeit(lambda ins=run_ins: selective_scan_triton(**ins, delta_softplus=True))
            except Exception as exc:  # noqa: BLE001 - a tile the compiler rejects (registers, shared memory): record it
                rows.append({"pass_": "fwd", "batch": batch, "length": length, "tile": cfg, "error": repr(exc)[:200]})
                print(rows[-1], flush=True)
                continue
            rows.append({"pass_": "fwd", "batch": batch, "length": length, "tile": cfg, "ms": ms, "gsteps": steps / ms / 1e6,
                             "rel_diff": err, "compile_s": compile_s})
            print(rows[-1], flush=True)
        dout = torch.randn_like(ins["u"])
        first_g = None
        for cfg in bwd_cfgs:
            triton_scan._CONFIG_OVERRIDE = _override("bwd", cfg, batch, dim, nstate, length)
            leaves = {k: v.detach().requires_grad_(True) for k, v in ins.items()}

            def step(leaves=leaves, dout=dout):
                y = selective_scan_triton(**leaves, delta_softplus=True)
                return torch.autograd.grad(y, list(leaves.values()), dout)

            try:
                grads = step()
                first_g = grads if first_g is None else first_g
                err = max(_rel(g, r) for g, r in zip(grads, first_g))
                with torch.no_grad():
                    fwd_ms = timeit(lambda leaves=leaves: selective_scan_triton(**leaves, delta_softplus=True))
                ms = timeit(step)
            except Exception as exc:  # noqa: BLE001 - as above
                rows.append({"pass_": "fwd+bwd", "batch": batch, "length": length, "tile": cfg, "error": repr(exc)[:200]})
                print(rows[-1], flush=True)
                continue
            rows.append({"pass_": "fwd+bwd", "batch": batch, "length": length, "tile": cfg, "ms": ms, "bwd_ms": ms - fwd_ms,
                             "gsteps": steps / ms / 1e6, "rel_diff": err})
            print(rows[-1], flush=True)
        triton_scan._CONFIG_OVERRIDE = None
        torch.cuda.empty_cache()
    return rows


def sweep_bidir(variants=None):
    """Both directions in one launch (selective_scan_bidir_triton) over forward tiles, at
    Vim-Ti 1248 batch 64, Vim-Ti 224 batch 128 and Vim-S 1248 batch 32; each against the two single scans.
    ``variants(length)``: the tiles or override dicts to time (default: NL 1, 2, 4 x one or two warps)."""
    import triton

    from vimamba.ops.selective_scan.triton_scan import selective_scan_bidir_triton

    keys = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    rows = []
    for batch, dim, length in ((64, 384, 6085), (128, 384, 197), (32, 768, 6085)):
        a = _inputs(batch, dim, 16, length, torch.bfloat16, time_major=True, device="cuda", seed=1)
        b = _inputs(batch, dim, 16, length, torch.bfloat16, time_major=True, device="cuda", seed=2)
        fa0, fb0 = [a[k] for k in keys], [b[k] for k in keys]
        nl_opts = (1, 2, 4) if length > 1000 else (1, 2)
        cfgs = ["default"] + [(1, 16 // nl, 1, w, nl, 32 // nl, 2 if length > 1000 else 1)
                              for nl in nl_opts for w in (1, 2)]
        if variants is not None:
            cfgs = variants(length)
        first = None
        for cfg in cfgs:
            fa, fb = fa0, fb0
            if isinstance(cfg, dict) and any(k in cfg for k in INPUT_KEYS):
                fa = [_transform_inputs(a, cfg)[k] for k in keys]
                fb = [_transform_inputs(b, cfg)[k] for k in keys]
            cfg_k = {k: v for k, v in cfg.items() if k not in INPUT_KEYS} if isinstance(cfg, dict) else cfg
            triton_scan._CONFIG_OVERRIDE = _override("fwd", cfg_k or "default", 2 * batch, dim, 16, length)
            a_log = isinstance(cfg, dict) and bool(cfg.get("a_log"))
            if a_log:
                fa, fb = list(fa), list(fb)
                fa[2], fb[2] = torch.log(-fa[2]), torch.log(-fb[2])
            out = (fa[0].clone(), fb[0].clone()) if isinstance(cfg, dict) and cfg.get("inplace") else None
            if out is not None:  # the outputs over the u's: the u's are those buffers (values the same, first call)
                fa, fb = [out[0]] + list(fa[1:]), [out[1]] + list(fb[1:])
            try:
                with torch.no_grad():
                    def run(fa=fa, fb=fb, out=out, a_log=a_log):
                        return selective_scan_bidir_triton(fa, fb, a["z"], True, out=out, a_log=a_log)

                    ys = tuple(y.clone() for y in run())
                    first = ys if first is None else first
                    err = max(_rel(y, f) for y, f in zip(ys, first))
                    ms = triton.testing.do_bench(run, warmup=10, rep=60, return_mode="median")
            except Exception as exc:  # noqa: BLE001 - a variant this Triton or GPU refuses: record it, go on
                rows.append({"pass_": "bidir", "batch": batch, "dim": dim, "length": length, "tile": cfg,
                             "error": repr(exc)[:200]})
                print(rows[-1], flush=True)
                continue
            rows.append({"pass_": "bidir", "batch": batch, "dim": dim, "length": length, "tile": cfg, "ms": ms,
                         "gsteps": 2 * batch * dim * 16 * length / ms / 1e6, "rel_diff": err})
            print(rows[-1], flush=True)
        triton_scan._CONFIG_OVERRIDE = None
        with torch.no_grad():
            two = triton.testing.do_bench(lambda: (
                selective_scan_triton(*fa0[:5], D=fa0[5], z=a["z"], delta_bias=fa0[6], delta_softplus=True),
                selective_scan_triton(*fb0[:5], D=fb0[5], z=a["z"], delta_bias=fb0[6], delta_softplus=True,
                                      reverse=True)), warmup=10, rep=60, return_mode="median")
        rows.append({"pass_": "two single scans", "batch": batch, "dim": dim, "length": length, "tile": "default",
                     "ms": two, "gsteps": 2 * batch * dim * 16 * length / two / 1e6, "rel_diff": 0.0})
        print(rows[-1], flush=True)
        torch.cuda.empty_cache()
    return rows


def sweep_split_in_time(problems=((1, 384, 6085), (2, 384, 6085), (8, 384, 6085), (8, 768, 6085),
                                   (64, 384, 6085))):
    """The forward pair (no grad) split in time (session 7, the forward kernel's PASS 1 + 2) at small batches
    of Vim-Ti/Vim-S 1248, which give the grid few rows per SM (batch 64 as the control, which the rule leaves
    whole): whole sequences, the rule's split (SPLIT_IN_TIME on) and forced counts of segments (each with the
    tile the rule gives the split grid), each against the whole-sequence output."""
    import triton

    from vimamba.ops.selective_scan.triton_scan import selective_scan_bidir_triton

    keys = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    rows = []
    split_on = triton_scan.SPLIT_IN_TIME
    for batch, dim, length in problems:
        a = _inputs(batch, dim, 16, length, torch.bfloat16, time_major=True, device="cuda", seed=1)
        b = _inputs(batch, dim, 16, length, torch.bfloat16, time_major=True, device="cuda", seed=2)
        fa, fb = [a[k] for k in keys], [b[k] for k in keys]
        first = None
        for variant in ("whole", "rule", 2, 4, 8, 16, 32):
            triton_scan._CONFIG_OVERRIDE = {"segments": 1} if variant == "whole" else (
                None if variant == "rule" else {"segments": variant})
            triton_scan.SPLIT_IN_TIME = variant == "rule"
            try:
                with torch.no_grad():
                    ys = selective_scan_bidir_triton(fa, fb, a["z"], True)
                    first = ys if first is None else first
                    err = max(_rel(y, f) for y, f in zip(ys, first))
                    ms = triton.testing.do_bench(lambda: selective_scan_bidir_triton(fa, fb, a["z"], True),
                                                 warmup=10, rep=60, return_mode="median")
            except Exception as exc:  # noqa: BLE001 - a variant this Triton or GPU refuses: record it, go on
                rows.append({"pass_": "bidir split", "batch": batch, "dim": dim, "length": length,
                             "segments": variant, "error": repr(exc)[:200]})
                print(rows[-1], flush=True)
                continue
            rows.append({"pass_": "bidir split", "batch": batch, "dim": dim, "length": length, "segments": variant,
                         "ms": ms, "gsteps": 2 * batch * dim * 16 * length / ms / 1e6, "rel_diff": err})
            print(rows[-1], flush=True)
        triton_scan._CONFIG_OVERRIDE = None
        triton_scan.SPLIT_IN_TIME = split_on
    return rows


def sweep_bidir_backward(variants, problems=((128, 384, 197), (128, 768, 197), (8, 384, 6085))):
    """The two-direction pair forward + backward (autograd, all 15 inputs' gradients) at Vim-Ti and Vim-S
    224, batch 128 (the training target) and Vim-Ti 1248, batch 8: each variant (override dicts on top of the
    rule, e.g. {"bidir_bwd": False}: the backward as two launches) against the first one's gradients; bwd_ms
    is the pair's forward+backward time less its no-grad forward."""
    import triton

    from vimamba.ops.selective_scan.triton_scan import selective_scan_bidir_triton

    keys = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    rows = []
    for batch, dim, length in problems:
        a = _inputs(batch, dim, 16, length, torch.bfloat16, time_major=True, device="cuda", seed=1)
        b = _inputs(batch, dim, 16, length, torch.bfloat16, time_major=True, device="cuda", seed=2)
        la = [a[k].detach().requires_grad_(True) for k in keys]
        lb = [b[k].detach().requires_grad_(True) for k in keys]
        z = a["z"].detach().requires_grad_(True)
        g_f, g_b = torch.randn_like(a["u"]), torch.randn_like(b["u"])
        first = None
        plain_la, plain_lb = la, lb
        for cfg in variants:
            label = cfg
            la, lb = plain_la, plain_lb
            if isinstance(cfg, dict) and cfg.get("xdbl"):  # B and C as columns of x_proj's output (88-byte rows)
                la, lb = ([*leaves[:3], *_xdbl_views(leaves[3], leaves[4], requires_grad=True), *leaves[5:]]
                          for leaves in (plain_la, plain_lb))
                cfg = {k: v for k, v in cfg.items() if k != "xdbl"} or "default"
            leaves = la + lb + [z]

            def step(la=la, lb=lb, leaves=leaves):
                y_f, y_b = selective_scan_bidir_triton(la, lb, z, True)
                return torch.autograd.grad((y_f, y_b), leaves, (g_f, g_b))

            triton_scan._CONFIG_OVERRIDE = _override("bwd", cfg, 2 * batch, dim, 16, length)
            try:
                grads = step()
                first = grads if first is None else first
                err = max(_rel(g, r) for g, r in zip(grads, first))
                with torch.no_grad():
                    fwd_ms = triton.testing.do_bench(lambda: selective_scan_bidir_triton(la, lb, z, True),
                                                     warmup=10, rep=60, return_mode="median")
                ms = triton.testing.do_bench(step, warmup=10, rep=60, return_mode="median")
            except Exception as exc:  # noqa: BLE001 - a variant this Triton or GPU refuses: record it, go on
                rows.append({"pass_": "bidir fwd+bwd", "batch": batch, "dim": dim, "length": length, "tile": label,
                             "error": repr(exc)[:200]})
                print(rows[-1], flush=True)
                continue
            rows.append({"pass_": "bidir fwd+bwd", "batch": batch, "dim": dim, "length": length, "tile": label,
                         "ms": ms, "bwd_ms": ms - fwd_ms, "gsteps": 2 * batch * dim * 16 * length / ms / 1e6,
                         "rel_diff": err})
            print(rows[-1], flush=True)
        triton_scan._CONFIG_OVERRIDE = None
        torch.cuda.empty_cache()
    return rows


def profile_model(name, img_size, batch, train):
    import timm
    from torch.profiler import ProfilerActivity, profile

    import vimamba  # noqa: F401  (registers the models)

    model = timm.create_model(name, img_size=img_size).cuda()
    x = torch.randn(batch, 3, img_size, img_size, device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None

    def run(model=model, x=x, opt=opt):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if train:
                loss = model(x).float().logsumexp(-1).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    model(x)

    model.train(train)
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3
    kernels, total = gpu_kernels(prof, 30)
    return {"model": name, "img_size": img_size, "batch": batch, "train": train, "wall_ms": wall_ms, "gpu_ms": total,
                "kernels": kernels}


def print_table(rows):
    """The best eight timed variants of each problem as a markdown table (a split sweep's rows name their
    segments instead of a tile)."""
    ok = [r for r in rows if "ms" in r]
    print("\n| pass | batch | dim | length | tile | ms | bwd ms | G steps/s | rel. diff to 1st |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    key = lambda r: (r["pass_"], r["batch"], r.get("dim", 384), r["length"])  # noqa: E731
    for (pss, b, d, ln), grp in itertools.groupby(ok, key=key):
        for r in sorted(grp, key=lambda r: r["ms"])[:8]:
            bwd = f"{r['bwd_ms']:.3f}" if "bwd_ms" in r else ""
            variant = r["tile"] if "tile" in r else f"{r['segments']} segments"
            print(f"| {pss} | {b} | {d} | {ln} | {variant} | {r['ms']:.3f} | {bwd} | {r['gsteps']:.0f} "
                  f"| {r['rel_diff']:.1e} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON file for the results (required but with --one-fwd/--one-bidir)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--bwd-only", action="store_true")
    p.add_argument("--grid", choices=("layouts", "dr", "v4", "bidir", "v5", "v6", "v6b", "v7", "v8", "v10", "v11", "v12", "v12b",
                                       "v12c", "v13", "split"),
                   default="layouts",
                   help="layouts: states over registers/lanes x chunk x warps (DR = 1); dr: the shipped rule "
                        "against one or two chunks in flight and against two channels per thread")
    p.add_argument("--one-fwd", metavar="BATCHxLENGTH",
                   help="run the shipped forward once at this size and exit (for a profiler such as ncu)")
    p.add_argument("--one-bidir", metavar="BATCHxLENGTH",
                   help="as --one-fwd for the mixer's two scans in one launch")
    p.add_argument("--one-bidir-bwd", metavar="BATCHxLENGTH",
                   help="as --one-bidir, with autograd: the two-direction backward launch follows each forward")
    p.add_argument("--tile", metavar="JSON",
                   help="with --one-fwd/--one-bidir: a forward tile (list) or override dict instead of the rule's")
    args = p.parse_args()
    one = args.one_fwd or args.one_bidir or args.one_bidir_bwd
    if not (args.out or one):
        p.error("--out is required (but with --one-fwd, --one-bidir or --one-bidir-bwd)")
    import triton

    if one:
        from vimamba.ops.selective_scan.triton_scan import selective_scan_bidir_triton

        batch, length = (int(v) for v in one.lower().split("x"))
        ins = _inputs(batch, 384, 16, length, torch.bfloat16, time_major=True, device="cuda", seed=7)
        if args.tile:
            tile = json.loads(args.tile)
            tile = tuple(tile) if isinstance(tile, list) else tile
            n_dir = 1 if args.one_fwd else 2
            triton_scan._CONFIG_OVERRIDE = _override("fwd", tile, n_dir * batch, 384, 16, length)
        keys = ("u", "delta", "A", "B", "C", "D", "delta_bias")
        if args.one_bidir_bwd:
            leaves = [ins[k].detach().requires_grad_(True) for k in keys]
            z = ins["z"].detach().requires_grad_(True)
            for _ in range(2):
                y_f, y_b = selective_scan_bidir_triton(leaves, leaves, z, True)
                torch.autograd.grad((y_f, y_b), leaves + [z], (torch.ones_like(y_f), torch.ones_like(y_b)))
            torch.cuda.synchronize()
            return
        with torch.no_grad():
            for _ in range(2):
                if args.one_bidir:
                    pair = [ins[k] for k in keys]
                    selective_scan_bidir_triton(pair, pair, ins["z"], True)
                else:
                    selective_scan_triton(**ins, delta_softplus=True)
        torch.cuda.synchronize()
        return

    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save():  # after each phase: a run cut by a time limit keeps what it measured
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    if args.profile:
        report["profiles"] = [profile_model("vim_tiny_patch16_224", 1248, 64, False),
                              profile_model("vim_tiny_patch16_224", 224, 128, True)]
        for prof in report["profiles"]:
            print(f"\n{prof['model']} {prof['img_size']} b{prof['batch']} train={prof['train']}: "
                  f"wall {prof['wall_ms']:.1f} ms, GPU {prof['gpu_ms']:.1f} ms")
            for k in prof["kernels"][:14]:
                print(f"  {k['ms']:8.2f} ms {k['calls']:5d}x  {k['name']}")
        save()
    if not args.no_sweep and args.grid == "bidir":
        report["sweep"] = sweep_bidir()
    elif not args.no_sweep and args.grid == "v8":
        # run 10 (session 7): two channels per thread in the backward (DR = 2). Offline sm_90: phase B 651
        # instructions a step for 16 (channel, state) elements at 248 registers (40.7 each; the rule's tile 55,
        # 443 for 8 at 167), phase A 10 per element (12); spills at 168. Fewer instructions, fewer warps
        # (8 per SM at 255 registers against 12) with twice the independent chains in each
        report["sweep"] = sweep_bidir_backward([
            "default", {"tile": (1, 8, 2, 1, 2, 16, 32), "maxnreg_bwd": 255},
            {"tile": (1, 8, 2, 1, 2, 16, 32), "maxnreg_bwd": 0}, {"tile": (1, 4, 2, 1, 4, 8, 32), "maxnreg_bwd": 168},
            {"tile": (1, 4, 2, 1, 4, 8, 32), "maxnreg_bwd": 255}, {"maxnreg_bwd": 255}])
    elif not args.no_sweep and args.grid == "v10":
        # session 9: the backward's segment length (K steps of T = 1; the forward saves a state every K). Phase A
        # writes every step's state to a per-program scratch that phase B reads back: K x 1 KB a warp at the
        # 224 tile, 32 KB at K = 32, ~50 MB over the 12 warps of 132 SMs, about the whole L2, so the scratch may
        # be going to memory: ~2.4 GB a layer written and read at Vim-Ti 224, batch 128 (~0.5 ms of its 3.06 at
        # HBM speed). Shorter segments keep it in L2 for the price of more saved states (K = 16: 2x the forward's
        # 20 MB a direction) and shorter phase-A runs; phase A's chunk (TA) alongside
        report["sweep"] = sweep_bidir_backward([
            "default", (1, 8, 1, 1, 2, 16, 16), (1, 8, 1, 1, 2, 16, 8), (1, 8, 1, 1, 2, 16, 64),
            (1, 8, 1, 1, 2, 16, 16, 2), (1, 8, 1, 1, 2, 16, 16, 8), (1, 8, 1, 1, 2, 16, 8, 8)])
    elif not args.no_sweep and args.grid == "v11":
        # session 10 (NOTES_triton.md run 13): ncu on the H100 put 34% of the 1248 pair forward's stall samples on
        # the first use of delta, loaded one step ahead; the forward now may prefetch u, delta and z to L2 some
        # chunks ahead. The backward's layouts were fixed for Triton 3.6 (no shared-memory conversions, half the
        # shuffles, offline sm_90: phase B 717 -> 453 a step): its segment length and phase A's chunk again
        forward = sweep_bidir(lambda length: ["default", {"prefetch": 2}, {"prefetch": 4}, {"prefetch": 8},
                                              {"prefetch": 16}, {"prefetch": 32}])
        report["sweep"] = forward
        save()
        report["sweep"] = forward + sweep_bidir_backward([
            "default", (1, 8, 1, 1, 2, 16, 16), (1, 8, 1, 1, 2, 16, 16, 1), (1, 8, 1, 1, 2, 16, 16, 2),
            (1, 8, 1, 1, 2, 16, 32, 1), (1, 8, 1, 1, 2, 16, 8, 1)])
    elif not args.no_sweep and args.grid == "v12":
        # session 10, after the layout fix: the backward waits on its loads (ncu, H200: 36% long scoreboard),
        # B and C among them, loaded at the top of the step that uses them. BC_PREFETCH asks L1 for the next
        # chunk's B and C rows (PTX prefetch, no register: 2 instructions a step offline, no spills at 168);
        # with the segment of 16 steps and phase-A chunks of 2 (the v11 sweep's best at 224) and K = 32 with
        # chunks of 2 (not timed yet)
        tiles = [(1, 8, 1, 1, 2, 16, 16, 2), (1, 8, 1, 1, 2, 16, 32, 2)]
        backward = sweep_bidir_backward(
            ["default", {"bc_prefetch": True}] + [v for t in tiles for v in (t, {"tile": t, "bc_prefetch": True})]
            + ["default"])
        report["sweep"] = backward
        save()
        # The v11 sweep timed the forward's default first (3.319 ms for the Vim-Ti 1248 pair, where v9 had 3.055)
        # and every prefetch distance after it at ~2.91, and the prefetch did nothing inside the model: the
        # first row may have run before the clocks settled. Here the default runs first and last, and the
        # one-lane tile is asked again with two chunks in flight (no register or spill cost offline under 3.6:
        # 118 registers, 205 instructions a step) with and without the B/C touch.
        def forward_variants(length):
            if length < 1024:
                return ["default", {"prefetch": 8}, "default"]
            return ["default", {"prefetch": 8}, (1, 16, 1, 1, 1, 32, 2, True), (1, 16, 1, 1, 1, 32, 2, False),
                    {"tile": (1, 16, 1, 1, 1, 32, 2, True), "prefetch": 8}, (1, 16, 1, 1, 1, 32, 1, False),
                    "default"]
        report["sweep"] = backward + sweep_bidir(forward_variants)
    elif not args.no_sweep and args.grid == "v12b":
        # session 11: the forward's L2 prefetch took the 1248 pair from 3.29-3.32 ms (the default timed first and
        # last) to 2.92 in the v12 sweep, as in v11, yet the model ran no faster with it (bench-h200-v11-prefetch).
        # The mixer calls the pair differently from these sweeps: B and C as columns of x_proj's output, each
        # output written over its own u, A as A_log. Each of those, with and without the prefetch
        def variants(length):
            if length < 1024:
                return ["default", {"prefetch": 8}]
            mixer = {"xdbl": True, "inplace": True, "a_log": True}
            return ["default", {"prefetch": 8}, {"xdbl": True}, {"xdbl": True, "prefetch": 8}, {"inplace": True},
                    {"inplace": True, "prefetch": 8}, mixer, dict(mixer, prefetch=8), "default"]
        report["sweep"] = sweep_bidir(variants)
    elif not args.no_sweep and args.grid == "v12c":
        # session 11, after the v12b sweep: the forward's prefetch and B and C in rows of their own (packed) or as
        # x_proj's columns. (In scan_sweep_v12c-h100-v12c "default" was {"prefetch": 8} at 1248: the shipped rule
        # of that call, turned off again after the model did not follow, docs/performance.md v12.)
        def variants(length):
            if length < 1024:
                return ["default", {"xdbl": True}, {"prefetch": 8}, "default"]
            return [{"prefetch": 8}, {"prefetch": 0}, {"xdbl": True, "prefetch": 8}, {"xdbl": True, "prefetch": 0},
                    {"prefetch": 8}]
        forward = sweep_bidir(variants)
        report["sweep"] = forward
        save()
        # the training step's backward (B and C unpacked below 1,024 steps) with B and C in either layout
        report["sweep"] = forward + sweep_bidir_backward(["default", {"xdbl": True}, "default"],
                                                         problems=((128, 384, 197), (128, 768, 197)))
    elif not args.no_sweep and args.grid == "v13":
        # for session 12: inside the model the forward's prefetch of u, delta and z did not help even with B and C
        # packed into 64-byte rows, and ncu put 35% of the model's pair stalls on the B/C loads
        # (ncu_digest_model_pair-h100-v12c). Here alone: B and C in such rows, in-place outputs and A_log as the
        # mixer passes them, and the B/C prefetch with each; the default inputs have B and C in planes
        mixer = {"packed": True, "inplace": True, "a_log": True}

        def variants(length):
            if length < 1024:
                return ["default", {"packed": True}, {"bc_prefetch_fwd": 8}, "default"]
            return ["default", {"prefetch": 8}, {"packed": True, "prefetch": 8}, dict(mixer, prefetch=8),
                    dict(mixer, prefetch=8, bc_prefetch_fwd=8), dict(mixer, prefetch=8, bc_prefetch_fwd=32),
                    {"xdbl": True, "inplace": True, "a_log": True, "prefetch": 8, "bc_prefetch_fwd": 8}, "default"]
        report["sweep"] = sweep_bidir(variants)
    elif not args.no_sweep and args.grid == "split":
        report["sweep"] = sweep_split_in_time()
    elif not args.no_sweep and args.grid == "v7":
        # run 9 (session 6): the backward of both directions in one launch (at 224, batch 128, one direction
        # fills 1.45 waves of 16 one-warp programs per SM, the pair 2.9: 3 waves where two launches take 4) and
        # B/C loaded once per chunk (phase B 460 -> 430 SASS a step), against two launches; register budgets
        # (the rule's 128; ptxas's own choice, ~167; 96 spills); the four-lane tile
        report["sweep"] = sweep_bidir_backward([
            "default", {"bidir_bwd": False}, {"maxnreg_bwd": 0}, {"bidir_bwd": False, "maxnreg_bwd": 0},
            {"maxnreg_bwd": 168}, {"tile": (1, 4, 1, 1, 4, 8, 32)}, {"tile": (1, 4, 1, 1, 4, 8, 32), "maxnreg_bwd": 96},
            {"tile": (1, 16, 1, 1, 1, 32, 32), "maxnreg_bwd": 0}])
    elif not args.no_sweep and args.grid == "v6b":
        # run 8, second part: with registers to spare, B and C in fp32 (16-byte loads, no widening: 32 fewer
        # instructions a step), in their own buffers and as columns of x_proj's output (Vim's layout); chunks
        # of two and four steps, which the two-direction launch now takes (396 SASS per 2 steps offline)
        def variants(length):
            ahead = 2 if length > 1000 else 1
            return ["default", {"bc32": True}, {"xdbl": True}, {"xdbl": True, "bc32": True},
                    (1, 16, 1, 1, 1, 32, 1, False), (2, 16, 1, 1, 1, 32, 1, True), (4, 16, 1, 1, 1, 32, 1, True),
                    (2, 16, 1, 1, 1, 32, 1, False),
                    {"tile": (2, 16, 1, 1, 1, 32, 1, True), "xdbl": True, "bc32": True},
                    (2, 8, 1, 1, 2, 16, ahead, False)]
        report["sweep"] = sweep_bidir(variants)
    elif not args.no_sweep and args.grid == "v6":
        # run 8 (session 5): registers. One-warp programs got 64 registers from ptxas, which then issued the
        # step's eight B/C loads one after another inside the chain; the rule now sets maxnreg from the warps
        # per SM ({"maxnreg": 0} is v5's launch). With registers to spare, two chunks in flight and the touch
        # are asked again; the backward (128 registers, two waves at 224) with other register budgets.
        def variants(length):
            ahead = 2 if length > 1000 else 1
            return ["default", {"maxnreg": 0}, {"maxnreg": 128}, {"maxnreg": 255},
                    {"tile": (1, 16, 1, 1, 1, 32, 3 - ahead)}, {"tile": (1, 16, 1, 1, 1, 32, ahead), "touch": False},
                    {"tile": (1, 16, 1, 1, 1, 32, ahead), "touch": True},
                    {"tile": (1, 8, 1, 1, 2, 16, ahead), "touch": False}, {"tile": (1, 8, 1, 1, 2, 16, ahead)}]
        report["sweep"] = sweep_bidir(variants)
        save()
        bwd = ["default", {"maxnreg_bwd": 96}, {"maxnreg_bwd": 168}, {"maxnreg_bwd": 255},
               {"tile": (1, 16, 1, 1, 1, 32, 32), "maxnreg_bwd": 255}]
        report["sweep"] += sweep([(128, 197)], ["default", {"maxnreg": 0}], bwd)
    elif not args.no_sweep and args.grid == "v5":
        # run 7 (session 4): carried pointers (149 SASS per loop iteration at the 1248 tile, from 166); the B/C
        # touch a chunk ahead on and off (140 without it); one lane per channel (194 per 16 states, 12.1 per
        # state-step against 17.5 at two lanes) where the rows allow it; backward phase-A chunks (registers)
        def variants(length):
            ahead = 2 if length > 1000 else 1
            return ["default", {"touch": False}, (1, 16, 1, 1, 1, 32, ahead),
                    {"tile": (1, 16, 1, 1, 1, 32, ahead), "touch": False}, (1, 8, 1, 1, 2, 16, ahead),
                    {"tile": (1, 8, 1, 1, 2, 16, ahead), "touch": False}, (1, 16, 1, 1, 1, 32, 3 - ahead)]
        report["sweep"] = sweep_bidir(variants)
        save()
        bwd = ["default"] + [{"tile": (1, 8, 1, 1, 2, 16, 32, ta)} for ta in (1, 2, 4)] + [
            (1, 4, 1, 1, 4, 8, 32), (1, 4, 1, 1, 4, 8, 32, 2), (1, 16, 1, 1, 1, 32, 32, 2), (2, 8, 1, 1, 2, 16, 16)]
        report["sweep"] += sweep([(128, 197)], ["default", {"touch": False}], bwd)
    elif not args.no_sweep and args.grid == "v4":
        # run 5 (session 3): B and C four states per load (inline PTX), fp32 B/C, and whether more rows per SM
        # (batch 128 against 64 at one tile) come for free (latency-bound) or not. Run 5 also timed B/C register
        # tiles loaded a chunk ahead (an 8th tile entry), a kernel variant since removed: slower (NOTES_triton.md)
        fwd = ["default", {"vec": False}, {"xdbl": True}, {"bc32": True}, {"xdbl": True, "vec": False},
               (1, 16, 1, 1, 1, 32, 2), (1, 16, 1, 2, 1, 32, 2), (1, 16, 1, 1, 1, 32, 1), (2, 8, 1, 2, 2, 16, 2),
               (1, 8, 1, 2, 2, 16, 2), (1, 8, 1, 4, 2, 16, 2), (1, 8, 1, 1, 2, 16, 2), (2, 4, 1, 1, 4, 8, 2),
               (1, 4, 1, 2, 4, 8, 2),
               {"tile": (1, 16, 1, 1, 1, 32, 2), "bc32": True}, {"tile": (1, 8, 1, 2, 2, 16, 2), "bc32": True}]
        short = [c if not isinstance(c, tuple) else c[:6] + (1,) + c[7:] for c in fwd]
        report["sweep"] = (sweep([(64, 6085), (128, 6085), (8, 6085)], fwd, ["default"])
                           + sweep([(128, 197)], short, ["default"]))
    elif not args.no_sweep and args.grid == "dr":
        # run 4 (results/scan_sweep_dr-h100.json) also had two kernel variants since removed, both slower:
        # the decay as inline PTX ex2.approx.ftz (+8%) and B, C as register tiles loaded a chunk ahead (2x)
        fwd = ["default", {"ahead": 1}, {"ahead": 2}, (2, 4, 2, 1, 4, 8), (2, 4, 2, 1, 4, 8, 2), (2, 8, 2, 1, 2, 16)]
        bwd = ["default", (1, 4, 2, 1, 4, 8, 32), (1, 2, 2, 1, 8, 4, 32), (1, 8, 2, 1, 2, 16, 32)]
        report["sweep"] = sweep([(64, 6085), (128, 197)], fwd, bwd) + sweep([(8, 6085)], fwd, [])
    elif not args.no_sweep:
        fwd = [(t, nr, 1, w, nl, dl) for t, (nr, nl, dl), w in itertools.product((1, 2, 4), LAYOUTS, (1, 2, 4))]
        fwd.insert(0, "default")
        bwd = [(t, nr, 1, w, nl, dl, 32 // t) for t, (nr, nl, dl), w in itertools.product(
            (1, 2, 4), LAYOUTS[1:4], (1, 2, 4))]
        bwd.insert(0, "default")
        if args.quick:
            fwd, bwd = fwd[:4], bwd[:2]
        if args.bwd_only:
            fwd = fwd[:1]
        problems = [(64, 6085), (128, 197), (8, 6085)]
        report["sweep"] = sweep(problems[:2], fwd, bwd) + sweep(problems[2:], fwd, [])
    if "sweep" in report:
        print_table(report["sweep"])
    save()


if __name__ == "__main__":
    main()
