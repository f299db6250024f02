"""Finishing tools as worker jobs: queue order with generation jobs, progress, cancel, sidecar, refusals."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation import finishing
from framepack_history.generation.video import count_frames, write_segment
from framepack_history.jobs.gallery import past_results
from framepack_history.jobs.store import JobSpec
from framepack_history.jobs.tools import ToolSpec
from framepack_history.jobs.worker import Worker
from tests.jobs.test_jobs import TINY, wait


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "outputs", max_queue=4, preview_every_s=0.0).start()
    yield w
    w.stop(timeout=30)


def clip(path: Path, n: int = 6, size: int = 32, fps: int = 4) -> Path:
    frames = np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return write_segment(frames, path, fps=fps)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_tool_job_runs_in_queue_order_on_a_finished_job_and_keeps_the_original(worker):
    first = wait(worker, worker.submit(JobSpec(GenerationRequest(prompt="camera pans left", seconds=0.5), TINY)).id)
    assert first.status == "done", first.message
    before = digest(first.video)
    second = worker.submit(JobSpec(GenerationRequest(prompt="camera pans right", seconds=0.5), TINY))
    tool = worker.submit_tool("interpolate", {"factor": 2}, job_ids=[first.id])
    assert isinstance(tool.spec, ToolSpec) and tool.spec.request.prompt.startswith("interpolate factor=2")
    tool, second = wait(worker, tool.id), wait(worker, second.id)
    assert tool.status == "done", tool.message
    assert second.finished <= tool.started  # one lane, queue order: the tool waited for the generation before it

    n = count_frames(first.video)
    assert count_frames(tool.video) == 2 * n
    assert finishing.inspect_video(tool.video).fps == 2 * finishing.inspect_video(first.video).fps
    assert tool.video.parent == tool.folder and tool.folder != first.folder
    assert digest(first.video) == before  # the original is untouched
    side = json.loads(tool.sidecar.read_text())
    assert tool.sidecar.name == "video.json"
    assert side["tool"] == "interpolate" and side["settings"] == {"factor": 2, "method": "blend"}
    assert side["sources"] == [{"job": first.id, "file": str(first.video), "sha256": before}]
    assert side["frames"] == 2 * n
    p = tool.progress
    assert (p.step, p.steps, p.sections_done) == (2 * n, 2 * n, 1)
    assert worker.owner_of(tool.id) is None and (worker.jobs_dir / tool.id / "request.json").is_file()


def test_an_upload_is_copied_into_the_job_and_the_sidecar_names_it(worker, tmp_path):
    src = clip(tmp_path / "mine.mp4")
    job = wait(worker, worker.submit_tool("loop", {"mode": "pingpong"}, files=[str(src)], owner=None).id)
    assert job.status == "done", job.message
    assert count_frames(job.video) == 10
    side = json.loads(job.sidecar.read_text())
    (source,) = side["sources"]
    assert source["name"] == "mine.mp4" and source["sha256"] == digest(src)
    assert Path(source["file"]).parent == job.folder / "inputs"
    (shown,) = past_results(worker.outputs)  # the Gallery says what was done to what
    assert shown == (str(job.video), "2.5 s · loop mode=pingpong · mine.mp4")
    with pytest.raises(InputError, match="finishing tool's job") as e:  # no history to extend
        worker.extend(job.id, None, 1.0)
    assert e.value.field == "job"


def test_cancel_a_running_tool_job_leaves_no_video(worker, tmp_path, monkeypatch):
    src = clip(tmp_path / "long.mp4", n=40)
    real = finishing.upscale_frame

    def slow(frame, scale, method):
        time.sleep(0.05)
        return real(frame, scale, method)

    monkeypatch.setattr(finishing, "upscale_frame", slow)
    job = worker.submit_tool("upscale", {"scale": 2}, files=[str(src)])
    wait(worker, job.id, until=lambda j: j.progress.step >= 2)
    worker.cancel(job.id)
    job = wait(worker, job.id)
    assert job.status == "cancelled" and job.video is None
    assert not list(job.folder.glob("video*"))


def test_a_queued_tool_job_cancels_before_it_starts(worker, tmp_path, caplog):
    gen = worker.submit(JobSpec(GenerationRequest(prompt="camera pans left", seconds=0.5), TINY))
    tool = worker.submit_tool("export", {"format": "gif"}, files=[str(clip(tmp_path / "a.mp4"))])
    with caplog.at_level("WARNING"):
        assert worker.cancel(tool.id).status == "cancelled" and tool.id not in worker.queued()
    # its folder is a record with no status to write: the cancel (this thread) warns of nothing; the generation
    # job running meanwhile on the worker's thread may log what it likes
    assert not [r for r in caplog.records if r.thread == threading.get_ident()]
    assert wait(worker, gen.id).status == "done"
    assert wait(worker, tool.id).status == "cancelled" and tool.started is None


def test_bad_tool_input_is_refused_before_queueing(worker, tmp_path):
    a, big = clip(tmp_path / "a.mp4"), clip(tmp_path / "big.mp4", size=48)
    cases = [
        (lambda: worker.submit_tool("upscale", {"scale": 3}, files=[str(a)]), "--scale"),
        (lambda: worker.submit_tool("upscale", {"scale": 2, "method": "x4.pth"}, files=[str(a)]), "--method"),
        (lambda: worker.submit_tool("join", {}, files=[str(a), str(big)]), "input"),
        (lambda: worker.submit_tool("interpolate", {"factor": 2}, files=[str(tmp_path / "gone.mp4")]), "input"),
        (lambda: worker.submit_tool("interpolate", {"factor": 2}, job_ids=["123456-abcdef"]), "job"),
        (lambda: worker.submit_tool("blur", {}, files=[str(a)]), "tool"),
    ]
    for call, field in cases:
        with pytest.raises(InputError) as e:
            call()
        assert e.value.field == field, e.value
    assert worker.store.jobs() == [] and worker.queued() == []
