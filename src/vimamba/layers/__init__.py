from .block import VimBlock
from .mamba_mixer import BiMambaMixer, MixerCasts, ProductWeightCasts
from .patch_embed import StridedPatchEmbed
from .pos_embed import grid_of, resample_mid_cls_pos_embed
from .rope import VisionRope

__all__ = ["BiMambaMixer", "MixerCasts", "ProductWeightCasts", "StridedPatchEmbed", "VimBlock", "VisionRope", "grid_of",
           "resample_mid_cls_pos_embed"]
