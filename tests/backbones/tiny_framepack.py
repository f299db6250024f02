"""Shared by the FramePack parity tests: a tiny random FramePack saved in the hub's layout, a call recorder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone


def save_hub_layout(backbone: HunyuanFramepackBackbone, root: Path, transformer: str = "transformer") -> None:
    """``backbone`` saved like the hub repos: its DiT in ``root/transformer``, the HunyuanVideo base
    (text encoders, tokenizers, VAE) in ``root/base``, the image encoder in ``root/redux``."""
    backbone.transformer.save_pretrained(root / transformer)
    for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"):
        getattr(backbone, name).save_pretrained(root / "base" / name)
    backbone.image_encoder.save_pretrained(root / "redux" / "image_encoder")
    backbone.feature_extractor.save_pretrained(root / "redux" / "feature_extractor")


def save_tiny(root: Path, size: int, steps: int, loop: str = "forward", seed: int = 3) -> Path:
    """A tiny random FramePack in the hub's folder layout and a preset (returned) that loads it."""
    save_hub_layout(HunyuanFramepackBackbone.tiny(seed=seed), root, "dit")
    preset = root / "tiny.toml"
    preset.write_text(f"""
[model]
backbone = "hunyuan_framepack"
loop = "{loop}"
weights = "{root / 'dit'}"
components = {{ base = "{root / 'base'}", image_encoder = "{root / 'redux'}" }}
[video]
width = {size}
height = {size}
fps = 30
section_frames = 36
[sampling]
sampler = "euler"
steps = {steps}
guidance = 10.0
[history]
mode = "window"
[hardware]
dtype = "float32"
""")
    return preset


def save_image(path: Path, size: int, seed: int) -> str:
    """A blocky random image (8-pixel blocks: the VAE's grid) at ``path``."""
    rng = np.random.default_rng(seed)
    img = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    Image.fromarray(img).save(path)
    return str(path)


def recorder(calls: list[dict]):
    """A forward pre-hook (``with_kwargs=True``) that records every call's keyword inputs."""
    def hook(module, args, kwargs):
        calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
    return hook
