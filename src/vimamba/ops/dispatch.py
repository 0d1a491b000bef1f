"""Choosing between the Triton kernels and the plain-PyTorch references.

``auto`` (the default) takes the kernels for CUDA tensors when Triton is installed, the references
otherwise. ``VIMAMBA_BACKEND=triton|reference|auto`` sets the choice for a whole process (a whole model);
the ``backend=`` argument of an op overrides it for one call. ``triton`` on CPU tensors runs the kernels in
Triton's interpreter, which must be switched on with ``TRITON_INTERPRET=1`` before the kernels are compiled.
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["BACKENDS", "resolve_backend", "triton_available"]

BACKENDS = ("auto", "triton", "reference")


_HAS_TRITON = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _HAS_TRITON


def resolve_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """``"triton"`` or ``"reference"`` for an op on ``tensor``; a clear error for an impossible request."""
    source = "backend argument" if backend is not None else "VIMAMBA_BACKEND"
    choice = (backend if backend is not None else os.environ.get("VIMAMBA_BACKEND", "auto")).lower()
    if choice not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {choice!r}")
    if choice == "reference":
        return "reference"
    if choice == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "reference"
    if not triton_available():
        raise RuntimeError("backend 'triton' needs the triton package (it ships with CUDA builds of PyTorch)")
    if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "backend 'triton' on CPU tensors runs in Triton's interpreter only: set TRITON_INTERPRET=1 "
            "before starting Python, or use backend 'reference'")
    return "triton"
