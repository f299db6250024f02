"""A video to continue is encoded chunk by chunk, and only as much of it as the history mode reads.

HunyuanVideo's VAE (diffusers, framewise encoding on: its default) encodes a long
clip as temporal tiles of its own; chunks aligned with those tiles give the one
call's latents bit for bit (``torch.equal``), on the tiny model at any clip length.
"""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
import torch

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.continuation import clip_chunks, cut, encode_clip, latents_read
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import ContextFrames, Pipeline, to_pixels
from framepack_history.generation.video import write_segment
from framepack_history.memory.budget import Budget, GiB
from framepack_history.memory.components import meta_components, vae_encode_activation
from framepack_history.memory.encode_chunks import chunks, exact, first_frame, latent_count, vae_tiles
from framepack_history.memory.planner import plan
from tests.conftest import TINY_HUNYUAN, TINY_TOY

LENGTHS = [1, 5, 16, 17, 18, 29, 53, 54, 58, 61, 66, 101, 137]  # around the tiles' and the chunks' edges


@pytest.fixture(scope="module")
def hunyuan():
    return load_backbone(load_preset(TINY_HUNYUAN).model)


def _clip(frames: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((frames, size, size, 3)) * 255).astype(np.uint8)


def _calls(backbone) -> list[int]:
    """Records the frames of every vae_encode call on ``backbone``."""
    calls, orig = [], backbone.vae_encode

    def spy(pixels, *a, **kw):
        calls.append(pixels.shape[2])
        return orig(pixels, *a, **kw)

    backbone.vae_encode = spy
    return calls


# ------------------------------------------------------------------ layout
def test_chunks_tile_the_clip_and_keep_its_last_latents():
    for frames in range(1, 400, 4):  # cut clips: 1 + 4k frames
        for keep in (None, 1, 19):
            calls = chunks(frames, 4, True, (17, 12), keep)
            total = latent_count(frames, 4, True)
            assert sum(c.latents for c in calls) == (total if keep is None else min(keep, total)), (frames, keep)
            assert all(c.start % 12 == 0 and c.frames <= 53 and 0 <= c.keep_from < c.keep_to for c in calls)
            assert all(c.keep_to <= latent_count(c.frames, 4, True) for c in calls)
            assert all(b.start > a.start for a, b in pairwise(calls))  # each frame in at most two calls
            assert calls[-1].stop == frames


def test_a_causal_clip_is_cut_at_its_front_to_whole_groups():
    assert [first_frame(f, 4, True) for f in (1, 2, 5, 8, 9)] == [0, 1, 0, 3, 0]
    assert first_frame(8, 1, False) == 0


def test_exact_only_where_the_tiles_follow_the_layout():
    assert exact(4, True, (17, 12)) and exact(1, False, None)
    assert not exact(4, True, None)  # a whole clip at once: GroupNorm spans it
    assert not exact(4, True, (29, 12))  # cross-fades longer than a stride


# ------------------------------------------------------------------- exactness
def test_chunked_latents_are_the_one_call_latents(hunyuan):
    torch.set_num_threads(1)  # the tiny VAE is quicker on one thread than fighting for two
    assert vae_tiles(hunyuan.vae) == (17, 12)
    clip = _clip(max(LENGTHS))
    for n in LENGTHS:
        frames = cut(hunyuan, clip[:n])
        one = hunyuan.vae_encode(to_pixels(frames))
        for keep in (None, 1, 19):
            got = encode_clip(hunyuan, frames, keep)
            assert torch.equal(got, one if keep is None else one[:, :, -keep:]), (n, keep)


@pytest.mark.parametrize("tiles", [(20, 12), (12, 12), (24, 16), (16, 8)])
def test_other_temporal_tiles_are_followed_too(hunyuan, tiles):
    vae = hunyuan.vae
    vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames = tiles
    try:
        clip = _clip(137)
        for n in (53, 66, 137):
            frames = cut(hunyuan, clip[:n])
            assert torch.equal(encode_clip(hunyuan, frames), hunyuan.vae_encode(to_pixels(frames))), (tiles, n)
    finally:
        vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames = 16, 12


def test_without_temporal_tiles_the_chunks_differ_by_a_measured_amount(hunyuan):
    """Framewise encoding off: one call normalises over the whole clip, so no split is exact.

    Measured on the tiny random VAE (61 frames, latents up to 0.40): max 0.39, mean 0.032.
    A clip of one chunk is still the one call.
    """
    hunyuan.vae.use_framewise_encoding = False
    try:
        clip = cut(hunyuan, _clip(61))
        one, got = hunyuan.vae_encode(to_pixels(clip)), encode_clip(hunyuan, clip)
        diff = (got - one).abs()
        assert got.shape == one.shape and 0 < diff.mean() < 0.05 and diff.max() < 0.5
        short = clip[:17]
        assert torch.equal(encode_clip(hunyuan, short), hunyuan.vae_encode(to_pixels(short)))
    finally:
        hunyuan.vae.use_framewise_encoding = True


def test_a_frame_by_frame_vae_splits_anywhere():
    preset = load_preset(TINY_TOY)
    toy = load_backbone(preset.model)
    clip = _clip(100, 32)
    calls = _calls(toy)
    got = encode_clip(toy, clip)
    assert len(calls) == 3 and max(calls) == 48
    assert torch.equal(got, toy.vae_encode(to_pixels(clip)).float())


