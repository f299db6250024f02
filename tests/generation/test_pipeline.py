"""The section loop on a tiny toy model: modes, inputs, storyboards, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.pipeline import ContextFrames, Finished, SectionDone, SectionStarted


def run(pipeline, **kw):
    events = list(pipeline.run(GenerationRequest(**kw)))
    return events, [e for e in events if isinstance(e, SectionDone)]


def test_text_to_video_sections_and_history_growth(toy_pipeline):
    events, done = run(toy_pipeline, prompt="camera pans left", seconds=2.0, seed=3)
    assert len(done) == 4  # 2 s at 8 fps in sections of 4 frames
    assert all(d.frames.shape == (4, 32, 32, 3) and d.frames.dtype == np.uint8 for d in done)
    tokens = [d.history_tokens for d in done]
    assert tokens == sorted(tokens) and tokens[0] > 0 and tokens[-1] > tokens[0]
    assert isinstance(events[-1], Finished) and events[-1].sections == 4
    # the history tokens stay on the backbone's device
    assert toy_pipeline.last_generation.history.grid.device == toy_pipeline.backbone.device


def test_same_request_and_seed_give_identical_frames(toy_pipeline):
    a = np.concatenate([d.frames for d in run(toy_pipeline, prompt="camera holds", seconds=1.0, seed=7)[1]])
    b = np.concatenate([d.frames for d in run(toy_pipeline, prompt="camera holds", seconds=1.0, seed=7)[1]])
    c = np.concatenate([d.frames for d in run(toy_pipeline, prompt="camera holds", seconds=1.0, seed=8)[1]])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_history_modes_differ_and_none_has_no_tokens(toy_pipeline):
    with torch.no_grad():
        for p in toy_pipeline.backbone.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    outs = {}
    for mode in ("encoder", "window", "none"):
        _, done = run(toy_pipeline, prompt="camera pans right", seconds=1.5, seed=1, history_mode=mode)
        outs[mode] = np.concatenate([d.frames for d in done])
        if mode != "encoder":
            assert all(d.history_tokens == 0 for d in done)
    # the toy world's start frame is history from section 0 on, except in mode "none"
    assert not np.array_equal(outs["encoder"], outs["none"])
    assert not np.array_equal(outs["window"], outs["none"])
    assert not np.array_equal(outs["encoder"], outs["window"])


def test_history_guidance(toy_pipeline):
    """Scale 1 is the plain encoder-mode section; scale w is window + w * (encoder - window) at every step."""
    bb = toy_pipeline.backbone
    with torch.no_grad():
        for p in bb.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    calls = []
    predict = bb.predict

    def spy(x, s, cond, ctx, guidance=1.0):
        calls.append(ctx.history_tokens is not None)
        return predict(x, s, cond, ctx, guidance)

    bb.predict = spy
    try:
        req = dict(prompt="camera pans right", seconds=1.0, seed=2)
        plain = np.concatenate([d.frames for d in run(toy_pipeline, **req)[1]])
        assert toy_pipeline.preset.history.guidance == 1.0 and all(calls)  # off: one pass, with the history
        same = np.concatenate([d.frames for d in run(toy_pipeline, **req, history_guidance=1.0)[1]])
        assert np.array_equal(plain, same)
        calls.clear()
        gen, _ = toy_pipeline.start(GenerationRequest(**req, history_guidance=2.5))
        toy_pipeline.generate_section(gen)
        steps = toy_pipeline.preset.sampling.steps
        assert calls.count(True) == steps and calls.count(False) == steps
        guided_latents = gen.history.latents[:, :, -toy_pipeline.section_latent_frames:].clone()
    finally:
        bb.predict = predict

    # the same section by hand: Euler on window + 2.5 * (encoder - window)
    from dataclasses import replace

    from framepack_history.sampling import flow_sigmas, sample_euler

    gen, _ = toy_pipeline.start(GenerationRequest(**req))
    ctx = toy_pipeline.context(gen)
    cond = toy_pipeline.text("camera pans right")
    cond = type(cond)({**gen.image_cond.tensors, **cond.tensors})
    no_hist = replace(ctx, history_tokens=None, history_positions=None)

    def model(x, s):
        a, b = bb.predict(x, s, cond, ctx, 1.0), bb.predict(x, s, cond, no_hist, 1.0)
        return b + 2.5 * (a - b)

    from framepack_history.generation.pipeline import section_noise

    shape = (1, bb.geometry.latent_channels, toy_pipeline.section_latent_frames, 32 // bb.geometry.spatial_scale,
             32 // bb.geometry.spatial_scale)
    x = sample_euler(model, section_noise(shape, 2, 0), flow_sigmas(steps, *toy_pipeline.schedule(toy_pipeline.preset.sampling.shift)))
    torch.testing.assert_close(x, guided_latents)
    # window mode has no history to guide with: the scale changes nothing there
    w1 = np.concatenate([d.frames for d in run(toy_pipeline, **req, history_mode="window")[1]])
    w2 = np.concatenate([d.frames for d in run(toy_pipeline, **req, history_mode="window", history_guidance=3.0)[1]])
    assert np.array_equal(w1, w2)


def test_toy_text_to_video_starts_in_the_world_of_the_seed(toy_pipeline):
    from framepack_history.backbones.toyworld import WorldSpec, start_frame

    events, _ = run(toy_pipeline, prompt="0s: camera pans right; 1s: camera pans left", seconds=2.0, seed=11)
    ctx = [e for e in events if isinstance(e, ContextFrames)]
    assert len(ctx) == 1
    expected = start_frame(11, WorldSpec(view=32), storyboard="0s: camera pans right; 1s: camera pans left", seconds=2.0)
    assert np.array_equal(ctx[0].frames[0], expected)


def test_window_context_is_the_last_raw_latents(toy_pipeline):
    gen, _ = toy_pipeline.start(GenerationRequest(prompt="x", seconds=1.5, history_mode="window", window_frames=3))
    toy_pipeline.generate_section(gen)
    toy_pipeline.generate_section(gen)
    ctx = toy_pipeline.context(gen)
    assert ctx.history_tokens is None
    assert ctx.window_latents.shape[2] == 3 and ctx.window_t0 == -3
    torch.testing.assert_close(ctx.window_latents.cpu(), gen.history.latents[:, :, -3:])


def test_image_to_video_starts_from_the_image(toy_pipeline, start_image):
    events, done = run(toy_pipeline, prompt="", image=str(start_image), seconds=1.0)
    ctx = [e for e in events if isinstance(e, ContextFrames)]
    assert len(ctx) == 1 and ctx[0].frames.shape == (1, 32, 32, 3)
    assert len(done) == 2
    assert toy_pipeline.last_generation.history.num_frames == 1 + 8


def test_continue_video_encodes_it_as_history(toy_pipeline, short_video):
    events, done = run(toy_pipeline, prompt="keep going", continue_video=str(short_video), seconds=1.0)
    ctx = [e for e in events if isinstance(e, ContextFrames)][0]
    assert ctx.frames.shape[0] == 8
    assert toy_pipeline.last_generation.history.num_frames == 8 + 8
    assert done[0].history_tokens > 0


def test_storyboard_prompt_per_section_and_text_cache(toy_pipeline):
    calls = []
    orig = toy_pipeline.backbone.encode_text
    toy_pipeline.backbone.encode_text = lambda p: calls.append(p) or orig(p)
    events, _ = run(toy_pipeline, prompt="0s: camera pans right; 1s: camera pans left", seconds=2.0)
    prompts = [e.prompt for e in events if isinstance(e, SectionStarted)]
    assert prompts == ["camera pans right"] * 2 + ["camera pans left"] * 2
    assert sorted(calls) == ["camera pans left", "camera pans right"]  # each prompt encoded once


def test_resume_from_a_snapshot_is_identical(toy_pipeline, tmp_path):
    full = np.concatenate([d.frames for d in run(toy_pipeline, prompt="camera holds", seconds=2.0, seed=5)[1]])
    gen, _ = toy_pipeline.start(GenerationRequest(prompt="camera holds", seconds=2.0, seed=5))
    first = [toy_pipeline.generate_section(gen).frames for _ in range(2)]
    gen.history.save(tmp_path / "h.safetensors")
    gen2, _ = toy_pipeline.start(GenerationRequest(prompt="camera holds", seconds=2.0, seed=5))
    gen2.history.load(tmp_path / "h.safetensors")
    gen2.next_section = 2
    rest = [d.frames for d in toy_pipeline.run(gen2.request, resume=gen2) if isinstance(d, SectionDone)]
    assert np.array_equal(full, np.concatenate(first + rest))


def test_bad_requests_are_input_errors(toy_pipeline, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    cases = [
        (dict(prompt="a", seconds=0), "--seconds"),
        (dict(prompt="a", seconds=float("inf")), "--seconds"),
        (dict(prompt="a", seconds=21), "--seconds"),
        (dict(prompt="", seconds=1), "--prompt"),
        (dict(prompt="0s: a; 0s: b", seconds=1), "--prompt"),
        (dict(prompt="a", image=str(bad), seconds=1), "--image"),
        (dict(prompt="a", image=str(tmp_path / "missing.png"), seconds=1), "--image"),
        (dict(prompt="a", continue_video=str(bad), seconds=1), "--continue-video"),
    ]
    for kw, field in cases:
        with pytest.raises(InputError) as e:
            toy_pipeline.start(GenerationRequest(**kw))
        assert e.value.field == field, kw


def test_canvas_positions_follow_the_storyboard_camera(tiny_toy_preset):
    """A canvas-position toy DiT gets each frame's view offset from the storyboard, section after section."""
    from framepack_history.generation.loading import build_encoder, load_backbone
    from framepack_history.generation.pipeline import Pipeline

    tiny_toy_preset.model.config["dit"]["canvas_positions"] = True
    bb = load_backbone(tiny_toy_preset.model)
    pipe = Pipeline(bb, build_encoder(tiny_toy_preset.model, bb), tiny_toy_preset)
    seen = []
    predict = bb.predict
    bb.predict = lambda x, s, cond, ctx, g=1.0: seen.append((ctx.target_w, ctx.window_w)) or predict(x, s, cond, ctx, g)
    run(pipe, prompt="0s: camera pans right; 0.5s: camera holds", seconds=1.0, seed=1, window_frames=2)
    # 32 px views pan 4 px per frame = one DiT token (2x VAE, 2x2 patches); 8 fps: frames 1-4 pan, 5-8 hold
    track = pipe.last_generation.history.frame_context
    torch.testing.assert_close(track, torch.tensor([0.0, 1, 2, 3, 4, 4, 4, 4, 4]))
    torch.testing.assert_close(seen[-1][0], torch.tensor([4.0, 4, 4, 4]))  # last section: target frames
    torch.testing.assert_close(seen[-1][1], torch.tensor([3.0, 4]))  # its window: the last 2 frames
    # a view-position DiT (the default) keeps view-relative positions
    tiny_toy_preset.model.config["dit"]["canvas_positions"] = False
    assert load_backbone(tiny_toy_preset.model).camera_steps([(0.0, "camera pans right")], 0, 4, 8, 32) is None
