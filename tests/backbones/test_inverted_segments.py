"""FramePack's original model's loop with keyframes (segments), a storyboard, and a video continued toward an end image.

The tiny random FramePack of test_inverted_parity (hub layout, ``model.loop = "inverted"``), two steps a
section. Every transformer call's inputs are recorded, so the anchors each section sees are asserted, not inferred.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.continuation import cut, encode_clip
from framepack_history.generation.segments import END, Segment, segments
from framepack_history.generation.loading import load_backbone
from framepack_history.generation.pipeline import ContextFrames, Pipeline, SectionDone, SectionStarted, to_pixels, to_uint8
from framepack_history.generation.video import read_image, read_video, write_segment
from tests.backbones.tiny_framepack import recorder, save_image, save_tiny

SIZE, STEPS = 64, 2
STRENGTH = 0.5
#: 3 sections of 1.2 s; the keyframe at 1.2 s cuts them into segments of 1 and 2 sections
SECONDS, KEY_T = 3.6, 1.2
BOARD = "0s: a red fox runs through snow; 2.4s: a grey cat sits on a wall"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("segments")
    return {"root": root, "preset": load_preset(save_tiny(root, SIZE, STEPS, loop="inverted")),
            "image": save_image(root / "start.png", SIZE, 0), "end": save_image(root / "end.png", SIZE, 1),
            "key": save_image(root / "door.png", SIZE, 2)}


@pytest.fixture(scope="module")
def backbone(folders):
    return load_backbone(folders["preset"].model, "cpu", "float32")


def _request(folders, **kw) -> GenerationRequest:
    args = dict(prompt=BOARD, seconds=SECONDS, seed=7, image=folders["image"], end_image=folders["end"],
                end_frame_strength=STRENGTH, keyframes=[{"time": KEY_T, "image": folders["key"]}])
    return GenerationRequest(**{**args, **kw})


def _recorded(pipe: Pipeline, request: GenerationRequest, **kw) -> tuple[list, list[dict]]:
    calls: list[dict] = []
    handle = pipe.backbone.transformer.register_forward_pre_hook(recorder(calls), with_kwargs=True)
    try:
        events = list(pipe.run(request, **kw))
    finally:
        handle.remove()
    return events, calls


def _image(backbone, path: str) -> dict:
    """The image's latent and SigLIP embedding, as the loop encodes them."""
    frame = read_image(path, SIZE, SIZE)[None]
    with torch.no_grad():
        return backbone.encode_image(to_pixels(frame)[0, :, 0]).tensors


@pytest.fixture(scope="module")
def keyed(folders, backbone, tmp_path_factory) -> dict:
    """One keyframed job rendered to files, its events and transformer calls recorded on the way, and a checkpoint
    of it taken after segment 1's first section (the resume test's starting point: no second run to get there)."""
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.render import render

    pipe = Pipeline(backbone, None, folders["preset"])
    events: list = []
    calls: list[dict] = []
    run = pipe.run
    out, written = tmp_path_factory.mktemp("keyed"), []
    job = JobDir(out / "job")
    job.create(_request(folders), folders["preset"], out=out / "resumed.mp4")
    held: list[bool] = []

    def teed(*args, **kw):
        for ev in run(*args, **kw):
            events.append(ev)
            if isinstance(ev, SectionDone) and ev.index == 1:  # as a job's checkpoint after that section would be
                held.append(pipe.last_generation.held is not None)
                job.save_section(pipe.last_generation, [], [], 0)
            yield ev

    pipe.run = teed  # this pipeline's own run, its events kept
    handle = backbone.transformer.register_forward_pre_hook(recorder(calls), with_kwargs=True)
    try:
        data = render(pipe, _request(folders), out / "v.mp4", out / "segments", on_segment=written.append)
    finally:
        handle.remove()
    return {"pipe": pipe, "events": events, "calls": calls, "gen": pipe.last_generation, "data": data,
            "written": written, "mp4": out / "v.mp4", "job": job, "held": held}


