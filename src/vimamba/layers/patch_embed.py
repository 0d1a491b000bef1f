"""Patch embedding with a stride of its own.

timm's ``PatchEmbed`` ties the stride to the patch size; Vim's long-sequence variants take 16x16 patches
every 8 pixels, so the grid is ``(size - patch) // stride + 1`` per side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import to_2tuple

__all__ = ["StridedPatchEmbed"]


class StridedPatchEmbed(nn.Module):
    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] | None = None,
        in_chans: int = 3,
        embed_dim: int = 192,
        strict_img_size: bool = True,
    ):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride if stride is not None else patch_size)
        self.in_chans = in_chans
        self.strict_img_size = strict_img_size
        self.grid_size = self.dynamic_feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return tuple((s - p) // st + 1 for s, p, st in zip(img_size, self.patch_size, self.stride))

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        self.img_size = to_2tuple(img_size)
        self.grid_size = self.dynamic_feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images as a (batch, {self.in_chans}, height, width) tensor, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if self.strict_img_size and (height, width) != self.img_size:
            raise ValueError(
                f"input images are {height}x{width} but the model was built for {self.img_size[0]}x{self.img_size[1]}; "
                f"create it with img_size=({height}, {width}) or dynamic_img_size=True")
        if height < self.patch_size[0] or width < self.patch_size[1]:
            raise ValueError(
                f"input images are {height}x{width}, smaller than one {self.patch_size[0]}x{self.patch_size[1]} patch")
        if x.is_cuda and self.stride == self.patch_size:
            return self.embed_as_matmul(x)
        return self.proj(x).flatten(2).transpose(1, 2)

    def embed_as_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """The projection of non-overlapping patches as one matrix product over the unfolded patches.

        The same function as the strided conv (sums in another order). Why: for a 16x16 / stride-16 bf16 conv
        on NCHW images cuDNN picks an implicit-GEMM kernel that took 6.2 ms for Vim-Ti at 1248x1248, batch 64,
        on an H100: more than all four linear layers of a block. Unfolding (one copy, in the autocast dtype)
        and a GEMM move the same bytes once.
        """
        if self.stride != self.patch_size:
            raise ValueError(f"patches overlap (patch {self.patch_size}, stride {self.stride}): use the conv")
        batch, chans, height, width = x.shape
        (ph, pw), (gh, gw) = self.patch_size, self.dynamic_feat_size((height, width))
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        patches = x[:, :, : gh * ph, : gw * pw].reshape(batch, chans, gh, ph, gw, pw)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, gh * gw, chans * ph * pw)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)
