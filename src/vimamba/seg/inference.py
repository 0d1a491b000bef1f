"""Inference: sliding windows (the reference's evaluation: 512 crops every 341 pixels) or the whole image.

Both return class scores at the size of the image given; ``predict`` scales them to another size (the
original image's, before the evaluation rescale) and takes the best class per pixel, as mmsegmentation
scores its predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODES", "slide_windows", "slide_inference", "whole_inference", "infer", "predict"]

MODES = ("slide", "whole")


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of mmsegmentation's windows: a grid of ``stride`` steps, the last window of
    each row and column moved back to end at the border; a side shorter than ``crop`` gets one window of its
    own length."""
    def starts(size: int) -> list[int]:
        count = max(size - crop + stride - 1, 0) // stride + 1
        return [max(min(i * stride + crop, size) - crop, 0) for i in range(count)]

    return [(top, left, min(top + crop, height), min(left + crop, width))
            for top in starts(height) for left in starts(width)]


@torch.no_grad()
def slide_inference(model: nn.Module, images: torch.Tensor, num_classes: int, crop: int, stride: int,
                    window_batch: int = 8) -> torch.Tensor:
    """Scores (B, C, H, W) averaged over the overlapping windows; windows go through the model
    ``window_batch`` at a time (the model is in eval mode, so batching does not change the result)."""
    if stride < 1 or stride > crop:
        raise ValueError(f"the slide stride must be between 1 and the crop size {crop}, got {stride}")
    batch, _, height, width = images.shape
    windows = slide_windows(height, width, crop, stride)
    scores = images.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    counts = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    for start in range(0, len(windows), window_batch):
        group = [(slice(top, bottom), slice(left, right)) for top, left, bottom, right in windows[start:start + window_batch]]
        if len({(rows.stop - rows.start, cols.stop - cols.start) for rows, cols in group}) > 1:
            # windows of different sizes (image sides shorter than the crop) go one at a time
            outs = [model(images[:, :, rows, cols])["out"].float() for rows, cols in group]
        else:
            outs = model(torch.cat([images[:, :, rows, cols] for rows, cols in group]))["out"].float().split(batch)
        for (rows, cols), out in zip(group, outs):
            scores[:, :, rows, cols] += out
            counts[:, :, rows, cols] += 1
    return scores / counts


@torch.no_grad()
def whole_inference(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Scores of the whole image in one pass (the position embedding resampled to its patch grid)."""
    return model(images)["out"].float()


def infer(model: nn.Module, images: torch.Tensor, mode: str, num_classes: int, crop: int, stride: int,
          window_batch: int = 8) -> torch.Tensor:
    if mode == "slide":
        return slide_inference(model, images, num_classes, crop, stride, window_batch)
    if mode == "whole":
        return whole_inference(model, images)
    raise ValueError(f"inference mode must be one of {', '.join(MODES)}, got {mode!r}")


def predict(model: nn.Module, images: torch.Tensor, out_size: tuple[int, int], mode: str, num_classes: int,
            crop: int, stride: int, window_batch: int = 8) -> torch.Tensor:
    """Class indices (B, *out_size): scores from ``infer``, rescaled bilinearly to ``out_size``, argmax."""
    scores = infer(model, images, mode, num_classes, crop, stride, window_batch)
    if tuple(scores.shape[-2:]) != tuple(out_size):
        scores = F.interpolate(scores, size=tuple(out_size), mode="bilinear", align_corners=False)
    return scores.argmax(dim=1)
