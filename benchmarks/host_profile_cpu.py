"""Host cost of a whole eager Vim step with its kernels stubbed, against timm's DeiT, on the CPU (no GPU needed).

    PYTHONPATH=src python benchmarks/host_profile_cpu.py --out benchmarks/results/host_profile-cpu.json

The 224 rows of ``vimamba bench`` are bound by the host: Python, PyTorch's dispatch and kernel launches
(``host_overhead.py`` measures that on a GPU machine). This measures the part that does not need a GPU, on this
machine, so it can be worked on here: Vim-Ti and DeiT-Ti on 32x32 images (four patches: the arithmetic is
negligible, what is left is the host's work per call), batch 2, fp32 (autocast's casts are a GPU-side matter),
in one process:

* milliseconds per inference forward and per training step (forward, backward, AdamW), medians of rounds;
  and an inference forward under CPU autocast to bf16, for its operators and casts (what ``vimamba bench``
  runs under CUDA autocast; its milliseconds include the CPU's own bf16 products, so only its counts carry
  over);
* PyTorch operators dispatched per call (a ``TorchDispatchMode`` count: every aten op, views included; of
  them those that would launch a GPU kernel: not views, allocations or host queries; and the casts among
  them, operators whose output's dtype differs from their first input's) and
  Triton launches per call (Vim's kernels run in Triton's interpreter mode with every launch replaced by a
  no-op, so a launch here costs only vimamba's own Python around it, not Triton's launcher);
* a cProfile of Vim's training step: the functions with the most own time.

Prints tables; writes JSON. The figures are this CPU's; the ratio of Vim to DeiT is what carries over.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import platform
import pstats
import sys

os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors take the Triton path; launches are stubbed below
os.environ["VIMAMBA_BACKEND"] = "triton"

import torch  # noqa: E402
from _timing import host_seconds_per_call  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "src"))

LAUNCHES = collections.Counter()


def _stub_triton_launches():
    """Every interpreted Triton launch becomes a no-op that only counts itself."""
    from triton.runtime.interpreter import InterpretedFunction

    def run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            LAUNCHES[getattr(self.fn, "__name__", "kernel")] += 1

    InterpretedFunction.run = run


_NO_KERNEL = {"empty", "empty_strided", "promote_types", "_local_scalar_dense"}


def _may_launch(func) -> bool:
    """Whether an aten operator would launch a GPU kernel: not a view (an aliasing result that is not an in-place
    write), not an allocation or a host-side query. (An estimate: a ``to`` call, whose result may alias its input,
    counts only where it changed the dtype.)"""
    if func.__name__.split(".")[0] in _NO_KERNEL:
        return False
    returns = func._schema.returns
    alias = returns[0].alias_info if returns else None
    return alias is None or alias.is_write


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.casts = 0
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        out = func(*args, **(kwargs or {}))
        cast = (isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor)
                and out.dtype != args[0].dtype)
        self.casts += bool(cast)
        # (a cast through ``to``, whose result may alias its input, launches when it makes a new tensor)
        self.kernels += func.namespace == "aten" and (_may_launch(func) or bool(cast))
        return out


def _calls(model, images, targets):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def forward():
        with torch.inference_mode():
            model(images)

    def forward_autocast():
        if hasattr(model, "cast_products_once"):
            model.cast_products_once = True  # what a CUDA device gets (the CPU's default is autocast's casts)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(images)

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"inference forward": forward, "inference forward, autocast": forward_autocast, "training step": train_step}


def _measure(name, fn):
    ms = host_seconds_per_call(fn, calls=5) * 1e3
    LAUNCHES.clear()
    with _CountOps() as counter:
        fn()
    return {"ms": ms, "aten_ops": sum(counter.ops.values()), "kernel_ops": counter.kernels, "casts": counter.casts,
            "triton_launches": sum(LAUNCHES.values()), "top_ops": counter.ops.most_common(12)}


def _profile(fn, top=30):
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        fn()
    prof.disable()
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(top)
    return stream.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()
    import timm

    import vimamba  # noqa: F401 - registers the Vim models

    _stub_triton_launches()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size)
    targets = torch.randint(0, 1000, (args.batch,))
    report = {"host": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "python": platform.python_version(), "img_size": args.img_size, "batch": args.batch, "models": {}}
    models = {"vim_tiny": "vim_tiny_patch16_224", "deit_tiny_sdpa": "deit_tiny_patch16_224"}
    for short, arch in models.items():
        model = timm.create_model(arch, img_size=args.img_size)
        rows = {call: _measure(call, fn) for call, fn in _calls(model, images, targets).items()}
        report["models"][short] = {"depth": len(getattr(model, "layers", getattr(model, "blocks", []))), **rows}
        if short == "vim_tiny":
            report["vim_train_profile"] = _profile(_calls(model, images, targets)["training step"])

    vim, deit = report["models"]["vim_tiny"], report["models"]["deit_tiny_sdpa"]
    print(f"host: {report['host']}, {report['cpus']} CPUs, torch {torch.__version__}; images {args.img_size}x"
          f"{args.img_size}, batch {args.batch}, fp32, Triton launches stubbed")
    print("| call | model | ms | aten ops | of them launching | casts | Triton launches | ms / block | Vim / DeiT (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for call in ("inference forward", "inference forward, autocast", "training step"):
        for short, m in (("vim_tiny", vim), ("deit_tiny_sdpa", deit)):
            r = m[call]
            ratio = f"{r['ms'] / deit[call]['ms']:.2f}x" if short == "vim_tiny" else ""
            print(f"| {call} | {short} | {r['ms']:.2f} | {r['aten_ops']} | {r['kernel_ops']} | {r['casts']} | "
                  f"{r['triton_launches']} | "
                  f"{r['ms'] / m['depth']:.3f} | {ratio} |")
    print("\nVim-Ti training step, most frequent aten ops:", vim["training step"]["top_ops"])
    print("\n" + "\n".join(report["vim_train_profile"].splitlines()[:50]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
