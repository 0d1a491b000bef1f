import os

import torch

from .reference import ssm_projections_ref

__all__ = ["FUSED_ABOVE_ELEMENTS", "FUSED_BY_DEFAULT", "fused_by_default", "ssm_projections_ref"]

# Whether the Triton backend's automatic choice (``backend=None``: auto or VIMAMBA_BACKEND) takes the fused
# projection kernel; ``backend="triton"`` always does. ``VIMAMBA_FUSED_PROJ=1`` / ``=0`` in the environment at
# import: always / never (True / False here); unset (None): ``fused_by_default`` decides.
FUSED_BY_DEFAULT: bool | None = {"1": True, "0": False}.get(os.environ.get("VIMAMBA_FUSED_PROJ", "").strip())

# The automatic choice takes the kernel for u of more than this many elements (one direction's batch x channels x
# tokens; the mixer's side-by-side path for small inputs stays with its batched products) on Hopper GPUs. Against
# cuBLAS (both with fp32 B/C from 1,024 tokens; H100, model_variants-h100-v16) whole models gained 4% at Vim-Ti
# 1248 batch 64 and 2% at Vim-S 1248 batch 32 (150 M elements each), and lost 15% at Vim-Ti 1248 batch 8 (19 M),
# which is bound by the host: there the kernel cut the GPU's time (21.7 against 23.4 ms a forward) but its Python
# launch costs the host more than one batched cuBLAS product (model_variants_profile-h100-v16b); the 224 rows are
# host-bound too. Only Hopper: the kernel's tiles are written for wgmma, and it has run on no other GPU (its tests
# pass on H100s and H200s).
FUSED_ABOVE_ELEMENTS = 1 << 26


def fused_by_default(u: torch.Tensor) -> bool:
    """The automatic choice for u (batch, channels, length): FUSED_BY_DEFAULT where set, else large u on Hopper."""
    if FUSED_BY_DEFAULT is not None:
        return FUSED_BY_DEFAULT
    # (get_device_properties: torch.compile folds it to a constant; it does not fold get_device_capability)
    return (u.is_cuda and u.numel() > FUSED_ABOVE_ELEMENTS
            and torch.cuda.get_device_properties(u.device).major == 9)
