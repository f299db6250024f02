"""The shipped toy model draws a coherent toy world (not noise), from the weights in the repo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from framepack_history.backbones.toyworld import EVAL_SEED_START, World, WorldSpec
from framepack_history.config.paths import ROOT
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone

SHIPPED = ROOT / "framepack_history" / "weights" / "toy"
#: Largest per-frame mean-colour error (0-255) of a picture of the right world; an untrained model is near 57,
#: the shipped one near 6.
MAX_COLOUR_ERROR = 12.0
#: Three held sections against the true world: the shipped model scores about 29 dB, an untrained one 8 dB.
MIN_PSNR = 24.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def generate(preset, seed: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Generated frames and the true world's frames for a camera that holds."""
    bb = load_backbone(preset.model)
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset)
    v = preset.video
    world = World.from_seed(seed, WorldSpec(view=v.width, fps=v.fps))
    board = "0s: camera holds"
    frames = np.concatenate([e.frames for e in pipe.run(GenerationRequest(prompt=world.caption(board), seconds=seconds, seed=seed))
                             if isinstance(e, SectionDone)])
    truth = world.render(board, 1 / v.fps + seconds).frames[1:]  # frame 0 is the start frame
    return frames, truth


@pytest.fixture(scope="module")
def shipped():
    preset = load_preset("toy-cpu")
    return preset, *generate(preset, EVAL_SEED_START + 7, 3.0)


def test_toy_preset_uses_the_shipped_weights():
    preset = load_preset("toy-cpu")
    assert preset.model.weights and preset.model.encoder
    assert (SHIPPED / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (SHIPPED / "history_encoder" / "config.json").is_file()
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total < 50 * 2**20


def colour_error(frames: np.ndarray, truth: np.ndarray) -> float:
    n = len(frames)
    return float(np.abs(frames.reshape(n, -1, 3).mean(1) - truth.reshape(n, -1, 3).mean(1)).max())


@pytest.fixture(scope="module")
def untrained():
    """The same model with random weights: the control every check must tell apart."""
    preset = load_preset("toy-cpu")
    preset.model.weights, preset.model.encoder = "", ""
    return generate(preset, EVAL_SEED_START + 7, 1.0)


def test_shipped_model_draws_its_world_not_noise(shipped, untrained):
    _, frames, truth = shipped
    assert frames.shape == truth.shape == (12, 16, 16, 3)
    # the colours of the world, in every frame; an untrained model misses them
    assert colour_error(frames, truth) < MAX_COLOUR_ERROR < colour_error(*untrained)
    # the true world, drawn sharply, over all three sections; far from what an untrained model draws
    assert psnr(frames, truth) > MIN_PSNR > psnr(*untrained) + 10


def test_shipped_model_is_consistent_frame_to_frame(shipped):
    _, frames, truth = shipped
    step = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()
    true_step = np.abs(np.diff(truth.astype(np.int16), axis=0)).mean()
    assert step < true_step + 6  # no flicker far beyond the world's own motion
