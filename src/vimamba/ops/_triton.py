"""Triton, where it is installed: the op modules must import (and say so) where it is not.

CPU-only PyTorch wheels and macOS/Windows have no Triton; there ``HAS_TRITON`` is False and ``tl`` is a
stand-in that lets the kernel signatures (``x: tl.constexpr``) evaluate, so the references still serve.

Kernels are turned into Triton functions on first use, not at import: whether they run compiled (CUDA) or in
Triton's interpreter (CPU tensors, ``TRITON_INTERPRET=1``) is decided by the environment at that moment, so
setting the variable after this module was imported still works. For the same reason the kernel bodies call
only builtins of ``triton.language`` (``tl.full``, ``tl.reduce`` with ``tl.standard._sum_combine``, ``tl.exp``),
never ``tl.sum`` / ``tl.sigmoid`` / ``tl.zeros`` / ``tl.cdiv``: those are themselves ``@jit`` functions, fixed
as compiled or interpreted when triton is imported, and the interpreter refuses the compiled ones.
"""

import functools
import inspect
import math
import os

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    HAS_TRITON = False

    class _NoTriton:
        constexpr = None

    tl = _NoTriton()

__all__ = ["HAS_TRITON", "autotune_enabled", "cdiv", "eager_op", "lazy_kernel", "next_pow2", "num_sms",
           "register_cap", "tl", "triton"]


def autotune_enabled() -> bool:
    """``VIMAMBA_TRITON_AUTOTUNE=0`` skips autotuning: the first (heuristic) config of each list is used."""
    return os.environ.get("VIMAMBA_TRITON_AUTOTUNE", "1").strip() != "0"


def lazy_kernel(cache: dict, key: tuple, fn, configs=None, tune_key=(), tune=None):
    """``(kernel, interpreted, autotuned)``: ``fn`` decorated for the mode in force now, kept in ``cache`` under
    ``key`` plus that mode.

    ``triton.jit`` decides, from TRITON_INTERPRET as it is at this call, between a compiled kernel and one for
    the interpreter; a compiled one is autotuned over ``configs(*key)`` (a module-level function returning
    ``triton.Config``s, so that no closure is made on every launch; None for none) on ``tune_key`` unless
    ``tune`` is False (default: ``autotune_enabled()``). One entry is kept per setting of the two variables, so
    tests may switch either at run time."""
    tune = autotune_enabled() if tune is None else tune
    full_key = (*key, os.environ.get("TRITON_INTERPRET", ""), tune)
    entry = cache.get(full_key)
    if entry is None:
        from triton.runtime.jit import JITFunction

        kernel = triton.jit(fn)
        interp = not isinstance(kernel, JITFunction)
        tuned = bool(tune) and not interp and configs is not None
        if tuned:
            kernel = triton.autotune(configs=configs(*key), key=list(tune_key))(kernel)
        entry = cache[full_key] = (kernel, interp, tuned)
    return entry


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the launchers' host arithmetic. Why not ``triton.cdiv``: in Triton 3.8 it is a
    ``ConstexprFunction`` whose host call unwraps its arguments first, ~5 us a call (cProfile of the two-direction
    scan's wrapper: 17 of its ~50 us in three such calls; ``benchmarks/wrapper_overhead.py``)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of 2 >= n (1 for n <= 1); host-side, for the same reason as ``cdiv``."""
    return 1 << max(0, int(n) - 1).bit_length()


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (4 stands in for the interpreter on the CPU)."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:  # asked once per kernel launch: keep it off the launch path
    return torch.cuda.get_device_properties(index).multi_processor_count


def register_cap(warps_per_sm: float, override=None) -> dict:
    """The ``maxnreg`` launch option for a kernel whose whole grid keeps ``warps_per_sm`` warps resident per SM:
    as many registers per thread as still fit them all in one wave (a multiple of 8, at most 255), or nothing
    where that is no more than 64 or where this Triton has no such option. ``override`` (an int; 0 = no option)
    replaces the rule, for sweeps.

    Why: with one-warp programs ptxas budgets registers for the most blocks an SM can hold (32 warps, so 64
    registers a thread), and to stay within them it issued each of the scan's eight B/C loads of a step just
    before its use, one after another (the v5 forward loop at Vim-Ti 1248, sm_90 SASS). Vim's scans keep far
    fewer warps per SM (~12 at 1248, batch 64); given the registers, ptxas issues all eight loads at the top
    of the step (NOTES_triton.md, run 8)."""
    if override is not None:
        return {"maxnreg": int(override)} if override and _has_maxnreg() else {}
    regs = min(255, 65536 // (32 * max(1, math.ceil(warps_per_sm)))) // 8 * 8
    return {"maxnreg": regs} if regs > 64 and _has_maxnreg() else {}


@functools.lru_cache(maxsize=None)
def _has_maxnreg() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:  # pragma: no cover - triton without its NVIDIA backend
        return False
    return "maxnreg" in getattr(CUDAOptions, "__dataclass_fields__", {})


def eager_op(name: str, impl, mutates_args=(), backward=None, setup_context=None):
    """``impl`` registered as the custom op ``name`` (with ``backward``/``setup_context`` as its autograd),
    returned as a callable that uses the registered op only while torch.compile traces, and otherwise calls
    ``impl`` directly (through a ``torch.autograd.Function`` with the same backward, when there is one).

    Why: a cProfile of Vim-Ti's eager forward at 224x224, batch 128 (H100 machine, torch 2.11;
    ``benchmarks/host_overhead.py``) put ~200 us per call in torch.library's eager dispatch of these Python
    ops, 97 calls per forward (0.105 of 0.289 s over five forwards); called directly, the profiled forward
    took 48 instead of 58 ms. Under torch.compile the op stays opaque to the compiler, so a whole model is one
    graph. The returned callable has the op as ``.op`` (for its fake registration and opcheck).
    """
    op = torch.library.custom_op(name, mutates_args=mutates_args)(impl)
    function = None
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
        function = type(name.split("::")[-1], (torch.autograd.Function,), {
            "forward": staticmethod(_forward_with_context(impl, setup_context)),
            "backward": staticmethod(backward)})

    def call(*args):
        if _tracing(args):
            return op(*args)
        if function is not None and torch.is_grad_enabled():
            return function.apply(*args)
        return impl(*args)

    call.op = op
    return call


def _forward_with_context(impl, setup_context):
    """An autograd.Function ``forward(ctx, *args)`` that runs ``impl`` and then ``setup_context`` on the same ctx.

    Why not the newer split (``forward`` without ctx, plus a ``setup_context`` staticmethod): with it, every
    ``apply`` binds the call to ``forward``'s signature through ``inspect.signature`` (torch's
    ``_bind_default_args``): 47.7 us per apply with the two-direction scan's 17 arguments against 6.0 us this
    way, ~37x and ~5x a one-element ``torch.add`` (``benchmarks/wrapper_overhead.py``, 2-CPU machine, torch
    2.14); an eager training step makes ~100 such calls. Defaults are bound here only when a call leaves
    arguments out."""
    signature = inspect.signature(impl)
    n_params = len(signature.parameters)

    def forward(ctx, *args):
        if len(args) < n_params:
            bound = signature.bind(*args)
            bound.apply_defaults()
            args = bound.args
        out = impl(*args)
        setup_context(ctx, args, out)
        return out

    return forward


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _tracing(args) -> bool:
    """Whether a call is being traced (torch.compile, AOT autograd, make_fx, fake or functional tensors):
    then the registered op must appear, not the kernels behind it."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return True
    return any(isinstance(a, torch.Tensor) and type(a) not in _PLAIN_TENSORS for a in args)
