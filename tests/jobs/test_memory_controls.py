"""Memory controls on a tiny seeded toy: refusals naming the entry, cut, borrow, the sidecar and resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from framepack_history.cli.main import _request, build_parser
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.jobs.admission import admit_request
from framepack_history.jobs.borrow import borrowed_history, history_sha256
from framepack_history.jobs.checkpoint import JobDir
from framepack_history.jobs.render import render
from tests.conftest import TINY_TOY

GROUP_TOKENS = 16  # the tiny toy at 32x32, rate 2x2x2: 16 tokens per group, 2 latent frames per group, 4 groups a second


def _perturb(pipeline) -> None:
    """adaLN-zero: a fresh tiny DiT reads no context; perturbed (seeded), the context changes the frames."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipeline.backbone.dit.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


# ----------------------------------------------------------------- refusals
@pytest.mark.parametrize("memory, field, message", [
    ([{"op": "pin", "start": 3, "end": 1}], "--pin", "pin 3s-1s: the range is reversed"),
    ([{"op": "forget", "start": 1, "end": 9}], "--forget", "forget 1s-9s: outside the video (0 to 4s)"),
    ([{"op": "pin", "start": 0, "end": 2}, {"op": "forget", "start": 1, "end": 3}], "--forget",
     "forget 1s-3s: overlaps pin 0s-2s"),
    ([{"op": "cut", "time": 0}], "--cut", "cut at 0s: a cut at the start"),
    ([{"op": "cut", "time": 4}], "--cut", "cut at 4s: past the last section's start"),
    ([{"op": "cut", "time": 1}, {"op": "cut", "time": 1.1}], "--cut", "cut at 1.1s: falls on the same section (2) as cut at 1s"),
    ([{"op": "trim", "start": 0, "end": 1}], "--memory", "entry 1 must be"),
    ([{"op": "pin", "start": "a", "end": 1}], "--pin", "pin 'a'-1s: start must be a number"),
    ([{"op": "cut", "time": 1, "end": 2}], "--cut", "cut at 1s: a cut entry has exactly the keys op, time"),
])
def test_bad_memory_entries_are_refused_naming_the_entry(memory, field, message):
    with pytest.raises(InputError) as e:
        GenerationRequest(prompt="a", seconds=4, memory=memory).validate(load_preset(TINY_TOY))
    assert e.value.field == field and e.value.message.startswith(message), e.value


def test_pins_forgets_and_borrowing_need_history_tokens():
    preset = load_preset(TINY_TOY)
    with pytest.raises(InputError, match="pin 1s-2s: needs history mode 'encoder'"):
        GenerationRequest(prompt="a", seconds=4, history_mode="window",
                          memory=[{"op": "pin", "start": 1, "end": 2}]).validate(preset)
    with pytest.raises(InputError, match="needs history mode 'encoder'") as e:
        GenerationRequest(prompt="a", seconds=4, history_mode="none", borrow="some-job").validate(preset)
    assert e.value.field == "--borrow"
    # a cut needs no history tokens: it is about the window
    GenerationRequest(prompt="a", seconds=4, history_mode="window", memory=[{"op": "cut", "time": 2}]).validate(preset)


def test_pins_the_cap_cannot_keep_are_refused_at_admission():
    preset = load_preset(TINY_TOY)
    cap = 9 * GROUP_TOKENS  # 8 groups, 4 of them for recent history
    with pytest.raises(InputError, match=r"pin 0s-3s: the pins hold up to 15 token groups") as e:
        admit_request(GenerationRequest(prompt="a", seconds=4, max_history_tokens=cap,
                                        memory=[{"op": "pin", "start": 0, "end": 3}]), preset)
    assert e.value.field == "--pin"
    admit_request(GenerationRequest(prompt="a", seconds=4, max_history_tokens=cap,
                                    memory=[{"op": "pin", "start": 0, "end": 0.25}]), preset)
    # uncapped, nothing merges: any pin is kept
    admit_request(GenerationRequest(prompt="a", seconds=4, memory=[{"op": "pin", "start": 0, "end": 3}]), preset)


