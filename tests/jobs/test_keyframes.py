"""Keyframes at admission (read, hashed, copied into the job folder), in the sidecar, and across resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.jobs.admission import admit_request, check_kept_keyframes, keep_inputs
from framepack_history.jobs.checkpoint import JobDir
from framepack_history.jobs.render import keyframe_entries
from framepack_history.lora.files import sha256
from tests.conftest import TINY_TOY


def _png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    return {"door": _png(tmp_path / "door.png", 1), "garden": _png(tmp_path / "garden.png", 2), "broken": bad,
            "start": _png(tmp_path / "start.png", 3)}


def test_admission_reads_hashes_and_keeps_each_keyframe(images, tmp_path):
    preset = load_preset(TINY_TOY)
    request = GenerationRequest(prompt=f"0s: [{images['start']}] she waits; 1s: [{images['door']}] the door opens",
                                seconds=2, keyframes=[{"time": 2, "image": str(images["garden"])}])
    admit_request(request, preset)
    assert request.image == str(images["start"]) and request.prompt == "0s: she waits; 1s: the door opens"
    assert [kf["sha256"] for kf in request.keyframes] == [sha256(images["door"]), sha256(images["garden"])]
    keep_inputs(request, tmp_path / "job" / "inputs")
    kept = [Path(kf["image"]) for kf in request.keyframes]
    assert [p.name for p in kept] == ["keyframe_0.png", "keyframe_1.png"]
    assert kept[0].read_bytes() == images["door"].read_bytes() and kept[1].read_bytes() == images["garden"].read_bytes()
    assert keyframe_entries(request.keyframes) == [
        {"time": 1.0, "file": "door.png", "sha256": sha256(images["door"])},
        {"time": 2.0, "file": "garden.png", "sha256": sha256(images["garden"])}]

    # resume: the job folder's request round-trips with its keyframes (the copies), and they are checked
    job = JobDir(tmp_path / "job")
    job.create(request, preset, out=tmp_path / "video.mp4")
    again = job.info().request
    assert again.keyframes == request.keyframes and again.prompt == request.prompt
    again.validate(preset)  # a resumed request passes the same checks unchanged
    assert again.keyframes == request.keyframes
    check_kept_keyframes(again)
    kept[1].write_bytes(images["door"].read_bytes())
    with pytest.raises(InputError, match=r"keyframe at 2s \(\[garden.png\]\): its copy keyframe_1.png .* has changed"):
        check_kept_keyframes(again)


@pytest.mark.parametrize("where", ["storyboard", "list"])
def test_an_unreadable_keyframe_is_refused_at_submit_naming_its_entry(images, where):
    preset = load_preset(TINY_TOY)
    if where == "storyboard":
        request = GenerationRequest(prompt=f"0s: a; 1s: [{images['broken']}] b", seconds=2)
    else:
        request = GenerationRequest(prompt="a", seconds=2, keyframes=[{"time": 1, "image": str(images["broken"])}])
    with pytest.raises(InputError) as e:
        admit_request(request, preset)
    assert e.value.field == ("--prompt" if where == "storyboard" else "--keyframe")
    assert e.value.message.startswith("keyframe at 1s ([broken.png]): broken.png is not a readable image")
    missing = GenerationRequest(prompt="a", seconds=2, keyframes=[{"time": 1, "image": str(images["door"]) + ".gone"}])
    with pytest.raises(InputError, match=r"keyframe at 1s \(\[door.png.gone\]\): no such file"):
        admit_request(missing, preset)


def test_a_copy_of_a_request_keeps_its_keyframes(images):
    """Steering and extending validate a changed copy: the job's keyframes go with it."""
    preset = load_preset(TINY_TOY)
    request = GenerationRequest(prompt="a", seconds=2, keyframes=[{"time": 1, "image": str(images["door"])}])
    admit_request(request, preset)
    steered = dataclasses.replace(request, prompt="0s: b; 1s: c")
    steered.validate(preset)
    assert steered.keyframes == request.keyframes


def test_a_storyboard_edit_keeps_the_jobs_keyframes_and_cannot_add_one(images, tmp_path):
    from framepack_history.jobs.store import JobSpec
    from framepack_history.jobs.worker import Worker

    worker = Worker(tmp_path / "outputs", jobs_dir=tmp_path / "jobs")  # not started: the job stays queued
    request = GenerationRequest(prompt="a", seconds=2, keyframes=[{"time": 1, "image": str(images["door"])}])
    job = worker.submit(JobSpec(request, str(TINY_TOY)))
    with pytest.raises(InputError, match=r"keyframe at 1.5s \(\[garden.png\]\): a storyboard edit cannot add keyframes"):
        worker.steer(job.id, f"0s: b; 1.5s: [{images['garden']}] c")
    worker.steer(job.id, "0s: b; 1.5s: c")
    assert job.steer_pending == "0s: b; 1.5s: c" and job.spec.request.keyframes[0]["time"] == 1.0


def test_a_keyframed_job_crashed_and_resumed_from_its_folder_is_frame_identical(toy_pipeline, images, tmp_path):
    """The job folder's request (its keyframes the kept copies) resumes to the frames of an uninterrupted run."""
    import torch

    from framepack_history.jobs.render import render
    from tests.jobs.test_checkpoint import CrashingJobDir, _Crash, decoded

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adaLN-zero: a fresh tiny DiT reads no context; perturbed, the keyframes change the frames
        for p in toy_pipeline.backbone.dit.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)

    def admitted() -> GenerationRequest:
        r = GenerationRequest(prompt=f"0s: camera pans left; 1s: [{images['door']}] camera holds", seconds=2, seed=5,
                              steps=1, keyframes=[{"time": 2, "image": str(images["garden"])}])
        admit_request(r, toy_pipeline.preset)
        return r

    straight = admitted()
    render(toy_pipeline, straight, tmp_path / "straight.mp4", tmp_path / "seg-a")
    plain = GenerationRequest(prompt="0s: camera pans left; 1s: camera holds", seconds=2, seed=5, steps=1)
    render(toy_pipeline, plain, tmp_path / "plain.mp4", tmp_path / "seg-p")
    assert not np.array_equal(decoded(tmp_path / "plain.mp4"), decoded(tmp_path / "straight.mp4"))  # they count
    request = admitted()
    job = CrashingJobDir(tmp_path / "job", "before_cleanup", section=2)
    keep_inputs(request, job.root / "inputs")
    job.create(request, toy_pipeline.preset, out=tmp_path / "resumed.mp4")
    with pytest.raises(_Crash):
        render(toy_pipeline, request, tmp_path / "resumed.mp4", job.root / "segments", job=job)
    for kf in (images["door"], images["garden"]):  # the uploads are gone: the job folder's copies must serve
        Path(kf).unlink()
    kept = JobDir(job.root).info().request
    check_kept_keyframes(kept)
    data = render(toy_pipeline, kept, tmp_path / "resumed.mp4", job.root / "segments", job=JobDir(job.root))
    assert [(e["time"], e["file"]) for e in data["keyframes"]] == [(1.0, "door.png"), (2.0, "garden.png")]
    assert np.array_equal(decoded(tmp_path / "resumed.mp4"), decoded(tmp_path / "straight.mp4"))
