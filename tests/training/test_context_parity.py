"""A Stage II step feeds the DiT exactly what the generator feeds it at the same point of a video.

For a clip cut before section ``k``, the generator (``Pipeline.generate_section`` with the
clip's first latents as its history) and the training step (``Stage2Task.make_batch`` with
the split forced there, then ``NextSectionModule.forward``) run on the same backbone,
encoder, latents, noise and sigma (1: the generator's first step, whose input is the
section's noise itself, handed to the training step as its noise). The DiT's first call is recorded on both sides and every argument must be
equal bit for bit: F1's clean context at its indices (start latent, 4x/2x/1x recent
latents, zeros where the history is short), the history tokens and their positions, the
noisy section, the text and image conditioning, timestep and guidance.

The one input a latent clip cannot give as generation does is SigLIP's view of the start
image: training shows it the clip's decoded first latent, so the generator here is given
that embedding (its start latent is its own start image's, as ever).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framepack_history.backbones.base import Conditioning
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.pipeline import Generation, Pipeline
from framepack_history.history.state import HistoryState
from framepack_history.training.modeling import build_backbone, build_encoder, training_preset
from framepack_history.training.settings import TrainConfig, load_config
from framepack_history.training.stage2_autoregressive import NextSectionModule, Stage2Task, split_points

from .conftest import CONFIGS

PROMPT = "a red fox runs through snow"
F1_PRESET = """
description = "tiny FramePack-F1 in F1's layout: 30 fps, 36-frame (9-latent) sections"
[model]
backbone = "hunyuan_framepack"
encoder_rate = "2x2x2"
encoder_rates = ["2x2x2"]
encoder_channels = [8, 16, 16, 32]
[video]
width = 64
height = 64
fps = 30
section_frames = 36
max_seconds = 20
[sampling]
sampler = "euler"
steps = 2
guidance = 10.0
cache = "off"
[history]
mode = "encoder"
[hardware]
dtype = "float32"
"""


class _Stop(Exception):
    """Raised by the recorder after the first DiT call: nothing after it is compared."""


def first_dit_call(dit: torch.nn.Module, run) -> dict:
    """The positional and keyword arguments of the DiT's first call while ``run()`` runs (then it stops)."""
    calls: list[dict] = []

    def clone(v):
        return v.detach().clone() if torch.is_tensor(v) else v

    def hook(module, args, kwargs):
        calls.append({**{f"arg{i}": clone(a) for i, a in enumerate(args)}, **{k: clone(v) for k, v in kwargs.items()}})
        raise _Stop

    handle = dit.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    except _Stop:
        pass
    finally:
        handle.remove()
    assert len(calls) == 1
    return calls[0]


def assert_bit_equal(gen: dict, train: dict) -> None:
    assert gen.keys() == train.keys(), sorted(set(gen) ^ set(train))
    for key, a in gen.items():
        b = train[key]
        if torch.is_tensor(a):
            assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, (key, a, b)
            assert torch.equal(a, b), (key, (a.float() - b.float()).abs().max())
        else:
            assert a == b, (key, a, b)


def stage2(tmp_path: Path, preset: Path, **stage2) -> tuple[TrainConfig, Stage2Task]:
    """A Stage II task on ``preset`` (the tiny config's settings, no caption dropout), not yet run."""
    cfg = load_config(TrainConfig, CONFIGS / "tiny_stage2.toml",
                      {"out": str(tmp_path / "run"), "preset": str(preset), "caption_dropout": 0.0, "stage2": stage2})
    cfg.stage = "stage2"
    p = training_preset(cfg)
    bb = build_backbone(cfg, p.model, "cpu")
    task = Stage2Task(cfg, NextSectionModule(bb, build_encoder(cfg, p.model, bb).eval(), cfg), p.video.fps)
    task.preset = p
    return cfg, task


def train_call(task: Stage2Task, clip: torch.Tensor, split: int, mode: str, noise: torch.Tensor) -> dict:
    """The training step's first DiT call for ``clip`` cut at ``split`` (forced there by the earliest split)."""
    c2 = task.cfg.stage2
    c2.min_history_frames, c2.p_window_mode = split, 1.0 if mode == "window" else 0.0
    batch = task.make_batch({"latents": clip, "caption": [PROMPT]}, torch.Generator().manual_seed(1))
    assert batch["split"] == split and batch["use_encoder"] == (mode == "encoder")
    batch["noise"], batch["sigma"] = noise, torch.ones(1)
    module = task.module
    return first_dit_call(module.backbone.transformer, lambda: module(batch))