def test_the_command_line_flags_make_one_list_in_order():
    args = build_parser().parse_args(["generate", "--pin", "1:2", "--cut", "3", "--forget", "2.5-3s", "--borrow", "job-1",
                                      "--memory", "pin 4:5; cut 6"])
    request = _request(args)
    assert request.memory == [{"op": "pin", "start": 1.0, "end": 2.0}, {"op": "cut", "time": 3.0},
                              {"op": "forget", "start": 2.5, "end": 3.0}, {"op": "pin", "start": 4.0, "end": 5.0},
                              {"op": "cut", "time": 6.0}]
    assert request.borrow == "job-1"
    with pytest.raises(InputError, match="'12' is not START:END") as e:
        _request(build_parser().parse_args(["generate", "--pin", "12"]))
    assert e.value.field == "--pin"


def test_storyboard_cut_marks_become_cut_entries(tmp_path):
    from framepack_history.jobs.admission import refuse_new_cuts

    preset = load_preset(TINY_TOY)  # sections of 0.5 s
    door = tmp_path / "door.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 40, 90)).save(door)
    r = GenerationRequest(prompt=f"0s: [cinematic] camera pans right; 1s: [cut] [{door}] camera holds; 1.5s: [CUT]",
                          seconds=2, memory=[{"op": "pin", "start": 0, "end": 0.5}])
    r.validate(preset)
    assert r.prompt == "0s: [cinematic] camera pans right; 1s: camera holds"
    assert r.memory == [{"op": "pin", "start": 0, "end": 0.5}, {"op": "cut", "time": 1.0}, {"op": "cut", "time": 1.5}]
    assert [kf["time"] for kf in r.keyframes] == [1.0]
    r.validate(preset)  # run again (admission, then the pipeline): the same request
    assert len(r.memory) == 3 and r.prompt == "0s: [cinematic] camera pans right; 1s: camera holds"
    with pytest.raises(InputError, match=r"storyboard entry at cut at 2s: past the last section's start") as e:
        GenerationRequest(prompt="0s: a; 2s: [cut] b", seconds=2).validate(preset)
    assert e.value.field == "--prompt"
    with pytest.raises(InputError, match="a storyboard edit cannot add a cut") as e:
        refuse_new_cuts("0s: a; 1s: [cut] b", "a storyboard edit")
    assert e.value.field == "--prompt"
    refuse_new_cuts("0s: [cinematic] a", "a storyboard edit")


# --------------------------------------------------------------------- cut
def test_a_cut_empties_the_window_at_its_section_only(toy_pipeline):
    request = GenerationRequest(prompt="camera pans right", seconds=2, seed=1, steps=1, window_frames=2,
                                memory=[{"op": "cut", "time": 1}])
    gen, _ = toy_pipeline.start(request)
    seen = []
    while gen.next_section < gen.total_sections:
        ctx = toy_pipeline.context(gen)
        window = None if ctx.window_latents is None else ctx.window_latents.shape[2]
        seen.append((window, ctx.history_tokens is not None and ctx.history_tokens.shape[1]))
        if gen.next_section == 3:  # after the cut: only the new shot's frames
            assert torch.equal(ctx.window_latents.cpu(), gen.history.latents[:, :, -2:].to(ctx.window_latents.dtype))
        toy_pipeline.generate_section(gen)
    # the start latent, then two frames of the window; none at the cut; the history tokens every time
    assert [w for w, _ in seen] == [1, 2, None, 2]
    assert all(n for _, n in seen) and seen[2][1] > seen[1][1]


