import os

from .reference import ssm_projections_ref

__all__ = ["FUSED_BY_DEFAULT", "ssm_projections_ref"]

# Whether the Triton backend's automatic choice (``backend=None``: auto or VIMAMBA_BACKEND) takes the fused
# projection kernel; ``backend="triton"`` always does. Off: it has run only on Hopper GPUs (its tests on an H100,
# session 10; whole models on an H100 and an H200), and against the default path (both with fp32 B/C from 1,024
# tokens) whole models gained 4% at Vim-Ti 1248 batch 64 and 2% at Vim-S 1248 but lost 15% at Vim-Ti 1248 batch 8
# (model_variants-h100-v16), which is bound by the host: there the kernel cut the GPU's time (21.7 against 23.4 ms
# a forward) but its launch costs the host more than one batched cuBLAS product (model_variants_profile-h100-v16b).
# ``VIMAMBA_FUSED_PROJ=1`` in the environment at import turns it on.
FUSED_BY_DEFAULT = os.environ.get("VIMAMBA_FUSED_PROJ", "0").strip() == "1"
