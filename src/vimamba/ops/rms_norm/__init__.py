from .reference import add_rms_norm_ref, rms_norm_ref

__all__ = ["add_rms_norm_ref", "rms_norm_ref"]