# ------------------------------------------------------------------ borrow
def _finished(pipeline, tmp_path: Path, name: str, **kw) -> JobDir:
    request = GenerationRequest(prompt="camera pans right", seconds=1, seed=3, steps=1, **kw)
    admit_request(request, pipeline.preset)
    job = JobDir(tmp_path / name)
    job.create(request, pipeline.preset, out=tmp_path / f"{name}.mp4")
    render(pipeline, request, tmp_path / f"{name}.mp4", job.root / "segments", job=job)
    return job


def test_borrow_prepends_the_finished_jobs_history_encoded(toy_pipeline, tmp_path):
    src = _finished(toy_pipeline, tmp_path, "source")
    made = toy_pipeline.last_generation.history
    lat, track = borrowed_history(src.root)
    assert torch.equal(lat, made.latents) and torch.equal(track, made.frame_context)

    request = GenerationRequest(prompt="camera pans left", seconds=1, seed=4, steps=1, window_frames=2, borrow=str(src.root))
    admit_request(request, toy_pipeline.preset)
    assert request.borrow == str(src.root)
    gen, _ = toy_pipeline.start(request, (lat, track))
    n, g = int(lat.shape[2]), toy_pipeline.encoder.frames_per_group
    assert gen.borrowed_frames == n and torch.equal(gen.history.latents[:, :, :n], lat)
    with torch.no_grad():
        once = toy_pipeline.encoder(lat.to(toy_pipeline.encoder.dtype))
    torch.testing.assert_close(gen.history.grid[:, : n // g], once[:, : n // g], atol=1e-5, rtol=1e-5)
    tokens, pos = gen.history.tokens()
    borrowed = n // g * GROUP_TOKENS
    assert pos[:borrowed, 0].max() < pos[-GROUP_TOKENS:, 0].min() < 0  # the borrowed past, then the new video's
    plain, _ = toy_pipeline.start(dataclasses.replace(request, borrow=None))
    assert tokens.shape[1] > plain.history.tokens()[0].shape[1]
    # the window reads only the new video's own frames (its start latent), never the borrowed video's
    ctx = toy_pipeline.context(gen)
    assert ctx.window_latents.shape[2] == 1
    assert torch.equal(ctx.window_latents.cpu(), gen.history.latents[:, :, n:].to(ctx.window_latents.dtype))


def test_borrowing_an_unfinished_missing_or_unlike_job_is_refused(toy_pipeline, tmp_path):
    preset = toy_pipeline.preset
    queued = JobDir(tmp_path / "queued")
    queued.create(GenerationRequest(prompt="a", seconds=1), preset, out=tmp_path / "q.mp4")
    window = _finished(toy_pipeline, tmp_path, "window", history_mode="window")
    for folder, message in ((tmp_path / "nowhere", "is not a job folder"),
                            (queued.root, "job queued is queued, not finished"),
                            (window.root, "job window was made in history mode 'window'")):
        with pytest.raises(InputError, match=message) as e:
            admit_request(GenerationRequest(prompt="a", seconds=1, borrow=str(folder)), preset)
        assert e.value.field == "--borrow"
    other = dataclasses.replace(preset, name="another-toy")
    with pytest.raises(InputError, match="job window was made on preset") as e:
        admit_request(GenerationRequest(prompt="a", seconds=1, borrow=str(window.root)), other)
    # uncapped, the borrowed seconds count against what the preset's memory plan covers; a cap bounds them
    src = _finished(toy_pipeline, tmp_path, "lender")
    short = dataclasses.replace(preset, video=dataclasses.replace(preset.video, max_seconds=1.5))
    with pytest.raises(InputError, match=r"job lender's 1 s of history and this 1 s video make 2 s of uncapped "
                                         r"history, beyond the 1.5 s") as e:
        admit_request(GenerationRequest(prompt="a", seconds=1, max_history_tokens=0, borrow=str(src.root)), short)
    assert e.value.field == "--borrow"
    admit_request(GenerationRequest(prompt="a", seconds=1, max_history_tokens=9 * GROUP_TOKENS, borrow=str(src.root)),
                  short)


def test_memory_controls_and_a_borrowed_history_resume_bit_for_bit(toy_pipeline, tmp_path):
    """Pin, forget, cut and borrow in a capped job: crashed after section 3 of 5, resumed, the same video."""
    from tests.jobs.test_checkpoint import CrashingJobDir, _Crash, decoded

    _perturb(toy_pipeline)
    src = _finished(toy_pipeline, tmp_path, "source")
    memory = [{"op": "pin", "start": 0, "end": 0.25}, {"op": "forget", "start": 1, "end": 1.5}, {"op": "cut", "time": 2}]

    def admitted(**kw) -> GenerationRequest:
        r = GenerationRequest(prompt="0s: camera pans left; 1.5s: camera pans right", seconds=2.5, seed=5, steps=1,
                              window_frames=2, max_history_tokens=9 * GROUP_TOKENS, **kw)
        admit_request(r, toy_pipeline.preset)
        return r

    straight = admitted(memory=memory, borrow=str(src.root))
    data = render(toy_pipeline, straight, tmp_path / "straight.mp4", tmp_path / "seg-a")
    hist = toy_pipeline.last_generation.history
    origin = toy_pipeline.last_generation.borrowed_frames + 1  # the borrowed history, then the start latent
    a, b = toy_pipeline.frames_at(0, origin), toy_pipeline.frames_at(0.25, origin, up=True)
    assert (a, b) == (origin, origin + 2) and hist.pins == [(a, b)]  # 0..0.25 s: 2 latent frames
    pinned = [s for s in hist._segs if s[0] * 2 < b and a < (s[0] + s[1]) * 2]
    assert pinned and all(s[1] == 1 for s in pinned) and any(s[1] > 1 for s in hist._segs)
    lat, track = borrowed_history(src.root)
    assert data["borrow"] == {"job": "source", "folder": str(src.root), "latent_frames": int(lat.shape[2]),
                              "sha256": history_sha256(lat, track)}
    assert data["request"]["memory"] == memory and data["request"]["borrow"] == str(src.root)
    # Reuse settings gives the controls back as the page's text and the borrowed job by its id
    from framepack_history.config.memory import parse_memory_text
    from framepack_history.ui.reuse import form_values
    from tests.conftest import TINY_TOY

    values, notes = form_values(tmp_path / "straight.json", [str(TINY_TOY)], str(TINY_TOY))
    assert values["memory"] == "pin 0:0.25; forget 1:1.5; cut 2" and parse_memory_text(values["memory"]) == memory
    assert values["borrow"] == "source" and any("memory of job source" in n for n in notes)
    render(toy_pipeline, admitted(), tmp_path / "plain.mp4", tmp_path / "seg-p")
    assert not np.array_equal(decoded(tmp_path / "plain.mp4"), decoded(tmp_path / "straight.mp4"))  # they count

    request = admitted(memory=memory, borrow=str(src.root))
    job = CrashingJobDir(tmp_path / "job", "before_cleanup", section=3)
    job.create(request, toy_pipeline.preset, out=tmp_path / "resumed.mp4")
    with pytest.raises(_Crash):
        render(toy_pipeline, request, tmp_path / "resumed.mp4", job.root / "segments", job=job)
    kept = JobDir(job.root).info().request
    assert kept.memory == memory and kept.borrow == str(src.root)
    again = render(toy_pipeline, kept, tmp_path / "resumed.mp4", job.root / "segments", job=JobDir(job.root))
    resumed = toy_pipeline.last_generation.history
    assert [s[:2] for s in resumed._segs] == [s[:2] for s in hist._segs]
    assert torch.equal(resumed.tokens()[0], hist.tokens()[0]) and torch.equal(resumed.tokens()[1], hist.tokens()[1])
    assert np.array_equal(decoded(tmp_path / "resumed.mp4"), decoded(tmp_path / "straight.mp4"))
    assert again["borrow"] == data["borrow"]
    # the memory inspector rebuilds the job's own layout (its pins set before the chunks load, else a merge the job
    # never made would lack its tokens) and shows the borrowed history before the video
    from framepack_history.jobs.recall import _recall

    seen = _recall(toy_pipeline, JobDir(job.root), 0.1, 1, 0)
    assert seen.layout[0][0] < 0 and seen.layout[-1][1] > 2.4


@pytest.mark.parametrize("context", [1, 33])
def test_the_inspector_places_a_borrowed_history_before_the_video(context):
    """A borrowed history's latents sit at negative times; the video's own keep the inspector's time map."""
    from types import SimpleNamespace

    from framepack_history.backbones.base import LatentGeometry
    from framepack_history.jobs.recall import frame_at, seconds_of

    geo = LatentGeometry(spatial_scale=8, temporal_scale=4, causal_first_frame=True, latent_channels=16,
                         patch_size=(1, 2, 2), hidden_size=64)
    pipe = SimpleNamespace(preset=SimpleNamespace(video=SimpleNamespace(fps=30, section_frames=36)),
                           section_latent_frames=9, backbone=SimpleNamespace(geometry=geo))
    lent = 20
    ck = {"next_section": 3, "context_frames": context, "borrowed_frames": lent}
    frames = lent + geo.latent_frames(context) + 27
    assert frame_at(pipe, ck, frames, 0)[0] == lent  # the video's first frame: its own start latent
    assert [seconds_of(pipe, ck, frames, f) < 0 for f in range(frames)] == [True] * lent + [False] * (frames - lent)
    for f in range(lent, frames):
        t = seconds_of(pipe, ck, frames, f)
        pos, _ = frame_at(pipe, ck, frames, t)
        assert pos >= f and (t == 0 or frame_at(pipe, ck, frames, t - 1 / 30)[0] < f), (f, t, pos)


def test_clients_borrow_by_id_only_the_jobs_they_may_see(toy_pipeline, tmp_path):
    """The worker turns a job id into its folder; the page and the API refuse a path and another user's job alike."""
    from framepack_history.jobs.store import JobSpec
    from framepack_history.jobs.studio import Studio
    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.handlers import Handlers

    jobs = tmp_path / "jobs"
    src = JobDir(jobs / "src-job")
    request = GenerationRequest(prompt="camera pans right", seconds=1, seed=3, steps=1)
    admit_request(request, toy_pipeline.preset)
    src.create(request, toy_pipeline.preset, out=tmp_path / "src.mp4", owner="ann")
    render(toy_pipeline, request, tmp_path / "src.mp4", src.root / "segments", job=src)
    worker = Worker(tmp_path / "outputs", max_queue=4, jobs_dir=jobs)  # not started: jobs stay queued
    job = worker.submit(JobSpec(GenerationRequest(prompt="a", seconds=1, borrow="src-job"), str(TINY_TOY), owner="ann"))
    assert job.spec.request.borrow == str(src.root)
    with pytest.raises(InputError, match="is not a job id") as e:
        worker.submit(JobSpec(GenerationRequest(prompt="a", seconds=1, borrow=str(src.root / "..")), str(TINY_TOY)))
    assert e.value.field == "--borrow"
    pages = Handlers(worker, str(TINY_TOY), [str(TINY_TOY)], temp_dir=tmp_path / "tmp",
                     studio=Studio.from_auth([("ann", "a"), ("bob", "b")]))
    pages._check_borrow(GenerationRequest(borrow="src-job"), "ann")
    for owner, given, message in (("bob", "src-job", "no job with id 'src-job'"), ("ann", str(src.root), "is not a job id")):
        with pytest.raises(InputError, match=message) as e:
            pages._check_borrow(GenerationRequest(borrow=given), owner)
        assert e.value.field == "--borrow"
