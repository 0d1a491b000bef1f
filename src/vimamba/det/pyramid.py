"""ViTDet's simple feature pyramid (Li et al. 2022): one stride-16 map to strides 4, 8, 16, 32 (+ 64 for the RPN).

As detectron2's ``SimpleFeaturePyramid`` with ``scale_factors=(4, 2, 1, 0.5)``, ``norm='LN'`` and
``LastLevelMaxPool``: scale 4 is ConvTranspose(2, 2) to dim/2, LayerNorm, GELU, ConvTranspose(2, 2) to dim/4;
scale 2 is ConvTranspose(2, 2) to dim/2; scale 1 the map itself; scale 0.5 a 2x2 max-pool; each then goes
through Conv1x1 and Conv3x3 to ``out_channels``, both without bias and followed by LayerNorm over channels.
The top level is a stride-2 subsampling of the last one (torchvision's ``LastLevelMaxPool``, which is
detectron2's: a 1x1 max-pool with stride 2).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from timm.layers import LayerNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = ["SimpleFeaturePyramid", "SCALE_FACTORS"]

SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)


def _scale_stage(dim: int, scale: float) -> tuple[list[nn.Module], int]:
    if scale == 4.0:
        return [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
                nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)], dim // 4
    if scale == 2.0:
        return [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
    if scale == 1.0:
        return [], dim
    if scale == 0.5:
        return [nn.MaxPool2d(2, 2)], dim
    raise ValueError(f"scale factors must be among 4, 2, 1 and 0.5, got {scale}")


class SimpleFeaturePyramid(nn.Module):
    """A (B, dim, H/s, W/s) map to an ordered dict of (B, out_channels, ...) maps named '0'... and 'pool'.

    Args:
        dim: channels of the input map.
        in_stride: its stride (16 for Vim with 16-pixel patches).
        out_channels: channels of every level (256 in ViTDet).
        scale_factors: the levels, relative to the input.
        top_block: add the max-pooled top level ('pool') that the RPN uses.
    """

    def __init__(self, dim: int, in_stride: int = 16, out_channels: int = 256,
                 scale_factors: tuple[float, ...] = SCALE_FACTORS, top_block: bool = True):
        super().__init__()
        if dim % 4:
            raise ValueError(f"the pyramid halves the channels twice; {dim} is not a multiple of 4")
        self.scale_factors = tuple(float(s) for s in scale_factors)
        self.stages = nn.ModuleList()
        for scale in self.scale_factors:
            layers, stage_dim = _scale_stage(dim, scale)
            layers += [nn.Conv2d(stage_dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)]
            self.stages.append(nn.Sequential(*layers))
        self.top_block = LastLevelMaxPool() if top_block else None
        self.out_channels = out_channels
        self.strides = [int(in_stride / s) for s in self.scale_factors]
        if top_block:
            self.strides.append(2 * self.strides[-1])
        self.names = [str(i) for i in range(len(self.scale_factors))] + (["pool"] if top_block else [])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # detectron2's c2_msra_fill, which its ViTDet pyramid uses for these convs
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = [stage(x) for stage in self.stages]
        names = self.names[: len(maps)]
        if self.top_block is not None:
            maps, names = self.top_block(maps, maps, names)
        return OrderedDict(zip(names, maps))