def test_the_host_makes_float_only_of_one_chunk(hunyuan, monkeypatch):
    from framepack_history.generation import continuation

    sizes, orig = [], continuation.chunk_pixels
    monkeypatch.setattr(continuation, "chunk_pixels", lambda f: sizes.append(len(f)) or orig(f))
    encode_clip(hunyuan, cut(hunyuan, _clip(201)))
    assert sizes and max(sizes) == 53 and sum(sizes) < 201 * 1.2


# ---------------------------------------------------------------- the pipeline
def _pipeline(preset_path=TINY_HUNYUAN) -> Pipeline:
    preset = load_preset(preset_path)
    bb = load_backbone(preset.model)
    return Pipeline(bb, build_encoder(preset.model, bb), preset)


@pytest.fixture
def long_video(tmp_path):
    """20 s at 8 fps (160 frames), 64x64: the tiny preset's size."""
    frames = _clip(160, 64, seed=3)
    return write_segment(frames, tmp_path / "long.mp4", fps=8)


def test_window_mode_encodes_only_the_tail_it_reads(long_video):
    torch.set_num_threads(1)
    pipe = _pipeline()
    bb = pipe.backbone
    calls = _calls(bb)
    gen, shown = pipe.start(GenerationRequest(prompt="go on", seconds=0.5, continue_video=str(long_video),
                                              history_mode="window"))
    assert len(shown) == 157  # 1 + 4k frames: the 3 oldest are cut, the clip's last frame stays its last
    assert gen.history.num_frames == bb.context_frames == 19  # F1's context: all window mode reads
    # the 19 latents cover 73 frames; encoded from the tile boundary before them: far fewer than the clip's 157
    assert calls[0] == 1 and sum(calls[1:]) < 100 and max(calls) <= 53
    one = bb.vae_encode(to_pixels(shown))
    assert torch.equal(gen.history.latents, one[:, :, -19:].cpu())
    frames = next(e.frames for e in pipe.run(GenerationRequest(prompt="go on", seconds=0.5, continue_video=str(long_video),
                                                                history_mode="window")) if isinstance(e, ContextFrames))
    assert len(frames) == 157


def test_encoder_mode_encodes_all_of_it(long_video):
    torch.set_num_threads(1)
    pipe = _pipeline()
    calls = _calls(pipe.backbone)
    gen, shown = pipe.start(GenerationRequest(prompt="go on", seconds=0.5, continue_video=str(long_video),
                                              history_mode="encoder"))
    assert gen.history.num_frames == latent_count(len(shown), 4, True) == 40
    image, chunked = calls[0], calls[1:]  # the image condition encodes the last frame alone, first
    assert image == 1 and chunked == [c.frames for c in clip_chunks(pipe.backbone, 157, None)] == [53, 53, 53, 13]
    assert gen.history.num_tokens > 0


def test_what_each_mode_reads():
    pipe = _pipeline()
    bb, n = pipe.backbone, pipe.section_latent_frames
    assert latents_read(bb, "encoder", 0, n) is None
    assert latents_read(bb, "window", 0, n) == 19 and latents_read(bb, "none", 0, n) == 1
    toy = _pipeline(TINY_TOY)
    assert latents_read(toy.backbone, "window", 0, toy.section_latent_frames) == toy.section_latent_frames
    assert latents_read(toy.backbone, "window", 5, toy.section_latent_frames) == 5


# ------------------------------------------------------------------- planning
def test_the_vae_encode_row_is_a_trace_of_the_chunk():
    preset = load_preset(TINY_HUNYUAN)
    budget = Budget(GiB, GiB, "cpu", "test")

    def row(**kw):
        p = plan(preset, 1.0, budget=budget, **kw)
        return next(r for r in p if r.phase == "vae_encode"), p

    image, _ = row(history_mode="encoder")
    video, p = row(history_mode="encoder", continue_frames=240)
    window, _ = row(history_mode="window", continue_frames=240)
    assert video.device_peak_bytes > image.device_peak_bytes and video.activation_bytes > image.activation_bytes
    comps = meta_components(preset)
    traced = vae_encode_activation(comps, (1, 3, 53, 64, 64), p.strategy.vae_tiling, host_pixels=True)
    latents = 16 * 60 * 8 * 8 * 4  # the clip's 60 latents kept (and joined) beside the last call, on a CPU
    assert video.activation_bytes == traced + 2 * latents
    assert "53 frames a call" in video.strategy
    assert video.history_tokens > image.history_tokens > 0  # the history starts with the whole clip
    assert window.history_tokens == 0 and window.activation_bytes < video.activation_bytes
    den = [r for r in p if r.phase == "denoise"]
    assert den[0].history_tokens == video.history_tokens
    # text-to-video without a start frame encodes nothing
    assert not any(r.phase == "vae_encode" for r in plan(preset, 1.0, budget=budget, start_image=False))


def test_plan_cli_plans_a_continuation(capsys):
    from framepack_history.cli.main import main

    assert main(["plan", "--preset", str(TINY_HUNYUAN), "--seconds", "1", "--continue-seconds", "60", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["phase"] == "vae_encode")
    assert "53 frames a call" in row["strategy"]  # 30 s of it read (240 frames at 8 fps), in chunks
    assert main(["plan", "--preset", str(TINY_HUNYUAN), "--continue-seconds", "-1"]) == 2


def test_the_row_follows_the_resolution_bucket():
    preset = load_preset(TINY_HUNYUAN)
    budget = Budget(GiB, GiB, "cpu", "test")
    rows = [next(r for r in plan(preset, 1.0, budget=budget, size=size, continue_frames=240) if r.phase == "vae_encode")
            for size in ((64, 64), (80, 48), (128, 128))]
    assert rows[2].activation_bytes > rows[0].activation_bytes
    assert rows[1].activation_bytes != rows[0].activation_bytes
