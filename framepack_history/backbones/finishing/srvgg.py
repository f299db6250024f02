"""SRVGGNetCompact: the small upscaler of realesr-animevideov3 and realesr-general-x4v3.

A plain stack of 3x3 convs, each followed by a PReLU, entirely at the input's resolution; the last
conv makes ``out_ch * scale**2`` channels that a pixel shuffle turns into the larger image, and the
nearest-upsampled input is added, so the network only learns the detail (Real-ESRGAN's
``SRVGGNetCompact``). Nothing runs at the output's resolution, which is why it is the one fast
enough for video. Keys: ``body.0`` (first conv), ``body.1`` (its PReLU), ``body.2``/``body.3``,
... and ``body.{2*num_conv+2}`` (the last conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SRVGGNetCompact(nn.Module):
    """``[B, in_ch, H, W]`` in [0, 1] to ``[B, out_ch, scale*H, scale*W]``."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, num_feat: int = 64, num_conv: int = 16, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_ch, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, out_ch * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)  # a ModuleList, not a Sequential: the saved keys are body.N

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")
