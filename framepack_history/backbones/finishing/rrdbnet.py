"""ESRGAN's RRDBNet in Real-ESRGAN's layout: the network of RealESRGAN_x4plus, _x2plus and x4plus_anime_6B.

The keys are those of Real-ESRGAN's (BasicSR's) ``RRDBNet``: ``conv_first``, ``body.N.rdbK.convJ``
(K = 1..3, J = 1..5), ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``. The
trunk always ends with two 2x nearest upsamplings (4x); a 2x model first folds each 2x2 block of
pixels into channels (pixel unshuffle, so its ``conv_first`` takes 12 channels), which halves the
work in the trunk and leaves a 2x result (Wang et al. 2021, "Real-ESRGAN", section 3.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block's input and every earlier conv's output (dense connections)."""

    def __init__(self, num_feat: int, num_grow: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow, num_grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow, num_grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow, num_grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        # ESRGAN scales the residual by 0.2 so a deep stack of blocks starts close to identity
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual in residual: three dense blocks, their sum scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int, num_grow: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """``[B, in_ch, H, W]`` in [0, 1] to ``[B, out_ch, scale*H, scale*W]`` (scale 1, 2 or 4)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, scale: int = 4, num_feat: int = 64, num_block: int = 23,
                 num_grow: int = 32) -> None:
        super().__init__()
        self.scale = scale
        # 4x: the trunk's two 2x upsamplings; 2x and 1x fold 2x2 or 4x4 pixels into channels first
        self.unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:  # channel order c*r*r + i*r + j, as BasicSR's pixel_unshuffle
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
