"""Tiny random-weight finishing models of the real architectures, saved as safetensors in the released key layouts.

RRDBNet and SRVGGNetCompact as Real-ESRGAN's files hold them; RIFE's IFNet as Practical-RIFE's
flownet holds it: every key under ``module.`` (the DataParallel wrapper) and the training-only
``teacher``/``caltime`` modules beside the network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from framepack_history.backbones.finishing.rife import IFNet
from framepack_history.backbones.finishing.rrdbnet import RRDBNet
from framepack_history.backbones.finishing.srvgg import SRVGGNetCompact

#: small enough to run a 32x32 video in well under a second
RRDB = dict(num_feat=8, num_block=1, num_grow=4)
SRVGG = dict(num_feat=8, num_conv=2)
RIFE = dict(widths=(16, 16, 8, 8, 8), head_hidden=4, head_ch=4, resblocks=1)


def _random(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * 0.05).contiguous() for k, v in model.state_dict().items()}


def save_rrdbnet(path: Path, scale: int = 4, seed: int = 0, **extra: torch.Tensor) -> Path:
    save_file({**_random(RRDBNet(scale=scale, **RRDB), seed), **extra}, str(path))
    return path


def save_srvgg(path: Path, scale: int = 4, seed: int = 0) -> Path:
    save_file(_random(SRVGGNetCompact(scale=scale, **SRVGG), seed), str(path))
    return path


def save_rife(path: Path, seed: int = 0) -> Path:
    state = {f"module.{k}": v for k, v in _random(IFNet(**RIFE), seed).items()}
    state["module.teacher.conv0.0.0.weight"] = torch.zeros(2, 2, 3, 3)  # trained alongside, unused at inference
    state["module.caltime.0.weight"] = torch.zeros(2, 2, 3, 3)
    save_file(state, str(path))
    return path
