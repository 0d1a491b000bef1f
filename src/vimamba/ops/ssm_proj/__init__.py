import os

from .reference import ssm_projections_ref

__all__ = ["FUSED_BY_DEFAULT", "ssm_projections_ref"]

# Whether the Triton backend's automatic choice (``backend=None``: auto or VIMAMBA_BACKEND) takes the fused
# projection kernel; ``backend="triton"`` always does. Off: it has run only on Hopper GPUs (its tests on an H100,
# session 10; whole models on an H100 and an H200), where whole models gained 4-5% at Vim-Ti 1248 batch 64 over
# 16-bit B/C, lost 15% at batch 8 and nothing at Vim-S 1248 (model_variants-h100-v13b); it writes B and C in
# u's dtype, so it also forgoes the fp32 B/C that ``ssm_projections_fn`` gives the scan from 1,024 tokens (1.085x
# there). ``VIMAMBA_FUSED_PROJ=1`` in the environment at import turns it on.
FUSED_BY_DEFAULT = os.environ.get("VIMAMBA_FUSED_PROJ", "0").strip() == "1"
