from .reference import causal_conv1d_ref

__all__ = ["causal_conv1d_ref"]
