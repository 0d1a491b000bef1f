import os

from .reference import ssm_projections_ref

__all__ = ["FUSED_BY_DEFAULT", "ssm_projections_ref"]

# Whether the Triton backend's automatic choice (``backend=None``: auto or VIMAMBA_BACKEND) takes the fused
# projection kernel; ``backend="triton"`` always does. Off until the kernel has run and been timed on a GPU: it
# was written in session 8 and checked in the interpreter and by an offline sm_90 compile only (no device was
# lent for it). ``VIMAMBA_FUSED_PROJ=1`` in the environment at import turns it on.
FUSED_BY_DEFAULT = os.environ.get("VIMAMBA_FUSED_PROJ", "0").strip() == "1"
