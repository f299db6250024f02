"""History-token budgets from configs alone (no weights, nothing downloaded).

How many tokens the history embedding costs per second of video, at each of
a preset's encoder rates, next to the raw DiT token count it replaces.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from framepack_history.backbones.base import LatentGeometry
from framepack_history.config.paths import resolve_path
from framepack_history.config.presets import Preset
from framepack_history.config.rates import parse_rate
from framepack_history.history.merge import MIN_CAP_GROUPS

F1_CONFIG = Path(__file__).resolve().parents[1] / "backbones" / "configs" / "framepack_f1_transformer.json"


def geometry_from_configs(preset: Preset) -> LatentGeometry:
    """The preset's latent geometry, read from configs on the meta device."""
    m = preset.model
    if m.backbone == "toy":
        vae_cfg = {"latent_channels": 8, "spatial_scale": 4, **m.config.get("vae", {})}
        dit_cfg = {"patch_size": (1, 2, 2), "hidden_size": 128, **m.config.get("dit", {})}
        if m.weights:  # trained weights: their saved configs are the truth
            folder = Path(resolve_path(m.weights))
            dit_cfg.update(json.loads((folder / "transformer" / "config.json").read_text()))
            vae_cfg.update(json.loads((folder / "vae" / "config.json").read_text()))
        return LatentGeometry(vae_cfg["latent_channels"], vae_cfg["spatial_scale"], 1, False,
                              tuple(dit_cfg["patch_size"]), dit_cfg["hidden_size"])
    import torch  # torch: kept off the page's import path
    from diffusers import HunyuanVideoFramepackTransformer3DModel  # diffusers: only on the path that uses it (slow to import)

    cfg = json.loads(F1_CONFIG.read_text()) if m.weights else {}
    cfg = {k: v for k, v in {**cfg, **m.config.get("transformer", {})}.items() if not k.startswith("_")}
    # torch.device("meta") holds for this thread only; accelerate's init_empty_weights patches every
    # nn.Module of the process, so a model the worker loads at the same moment would come out empty.
    with torch.device("meta"):
        t = HunyuanVideoFramepackTransformer3DModel.from_config(cfg)
    assert next(t.parameters()).device == torch.device("meta")
    c = t.config
    return LatentGeometry(c.in_channels, 8, 4, True, (c.patch_size_t, c.patch_size, c.patch_size),
                          c.num_attention_heads * c.attention_head_dim)


def group_tokens(preset: Preset, rate: str | None = None, size: tuple[int, int] | None = None) -> int:
    """History tokens in one token group at ``size`` (default: the preset's), from configs alone (no weights)."""
    geo = geometry_from_configs(preset)
    w, h = size or (preset.video.width, preset.video.height)
    _, ph, pw = geo.patch_size
    rh, rw, _ = parse_rate(rate or preset.model.encoder_rate)
    return math.ceil(h // geo.spatial_scale / (ph * rh)) * math.ceil(w // geo.spatial_scale / (pw * rw))


def groups_per_second(preset: Preset, rate: str | None = None) -> float:
    """Complete token groups a second of video adds to the history at ``rate`` (configs alone)."""
    geo = geometry_from_configs(preset)
    v = preset.video
    latents_per_second = geo.latent_frames(v.section_frames) * v.fps / v.section_frames
    return latents_per_second / (geo.patch_size[0] * parse_rate(rate or preset.model.encoder_rate)[2])


def least_cap(preset: Preset, rate: str | None = None, size: tuple[int, int] | None = None) -> int:
    """The smallest ``history.max_tokens`` a job may use: ``MIN_CAP_GROUPS + 1`` token groups at ``size``."""
    return (MIN_CAP_GROUPS + 1) * group_tokens(preset, rate, size)


def history_budget(preset: Preset, seconds: float = 20.0) -> dict:
    """Tokens per second and per ``seconds`` of video at every rate the preset offers."""
    geo = geometry_from_configs(preset)
    v = preset.video
    lat_h, lat_w = v.height // geo.spatial_scale, v.width // geo.spatial_scale
    pt, ph, pw = geo.patch_size
    grid_h, grid_w = lat_h // ph, lat_w // pw
    frames = round(seconds * v.fps)
    latent_frames = geo.latent_frames(frames)
    raw = grid_h * grid_w * (latent_frames // pt)
    rates = {}
    for rate in dict.fromkeys([preset.model.encoder_rate, *preset.model.encoder_rates]):
        rh, rw, rt = parse_rate(rate)
        tokens = math.ceil(latent_frames / (pt * rt)) * math.ceil(grid_h / rh) * math.ceil(grid_w / rw)
        rates[rate] = {
            "tokens": tokens,
            "tokens_per_second": tokens / seconds,
            "raw_tokens_per_second": raw / seconds,
            "compression": raw / tokens,
        }
    return {"geometry": geo.__dict__, "token_grid_per_latent_frame": [grid_h, grid_w], "latent_frames": latent_frames,
            "seconds": seconds, "raw_tokens": raw, "rates": rates}
