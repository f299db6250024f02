"""Shared test set-up: offline, no analytics, tiny models built from configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

TESTS = Path(__file__).parent
TINY_TOY = TESTS / "presets" / "tiny-toy.toml"
TINY_HUNYUAN = TESTS / "presets" / "tiny-hunyuan.toml"


@pytest.fixture
def tiny_toy_preset():
    from framepack_history.config.presets import load_preset

    return load_preset(TINY_TOY)


@pytest.fixture
def toy_pipeline(tiny_toy_preset):
    from framepack_history.generation.loading import build_encoder, load_backbone
    from framepack_history.generation.pipeline import Pipeline

    bb = load_backbone(tiny_toy_preset.model)
    return Pipeline(bb, build_encoder(tiny_toy_preset.model, bb), tiny_toy_preset)


@pytest.fixture
def start_image(tmp_path) -> Path:
    """A small colourful PNG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    path = tmp_path / "start.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def short_video(tmp_path) -> Path:
    """A 1 s, 8 fps mp4 of moving colour bars."""
    from framepack_history.generation.video import write_segment

    frames = np.zeros((8, 32, 32, 3), np.uint8)
    for i in range(8):
        frames[i, :, (i * 4) % 32 :] = (200, 40 + i * 20, 90)
    return write_segment(frames, tmp_path / "clip.mp4", fps=8)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
