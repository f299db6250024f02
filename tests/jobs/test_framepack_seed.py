"""FramePack's seed on ``hunyuan_framepack``: one CPU generator per video, checkpointed with every section.

FramePack's demo seeds ``rnd = torch.Generator("cpu").manual_seed(seed)`` once and hands it to every
section's ``sample_hunyuan``, which draws ``torch.randn((1, 16, T, H/8, W/8), generator=rnd)`` (float32)
and nothing else from it. The toy backbone keeps its per-section ``(seed, section index)`` noise.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone, video_noise_generator
from framepack_history.jobs.checkpoint import NOISE_STATE, JobDir, chunk_file, read_tensors
from tests.conftest import TINY_HUNYUAN

SEED = 31337  # FramePack's demo default


@pytest.fixture(scope="module")
def preset():
    p = load_preset(TINY_HUNYUAN)  # 64x64, 8 fps, 5 frames (2 latents) a section
    return replace(p, sampling=replace(p.sampling, steps=1))


@pytest.fixture(scope="module")
def backbone(preset):
    return load_backbone(preset.model, "cpu", "float32")


def request(sections: int) -> GenerationRequest:
    return GenerationRequest(prompt="a red fox runs", seconds=sections * 5 / 8, seed=SEED, history_mode="window",
                             start_frame="black")


def first_inputs(backbone):
    """Records the DiT's ``hidden_states`` per call: at sigma 1 (each section's first step) that is the noise."""
    seen: list[torch.Tensor] = []
    handle = backbone.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["hidden_states"].detach().clone()), with_kwargs=True)
    return seen, handle


@pytest.fixture(scope="module")
def uninterrupted(preset, backbone) -> dict:
    pipe = Pipeline(backbone, None, preset)
    seen, handle = first_inputs(backbone)
    try:
        frames = [ev.frames for ev in pipe.run(request(3)) if isinstance(ev, SectionDone)]
    finally:
        handle.remove()
    return {"frames": frames, "noise": seen, "latents": pipe.last_generation.history.latents, "pipe": pipe}


def test_noise_is_framepacks_one_generator_per_video(uninterrupted) -> None:
    pipe = uninterrupted["pipe"]
    shape = pipe.latent_shape(pipe.last_generation)
    assert shape == (1, 16, 2, 8, 8)
    rnd = torch.Generator("cpu").manual_seed(SEED)
    # sample_hunyuan: torch.randn((batch, 16, (frames + 3) // 4, height // 8, width // 8), generator=rnd, device=rnd.device)
    reference = [torch.randn(shape, generator=rnd, device=rnd.device) for _ in range(3)]
    assert reference[0].dtype == torch.float32
    noise = uninterrupted["noise"]
    assert len(noise) == 3  # one step a section, one DiT call a step
    assert torch.equal(noise[0], reference[0]) and torch.equal(noise[1], reference[1])
    assert torch.equal(noise[2], reference[2])
    assert torch.equal(pipe.last_generation.noise_generator.get_state(), rnd.get_state())


def test_toy_keeps_per_section_noise(toy_pipeline) -> None:
    gen, _ = toy_pipeline.start(GenerationRequest(prompt="camera holds", seconds=1.0, seed=SEED))
    assert not toy_pipeline.backbone.noise_per_video
    assert video_noise_generator(gen, toy_pipeline.backbone) is None and gen.noise_generator is None


def test_resume_after_section_1_gives_the_uninterrupted_frames(preset, backbone, uninterrupted, tmp_path) -> None:
    job = JobDir(tmp_path / "job")
    req = request(3)
    job.create(req, preset, out=tmp_path / "v.mp4")
    first = Pipeline(backbone, None, preset)
    done = []
    for ev in first.run(req):
        if isinstance(ev, SectionDone):
            done.append(ev.frames)
            break  # section 0 finished; section 1 is never drawn in this process
    job.save_section(first.last_generation, [], [], 0)
    ck = job.checkpoint()
    assert NOISE_STATE in ck["rng"]["noise"]
    saved, _ = read_tensors(job.root / chunk_file(ck["chunks"] - 1))
    assert saved[NOISE_STATE].dtype == torch.uint8
    assert torch.equal(saved[NOISE_STATE], first.last_generation.noise_generator.get_state())

    restored, _ = job.restore(Pipeline(backbone, None, preset))
    assert restored.next_section == 1 and restored.noise_generator is not None
    second = Pipeline(backbone, None, preset)
    seen, handle = first_inputs(backbone)
    try:
        rest = [ev.frames for ev in second.run(req, resume=restored) if isinstance(ev, SectionDone)]
    finally:
        handle.remove()
    assert torch.equal(seen[0], uninterrupted["noise"][1])  # section 1's noise: the video's second draw
    frames = done + rest
    assert len(frames) == len(uninterrupted["frames"]) == 3
    assert all(np.array_equal(a, b) for a, b in zip(frames, uninterrupted["frames"]))


def test_a_checkpoint_without_the_generator_goes_on_per_section(preset, backbone) -> None:
    """A job folder from before videos drew their noise this way keeps the noise it began with."""
    pipe = Pipeline(backbone, None, preset)
    gen, _ = pipe.start(request(3))
    gen.next_section = 1  # as restored from such a folder: no generator state
    assert video_noise_generator(gen, backbone) is None
    gen.next_section = 0  # a new video: the generator, seeded with the seed
    g = video_noise_generator(gen, backbone)
    assert torch.equal(g.get_state(), torch.Generator("cpu").manual_seed(SEED).get_state())


def test_extending_a_finished_job_continues_its_generator(preset, backbone, uninterrupted, tmp_path) -> None:
    """Extend links the old job's chunks: the new sections draw what an uninterrupted longer video draws."""
    from framepack_history.jobs.extend import extend_job

    old = JobDir(tmp_path / "old")
    req = request(2)
    old.create(req, preset, out=tmp_path / "old.mp4")
    pipe = Pipeline(backbone, None, preset)
    for _ in pipe.run(req):
        pass
    old.save_section(pipe.last_generation, [], [], 0)
    old.set_status("done")
    new = JobDir(tmp_path / "new")
    extend_job(old, new, req.prompt, 0.6, out=tmp_path / "new.mp4", segments_dir=new.root / "segments")
    assert new.checkpoint()["total_sections"] == 3
    gen, _ = new.restore(Pipeline(backbone, None, preset))
    rnd = torch.Generator("cpu").manual_seed(SEED)
    shape = pipe.latent_shape(gen)
    for _ in range(2):
        torch.randn(shape, generator=rnd)
    assert torch.equal(gen.noise_generator.get_state(), rnd.get_state())
    more = Pipeline(backbone, None, preset)
    for _ in more.run(gen.request, resume=gen):
        pass
    assert torch.equal(more.last_generation.history.latents, uninterrupted["latents"])