def test_keyframe_times_round_to_section_boundaries_and_empty_segments_are_refused(folders, backbone) -> None:
    video = folders["preset"].video  # 36 frames at 30 fps: 1.2 s sections

    def cut_at(*times, end=None, total=4):
        keys = [{"time": t, "image": f"k{i}.png"} for i, t in enumerate(times)]
        return segments(GenerationRequest(prompt="p", end_image=end, keyframes=keys), total, video)

    assert cut_at() == [Segment(0, 4, None)]
    assert cut_at(1.7, end="e.png") == [Segment(0, 1, 0), Segment(1, 3, END)]  # 1.42 sections: boundary 1
    assert cut_at(1.9, 3.6) == [Segment(0, 2, 0), Segment(2, 1, 1), Segment(3, 1, None)]  # 1.58 -> 2, 3
    assert cut_at(1.8, 4.2) == [Segment(0, 2, 0), Segment(2, 2, 1)]  # halves to even: 1.5 -> 2, 3.5 -> 4 (the end)
    assert cut_at(4.8) == [Segment(0, 4, 0)]  # at the video's end with no end image: the keyframe is its end
    with pytest.raises(InputError, match=r"keyframe at 0.5s \(\[k0.png\]\).*rounds to the video's start"):
        cut_at(0.5)
    with pytest.raises(InputError, match=r"keyframe at 1.5s \(\[k1.png\]\).*rounds to 1.2s, as the keyframe before"):
        cut_at(1.3, 1.5)
    with pytest.raises(InputError, match=r"keyframe at 4.5s \(\[k0.png\]\).*the video's end \(4.8s\), where the end image"):
        cut_at(4.5, end="e.png")
    loop = Pipeline(backbone, None, folders["preset"]).loop  # the start's check, before any file is read
    with pytest.raises(InputError, match=r"keyframe at 1.5s \(\[b.png\]\)") as refused:
        loop.check(GenerationRequest(prompt="p", seconds=4.8, keyframes=[{"time": 1.3, "image": "a.png"},
                                                                         {"time": 1.5, "image": "b.png"}]), "window", [])
    assert refused.value.field == "--keyframe"
    from framepack_history.jobs.admission import admit_request

    with pytest.raises(InputError, match=r"keyframe at 0.4s \(\[door.png\]\).*rounds to the video's start") as refused:
        admit_request(GenerationRequest(prompt="0s: a fox; 0.4s: [door.png] a door", seconds=3.6,
                                        image=folders["image"]), folders["preset"])  # at submit, nothing queued
    assert refused.value.field == "--prompt"


def test_segments_run_in_time_order_each_drawn_from_its_end(keyed) -> None:
    """Generation order 0, 2, 1 in time; prompts by each section's own time; frames sent per segment."""
    pipe, gen = keyed["pipe"], keyed["gen"]
    started = [ev for ev in keyed["events"] if isinstance(ev, SectionStarted)]
    assert [pipe.loop.time_index(gen, ev.index) for ev in started] == [0, 2, 1]
    assert [ev.prompt.split()[2] for ev in started] == ["fox", "cat", "fox"]
    calls = keyed["calls"]
    assert len(calls) == 3 * STEPS
    text = [calls[k * STEPS]["pooled_projections"] for k in range(3)]  # (the tiny LLaMA's are cropped away)
    assert torch.equal(text[0], text[2]) and not torch.equal(text[0], text[1])
    done = [ev for ev in keyed["events"] if isinstance(ev, SectionDone)]
    assert [len(ev.frames) for ev in done] == [36, 0, 72]  # a segment reaches the stream when it is complete
    assert gen.history.num_frames == 1 + 3 * 9


