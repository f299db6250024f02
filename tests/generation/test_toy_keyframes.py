"""Keyframes on the toy: each section sees the next keyframe at its time and place; a resume re-encodes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone


def image(path: Path, size: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def contexts(pipe: Pipeline, request: GenerationRequest) -> tuple[list, np.ndarray]:
    """The context of each section's first DiT call, and the frames."""
    seen: dict[int, object] = {}
    predict, bb = pipe.backbone.predict, pipe.backbone
    sections = []

    def spy(noisy, sigma, cond, context, guidance=1.0):
        seen.setdefault(len(sections), context)
        return predict(noisy, sigma, cond, context, guidance)

    bb.predict = spy  # this test's own backbone instance
    try:
        for e in pipe.run(request):
            if isinstance(e, SectionDone):
                sections.append(e.frames)
    finally:
        del bb.predict
    return [seen[i] for i in range(len(sections))], np.concatenate(sections)


def test_each_section_sees_the_next_keyframe_until_it_passes(toy_pipeline, tmp_path):
    """Tiny toy, 8 fps, sections of 4 frames after the start frame: a keyframe at 1.5 s is latent 12."""
    key = image(tmp_path / "key.png", 32, 1)
    request = GenerationRequest(prompt="camera holds", seconds=3, seed=2, steps=2, keyframes=[{"time": 1.5, "image": key}])
    ctxs, frames = contexts(toy_pipeline, request)
    assert [None if c.keyframe_t is None else c.keyframe_t.tolist() for c in ctxs] == [[11.0], [7.0], [3.0], None, None, None]
    expect = toy_pipeline.backbone.vae_encode(torch.from_numpy(np.asarray(Image.open(key), np.float32) / 127.5 - 1)
                                              .permute(2, 0, 1)[None, :, None])
    assert torch.equal(ctxs[0].keyframe_latents, expect)
    with torch.no_grad():  # adaLN-zero: a fresh tiny DiT reads no context at all; perturbed, the keyframe changes frames
        for p in toy_pipeline.backbone.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    _, plain = contexts(toy_pipeline, GenerationRequest(prompt="camera holds", seconds=3, seed=2, steps=2))
    _, keyed = contexts(toy_pipeline, request)
    assert plain.shape == keyed.shape and not np.array_equal(plain[:12], keyed[:12])


def test_the_keyframes_place_continues_the_camera_track(tmp_path):
    """The shipped toy (canvas positions): a keyframe's frame context is the one its frame gets as a section's frame."""
    preset = load_preset("toy-cpu")
    bb = load_backbone(preset.model)
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset)
    key = image(tmp_path / "key.png", 16, 3)
    # 4 fps, sections of 4 frames after the start frame: 2 s is latent 8, the last frame of section 1 (latents 5-8)
    request = GenerationRequest(prompt="0s: camera pans right; 1.5s: camera pans left", seconds=3, seed=1, steps=2,
                                keyframes=[{"time": 2.0, "image": key}])
    ctxs, _ = contexts(pipe, request)
    assert [None if c.keyframe_t is None else c.keyframe_t.tolist() for c in ctxs] == [[7.0], [3.0], None]
    place = ctxs[1].target_w[3]
    assert float(place) != 0.0 and torch.equal(ctxs[0].keyframe_w, place[None]) and torch.equal(ctxs[1].keyframe_w, place[None])


def test_a_backbone_without_keyframes_refuses_them(toy_pipeline, tmp_path):
    bb = toy_pipeline.backbone
    bb.keyframes = False  # this test's own backbone instance: stands for one that cannot read them (F1)
    request = GenerationRequest(prompt="camera holds", seconds=2, seed=2, steps=2,
                                keyframes=[{"time": 1.0, "image": image(tmp_path / "k.png", 32, 0)}])
    with pytest.raises(InputError, match="cannot lead a video to keyframes") as e:
        next(e for e in toy_pipeline.run(request) if isinstance(e, SectionDone))
    assert e.value.field == "--keyframe"


def test_a_keyframed_job_resumes_frame_identical(toy_pipeline, tmp_path):
    """Keyframe latents are never checkpointed: the resumed job encodes them again from the image."""
    from framepack_history.generation.video import read_video
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.render import render

    with torch.no_grad():  # a DiT that reads its context, so the keyframe shapes every frame before it
        for p in toy_pipeline.backbone.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    request = GenerationRequest(prompt="camera pans right", seconds=3, seed=5, steps=2,
                                keyframes=[{"time": 2.0, "image": image(tmp_path / "key.png", 32, 4)}])
    job = JobDir(tmp_path / "job")
    job.create(request, toy_pipeline.preset, out=tmp_path / "v.mp4")

    def kill_after_section_1(ev) -> None:
        if isinstance(ev, SectionDone) and ev.index == 1:
            raise KeyboardInterrupt  # the process dies: the job folder says interrupted

    with pytest.raises(KeyboardInterrupt):
        render(toy_pipeline, request, tmp_path / "v.mp4", job.root / "segments", job=job, on_event=kill_after_section_1)
    data = render(toy_pipeline, request, tmp_path / "v.mp4", job.root / "segments", job=job)  # resume
    assert data["resumed_from_section"] == 2
    render(toy_pipeline, request, tmp_path / "s.mp4", tmp_path / "seg")
    a = read_video(tmp_path / "v.mp4", 32, 32, 8, 1000)
    assert np.array_equal(a, read_video(tmp_path / "s.mp4", 32, 32, 8, 1000))
    unkeyed = GenerationRequest(prompt="camera pans right", seconds=3, seed=5, steps=2)
    render(toy_pipeline, unkeyed, tmp_path / "u.mp4", tmp_path / "useg")
    assert not np.array_equal(a, read_video(tmp_path / "u.mp4", 32, 32, 8, 1000))  # the keyframe mattered
