"""Frames between 8-bit arrays and the ``[-1, 1]`` tensors the VAE and the image encoder read."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``[3, F, H, W]`` in ``[-1, 1]`` -> ``uint8 [F, H, W, 3]``."""
    x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> ``[1, 3, F, H, W]`` in ``[-1, 1]``."""
    x = torch.from_numpy(np.array(frames, dtype=np.float32)) / 127.5 - 1
    return x.permute(3, 0, 1, 2).unsqueeze(0)