def test_each_segment_is_anchored_at_its_start_and_its_end(folders, backbone, keyed) -> None:
    """Its first-generated section's 1x post latent is its end anchor x strength; its start latent is the segment
    before's last latent; its SigLIP embedding the average of the images at its two ends; its own padding."""
    calls, hist = keyed["calls"], keyed["gen"].history.latents
    start, key, end = (_image(backbone, folders[k]) for k in ("image", "key", "end"))
    first, second, third = (calls[k * STEPS] for k in range(3))
    # segment 0 (one section): start image at 0, itself at 1-9, the keyframe x strength right after it
    assert first["indices_latents"].tolist() == list(range(1, 10))
    assert torch.equal(first["latents_clean"][:, :, :1], start["start_latents"])
    assert torch.equal(first["latents_clean"][:, :, 1:], key["start_latents"] * STRENGTH)
    assert torch.allclose(first["image_embeds"], (start["image_embeds"] + key["image_embeds"]) / 2)
    # segment 1 (two sections), first generated: its start latent is segment 0's last latent, one section of padding
    last0 = hist[:, :, 9:10]
    assert second["indices_latents"].tolist() == list(range(10, 19))
    assert torch.equal(second["latents_clean"][:, :, :1], last0)
    assert torch.equal(second["latents_clean"][:, :, 1:], end["start_latents"] * STRENGTH)
    assert not second["latents_history_2x"].any() and not second["latents_history_4x"].any()  # nothing of segment 0
    assert torch.allclose(second["image_embeds"], (key["image_embeds"] + end["image_embeds"]) / 2)
    # then the section before it: touches the start latent, sees the section after it (not segment 0, not the end)
    s1 = hist[:, :, 10:19]
    assert third["indices_latents"].tolist() == list(range(1, 10))
    assert torch.equal(third["latents_clean"][:, :, :1], last0)
    assert torch.equal(third["latents_clean"][:, :, 1:], s1[:, :, :1])
    assert torch.equal(third["latents_history_4x"], torch.cat([s1[:, :, 3:], torch.zeros(*s1.shape[:2], 10, *s1.shape[3:])], 2))


def test_the_join_frame_is_sent_once(keyed) -> None:
    """Segment 1 is decoded from segment 0's last latent, whose frame (segment 0's last) it drops: 36 frames a
    section, the video 1 + 108 frames."""
    pipe, gen = keyed["pipe"], keyed["gen"]
    hist = gen.history.latents
    done = [ev.frames for ev in keyed["events"] if isinstance(ev, SectionDone)]
    seg0 = pipe.loop.replay(gen.history, 1, 1, 1)
    seg1 = pipe.loop.replay(gen.history, 2, 2, 10, before=hist[:, :, 9:10])
    assert seg0.shape[2] == 1 + 36 and seg1.shape[2] == 1 + 72  # each decode starts with its start frame
    assert np.array_equal(done[0], seg0.frames()[1:]) and np.array_equal(done[2], seg1.frames()[1:])
    float1 = pipe.loop.replay(gen.history, 2, 2, 10, before=hist[:, :, 9:10], all_float=True)
    assert float1.final == [] and np.array_equal(seg1.frames(), to_uint8(float1.head[0]))
    assert 1 + sum(len(f) for f in done) == 1 + 36 * 3


def test_a_segmented_job_resumed_mid_segment_sends_the_same_frames(folders, backbone, keyed) -> None:
    """Checkpoint after segment 1's first section (its held decode is not kept), restore, finish: same frames."""
    assert keyed["held"] == [True]  # the checkpoint was taken while segment 1's decode was held back
    restored, _ = keyed["job"].restore(Pipeline(backbone, None, folders["preset"]))
    assert restored.held is None and restored.next_section == 2
    again = Pipeline(backbone, None, folders["preset"])
    events, calls = _recorded(again, restored.request, resume=restored)
    rest = [ev.frames for ev in events if isinstance(ev, SectionDone)]
    expected = [ev.frames for ev in keyed["events"] if isinstance(ev, SectionDone)]
    assert len(rest) == 1 and np.array_equal(rest[0], expected[-1])
    assert all(torch.equal(a[k], b[k]) for a, b in zip(calls, keyed["calls"][2 * STEPS:])
               for k in ("latents_clean", "image_embeds", "latents_history_4x"))


def test_render_writes_a_segment_per_keyframed_segment(keyed) -> None:
    """The job's files: the start image, then one H.264 segment per finished segment; 109 frames in all."""
    assert [p.name for p in keyed["written"]] == ["context.mp4", "section_00000.mp4", "section_00002.mp4"]
    assert [s["frames"] for s in keyed["data"]["sections"]] == [36, 0, 72] and keyed["data"]["frames"] == 109
    assert len(read_video(str(keyed["mp4"]), SIZE, SIZE, 30, 1000)) == 109


@pytest.fixture(scope="module")
def clip(folders) -> str:
    """13 frames (1 + 4 * 3: a causal VAE's whole groups) of blocks drifting right."""
    base = read_image(folders["image"], SIZE, SIZE)
    frames = np.stack([np.roll(base, 2 * k, axis=1) for k in range(13)])
    return str(write_segment(frames, folders["root"] / "clip.mp4", 30))


