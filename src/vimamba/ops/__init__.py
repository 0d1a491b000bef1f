"""Vim's compute kernels. One folder per operation: the plain-PyTorch reference and the Triton kernels.

The public functions below are what layers call. Each picks its implementation per call (see
``dispatch.py``): Triton kernels for CUDA tensors, the references on the CPU, or whatever
``VIMAMBA_BACKEND`` / the ``backend=`` argument forces.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .causal_conv1d import causal_conv1d_ref
from .dispatch import BACKENDS, resolve_backend, triton_available
from .rms_norm import add_rms_norm_ref, rms_norm_ref
from .selective_scan import selective_scan_bidir_ref, selective_scan_ref
from . import ssm_proj
from .ssm_proj import ssm_projections_ref

__all__ = [
    "BACKENDS",
    "ScanInputs",
    "add_rms_norm",
    "add_rms_norm_ref",
    "causal_conv1d_fn",
    "causal_conv1d_pair_fn",
    "causal_conv1d_ref",
    "resolve_backend",
    "rms_norm_ref",
    "bidirectional_selective_scan_fn",
    "selective_scan_bidir_ref",
    "selective_scan_fn",
    "selective_scan_ref",
    "ssm_projections_fn",
    "ssm_projections_fused",
    "ssm_projections_ref",
    "triton_available",
]


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    reverse: bool = False,
    *,
    add: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    backend: str | None = None,
):
    """mamba-ssm's ``selective_scan_fn`` (plus ``reverse``; ``add``: a tensor of u's shape added to the output
    before its rounding, fused into the kernel; ``out``: inference only, a tensor of u's shape and dtype that
    receives the output and may be ``add`` itself), on the chosen backend.

    The Triton kernels take input-dependent B and C of shape (batch, state, length); time-invariant or
    grouped B/C run on the reference under ``auto`` and raise under a forced ``triton``.
    """
    choice = resolve_backend(u, backend)
    if choice == "triton" and (B.dim() == 3 and C.dim() == 3 or backend == "triton"):
        from .selective_scan.triton_scan import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                     reverse, add=add, out=out)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse,
                              add=add, out=out)


class ScanInputs(NamedTuple):
    """One scan's own inputs (all but z), as ``selective_scan_fn`` takes them."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None = None
    delta_bias: torch.Tensor | None = None


def bidirectional_selective_scan_fn(
    fwd: ScanInputs,
    bwd: ScanInputs,
    z: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    a_log: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vim's two scans: ``fwd`` from the first step to the last, ``bwd`` from the last to the first (each as
    ``selective_scan_fn(*scan, z=z, reverse=...)`` gives it), gated by the same ``z``; returns both outputs.

    The Triton path runs both in one launch, forward and backward: the scan is latency-bound, so twice the rows
    per multiprocessor cost far less than twice the time. ``fwd`` and ``bwd`` must then agree in shapes,
    strides and dtypes. ``out`` (inference only): a pair of tensors that receive the outputs; they may be the
    two u's. ``a_log``: each scan's A is given as Mamba's stored parameter A_log (A = -exp(A_log)); the Triton
    kernels compute A themselves, which saves two launches per direction and call (and their backward).
    """
    u = fwd[0]
    if resolve_backend(u, backend) == "triton":
        from .selective_scan.triton_scan import selective_scan_bidir_triton

        return selective_scan_bidir_triton(fwd, bwd, z, delta_softplus, out=out, a_log=a_log)
    return selective_scan_bidir_ref(fwd, bwd, z, delta_softplus, out=out, a_log=a_log)


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reverse: bool = False,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The causal-conv1d package's ``causal_conv1d_fn`` (plus ``reverse``), on the chosen backend."""
    if resolve_backend(x, backend) == "triton":
        from .causal_conv1d.triton_conv1d import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, activation, reverse)
    return causal_conv1d_ref(x, weight, bias, activation, reverse)


