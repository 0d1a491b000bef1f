"""Resampling of Vim's absolute position embedding, whose class-token row sits in the middle.

timm's ``resample_abs_pos_embed`` expects prefix tokens first; Vim puts its class token at index
``num_patches // 2``. The row is cut out, the patch grid is resampled as a 2-D image, and the row goes back
in at the new middle.
"""

from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed

__all__ = ["resample_mid_cls_pos_embed", "grid_of"]


def grid_of(num_rows: int, num_prefix_tokens: int) -> tuple[int, int]:
    """The square grid a position table of ``num_rows`` rows was made for; an error if it is not square."""
    cells = num_rows - num_prefix_tokens
    side = math.isqrt(max(cells, 0))
    if side * side != cells or side == 0:
        raise ValueError(
            f"a position embedding of {num_rows} rows ({num_prefix_tokens} class rows) is not a square grid; "
            f"pass its grid size explicitly")
    return side, side


def resample_mid_cls_pos_embed(
    posemb: torch.Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    has_class_token: bool = True,
    keep_class_token: bool = True,
    interpolation: str = "bicubic",
    antialias: bool = True,
    legacy_first_row_prefix: bool = False,
) -> torch.Tensor:
    """Resample a (1, rows, dim) position table to a ``new_size`` grid.

    ``keep_class_token=False`` drops the class row (for backbones built without a class token).
    ``legacy_first_row_prefix`` reproduces the reference fine-tuning script bit for bit: it treats the
    first row as the class row although the class token sits in the middle, so patch 0's row is kept
    whole and the real class row is interpolated into the grid.
    """
    num_prefix = 1 if has_class_token else 0
    old_size = tuple(old_size) if old_size is not None else grid_of(posemb.shape[1], num_prefix)
    new_size = tuple(new_size)
    if posemb.shape[1] != old_size[0] * old_size[1] + num_prefix:
        raise ValueError(
            f"position embedding has {posemb.shape[1]} rows, which does not fit a {old_size[0]}x{old_size[1]} grid "
            f"with {num_prefix} class row(s)")
    if legacy_first_row_prefix:
        if not (has_class_token and keep_class_token):
            raise ValueError("legacy_first_row_prefix needs a class token on both sides")
        grid = resample_abs_pos_embed(posemb[:, 1:], list(new_size), list(old_size), num_prefix_tokens=0,
                                      interpolation=interpolation, antialias=antialias)
        return torch.cat([posemb[:, :1], grid], dim=1)

    if has_class_token:
        mid = (old_size[0] * old_size[1]) // 2
        cls_row = posemb[:, mid:mid + 1]
        grid = torch.cat([posemb[:, :mid], posemb[:, mid + 1:]], dim=1)
    else:
        cls_row, grid = None, posemb
    if old_size != new_size:
        grid = resample_abs_pos_embed(grid, list(new_size), list(old_size), num_prefix_tokens=0,
                                      interpolation=interpolation, antialias=antialias)
    if cls_row is None or not keep_class_token:
        return grid
    new_mid = (new_size[0] * new_size[1]) // 2
    return torch.cat([grid[:, :new_mid], cls_row, grid[:, new_mid:]], dim=1)
