"""The worker and its job store, with the tiny toy backbone (random weights)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.video import count_frames
from framepack_history.jobs.gallery import past_results
from framepack_history.jobs.plan_summary import plan_lines
from framepack_history.jobs.store import JobSpec, JobStore
from framepack_history.jobs.worker import Worker
from tests import waiting

TINY = str(Path(__file__).parents[1] / "presets" / "tiny-toy.toml")
FRAMES_PER_SECTION = 4  # tiny-toy: 4 frames of 8 fps per section


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "outputs", max_queue=4, preview_every_s=0.0).start()
    yield w
    w.stop(timeout=30)


def spec(seconds: float = 0.5, steps: int | None = None, **kw) -> JobSpec:
    preset = kw.pop("preset", TINY)
    return JobSpec(GenerationRequest(prompt=kw.pop("prompt", "camera pans left"), seconds=seconds, steps=steps, **kw), preset)


def wait(worker: Worker, job_id: str, until=lambda j: j.terminal):
    """Block on the store until ``until(job)`` holds: as long as the worker's jobs move on (a step, a section)."""
    job = [worker.store.get(job_id)]

    def holds():
        if until(job[0]):
            return job[0]
        job[0] = worker.store.wait(job_id, job[0].version, 0.5)
        return None

    return waiting.until(holds, lambda: waiting.job_progress(worker.store.jobs()),
                         lambda: f"timed out; job is {job[0].status}: {job[0].message}", every=0)


def test_fifo_order_outputs_and_model_cache(worker):
    jobs = [worker.submit(spec(seconds=0.5 * (i + 1), seed=i)) for i in range(3)]
    assert [j.status for j in jobs][1:] == ["queued", "queued"]
    done = [wait(worker, j.id) for j in jobs]
    assert [j.status for j in done] == ["done"] * 3, [j.message for j in done]
    assert [j.started for j in done] == sorted(j.started for j in done)  # FIFO
    assert all(a.finished <= b.started for a, b in itertools.pairwise(done))  # one at a time
    assert worker.loads == 1  # the model was loaded once, lazily, and cached

    last = done[2]
    assert last.folder.parent.parent == worker.outputs  # outputs/<date>/<job-id>/
    # toy text-to-video starts from the seed's world frame, then the sections
    assert [p.name for p in last.segments] == ["context.mp4"] + [f"section_{i:05d}.mp4" for i in range(3)]
    assert count_frames(last.video) == 1 + 3 * FRAMES_PER_SECTION
    side = json.loads(last.sidecar.read_text())
    assert side["seed"] == 2 and side["request"]["prompt"] == "camera pans left"
    p = last.progress
    assert (p.sections_done, p.sections_total, p.frames) == (3, 3, 12)
    assert p.s_per_frame > 0 and p.history_tokens > 0 and last.preview is not None
    assert json.loads((last.folder / "job.json").read_text())["status"] == "done"
    assert past_results(worker.outputs)[0][0] == str(last.video)


def test_cancel_queued_and_running(worker):
    long = worker.submit(spec(seconds=20, steps=40))  # 40 sections
    queued = worker.submit(spec())
    assert worker.cancel(queued.id).status == "cancelled"  # at once, never runs
    wait(worker, long.id, lambda j: j.progress.sections_done >= 2)
    worker.cancel(long.id)
    job = wait(worker, long.id)
    assert job.status == "cancelled" and "cancelled after" in job.message
    assert job.progress.sections_done < job.progress.sections_total
    # what was finished is kept: segments joined (no re-encode) and a sidecar that says so
    assert count_frames(job.video) == 1 + (len(job.segments) - 1) * FRAMES_PER_SECTION  # start frame + sections
    side = json.loads(job.sidecar.read_text())
    assert side["cancelled"] is True and side["frames"] == count_frames(job.video)
    assert queued.started is None
    # the worker goes on
    done = wait(worker, worker.submit(spec()).id)
    assert done.status == "done"
    assert side["speed"] == json.loads(done.sidecar.read_text())["speed"]  # what ran, as a finished job records it


def test_second_client_sees_the_same_job(worker):
    store: JobStore = worker.store
    job = worker.submit(spec(seconds=1.5, steps=20))
    wait(worker, job.id, lambda j: j.status == "running")
    assert store.current() is job  # what a freshly loaded page attaches to
    seen = []  # a first client follows every change ...
    version = -1
    while True:
        j = store.wait(job.id, version, 1.0)
        version = j.version
        seen.append(len(j.segments))
        if j.terminal:
            break
    assert seen == sorted(seen) and seen[-1] == 1 + 3  # the start frame's segment + 3 sections
    late = store.get(job.id).snapshot()  # ... a second one arrives at the end
    assert late["status"] == "done" and len(late["segments"]) == 1 + 3 and late["video"].endswith("video.mp4")
    assert store.current() is job  # still the newest


