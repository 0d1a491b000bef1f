"""UperNet decode head and FCN auxiliary head, as mmsegmentation 0.x builds them for the reference's runs.

UperNet (Xiao et al. 2018): a pyramid pooling module on the coarsest map, a top-down FPN over all four maps,
their fusion, then a 1x1 classifier. The FCN head is one 3x3 conv block and a classifier on one map, used as
an auxiliary loss. Module names are mmsegmentation's (``psp_modules``, ``lateral_convs``, ``fpn_convs``,
``fpn_bottleneck``, ``conv_seg``; a conv block's ``conv`` and ``bn``) so its state dicts map one to one; the
initialisation is its too (He normal fan-out on convs, N(0, 0.01) on the classifier). BatchNorm here becomes
SyncBatchNorm when training runs on several GPUs (``nn.SyncBatchNorm.convert_sync_batchnorm``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBNReLU", "UPerHead", "FCNHead"]


class ConvBNReLU(nn.Module):
    """mmcv's ``ConvModule`` with BatchNorm and ReLU: conv without bias (the norm has one), BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _ClassifierMixin:
    """Dropout then a 1x1 conv to class scores, initialised N(0, 0.01) as mmsegmentation's heads are."""

    def _make_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(_ClassifierMixin, nn.Module):
    """UperNet over four maps (fine to coarse); returns class scores at the finest map's size.

    Args:
        in_channels: channels of each input map.
        channels: width of every conv block (192 for the reference's Vim-Ti, 384 for its Vim-S).
        num_classes: outputs per pixel.
        pool_scales: output sizes of the pyramid pooling module's adaptive average pools.
        dropout: dropout before the classifier.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        in_channels = list(in_channels)
        self.psp_modules = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(in_channels[-1], channels, 1))
            for scale in pool_scales
        ])
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList([ConvBNReLU(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvBNReLU(channels, channels, 3, padding=1) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3, padding=1)
        self._make_classifier(channels, num_classes, dropout)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(module(x), x.shape[2:]) for module in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level receives the coarser one, upsampled
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.cls_seg(fused)


class FCNHead(_ClassifierMixin, nn.Module):
    """mmsegmentation's ``FCNHead`` with one conv block and no input concatenation (the auxiliary head).

    ``in_index`` picks its map from the backbone's list (2: the stride-16 map, as the reference).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, in_index: int = 2, dropout: float = 0.1):
        super().__init__()
        self.in_index = in_index
        self.convs = nn.Sequential(ConvBNReLU(in_channels, channels, 3, padding=1))
        self._make_classifier(channels, num_classes, dropout)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.convs(inputs[self.in_index]))