def test_a_video_continued_toward_an_end_image(folders, backbone, clip) -> None:
    """The clip's last latent is the start latent (the only one encoded), its last frame the SigLIP image averaged
    with the end image's; the end image anchors the end; the clip, then the new frames."""
    pipe = Pipeline(backbone, None, folders["preset"])
    request = GenerationRequest(prompt=BOARD, seconds=2.4, seed=3, continue_video=clip, end_image=folders["end"])
    events, calls = _recorded(pipe, request)
    frames = cut(backbone, read_video(clip, SIZE, SIZE, 30, 1000))
    assert isinstance(events[0], ContextFrames) and np.array_equal(events[0].frames, frames)
    assert [len(ev.frames) for ev in events if isinstance(ev, SectionDone)] == [0, 72]
    hist = pipe.last_generation.history.latents
    assert hist.shape[2] == 1 + 2 * 9  # one latent of the clip: all this loop reads of the past
    assert torch.equal(hist[:, :, :1], encode_clip(backbone, frames)[:, :, -1:])
    end = _image(backbone, folders["end"])
    with torch.no_grad():
        last = backbone.encode_image(to_pixels(frames[-1:])[0, :, 0]).tensors
    for c in calls:
        assert torch.equal(c["latents_clean"][:, :, :1], hist[:, :, :1])
        assert torch.allclose(c["image_embeds"], (last["image_embeds"] + end["image_embeds"]) / 2)
    assert torch.equal(calls[0]["latents_clean"][:, :, 1:], end["start_latents"])
    # with no end image it goes on from the clip's last frame the same way, its end free
    gen, _ = pipe.start(replace(request, end_image=None))
    cond = pipe.loop.conditioning(gen)
    assert torch.equal(cond.tensors["start_latents"], hist[:, :, :1]) and "end_latents" not in cond.tensors
    assert not pipe.loop.context(gen, "window", pipe.latent_shape(gen)).post_latents.any()


def test_the_plan_encodes_only_the_clips_last_latent_on_the_original_model() -> None:
    """The planner's vae_encode row follows the loop: one chunk for the inverted loop, F1's 19 latents forward."""
    from framepack_history.memory.planner import plan

    preset = load_preset("tests/presets/tiny-hunyuan.toml")
    rows = {}
    for loop in ("forward", "inverted"):
        p = plan(replace(preset, model=replace(preset.model, loop=loop)), 2.4, history_mode="window",
                 continue_frames=240)
        rows[loop] = next(r for r in p if r.phase == "vae_encode")
    assert "53 frames a call" in rows["forward"].strategy and "9 frames a call" in rows["inverted"].strategy
    assert rows["inverted"].device_peak_bytes < rows["forward"].device_peak_bytes


def test_a_held_segment_keeps_only_the_blended_frames_float_and_a_cancel_writes_it_all(tmp_path) -> None:
    """The held video's head stays float (the next blend reads it), the rest is final as 8 bits: the same bytes
    as converting at the end; a cancelled job's held segment is written whole."""
    from types import SimpleNamespace

    from framepack_history.generation.overlap import HeldSegment
    from framepack_history.jobs.render import SegmentLog, _flush_held

    video = torch.rand(1, 3, 9, 8, 8) * 2 - 1
    held = HeldSegment.split(video[:, :, 4:], 2)
    held = HeldSegment.split(torch.cat([video[:, :, :4], held.head], 2), 3, held.final)
    assert held.head.shape[2] == 3 and [len(f) for f in held.final] == [3, 3] and held.shape == video.shape
    assert np.array_equal(held.frames(), to_uint8(video[0]))
    taken = HeldSegment(held.head, list(held.final))
    assert np.array_equal(taken.take(), to_uint8(video[0])) and taken.final == []  # let go of as it is copied
    log = SegmentLog(tmp_path, fps=30)
    gen = SimpleNamespace(held=held, next_section=2)
    _flush_held(SimpleNamespace(last_generation=gen), log, None)
    assert gen.held is None and log.frames == 9 and log.segments[0].name == "section_00001_tail.mp4"
