"""Vim's compute kernels. One folder per operation, each with its plain-PyTorch reference.

The public functions below are what layers call. Today they are the references, which run on any device;
faster paths plug in here behind the same signatures.
"""

from .causal_conv1d import causal_conv1d_ref
from .rms_norm import add_rms_norm_ref, rms_norm_ref
from .selective_scan import selective_scan_ref

selective_scan_fn = selective_scan_ref
causal_conv1d_fn = causal_conv1d_ref
add_rms_norm = add_rms_norm_ref

__all__ = [
    "add_rms_norm",
    "add_rms_norm_ref",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "rms_norm_ref",
    "selective_scan_fn",
    "selective_scan_ref",
]