def causal_conv1d_pair_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_rev: torch.Tensor,
    bias_rev: torch.Tensor | None,
    activation: str | None = None,
    *,
    stacked: bool = False,
    backend: str | None = None,
):
    """Vim's two convs of one x: ``causal_conv1d_fn(x, weight, bias, activation)`` and the anti-causal
    ``causal_conv1d_fn(x, weight_rev, bias_rev, activation, reverse=True)``. On the Triton backend both come from
    one pass over x, and their backward is one pass too.

    ``stacked``: one tensor (batch, 2 * dim, length) instead of two, the causal conv's channels first, stored as
    (batch, length, 2 * dim): both branches' tokens side by side, for products batched over the branches."""
    if resolve_backend(x, backend) == "triton":
        from .causal_conv1d.triton_conv1d import causal_conv1d_pair_triton

        return causal_conv1d_pair_triton(x, weight, bias, weight_rev, bias_rev, activation, stacked)
    pair = (causal_conv1d_ref(x, weight, bias, activation),
            causal_conv1d_ref(x, weight_rev, bias_rev, activation, reverse=True))
    if stacked:
        return torch.cat([u.transpose(1, 2) for u in pair], dim=2).transpose(1, 2)
    return pair


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual) * weight, x + residual)``, on the chosen backend."""
    if resolve_backend(x, backend) == "triton":
        from .rms_norm.triton_rms_norm import add_rms_norm_triton

        return add_rms_norm_triton(x, residual, weight, eps, residual_in_fp32)
    return add_rms_norm_ref(x, residual, weight, eps, residual_in_fp32)


# Sequences at least this long get B and C in fp32 from ``ssm_projections_fn`` for the Triton scan (None: never).
# Timed inside the model (benchmarks/model_variants.py, model_variants-h100-v13b, H100): Vim-Ti 1248 forward,
# batch 64, 1.063x (1.085x with the touch that the B/C prefetch made redundant dropped too); Vim-S 1248 batch 32
# 1.077x / 1.093x; batch 8 (split in time) unchanged.
SCAN_STATES_FP32_MIN_LENGTH: int | None = 1024


def _scan_states_fp32(u: torch.Tensor, resolved: str) -> bool:
    """Whether the projections hand B and C to the scan in fp32. The forward scan then reads them without the
    16-bit-to-fp32 conversions, 32 of its ~213 instructions a step (sm_90, Triton 3.6, the 1248 pair's tile:
    ``benchmarks/scan_sass.py fwd --bc-dtype fp32``), and without autograd they cost nothing more to make: the
    x_proj product writes its fp32 accumulator (``ssm_proj.reference.x_proj_fp32``)."""
    return (resolved == "triton" and SCAN_STATES_FP32_MIN_LENGTH is not None
            and u.shape[-1] >= SCAN_STATES_FP32_MIN_LENGTH)


def ssm_projections_fused(u: torch.Tensor, x_proj_weight: torch.Tensor | None = None,
                          dt_proj_weight: torch.Tensor | None = None, *, backend: str | None = None) -> bool:
    """Whether ``ssm_projections_fn`` takes the fused kernel for these arguments (weights None: weights of u's
    dtype or autocast's)."""
    return _takes_fused_projections(u, x_proj_weight, dt_proj_weight, resolve_backend(u, backend), backend is None)


def _takes_fused_projections(u, x_proj_weight, dt_proj_weight, resolved: str, automatic: bool) -> bool:
    """``ssm_projections_fused`` for a backend already resolved (``automatic``: no backend was asked for)."""
    if resolved != "triton" or (automatic and not ssm_proj.fused_by_default(u)):
        return False
    # the kernel computes in u's dtype: what the reference does under autocast to that dtype, or without
    # autocast when the weights have it too
    device_type = u.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type) == u.dtype
    return all(w is None or w.dtype == u.dtype for w in (x_proj_weight, dt_proj_weight))


def ssm_projections_fn(
    u: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    second: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    *,
    backend: str | None = None,
):
    """A scan's input-dependent parameters from its conv output ``u`` (batch, channels, length): ``(delta, B,
    C)`` as ``ssm_projections_ref`` computes them, from ``x_dbl = u^T x_proj_weight^T`` (per token: dt_rank
    values of dt, then B, then C) and ``delta = dt dt_proj_weight^T``; delta (batch, channels, length), B and C
    (batch, d_state, length), views. ``second``: another direction's ``(u, x_proj_weight, dt_proj_weight)`` of
    the same shapes; both triples are returned, and from the Triton kernel they come from one launch.

    The fused kernel is taken by ``backend="triton"``, and by the automatic choice only where
    ``vimamba.ops.ssm_proj.fused_by_default`` says so (large inputs on Hopper GPUs; ``VIMAMBA_FUSED_PROJ=1`` /
    ``=0``: always / never; see there). For the Triton
    scan of ``SCAN_STATES_FP32_MIN_LENGTH`` steps or more, B and C come in fp32 either way (``_scan_states_fp32``).
    The fused kernel computes in u's dtype (the weights rounded to it, as autocast casts them for the reference's
    ``F.linear``); where the reference would not (autocast to another dtype; weights of another dtype without
    autocast) the call runs the reference."""
    resolved = resolve_backend(u, backend)  # once a call: it reads the environment
    states_fp32 = _scan_states_fp32(u, resolved)
    if not _takes_fused_projections(u, x_proj_weight, dt_proj_weight, resolved, backend is None):
        states = torch.float32 if states_fp32 else None
        first = ssm_projections_ref(u, x_proj_weight, dt_proj_weight, states)
        return first if second is None else (first, ssm_projections_ref(*second, states))
    from .ssm_proj.triton_ssm_proj import ssm_projections_triton

    return ssm_projections_triton(u, x_proj_weight, dt_proj_weight, second, states_fp32=states_fp32)
