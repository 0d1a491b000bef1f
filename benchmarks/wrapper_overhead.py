"""Host cost of vimamba's op wrappers without their kernels, on the CPU (no GPU needed).

    PYTHONPATH=src python benchmarks/wrapper_overhead.py --out benchmarks/results/wrapper_overhead-cpu.json

An eager Vim step at 224x224 is bound by the host (``host_overhead.py`` measures that on a GPU machine); this
measures the part that is vimamba's own Python. Kernel launches are replaced by no-ops (the kernels run in
Triton's interpreter mode, so no CUDA is needed), and each wrapper's time per call is set against a plain
``torch.add`` of two one-element tensors, the cheapest dispatched op, in the same process:

* ``torch.autograd.Function.apply`` with the split style (``forward`` without ctx plus ``setup_context``)
  against ``forward(ctx, *args)`` calling the same ``setup_context``, around one do-nothing implementation with
  the two-direction scan's 17 arguments: the split style binds every call to ``forward``'s signature with
  ``inspect`` (``vimamba.ops._triton.eager_op`` uses the second style for that reason);
* ``selective_scan_bidir_triton`` (Vim-Ti's two scans at 224, batch 8), without and with autograd.

Prints a table; writes JSON. Times are medians of several rounds; they move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors take the Triton path; the launches are stubbed below

import torch  # noqa: E402
from _timing import host_seconds_per_call  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))

from test_ops_selective_scan_triton import _inputs  # noqa: E402

from vimamba.ops import _triton  # noqa: E402
from vimamba.ops.selective_scan import triton_scan  # noqa: E402


def _per_call_us(fn):
    return host_seconds_per_call(fn, calls=300, warmup=20) * 1e6


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _functions(n_args=17):
    def impl(*args):
        return args[0].new_empty(args[0].shape)

    def setup_context(ctx, inputs, output):
        ctx.n = len(inputs)

    def backward(ctx, grad):
        return (grad,) + (None,) * (ctx.n - 1)

    names = ", ".join(f"a{i}" for i in range(n_args))
    scope = {"impl": impl}
    exec(f"def forward({names}):\n    return impl({names})\n", scope)  # noqa: S102 - a fixed-arity forward, as ops have
    split = type("Split", (torch.autograd.Function,), {
        "forward": staticmethod(scope["forward"]), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward)})
    with_ctx = type("WithCtx", (torch.autograd.Function,), {
        "forward": staticmethod(_triton._forward_with_context(scope["forward"], setup_context)),
        "backward": staticmethod(backward)})
    return split, with_ctx


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    one = torch.ones(1)
    rows = {"torch.add (1 element)": _per_call_us(lambda: torch.add(one, one))}

    split, with_ctx = _functions()
    x = torch.randn(4, requires_grad=True)
    rest = [torch.randn(4) for _ in range(16)]
    rows["Function.apply, split setup_context (17 args)"] = _per_call_us(lambda: split.apply(x, *rest))
    rows["Function.apply, forward(ctx, ...) (17 args)"] = _per_call_us(lambda: with_ctx.apply(x, *rest))

    triton_scan._get_kernels()
    triton_scan._KERNELS[True] = (_NoLaunch(), _NoLaunch())
    keys = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    a = _inputs(8, 384, 16, 197, torch.bfloat16, time_major=True, seed=1)
    b = _inputs(8, 384, 16, 197, torch.bfloat16, time_major=True, seed=2)
    fa, fb = [a[k] for k in keys], [b[k] for k in keys]
    with torch.no_grad():
        rows["selective_scan_bidir_triton, no grad (kernel stubbed)"] = _per_call_us(
            lambda: triton_scan.selective_scan_bidir_triton(fa, fb, a["z"], True))
    la = [t.detach().requires_grad_(True) for t in fa]
    lb = [t.detach().requires_grad_(True) for t in fb]
    z = a["z"].detach().requires_grad_(True)
    rows["selective_scan_bidir_triton, autograd (kernel stubbed)"] = _per_call_us(
        lambda: triton_scan.selective_scan_bidir_triton(la, lb, z, True))

    base = rows["torch.add (1 element)"]
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print("| call | us per call | x torch.add |")
    print("| --- | --- | --- |")
    for name, us in rows.items():
        print(f"| {name} | {us:.1f} | {us / base:.1f} |")
    report = {"torch": torch.__version__, "cpus": os.cpu_count(), "python": platform.python_version(),
              "us_per_call": rows, "x_torch_add": {k: v / base for k, v in rows.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
