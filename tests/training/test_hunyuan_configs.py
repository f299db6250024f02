"""Every shipped HunyuanVideo-FramePack training config trains in the generator's layout.

The generator runs FramePack-F1 at 30 fps in 36-frame sections of 9 latents, with F1's own
context (the last 19 latents) and no add-on window. A config whose preset, clip length or
window drifts from that would train the DiT on inputs it never sees when it generates.
"""

from __future__ import annotations

import tomllib

import pytest

from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.config.presets import load_preset
from framepack_history.history.budget import geometry_from_configs
from framepack_history.training.modeling import training_preset
from framepack_history.training.settings import TrainConfig, load_config
from framepack_history.training.stage2_autoregressive import START_LATENTS, check_context_settings, split_points

from .conftest import CONFIGS

PRESETS = CONFIGS.parents[1] / "presets"


def _hunyuan(paths, load) -> dict:
    out = {}
    for path in sorted(paths):
        item = load(path)
        preset = item if hasattr(item, "video") else training_preset(item)
        if preset.model.backbone == HunyuanFramepackBackbone.name:
            out[path.stem] = (item, preset)
    return out


STAGE_CONFIGS = [p for p in CONFIGS.glob("*.toml") if tomllib.loads(p.read_text()).get("stage") in ("stage1", "stage2")]
CONFIG_FILES = _hunyuan(STAGE_CONFIGS, lambda p: load_config(TrainConfig, p, {}))
GENERATOR_PRESETS = _hunyuan(PRESETS.glob("*.toml"), load_preset)


def test_the_hunyuan_configs_and_presets_are_found() -> None:
    assert {"hunyuan_stage1", "hunyuan_stage2"} <= set(CONFIG_FILES)
    assert GENERATOR_PRESETS  # the generator's presets, whose layout the configs must have


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_config_has_the_generators_layout(name: str) -> None:
    cfg, preset = CONFIG_FILES[name]
    v = preset.video
    for other, (_, gp) in GENERATOR_PRESETS.items():  # every shipped F1 preset generates in one layout
        assert (v.fps, v.section_frames) == (gp.video.fps, gp.video.section_frames), (name, other)
    assert (v.fps, v.section_frames) == (30, 36)  # FramePack-F1's frame rate and section
    geo = geometry_from_configs(preset)
    n = geo.latent_frames(v.section_frames)
    assert n == 9  # F1's latent_window_size
    # Clips: the start frame, then whole sections, so every section of the clip is a target.
    sections, rest = divmod(cfg.data.frames - 1, v.section_frames)
    assert rest == 0 and sections >= 1, (name, cfg.data.frames)
    latents = geo.latent_frames(cfg.data.frames)
    assert latents == START_LATENTS + sections * n
    # F1's own context, no add-on window; Stage II cuts at every section start of the clip.
    check_context_settings(HunyuanFramepackBackbone, cfg.stage2)
    assert cfg.stage2.window_frames == 0 and cfg.stage2.p_no_window == 0
    if cfg.stage == "stage2":
        lo = max(1, cfg.stage2.min_history_frames)
        assert split_points(HunyuanFramepackBackbone, latents, n, lo) == [START_LATENTS + k * n for k in range(sections)]
