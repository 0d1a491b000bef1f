"""2-D rotary position embedding on Vim's token sequence (the reference's ``if_rope`` / ``if_rope_residual``).

The reference uses EVA-02's ``VisionRotaryEmbeddingFast(dim=embed_dim // 2, pt_seq_len, ft_seq_len)``:
frequencies ``10000 ** -(arange(0, dim, 2) / dim)``, positions ``arange(grid) / grid * pt_seq_len`` (a grid
finer than the pretraining one is squeezed into its span), each axis' angles repeated pairwise and the
row angles concatenated with the column angles, so the rotation spans all ``embed_dim`` channels; applied as
``x * cos + rotate_pairs(x) * sin`` with ``rotate_pairs`` taking each adjacent channel pair (a, b) to (-b, a).

timm's ``build_rotary_pos_embed`` (non-pixel bands, ``ref_feat_shape``) and ``apply_rot_embed`` compute
exactly this (checked against a transcription of EVA-02's definition in ``tests/test_det_rope.py``), so they are
used here; this module only adds the class-token row and caching per grid.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.layers import apply_rot_embed, build_rotary_pos_embed

__all__ = ["VisionRope"]


class VisionRope(nn.Module):
    """Rotates (B, T, dim) token sequences by their patch's 2-D position.

    Args:
        dim: channels of the tokens (Vim's ``embed_dim``); a multiple of 4.
        pt_grid: side of the pretraining patch grid (14 for 224 / 16); positions of any other grid are scaled into
            its span, as EVA-02 and the reference do.
        temperature: the frequency base.

    A class token (at ``class_index``) is left unrotated: its angles are zero.
    """

    def __init__(self, dim: int, pt_grid: int = 14, temperature: float = 10000.0):
        super().__init__()
        if dim % 4:
            raise ValueError(f"2-D rotary embedding needs a channel count divisible by 4, got {dim}")
        if pt_grid < 1:
            raise ValueError(f"rope pretraining grid must be positive, got {pt_grid}")
        self.dim, self.pt_grid, self.temperature = dim, pt_grid, temperature
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def embed(self, grid: tuple[int, int], class_index: int | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each (T, dim) in fp32, for a ``grid`` of patches (plus a class row at ``class_index``)."""
        key = (tuple(grid), class_index, str(device))
        if key not in self._cache:
            sin, cos = build_rotary_pos_embed(
                list(grid), dim=self.dim, temperature=self.temperature, in_pixels=False,
                ref_feat_shape=[self.pt_grid, self.pt_grid], device=device)
            if class_index is not None:
                sin = torch.cat([sin[:class_index], sin.new_zeros(1, self.dim), sin[class_index:]])
                cos = torch.cat([cos[:class_index], cos.new_ones(1, self.dim), cos[class_index:]])
            self._cache[key] = (sin, cos)
        return self._cache[key]

    def forward(self, x: torch.Tensor, grid: tuple[int, int], class_index: int | None = None) -> torch.Tensor:
        sin, cos = self.embed(grid, class_index, x.device)
        if sin.shape[0] != x.shape[1]:
            raise ValueError(f"{x.shape[1]} tokens do not fit a {grid[0]}x{grid[1]} grid"
                             f"{' plus a class token' if class_index is not None else ''}")
        # Older timm releases return the promoted (fp32) product; the stream keeps its own dtype either way.
        return apply_rot_embed(x, sin, cos).to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, pt_grid={self.pt_grid}, temperature={self.temperature}"
