"""Pixel thumbnails as a copy-detection embedding, for when no trained network is at hand.

``PixelThumbnails(side)`` maps a preprocessed (B, C, H, W) batch to (B, side * side): the grey image
area-averaged to ``side`` x ``side``, minus its own mean. After the L2 normalisation every curation step
applies, the cosine of two thumbnails is their pixel correlation: close to 1 for re-encoded, re-scaled or
contrast-shifted copies, lower for merely similar images. On small, centred images such as 28-px
Fashion-MNIST this is a sound near-duplicate detector and a reasonable space for balanced clustering (its
cosine k-NN classifies Fashion-MNIST at ~85%); on natural photos prefer a trained copy-detection model
(SSCD in the paper) or a DINOv2 checkpoint.

In configs: ``embedding: {model: "pixels"}`` (16 x 16) or ``"pixels:28"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PIXELS = "pixels"
DEFAULT_SIDE = 16


def parse_pixels_spec(spec: str) -> int | None:
    """The thumbnail side of a ``"pixels"`` / ``"pixels:N"`` model spec, or None for any other string."""
    name, _, side = str(spec).partition(":")
    if name != PIXELS:
        return None
    if not side:
        return DEFAULT_SIDE
    if not side.isdigit() or int(side) < 1:
        raise ValueError(f"pixel embedding spec must be 'pixels' or 'pixels:N' with N >= 1, got {spec!r}.")
    return int(side)


class PixelThumbnails(torch.nn.Module):
    """(B, C, H, W) -> (B, side * side) mean-centred grey thumbnails (see the module docstring)."""

    def __init__(self, side: int = DEFAULT_SIDE):
        super().__init__()
        self.side = side

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grey = pixel_values.float().mean(dim=1, keepdim=True)  # (B, 1, H, W)
        thumbnails = F.adaptive_avg_pool2d(grey, self.side).flatten(1)  # (B, side * side)
        return thumbnails - thumbnails.mean(dim=1, keepdim=True)
