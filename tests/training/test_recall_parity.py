"""The memory inspector's recall feeds the DiT exactly what a Stage I step feeds it for the same frame.

For one clip and one of its latent frames, the recall (``generation.frame_query.retrieve`` on a
history holding the clip, as ``recall`` and ``eval retrieval`` run it) and a Stage I step
(``Stage1Task.make_batch`` with Omega forced to that frame and no masking noise, then
``FrameQueryModule.forward``) run on the same backbone and encoder with the same noise and
sigma (1: the recall's first step, whose input is the noise itself). The DiT's first call is
recorded on both sides and every argument must be equal bit for bit: the history tokens and
their positions, the target's time inside the past, the text and, on FramePack-F1, the image
conditioning (the clip's first latent as the start anchor, SigLIP of it decoded), timestep and
guidance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framepack_history.config.presets import load_preset
from framepack_history.generation.frame_query import retrieve
from framepack_history.generation.pipeline import Pipeline
from framepack_history.history.state import HistoryState
from framepack_history.training.modeling import build_backbone, build_encoder, training_preset
from framepack_history.training.settings import TrainConfig, load_config
from framepack_history.training.stage1_frame_query import FrameQueryModule, Stage1Task
from framepack_history.training.stages import track_of

from .conftest import CONFIGS
from .test_context_parity import F1_PRESET, PROMPT, assert_bit_equal, first_dit_call


def stage1(tmp_path: Path, preset: Path) -> Stage1Task:
    """A Stage I task on ``preset`` (the tiny config's settings, no caption dropout), not yet run."""
    cfg = load_config(TrainConfig, CONFIGS / "tiny_stage1.toml",
                      {"out": str(tmp_path / "run"), "preset": str(preset), "caption_dropout": 0.0})
    cfg.stage = "stage1"
    p = training_preset(cfg)
    bb = build_backbone(cfg, p.model, "cpu")
    task = Stage1Task(cfg, FrameQueryModule(bb, build_encoder(cfg, p.model, bb).eval(), cfg), p.video.fps)
    task.preset = p
    return task


def recall_call(task: Stage1Task, preset, clip: torch.Tensor, pos: int) -> dict:
    """The recall's first DiT call for latent frame ``pos`` of a history holding ``clip``."""
    bb, encoder = task.module.backbone, task.module.encoder
    pipe = Pipeline(bb, encoder, preset)
    hist = HistoryState(encoder, bb.device)
    hist.append(clip)
    return first_dit_call(bb.transformer, lambda: retrieve(pipe, hist, PROMPT, pos, 2, seed=5))


def stage1_call(task: Stage1Task, clip: torch.Tensor, pos: int, noise: torch.Tensor) -> dict:
    """A Stage I step's first DiT call with Omega = ``{pos}``, the history unmasked, ``noise`` at sigma 1."""
    t = clip.shape[2]
    batch = task.make_batch({"latents": clip, "caption": [PROMPT]}, torch.Generator().manual_seed(1))
    batch["omega"] = torch.tensor([[pos]])
    batch["keep"] = torch.arange(t)[None] == pos
    batch["mask_sigma"] = torch.zeros(1)  # the recall encodes the clean history: no masking noise on the rest
    batch["noise"], batch["sigma"] = noise, torch.ones(1)
    return first_dit_call(task.module.backbone.transformer, lambda: task.module(batch))


@pytest.fixture(scope="module")
def f1(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("f1recall")
    (root / "f1.toml").write_text(F1_PRESET)
    return {"task": stage1(root, root / "f1.toml"), "preset": load_preset(root / "f1.toml")}


@pytest.mark.parametrize("pos", [0, 7, 18])  # the start latent itself, inside, and the newest latent
def test_f1_recall_feeds_the_dit_what_stage1_trained_it_on(f1, pos) -> None:
    task = f1["task"]
    bb = task.module.backbone
    clip = torch.randn((1, bb.geometry.latent_channels, 19, 8, 8), generator=torch.Generator().manual_seed(pos))
    theirs = recall_call(task, f1["preset"], clip, pos)
    ours = stage1_call(task, clip, pos, theirs["hidden_states"])  # the first step's input is the noise itself
    assert_bit_equal(theirs, ours)
    # What that is: the frame's time inside the past, the start anchor and SigLIP, F1's distilled guidance 10.
    assert ours["hidden_states"].shape[2] == 1 and ours["history_tokens"] is not None
    assert torch.equal(ours["latents_clean"][:, :, :1], clip[:, :, :1])
    assert ours["image_embeds"] is not None and ours["image_embeds"].abs().sum() > 0
    assert float(ours["guidance"][0]) == 10_000.0


@pytest.mark.parametrize("canvas", [False, True])  # True: tokens placed by the camera track (toy-cpu's canvas)
@pytest.mark.parametrize("pos", [0, 5])
def test_toy_recall_feeds_the_dit_what_stage1_trained_it_on(tmp_path, pos, canvas) -> None:
    from tests.conftest import TINY_TOY

    preset = tmp_path / "toy.toml"
    text = TINY_TOY.read_text()
    preset.write_text(text.replace("[model.config.dit]\n", "[model.config.dit]\ncanvas_positions = true\n") if canvas else text)
    task = stage1(tmp_path, preset)
    bb = task.module.backbone
    clip = torch.randn((1, bb.geometry.latent_channels, 8, 16, 16), generator=torch.Generator().manual_seed(pos))
    camera_x = torch.tensor([[0, 2, 4, 6, 6, 6, 4, 2]]) if canvas else None
    track = track_of({"camera_x": camera_x}, bb) if canvas else None
    assert (track is not None) == canvas

    hist = HistoryState(task.module.encoder, bb.device)
    hist.append(clip, frame_context=None if track is None else track[0])
    target_w = hist.frame_context[pos : pos + 1] if canvas else None  # what ``recall`` reads from a job's history
    pipe = Pipeline(bb, task.module.encoder, load_preset(preset))
    theirs = first_dit_call(bb.transformer, lambda: retrieve(pipe, hist, PROMPT, pos, 2, seed=5, target_w=target_w))

    batch = task.make_batch({"latents": clip, "caption": [PROMPT], **({"camera_x": camera_x} if canvas else {})},
                            torch.Generator().manual_seed(1))
    batch["omega"], batch["keep"] = torch.tensor([[pos]]), torch.arange(8)[None] == pos
    batch["mask_sigma"], batch["noise"], batch["sigma"] = torch.zeros(1), theirs["arg0"], torch.ones(1)
    ours = first_dit_call(bb.transformer, lambda: task.module(batch))
    assert_bit_equal(theirs, ours)
    assert ours["history_tokens"] is not None and ours["window_latents"] is None
    assert (ours["target_w"] is not None) == canvas
