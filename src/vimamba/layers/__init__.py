from .block import VimBlock
from .mamba_mixer import BiMambaMixer
from .patch_embed import StridedPatchEmbed
from .pos_embed import grid_of, resample_mid_cls_pos_embed

__all__ = ["BiMambaMixer", "StridedPatchEmbed", "VimBlock", "grid_of", "resample_mid_cls_pos_embed"]
