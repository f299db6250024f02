"""Creative control: prompt transitions, steering a running job, extending from memory, reusing settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framepack_history.backbones.base import Backbone, Conditioning
from framepack_history.config.request import GenerationRequest
from framepack_history.config.storyboard import parse_storyboard, prompt_at, prompt_weights
from framepack_history.errors import InputError
from framepack_history.generation.pipeline import SectionDone, SectionStarted

BLEND = "0s: camera pans left; 1s~1s: camera pans right"  # sections of 0.5 s: 1.5 s is halfway


def frames_of(pipeline, **kw) -> np.ndarray:
    return np.concatenate([e.frames for e in pipeline.run(GenerationRequest(**kw)) if isinstance(e, SectionDone)])


def perturb(backbone) -> None:
    """Random weights that read the text (a fresh tiny toy DiT barely does)."""
    with torch.no_grad():
        for p in backbone.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)


# ------------------------------------------------------------ prompt transitions
def test_blend_weights_are_linear_over_the_blend_time():
    board = parse_storyboard("0s: a; 12s~2s: she turns; 20s: c")
    assert board == [(0.0, "a"), (12.0, "she turns"), (20.0, "c")] and board[1].blend == 2.0
    assert prompt_weights(board, 11.9) == [("a", 1.0)] and prompt_weights(board, 12.0) == [("a", 1.0)]
    assert prompt_weights(board, 12.5) == [("a", 0.75), ("she turns", 0.25)]
    assert prompt_weights(board, 13.0) == [("a", 0.5), ("she turns", 0.5)]
    assert prompt_weights(board, 14.0) == [("she turns", 1.0)] and prompt_weights(board, 21) == [("c", 1.0)]
    assert prompt_at(board, 12.5) == "she turns"  # the entry in force (the toy's camera words) switches at its start


@pytest.mark.parametrize("text, names", [
    ("0s~2s: a; 5s: b", "'0s~2s: a' is the first"),
    ("0s: a; 2s~3s: b; 4s: c", "'2s~3s: b' blends until 5s, past the next entry at 4s"),
    ("0s: a; 2s~x: b", "'2s~x: b': malformed blend"),
    ("0s: a; 2s~: b", "'2s~: b': malformed blend"),
    ("0s: a; 2s~-1s: b", "'2s~-1s: b': malformed blend"),
])
def test_malformed_blends_name_the_entry(text, names):
    with pytest.raises(InputError, match="storyboard entry " + names.replace("(", r"\(")) as e:
        parse_storyboard(text)
    assert e.value.field == "--prompt"


def test_conditioning_halfway_through_a_blend_is_the_mean_of_the_two(toy_pipeline, monkeypatch):
    bb = toy_pipeline.backbone
    seen = {}
    predict = bb.predict

    def spy(noisy, sigma, cond, context, guidance=1.0):
        seen.setdefault(toy_pipeline.last_generation.next_section, cond)
        return predict(noisy, sigma, cond, context, guidance)

    monkeypatch.setattr(bb, "predict", spy)
    events = list(toy_pipeline.run(GenerationRequest(prompt=BLEND, seconds=2.5, seed=1)))
    left, right = (toy_pipeline.text(p).tensors for p in ("camera pans left", "camera pans right"))
    embed = bb.dit.embed_text
    halfway = seen[3].tensors  # section 3 starts at 1.5 s
    mean = (embed(left["text_ids"], left["text_mask"]) + embed(right["text_ids"], right["text_mask"])) / 2
    assert torch.allclose(halfway["text_embeds"], mean, atol=1e-6)
    assert torch.equal(halfway["text_mask"], left["text_mask"] | right["text_mask"])
    quarter = seen[2].tensors["text_ids"]  # 1.0 s: the blend starts at weight 0, the old prompt's own ids
    assert torch.equal(quarter, left["text_ids"]) and torch.equal(seen[4].tensors["text_ids"], right["text_ids"])
    started = [e for e in events if isinstance(e, SectionStarted)]
    assert started[3].prompt == "camera pans right" and started[3].blend == ("camera pans left", 0.5)
    assert started[2].blend is None and started[2].prompt == "camera pans left"


def test_embedded_text_predicts_as_the_token_ids_do(toy_pipeline):
    """A blend's end points are the prompts themselves: the toy's embedded path equals its token-id path."""
    bb = toy_pipeline.backbone
    perturb(bb)
    a, b = toy_pipeline.text("camera pans left"), toy_pipeline.text("camera holds")
    x, s = torch.randn(1, 4, 2, 16, 16), torch.tensor([0.7])
    from framepack_history.backbones.base import Context

    with torch.no_grad():
        ref = bb.predict(x, s, a, Context())
        end = bb.predict(x, s, bb.blend_text(b, a, 1.0), Context())
        mid = bb.predict(x, s, bb.blend_text(a, b, 0.5), Context())
    assert torch.allclose(ref, end, atol=1e-5) and (ref - mid).abs().max() > 1e-3


def test_generic_blend_interpolates_embeddings_and_joins_masks(toy_pipeline):
    """HunyuanVideo's conditioning (LLaMA states, a mask, CLIP pooled): the base class's blend."""
    a = Conditioning({"prompt_embeds": torch.zeros(1, 4, 3), "prompt_attention_mask": torch.tensor([[1, 1, 0, 0]]),
                      "pooled_prompt_embeds": torch.ones(1, 3)})
    b = Conditioning({"prompt_embeds": torch.full((1, 4, 3), 2.0), "prompt_attention_mask": torch.tensor([[1, 1, 1, 0]]),
                      "pooled_prompt_embeds": torch.full((1, 3), 3.0)})
    out = Backbone.blend_text(toy_pipeline.backbone, a, b, 0.5).tensors
    assert torch.equal(out["prompt_embeds"], torch.ones(1, 4, 3)) and torch.equal(out["pooled_prompt_embeds"], torch.full((1, 3), 2.0))
    assert out["prompt_attention_mask"].tolist() == [[1, 1, 1, 0]]
    with pytest.raises(ValueError, match="text_ids"):
        Backbone.blend_text(toy_pipeline.backbone, toy_pipeline.text("a"), toy_pipeline.text("b"), 0.5)


def test_no_blend_is_bitwise_what_it_was(toy_pipeline, monkeypatch):
    cut = "0s: camera pans left; 1s: camera pans right"
    perturb(toy_pipeline.backbone)
    now = frames_of(toy_pipeline, prompt=cut, seconds=2.5, seed=4)
    # before transitions, a section read the prompt in force at its start through the text cache
    monkeypatch.setattr(toy_pipeline, "text_at", lambda board, t: toy_pipeline.text(prompt_at(board, t)))
    before = frames_of(toy_pipeline, prompt=cut, seconds=2.5, seed=4)
    assert np.array_equal(now, before)
    monkeypatch.undo()
    blended = frames_of(toy_pipeline, prompt=BLEND, seconds=2.5, seed=4)
    per = 4  # frames per section
    assert np.array_equal(blended[: 2 * per], now[: 2 * per])  # before the blend starts at 1 s: the same
    assert not np.array_equal(blended[3 * per: 4 * per], now[3 * per: 4 * per])  # halfway: not


# ------------------------------------------------------------ steering
STEERED = "0s: camera pans right"


def test_a_steer_holds_through_a_kill_and_a_resume(toy_pipeline, tmp_path):
    """An edit taken before section 2 is in the job folder; the resumed job goes on with it."""
    import json

    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.render import render

    request = GenerationRequest(prompt="camera pans left", seconds=3, seed=5, steps=2)
    job = JobDir(tmp_path / "job")
    job.create(request, toy_pipeline.preset, out=tmp_path / "v.mp4")
    posted = iter([None, None, STEERED])  # asked before sections 0, 1, 2, ...

    def kill_after_section_3(ev) -> None:
        if isinstance(ev, SectionDone) and ev.index == 3:
            raise KeyboardInterrupt  # the process dies: the job folder says interrupted

    with pytest.raises(KeyboardInterrupt):
        render(toy_pipeline, request, tmp_path / "v.mp4", job.root / "segments", job=job,
               on_event=kill_after_section_3, pending_steer=lambda last: next(posted, None))
    assert job.status == "interrupted" and json.loads((job.root / "steers.json").read_text())["steers"][0]["section"] == 2
    data = render(toy_pipeline, request, tmp_path / "v.mp4", job.root / "segments", job=job)  # resume
    assert data["resumed_from_section"] == 4 and [s["section"] for s in data["steers"]] == [2]
    prompts = [s["prompt"] for s in data["sections"]]
    assert prompts == ["camera pans left"] * 2 + ["camera pans right"] * 4
    # the same as a job never interrupted that had the same edit at the same section
    posted = iter([None, None, STEERED])
    straight = render(toy_pipeline, request, tmp_path / "s.mp4", tmp_path / "seg", pending_steer=lambda last: next(posted, None))
    assert [s["prompt"] for s in straight["sections"]] == prompts
    from framepack_history.generation.video import read_video

    a = read_video(tmp_path / "v.mp4", 32, 32, 8, 1000)
    assert np.array_equal(a, read_video(tmp_path / "s.mp4", 32, 32, 8, 1000))


# ------------------------------------------------------------ extending
PANS = "0s: camera pans right; 2s: camera pans left"


def render_job(pipeline, root, request, out):
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.render import render

    job = JobDir(root)
    if not job.exists():
        job.create(request, pipeline.preset, out=out)
    sections = []
    data = render(pipeline, request, out, job.info().segments_dir, job=job,
                  on_event=lambda ev: sections.append(ev) if isinstance(ev, SectionDone) else None)
    return job, data, sections


def test_extend_continues_from_the_saved_history_as_a_longer_job_would(toy_pipeline, tmp_path, start_image):
    """Image-to-video (the toy's text-to-video start view depends on the length it must fit in the world)."""
    from framepack_history.generation.video import read_video
    from framepack_history.jobs.extend import extend_job

    perturb(toy_pipeline.backbone)
    old, _, _ = render_job(toy_pipeline, tmp_path / "old", GenerationRequest(prompt=PANS, seconds=1.5, seed=9, steps=2, image=str(start_image)),
                           tmp_path / "old.mp4")
    ck = old.checkpoint()
    assert ck["status"] == "done" and ck["chunks"] == 4  # the start state and 3 sections stay for Extend
    old_history = toy_pipeline.last_generation.history.latents.clone()

    new = type(old)(tmp_path / "new")
    request = extend_job(old, new, PANS, 1.5, out=tmp_path / "new.mp4", segments_dir=new.root / "segments")
    assert request.seconds == 3.0 and request.seed == 9
    _, data, sections = render_job(toy_pipeline, new.root, request, tmp_path / "new.mp4")
    extended = toy_pipeline.last_generation.history.latents

    straight = [e for e in toy_pipeline.run(GenerationRequest(prompt=PANS, seconds=3, seed=9, steps=2, image=str(start_image)))
                if isinstance(e, SectionDone)]
    longer = toy_pipeline.last_generation.history.latents
    assert [s.index for s in sections] == [3, 4, 5]
    assert np.array_equal(sections[0].frames, straight[3].frames)  # the first new section, frame for frame
    n = old_history.shape[2]
    assert torch.equal(extended[:, :, :n], old_history) and torch.equal(extended, longer)  # same latents throughout
    video = read_video(tmp_path / "new.mp4", 32, 32, 8, 1000)
    assert len(video) == 1 + 6 * 4 and np.array_equal(video[: 1 + 12], read_video(tmp_path / "old.mp4", 32, 32, 8, 1000))
    assert [s["index"] for s in data["sections"]] == list(range(6)) and data["resumed_from_section"] == 3

    # a new storyboard: the new sections follow it, the old ones stay as they were
    other = type(old)(tmp_path / "other")
    req2 = extend_job(old, other, "0s: camera holds", 1, out=tmp_path / "o.mp4", segments_dir=other.root / "segments")
    _, data2, _ = render_job(toy_pipeline, other.root, req2, tmp_path / "o.mp4")
    assert [s["prompt"] for s in data2["sections"]] == ["camera pans right"] * 3 + ["camera holds"] * 2


def test_what_cannot_be_extended_says_why(toy_pipeline, tmp_path):
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.extend import extend_job

    request = GenerationRequest(prompt="camera holds", seconds=1, seed=1, steps=1)
    old, _, _ = render_job(toy_pipeline, tmp_path / "old", request, tmp_path / "old.mp4")
    target = JobDir(tmp_path / "x")
    kw = {"out": tmp_path / "x.mp4", "segments_dir": tmp_path / "x" / "segments"}
    with pytest.raises(InputError, match="how much to add must be a number > 0"):
        extend_job(old, target, "camera holds", 0, **kw)
    with pytest.raises(InputError, match="over the preset's limit of 20 s"):
        extend_job(old, target, "camera holds", 30, **kw)
    with pytest.raises(InputError, match="storyboard times must increase"):
        extend_job(old, target, "3s: a; 1s: b", 1, **kw)
    assert not target.root.exists()  # nothing written
    cancelled = JobDir(tmp_path / "c")
    cancelled.create(request, toy_pipeline.preset, out=tmp_path / "c.mp4")
    with pytest.raises(InputError, match="is queued, not finished; resume it first"):
        extend_job(cancelled, target, "a", 1, **kw)
    import json

    ck = old.checkpoint()  # a job finished before finished jobs kept their history
    (old.root / "checkpoint.json").write_text(json.dumps({**ck, "chunks": 0, "cond": None}))
    with pytest.raises(InputError, match="has no saved history"):
        extend_job(old, target, "a", 1, **kw)


def test_cli_extend(tmp_path):
    import json

    from framepack_history.cli.main import main
    from tests.conftest import TINY_TOY

    job = tmp_path / "job"
    args = ["--preset", str(TINY_TOY), "--prompt", "camera pans left", "--seconds", "1", "--steps", "1", "--quiet"]
    assert main(["generate", *args, "--job-dir", str(job), "--out", str(tmp_path / "a.mp4")]) == 0
    assert main(["extend", str(job), "--seconds", "1", "--prompt", "0s: camera holds", "--quiet"]) == 0
    side = json.loads((tmp_path / "a-extended.json").read_text())
    assert [s["prompt"] for s in side["sections"]] == ["camera pans left"] * 2 + ["camera holds"] * 2
    assert (tmp_path / "job-extended" / "checkpoint.json").is_file()
    assert main(["extend", str(tmp_path / "job-extended"), "--seconds", "-1", "--quiet"]) == 2
    assert main(["extend", str(tmp_path / "nowhere"), "--seconds", "1"]) == 2


# ------------------------------------------------------------ reusing settings
def test_reuse_settings_reads_a_sidecar_into_the_form(toy_pipeline, tmp_path):
    import json

    from framepack_history.ui.reuse import form_values
    from tests.conftest import TINY_TOY

    request = GenerationRequest(prompt="0s: camera pans left; 1s~0.5s: camera holds", seconds=1, seed=42, steps=3,
                                history_guidance=1.5, window_frames=2, max_history_tokens=160, history_merge="oldest")
    _, data, _ = render_job(toy_pipeline, tmp_path / "job", request, tmp_path / "v.mp4")
    offered = ["toy-cpu", str(TINY_TOY)]
    values, notes = form_values(tmp_path / "v.json", offered, "toy-cpu")
    assert values == {"prompt": request.prompt, "seconds": 1, "seed": 42, "preset": str(TINY_TOY), "steps": 3,
                      "guidance": 1.0, "shift": None, "encoder_rate": "2x2x2", "history": "encoder", "window": 2,
                      "history_guidance": 1.5, "start_frame": "world", "max_tokens": 160, "merge": "oldest", "cache": "off",
                      "end_frame_strength": None, "keyframes": [], "memory": "", "borrow": ""}
    assert notes == []
    # another preset than those offered: the form keeps its own, and says so
    values, notes = form_values(tmp_path / "v.json", ["toy-cpu"], "toy-cpu")
    assert values["preset"] == "toy-cpu" and values["steps"] == 3 and "is not offered here" in notes[0]

    bad = tmp_path / "bad.json"
    cases = [("not json {", "bad.json is not JSON"), ("[1, 2]", "is not a video sidecar"),
             (json.dumps({"request": {"prompt": "a", "colour": "red"}}), "unknown request field 'colour'"),
             (json.dumps({**data, "request": {**data["request"], "seconds": -1}}), "bad.json: seconds must be > 0"),
             (json.dumps({**data, "request": {**data["request"], "prompt": "5s: a; 2s: b"}}), "storyboard times must increase")]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(InputError, match=message):
            form_values(bad, offered, "toy-cpu")


def test_reuse_and_extend_handlers_give_clear_errors(tmp_path):
    import gradio as gr

    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.handlers import Handlers
    from tests.conftest import TINY_TOY

    h = Handlers(Worker(tmp_path / "outputs", jobs_dir=tmp_path / "jobs"), str(TINY_TOY))
    with pytest.raises(gr.Error, match="Pick a video in the Gallery"):
        h.reuse_settings("", None)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(gr.Error, match="x.json is not a video sidecar"):
        h.reuse_settings("", str(tmp_path / "x.json"))
    with pytest.raises(gr.Error, match="was not made by a job of this app"):
        h.extend_click(str(tmp_path / "outputs" / "2026-01-01" / "123-abc" / "video.mp4"), "a", 1)
    with pytest.raises(gr.Error, match="pick a video in the Gallery first"):
        h.extend_click("", "a", 1)
    with pytest.raises(gr.Error, match="No job to edit"):
        h.steer_click("", "a")


def test_extend_on_framepack_f1_sends_the_overlap_tail_once(tmp_path, start_image):
    """F1 holds back each overlap tail; the old video already ends with it, so only those frames differ."""
    from framepack_history.cli.main import _load_pipeline
    from framepack_history.config.presets import load_preset
    from framepack_history.generation.pipeline import ContextFrames
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.extend import extend_job
    from framepack_history.jobs.render import render
    from tests.conftest import TINY_HUNYUAN

    preset = load_preset(TINY_HUNYUAN)

    def frames(events) -> np.ndarray:
        return np.concatenate([e.frames for e in events if isinstance(e, (ContextFrames, SectionDone)) and len(e.frames)])

    def request(seconds):
        r = GenerationRequest(prompt="a cat", seconds=seconds, seed=2, image=str(start_image))
        from framepack_history.jobs.admission import check_inputs

        check_inputs(r, preset)
        return r

    pipeline = _load_pipeline(preset, request(1), None)
    assert pipeline.backbone.overlap_decode
    # 4 sections of 0.625 s: the old job's 2 (1 s, nearest 1.6) and 2 more (1.25 s + 1 s, nearest 3.6)
    straight = frames(list(pipeline.run(request(2.5))))
    old, new = JobDir(tmp_path / "old"), JobDir(tmp_path / "new")
    old.create(request(1), preset, out=tmp_path / "old.mp4")
    seen_old, seen_new = [], []
    render(pipeline, request(1), tmp_path / "old.mp4", old.info().segments_dir, job=old, on_event=seen_old.append)
    req = extend_job(old, new, "a cat", 1, out=tmp_path / "new.mp4", segments_dir=new.root / "segments")
    render(pipeline, req, tmp_path / "new.mp4", new.info().segments_dir, job=new, on_event=seen_new.append)
    before, after = frames(seen_old), frames([e for e in seen_new if isinstance(e, SectionDone)])
    overlap = pipeline.backbone.geometry.pixel_frames(pipeline.section_latent_frames)
    assert len(before) + len(after) == len(straight)  # as long as the uninterrupted job
    cut = len(before)
    assert np.array_equal(before[: cut - overlap], straight[: cut - overlap])
    assert np.array_equal(after, straight[cut:])  # everything after the old video's end, frame for frame
    assert not np.array_equal(before[cut - overlap:], straight[cut - overlap: cut])  # the tail: unblended in the old one


def test_gallery_pick_reuse_and_extend_handlers(toy_pipeline, tmp_path):
    """The Gallery's handlers on a finished job of the app's layout: outputs/DATE/JOB/video.mp4 and jobs/JOB."""
    from types import SimpleNamespace

    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.render import render
    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.handlers import Handlers
    from tests.conftest import TINY_TOY

    video = tmp_path / "outputs" / "2026-01-01" / "120000-abcdef" / "video.mp4"
    request = GenerationRequest(prompt="camera pans left", seconds=1, seed=8, steps=2)
    job = JobDir(tmp_path / "jobs" / "120000-abcdef")
    job.create(request, toy_pipeline.preset, out=video, segments_dir=video.parent / "segments", preset_ref=str(TINY_TOY))
    render(toy_pipeline, request, video, video.parent / "segments", job=job)
    worker = Worker(tmp_path / "outputs", jobs_dir=tmp_path / "jobs")  # not started: an extension stays queued
    h = Handlers(worker, str(TINY_TOY))
    picked = h.gallery_pick(SimpleNamespace(index=0))
    assert picked == str(video)
    # a newer video arrives: the new listing keeps the picked one selected where it now sits
    newer = tmp_path / "outputs" / "2026-01-01" / "130000-fedcba"
    newer.mkdir(parents=True)
    for name in ("video.mp4", "video.json"):
        (newer / name).write_bytes((video.parent / name).read_bytes())
    _, _, _, listing = h.refresh(None, picked)
    assert [v for v, _ in listing["value"]] == [str(newer / "video.mp4"), picked] and listing["selected_index"] == 1
    assert listing["value"][1][1] == "1.1 s · camera pans left"  # length and prompt
    assert h.refresh(None, "")[3]["selected_index"] is None
    form = h.reuse_settings(picked)
    assert form[:4] == ("camera pans left", 1, 8, str(TINY_TOY)) and form[4] == 2
    job_id, _ = h.extend_click(picked, "0s: camera holds", 1.5)
    new = worker.job_dir(job_id)
    assert worker.queued() == [job_id] and new.checkpoint()["total_sections"] == 5 and new.checkpoint()["next_section"] == 2
    assert new.info().request.prompt == "0s: camera holds" and new.info().extra["extended_at"] == 2


def test_a_steer_during_the_last_section_is_refused_with_the_reason(tmp_path):
    """An edit is taken before a section starts; once the last one starts none would follow it, so it is refused.

    The worker closes edits in the same locked step that takes the last pending one: an edit posted at any
    moment is either taken or refused with the reason, never silently dropped.
    """
    from framepack_history.jobs.store import JobSpec
    from framepack_history.jobs.worker import Worker
    from tests.conftest import TINY_TOY

    worker = Worker(tmp_path / "outputs", jobs_dir=tmp_path / "jobs")  # not started: the job stays as we set it
    job = worker.submit(JobSpec(GenerationRequest(prompt="camera pans left", seconds=2, seed=1, steps=1), str(TINY_TOY)))
    worker.store.update(job, status="running")
    job.progress.sections_total, job.progress.section = 4, 3  # progress alone does not close edits
    assert worker.steer(job.id, "camera holds").steer_pending == "camera holds"
    assert worker.runner._take_steer(job, last=False) == "camera holds"  # before section 3 of 4
    worker.steer(job.id, "camera pans right")
    assert worker.runner._take_steer(job, last=True) == "camera pans right"  # taken as the last section starts
    with pytest.raises(InputError, match="last section \\(4 of 4\\); no section is left"):
        worker.steer(job.id, "camera holds")
    assert job.steer_pending is None  # nothing waits that no section would take
