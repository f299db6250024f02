"""RIFE's IFNet as Practical-RIFE 4.25 saves it (4.26 has the same layout): the frame between two frames.

Real-Time Intermediate Flow Estimation (Huang et al., ECCV 2022; the 4.x models of
github.com/hzwer/Practical-RIFE). Given frames ``I0``, ``I1`` and a timestep ``t`` in (0, 1), a
coarse-to-fine stack of :class:`IFBlock` estimates the flows from the wanted frame back to both
inputs and a mask; the result is ``I0`` warped by the first flow blended with ``I1`` warped by the
second. Because ``t`` is an input (a constant plane fed with the images), one model makes the
frames at 1/4, 1/2 and 3/4 alike: 2x and 4x interpolation need no other weights.

Layout of the weights (keys after the training wrapper's ``module.`` prefix is dropped):
``encode.cnn0..cnn3`` (:class:`Head`, a small feature extractor run once per frame),
``blockN.conv0``, ``blockN.convblock.K`` (conv + ``beta``), ``blockN.lastconv.0`` for N = 0..4 in
4.25/4.26. Block count, widths and the head's channels are read from the file, so 4.22's layout
(four blocks, an 8-channel head) loads too. The released files also hold ``teacher`` and
``caltime``, used only in training: :mod:`framepack_history.hub.finishing_weights` drops them.

Inputs must be padded to a multiple of :meth:`IFNet.multiple` (block 0 works at 1/16 and then
strides twice more).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2))


class Head(nn.Module):
    """Per-frame features at full resolution (``ch`` channels) that every block warps with its flow."""

    def __init__(self, hidden: int = 16, ch: int = 4) -> None:
        super().__init__()
        self.cnn0 = nn.Conv2d(3, hidden, 3, 2, 1)
        self.cnn1 = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.cnn2 = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(hidden, ch, 4, 2, 1)  # back to full resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.cnn0(x.clamp(0.0, 1.0)), 0.2)
        x = F.leaky_relu(self.cnn1(x), 0.2)
        x = F.leaky_relu(self.cnn2(x), 0.2)
        return self.cnn3(x)


class ResConv(nn.Module):
    """A 3x3 conv added to its input, its output scaled per channel by a learnt ``beta``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x) * self.beta + x, 0.2)


class IFBlock(nn.Module):
    """One level of the pyramid: at ``1/scale`` resolution, a flow update, a mask and features for the next level."""

    def __init__(self, in_planes: int, c: int, resblocks: int = 8) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_planes, c // 2, 2), _conv(c // 2, c, 2))
        self.convblock = nn.Sequential(*(ResConv(c) for _ in range(resblocks)))
        # 4 * 13 channels at twice the size, shuffled to 13 at four times: 4 flow, 1 mask, 8 features
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(c, 4 * 13, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, ...]:
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear")
        if flow is not None:  # the flow so far, at this level's size and in its pixels
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear") / scale
            x = torch.cat((x, flow), 1)
        tmp = self.lastconv(self.convblock(self.conv0(x)))
        tmp = F.interpolate(tmp, scale_factor=scale, mode="bilinear")
        return tmp[:, :4] * scale, tmp[:, 4:5], tmp[:, 5:]


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``img`` sampled at each pixel plus ``flow`` (pixels), bilinear, borders repeated (RIFE's backward warp)."""
    b, _, h, w = flow.shape
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device, dtype=torch.float32)
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), 0)[None]  # [1, 2, h, w]: x then y, in [-1, 1]
    # pixels to grid units, with align_corners: the first and last pixel centres are -1 and 1
    norm = torch.tensor([(w - 1.0) / 2.0, (h - 1.0) / 2.0], device=flow.device).view(1, 2, 1, 1)
    g = (grid + flow.float() / norm).permute(0, 2, 3, 1)
    # in float32 whatever the model's dtype: half-precision sampling positions blur the result
    out = F.grid_sample(img.float(), g, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(img.dtype)


class IFNet(nn.Module):
    """The flow network: :meth:`features` once per frame, then :meth:`between` for each timestep."""

    def __init__(self, widths: tuple[int, ...] = (192, 128, 96, 64, 32), head_hidden: int = 16, head_ch: int = 4,
                 resblocks: int = 8) -> None:
        super().__init__()
        self.encode = Head(head_hidden, head_ch)
        # block 0 sees both images, both features and t; later ones also the warped images, the mask and features
        first, later = 7 + 2 * head_ch, 8 + 4 + 2 * head_ch + 8
        for i, c in enumerate(widths):
            self.add_module(f"block{i}", IFBlock(first if i == 0 else later, c, resblocks))
        self.blocks = len(widths)
        self.scales = [2.0 ** (self.blocks - 1 - i) for i in range(self.blocks)]  # 16, 8, 4, 2, 1 for 4.25

    @property
    def multiple(self) -> int:
        """What the input's height and width must divide by: block 0 at ``1/scales[0]``, then two stride-2 convs."""
        return max(64, int(self.scales[0]) * 4)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        return self.encode(img)

    def between(self, img0: torch.Tensor, img1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        """The frame at ``t`` (``[B, 1, H, W]``, a constant plane) between ``img0`` and ``img1`` (``[B, 3, H, W]`` in [0, 1])."""
        img0, img1 = img0.clamp(0.0, 1.0), img1.clamp(0.0, 1.0)
        warped0, warped1 = img0, img1
        flow = mask = feat = None
        for i in range(self.blocks):
            block = getattr(self, f"block{i}")
            if flow is None:
                flow, mask, feat = block(torch.cat((img0, img1, f0, f1, t), 1), None, self.scales[i])
            else:
                wf0, wf1 = warp(f0, flow[:, :2]), warp(f1, flow[:, 2:4])
                fd, mask, feat = block(torch.cat((warped0, warped1, wf0, wf1, t, mask, feat), 1), flow, self.scales[i])
                flow = flow + fd  # each level refines the flow of the one before
            warped0, warped1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
        m = torch.sigmoid(mask)
        return warped0 * m + warped1 * (1 - m)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: float | torch.Tensor = 0.5) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.full_like(img0[:, :1], float(t))
        return self.between(img0, img1, self.features(img0), self.features(img1), t)
