"""Triton, where it is installed: the op modules must import (and say so) where it is not.

CPU-only PyTorch wheels and macOS/Windows have no Triton; there ``HAS_TRITON`` is False and ``tl`` is a
stand-in that lets the kernel signatures (``x: tl.constexpr``) evaluate, so the references still serve.
"""

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

__all__ = ["HAS_TRITON", "tl", "triton"]
