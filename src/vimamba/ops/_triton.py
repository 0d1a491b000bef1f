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
import os

import torch

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

__all__ = ["HAS_TRITON", "autotune_enabled", "num_sms", "tl", "triton"]


def autotune_enabled() -> bool:
    """``VIMAMBA_TRITON_AUTOTUNE=0`` skips autotuning: the first (heuristic) config of each list is used."""
    return os.environ.get("VIMAMBA_TRITON_AUTOTUNE", "1").strip() != "0"


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (4 stands in for the interpreter on the CPU)."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:  # asked once per kernel launch: keep it off the launch path
    return torch.cuda.get_device_properties(index).multi_processor_count
