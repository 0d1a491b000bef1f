"""Plain-PyTorch selective scan: the reference every faster path is tested against, and the CPU path.

The call signature and tensor layout are mamba-ssm's ``selective_scan_fn``, so code written for it ports:

    u, delta, z: (batch, dim, length)      A: (dim, state)      D, delta_bias: (dim,)
    B, C: (batch, state, length), (batch, groups, state, length) or, time-invariant, (dim, state)

For every channel d and state n, with the state starting at zero:

    s[t] = exp(delta[t] * A[n]) * s[t-1] + delta[t] * B[t, n] * u[t]
    y[t] = sum_n C[t, n] * s[t, n] + D * u[t],   then   y = y * silu(z)

Arithmetic runs in fp32 for fp32, fp16 and bf16 inputs (fp64 inputs stay fp64, for gradcheck); the
output takes ``u``'s dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref", "check_scan_inputs"]


def check_scan_add(u: torch.Tensor, add: torch.Tensor | None) -> None:
    """``add`` must be a floating tensor of u's shape."""
    if add is None:
        return
    if add.shape != u.shape:
        raise ValueError(f"add must have u's shape {tuple(u.shape)}, got {tuple(add.shape)}")
    if not add.is_floating_point():
        raise ValueError(f"add must be a floating-point tensor, got {add.dtype}")


def check_scan_out(u: torch.Tensor, out: torch.Tensor | None, inputs, return_last_state: bool) -> None:
    """``out`` must be u's shape and dtype, and is for inference only (nothing may need a gradient)."""
    if out is None:
        return
    if out.shape != u.shape or out.dtype != u.dtype or out.device != u.device:
        raise ValueError(f"out must be a {u.dtype} tensor of u's shape {tuple(u.shape)} on {u.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    if return_last_state:
        raise ValueError("out= writes the output only; it does not combine with return_last_state=True")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        raise ValueError("out= is for inference: an input requires grad (run under torch.no_grad(), or drop out=)")


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """Raise a ValueError that names the offending argument when shapes do not fit together."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, state), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported: Vim uses real (S4D-real) state matrices")
    state = A.shape[1]
    for name, mat in (("B", B), ("C", C)):
        if mat.dim() == 2:
            if mat.shape != (dim, state):
                raise ValueError(f"time-invariant {name} must be (dim={dim}, state={state}), got {tuple(mat.shape)}")
        elif mat.dim() == 3:
            if mat.shape != (batch, state, length):
                raise ValueError(f"{name} must be (batch={batch}, state={state}, length={length}), got {tuple(mat.shape)}")
        elif mat.dim() == 4:
            groups = mat.shape[1]
            if mat.shape[0] != batch or mat.shape[2:] != (state, length) or dim % groups:
                raise ValueError(
                    f"grouped {name} must be (batch={batch}, groups dividing {dim}, state={state}, length={length}), "
                    f"got {tuple(mat.shape)}")
        else:
            raise ValueError(f"{name} must have 2, 3 or 4 dimensions, got shape {tuple(mat.shape)}")
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and vec.shape != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(vec.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def _per_step(mat: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as (batch, dim or 1, length, state) so it broadcasts against (batch, dim, length, state)."""
    if mat.dim() == 3:
        return mat.transpose(1, 2).unsqueeze(1)
    groups = mat.shape[1]
    return mat.repeat_interleave(dim // groups, dim=1).transpose(2, 3)


def selective_scan_ref(
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
):
    """Selective scan in plain PyTorch, differentiable by autograd.

    ``reverse=True`` scans from the last step to the first (Vim's backward branch); it equals flipping
    every time-indexed input, scanning, and flipping the output back. ``add`` (u's shape, any float dtype)
    is added to the output before its single rounding to u's dtype (a branch sum fused into the scan). ``out`` (inference only) receives the result and is returned; it may be ``add``.

    Vectorised over batch, channels and state; the only Python loop is over time, because each step
    depends on the one before. Per step it does two element-wise ops on a (batch, dim, state) tensor,
    which keeps both the time and the memory that autograd saves linear in the length.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    check_scan_add(u, add)
    check_scan_out(u, out, (u, delta, A, B, C, D, z, delta_bias, add), return_last_state)
    if out is not None:
        return out.copy_(selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, False, reverse,
                                            add=add))
    if reverse:
        flip = lambda t: t if t is None or t.dim() == 2 else t.flip(-1)  # noqa: E731
        out = selective_scan_ref(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias,
                                 delta_softplus, return_last_state, add=flip(add))
        return (out[0].flip(-1), out[1]) if return_last_state else out.flip(-1)
    out_dtype = u.dtype
    dim = u.shape[1]
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    u_f, delta_f, A_f = u.to(acc), delta.to(acc), A.to(acc)
    if delta_bias is not None:
        delta_f = delta_f + delta_bias.to(acc)[None, :, None]
    if delta_softplus:
        delta_f = F.softplus(delta_f)

    # Decay and input for every step at once: (batch, dim, length, state).
    decay = torch.exp(delta_f.unsqueeze(-1) * A_f[None, :, None, :])
    if B.dim() == 2:
        drive = (delta_f * u_f).unsqueeze(-1) * B.to(acc)[None, :, None, :]
    else:
        drive = (delta_f * u_f).unsqueeze(-1) * _per_step(B.to(acc), dim)

    # unbind once: indexing step t inside the loop would make autograd allocate a full-size gradient per step.
    state = u_f.new_zeros(u_f.shape[0], dim, A.shape[1])
    states = []
    for decay_t, drive_t in zip(decay.unbind(2), drive.unbind(2)):
        state = decay_t * state + drive_t
        states.append(state)
    all_states = torch.stack(states, dim=2)  # (batch, dim, length, state)

    if C.dim() == 2:
        y = (all_states * C.to(acc)[None, :, None, :]).sum(-1)
    else:
        y = (all_states * _per_step(C.to(acc), dim)).sum(-1)
    if D is not None:
        y = y + u_f * D.to(acc)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    if add is not None:
        y = y + add.to(acc)
    y = y.to(out_dtype)
    return (y, state) if return_last_state else y


def selective_scan_bidir_ref(fwd, bwd, z=None, delta_softplus: bool = False, *, out=None, a_log: bool = False):
    """Vim's two scans: ``fwd`` = (u, delta, A, B, C[, D, delta_bias]) scanned from the first step to the last,
    ``bwd`` from the last to the first, both gated by ``z``. Returns (y_fwd, y_bwd); ``out`` (inference only):
    a pair of tensors that receive them. ``a_log``: the A's are given as A_log, A = -exp(A_log)."""
    ys = []
    for i, (sc, reverse) in enumerate(((fwd, False), (bwd, True))):
        sc = tuple(sc) + (None,) * (7 - len(tuple(sc)))
        u, delta, A, B, C, D, bias = sc
        if a_log:
            A = -torch.exp(A if A.dtype == torch.float64 else A.float())
        ys.append(selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus, False, reverse,
                                     out=None if out is None else out[i]))
    return ys[0], ys[1]