# ------------------------------------------------------------------ FramePack-F1
@pytest.fixture(scope="module")
def f1(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("f1ctx")
    (root / "f1.toml").write_text(F1_PRESET)
    _, task = stage2(root, root / "f1.toml", window_frames=0)
    rng = np.random.default_rng(0)
    img = (rng.random((8, 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    Image.fromarray(img).save(root / "start.png")
    return {"root": root, "task": task, "image": str(root / "start.png"), "preset": load_preset(root / "f1.toml")}


@pytest.mark.parametrize("mode", ["encoder", "window"])
@pytest.mark.parametrize("k", [0, 2])  # a history shorter than F1's 19 latents (zeros in front), and one as long
def test_f1_training_step_feeds_the_generators_context(f1, mode, k) -> None:
    task, preset = f1["task"], f1["preset"]
    bb, encoder = task.module.backbone, task.module.encoder
    pipe = Pipeline(bb, encoder, preset)
    n = pipe.section_latent_frames
    assert n == 9 and bb.context_frames == 19
    split = 1 + k * n  # the start latent, then k sections

    # Generation: image-to-video; the history is the start image's latent, then the clip's k sections.
    request = GenerationRequest(prompt=PROMPT, seconds=(k + 1) * 36 / 30, seed=7, image=f1["image"], history_mode=mode)
    gen, _ = pipe.start(request)
    start = gen.history.latents
    clip = torch.cat([start, torch.randn((1, start.shape[1], k * n + n, *start.shape[3:]),
                                         generator=torch.Generator().manual_seed(k))], dim=2)
    if k:
        gen.history.append(clip[:, :, 1:split])
    gen.next_section = k
    first = bb.vae_decode(clip[:, :, :1]).float()  # SigLIP's view of a latent clip's first frame (see above)
    gen.image_cond = Conditioning({**gen.image_cond.tensors, "image_embeds": bb.encode_image(first[0, :, 0]).tensors["image_embeds"]})
    assert torch.equal(gen.image_cond.tensors["start_latents"], clip[:, :, :1])
    theirs = first_dit_call(bb.transformer, lambda: pipe.generate_section(gen))
    noise = theirs["hidden_states"]  # the first step's input is the section's noise itself

    ours = train_call(task, clip, split, mode, noise)
    assert_bit_equal(theirs, ours)
    # What that is: F1's context, the noisy section of 9 latents, and the tokens of everything before it.
    assert ours["hidden_states"].shape[2] == 9
    assert ours["indices_latents_clean"].tolist() == [0.0, 19.0]
    assert ours["indices_latents_history_4x"].tolist() == list(range(1, 17))
    assert torch.equal(ours["latents_clean"][:, :, :1], clip[:, :, :1])
    recent = torch.cat([torch.zeros_like(clip[:, :, :1]).expand(-1, -1, max(0, 19 - split), -1, -1),
                        clip[:, :, max(0, split - 19) : split]], dim=2)
    assert torch.equal(torch.cat([ours["latents_history_4x"], ours["latents_history_2x"], ours["latents_clean"][:, :, 1:]], 2),
                       recent)
    assert ("history_tokens" in ours) == (mode == "encoder")
    assert float(ours["guidance"][0]) == 10_000.0


def test_f1_splits_fall_where_generation_cuts(f1) -> None:
    """F1 clips are cut after the start latent at whole sections (histories of 1, 10, 19, ... latents); the toy anywhere."""
    bb = f1["task"].module.backbone
    assert split_points(bb, 1 + 4 * 9, 9, 1) == [1, 10, 19, 28]
    assert split_points(bb, 1 + 4 * 9 + 5, 9, 12) == [19, 28]  # trailing latents short of a section are never a target
    toy = type("Toy", (), {"context_frames": 0})()
    assert split_points(toy, 12, 4, 2) == list(range(2, 9))


def test_f1_refuses_an_add_on_window(tmp_path, f1) -> None:
    from framepack_history.errors import InputError

    _, task = stage2(tmp_path, f1["root"] / "f1.toml", window_frames=3)
    with pytest.raises(InputError, match="stage2.window_frames"):
        task.make_batch({"latents": torch.zeros(1, 16, 28, 8, 8), "caption": [PROMPT]}, torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------- toy
@pytest.mark.parametrize("mode,window,split", [("encoder", 1, 5), ("encoder", 2, 8), ("encoder", 0, 3), ("window", 0, 6)])
def test_toy_training_step_feeds_the_generators_context(tmp_path, mode, window, split) -> None:
    """The toy is cut at any latent: generation's context is the same function of any history (a continued video's)."""
    from tests.conftest import TINY_TOY

    _, task = stage2(tmp_path, TINY_TOY, window_frames=window)
    bb, encoder, preset = task.module.backbone, task.module.encoder, task.preset
    pipe = Pipeline(bb, encoder, preset)
    n = pipe.section_latent_frames
    geo = bb.geometry
    clip = torch.randn((1, geo.latent_channels, split + n, 16, 16), generator=torch.Generator().manual_seed(split))
    request = GenerationRequest(prompt=PROMPT, seconds=4.0, seed=3, history_mode=mode, window_frames=window)
    gen = Generation(request, request.validate(preset), pipe.sections_for(request.seconds),
                     HistoryState(encoder if mode == "encoder" else None, bb.device))
    gen.history.append(clip[:, :, :split])  # the history fed directly, as a continued video's
    theirs = first_dit_call(bb.transformer, lambda: pipe.generate_section(gen))
    noise = theirs["arg0"]  # the first step's input is the section's noise itself

    ours = train_call(task, clip, split, mode, noise)
    assert_bit_equal(theirs, ours)
    expect = window if mode == "encoder" else n
    assert ours["window_latents"] is None if expect == 0 else torch.equal(ours["window_latents"], clip[:, :, split - expect : split])
    assert (ours["history_tokens"] is not None) == (mode == "encoder")


@pytest.mark.parametrize("mode,offset", [("encoder", 9), ("encoder", 2), ("window", 6)])
def test_toy_keyframed_step_feeds_the_generators_context(tmp_path, mode, offset) -> None:
    """A keyframe ``offset`` latents after the split (beyond the section, or inside it) reaches the DiT as generation gives it."""
    from tests.conftest import TINY_TOY

    _, task = stage2(tmp_path, TINY_TOY, window_frames=2, p_keyframe=1.0, keyframe_horizon=12)
    bb, encoder, preset = task.module.backbone, task.module.encoder, task.preset
    pipe = Pipeline(bb, encoder, preset)
    n, split = pipe.section_latent_frames, 5
    clip = torch.randn((1, bb.geometry.latent_channels, split + 12, 16, 16), generator=torch.Generator().manual_seed(offset))
    request = GenerationRequest(prompt=PROMPT, seconds=4.0, seed=3, history_mode=mode, window_frames=2)
    gen = Generation(request, request.validate(preset), pipe.sections_for(request.seconds),
                     HistoryState(encoder if mode == "encoder" else None, bb.device))
    gen.history.append(clip[:, :, :split])
    gen.keyframes = [(split + offset, clip[:, :, split + offset : split + offset + 1])]  # as encoded from its image
    theirs = first_dit_call(bb.transformer, lambda: pipe.generate_section(gen))

    c2 = task.cfg.stage2
    c2.min_history_frames, c2.p_window_mode = split, 1.0 if mode == "window" else 0.0
    batch = task.make_batch({"latents": clip, "caption": [PROMPT]}, torch.Generator().manual_seed(1))
    assert 0 <= batch["keyframe"] <= clip.shape[2] - 1 - batch["split"]  # drawn within the clip
    # the split and the keyframe forced where the generator stands (the window, 2 latents, is the same at any split >= 2)
    batch["split"], batch["keyframe"], batch["noise"], batch["sigma"] = split, offset, theirs["arg0"], torch.ones(1)
    ours = first_dit_call(bb.transformer, lambda: task.module(batch))
    assert_bit_equal(theirs, ours)
    assert torch.equal(ours["keyframe_latents"], clip[:, :, split + offset : split + offset + 1])
    assert ours["keyframe_t"].tolist() == [float(offset)]  # offsets 2 (inside the section of n) and 6, 9 (beyond)
    assert n == 4