def test_bad_jobs_fail_alone(worker, tmp_path):
    # weights that do not exist: only found out by the worker, which fails that job only
    text = Path(TINY).read_text().replace("[model]\n", '[model]\nweights = "no/such/weights"\n', 1)
    missing = tmp_path / "missing-weights.toml"
    missing.write_text(text)
    bad = worker.submit(spec(preset=str(missing)))
    good = worker.submit(spec())
    assert wait(worker, bad.id).status == "failed"
    assert "weights not found" in bad.message
    assert wait(worker, good.id).status == "done"

    # what can be checked cheaply is refused at submit, and nothing is queued
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="not a readable image"):
        worker.submit(spec(image=str(corrupt)))
    with pytest.raises(InputError, match="over the preset's limit"):
        worker.submit(spec(seconds=10_000))
    with pytest.raises(InputError, match="storyboard times must increase"):
        worker.submit(spec(prompt="5s: a; 2s: b"))
    with pytest.raises(InputError, match="not offered"):
        worker.submit(JobSpec(GenerationRequest(prompt="x"), TINY, encoder_rate="8x8x8"))
    with pytest.raises(InputError, match="no job"):
        worker.cancel("nope")
    assert worker.queued() == []


def test_start_image_job_and_queue_limit(tmp_path, start_image):
    w = Worker(tmp_path / "out", max_queue=1)  # not started: jobs stay queued
    job = w.submit(spec(image=str(start_image)))
    assert Path(job.spec.request.image).parent == job.folder / "inputs"  # the upload is kept with the job
    with pytest.raises(InputError, match="queue"):
        w.submit(spec())
    w.start()
    try:
        done = wait(w, job.id)
        assert done.status == "done", done.message
        assert done.segments[0].name == "context.mp4"
        assert count_frames(done.video) == 1 + FRAMES_PER_SECTION
    finally:
        w.stop()


def test_plan_lines_show_history_budget():
    lines = plan_lines(TINY, "4x4x2", 10, history_tokens=96)
    assert lines[0] == "history tokens now: **96**"
    assert "rate 4x4x2" in lines[1]
    assert lines[2].startswith("plan tiny-toy, 10 s: device peak")  # the memory planner's summary
    assert "no history tokens" in plan_lines(TINY, None, 10, history_mode="none")[0]


def test_plan_lines_follow_the_requests_cap_and_merge_rule():
    """The page's plan reads the cap the user typed, not only the preset's: its history and host bytes."""
    free = plan_lines("toy-cpu", None, 300, max_tokens=0)
    capped = plan_lines("toy-cpu", None, 300, max_tokens=40, merge="oldest")
    assert "capped" not in free[0] and "**1200** history tokens" in free[0]
    assert capped[0].endswith("capped at **40** (oldest)")
    assert plan_lines("toy-cpu", None, 300)[0].endswith("capped at **240** (similar)")  # the preset's own cap
    assert free[1] != capped[1] and capped[1].endswith("never more than 40 (the cap)")  # the planner follows the cap
    assert "the cap" not in free[1]


def test_queue_is_fifo_bounded_and_cancels_what_waits():
    import threading

    from framepack_history.jobs.queue import JobQueue

    q = JobQueue(max_size=2)
    q.put("a")
    with pytest.raises(RuntimeError, match="refused"):  # an admit that fails queues nothing
        q.put("x", lambda: (_ for _ in ()).throw(RuntimeError("refused")))
    q.put("b")
    with pytest.raises(InputError, match="full"):
        q.put("c", lambda: pytest.fail("a full queue admits nothing"))
    assert q.ids() == ["a", "b"] and q.remove("a") and not q.remove("a") and q.ids() == ["b"]
    q.put("c")
    assert [q.take(), q.take()] == ["b", "c"]
    got = []
    taker = threading.Thread(target=lambda: got.append(q.take()))
    taker.start()  # blocks: nothing waits
    q.close()
    taker.join(waiting.STALL_S)  # ends at once: close() wakes it
    assert got == [None] and q.closed
    q.reopen()
    q.put("d")
    assert q.take() == "d"


def test_model_cache_keeps_the_least_recently_used_out(tmp_path):
    from framepack_history.config.presets import load_preset
    from framepack_history.jobs.model_cache import ModelCache

    a = load_preset(TINY)
    b = load_preset(TINY)
    b.model.seed = 1  # another model: other weights
    cache = ModelCache(max_models=1)
    sa = spec()
    pa = cache.pipeline_for(a, sa)
    assert cache.pipeline_for(a, sa) is pa and cache.loads == 1  # cached
    window = cache.pipeline_for(a, spec(history_mode="window"))
    assert window.encoder is None and window.backbone is pa.backbone and cache.loads == 1  # same weights, no encoder
    pb = cache.pipeline_for(b, spec())
    assert pb.backbone is not pa.backbone and cache.loads == 2
    assert cache.pipeline_for(a, sa) is not pa and cache.loads == 3  # a was evicted to make room for b


def test_plan_lines_plan_a_continued_videos_encode(tmp_path, monkeypatch):
    """A job continuing a video plans its clip's frames (its encode is planned chunk by chunk), not one frame."""
    import numpy as np

    from framepack_history.generation.video import write_segment
    from framepack_history.memory import planner

    asked: list[int] = []
    real = planner.plan

    def spy(*args, **kwargs):
        asked.append(kwargs.get("continue_frames", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, "plan", spy)
    clip = write_segment(np.zeros((24, 32, 32, 3), np.uint8), tmp_path / "clip.mp4", fps=4)  # 6 s at toy-cpu's 4 fps
    plan_lines("toy-cpu", None, 4.5, history_mode="encoder")
    plan_lines("toy-cpu", None, 4.5, history_mode="encoder", continue_video=str(clip))
    plan_lines("toy-cpu", None, 4.5, history_mode="encoder", continue_video=str(tmp_path / "gone.mp4"))
    assert asked == [0, 24, 120]  # an unreadable file plans the most a start reads (30 s at 4 fps)
