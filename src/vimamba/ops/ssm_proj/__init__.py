import os

from .reference import ssm_projections_ref

__all__ = ["FUSED_BY_DEFAULT", "ssm_projections_ref"]

# Whether the Triton backend's automatic choice (``backend=None``: auto or VIMAMBA_BACKEND) takes the fused
# projection kernel; ``backend="triton"`` always does. Off: it has run only on Hopper GPUs (its tests on an H100,
# session 10; whole models on an H100 and an H200), where whole models gained 4% at Vim-Ti 1248 and nothing at
# Vim-S 1248 or in the training step (bench-h100-v10-targets against -fused, one call), and it is written for
# wgmma-era tiles (122-236 registers). ``VIMAMBA_FUSED_PROJ=1`` in the environment at import turns it on.
FUSED_BY_DEFAULT = os.environ.get("VIMAMBA_FUSED_PROJ", "0").strip() == "1"
