from .loading import CheckpointError, describe_state_dict, guess_variant, load_checkpoint, read_checkpoint_file
from .vim import VARIANT_ALIASES, VARIANT_ARGS, VisionMamba, checkpoint_filter_fn, unwrap_state_dict

__all__ = [
    "CheckpointError",
    "VARIANT_ALIASES",
    "VARIANT_ARGS",
    "VisionMamba",
    "checkpoint_filter_fn",
    "describe_state_dict",
    "guess_variant",
    "load_checkpoint",
    "read_checkpoint_file",
    "unwrap_state_dict",
]
