"""Crash-safe jobs: checkpoints after every section, resume after kill -9, out-of-memory recovery.

Frames are compared after decoding: the same frames always encode to the
same H.264 bytes here (libx264, same settings), so a resumed video decodes to
exactly the frames of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from framepack_history.checkpoint import JobDir, is_out_of_memory
from framepack_history.cli import main
from framepack_history.config import GenerationRequest
from framepack_history.jobs import JobSpec, Worker
from tests.conftest import TINY_TOY

ROOT = Path(__file__).resolve().parent.parent
STORYBOARD = "0s: camera pans right; 1.5s: camera pans left"


def decoded(path: str | Path) -> np.ndarray:
    gen = imageio_ffmpeg.read_frames(str(path))
    w, h = next(gen)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])


def checkpoint(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / "checkpoint.json").read_text())
    except (OSError, ValueError):
        return {}


def test_kill_9_mid_section_then_resume_is_frame_identical(tmp_path):
    args = ["--preset", str(TINY_TOY), "--prompt", STORYBOARD, "--seconds", "3", "--steps", "24", "--seed", "11", "--quiet"]
    job = tmp_path / "job"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "framepack_history", "generate", *args, "--job-dir", str(job),
                             "--out", str(tmp_path / "resumed.mp4")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while checkpoint(job).get("next_section", 0) < 2:  # two sections are safe on disk ...
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        time.sleep(0.05)  # ... and the third is being denoised
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    ck = checkpoint(job)
    assert proc.returncode == -signal.SIGKILL and ck["status"] == "running"
    done_before = ck["next_section"]
    assert 2 <= done_before < 6, "the kill should land mid-run"
    named = [c["file"] for c in ck["chunks"]]
    assert named == [f"history/chunk-{i:05d}.safetensors" for i in range(done_before + 1)]  # the start + one per section
    assert all((job / f).is_file() for f in [*named, ck["cond"]])
    assert sorted(p.name for p in job.glob("*.tmp")) == [], "no half-written file is ever named as the checkpoint"
    first_segment = job / "segments" / "section_00000.mp4"
    kept = first_segment.stat().st_mtime_ns

    r = subprocess.run([sys.executable, "-m", "framepack_history", "resume", str(job), "--quiet"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert first_segment.stat().st_mtime_ns == kept  # finished sections are not generated again
    ck = checkpoint(job)
    assert ck["status"] == "done" and ck["next_section"] == 6 and ck["chunks"] == [] and ck["cond"] is None
    assert not (job / "history").exists() and not list(job.glob("*.safetensors"))  # tensors dropped when done
    side = json.loads((tmp_path / "resumed.json").read_text())
    assert side["resumed_from_section"] == done_before and len(side["sections"]) == 6

    assert main(["generate", *args, "--out", str(tmp_path / "straight.mp4")]) == 0  # uninterrupted, same seed
    resumed, straight = decoded(tmp_path / "resumed.mp4"), decoded(tmp_path / "straight.mp4")
    assert resumed.shape == straight.shape and len(straight) >= 24  # 6 sections of 4 frames (+ the toy's start frame)
    assert np.array_equal(resumed, straight)

    # a finished job says so; a folder that is not a job is a clear error (status 2)
    assert main(["resume", str(job)]) == 0
    assert main(["resume", str(tmp_path)]) == 2
    assert main(["generate", *args, "--job-dir", str(job)]) == 2  # never overwrite a job


def test_out_of_memory_once_retries_from_the_checkpoint(toy_pipeline, tmp_path, monkeypatch):
    from framepack_history.render import render

    request = GenerationRequest(prompt=STORYBOARD, seconds=1.5, seed=2, steps=2)
    render(toy_pipeline, request, tmp_path / "straight.mp4", tmp_path / "seg-a")

    bb = toy_pipeline.backbone
    real, calls = bb.predict, {"n": 0}

    def predict(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # section 1, first step: after one checkpointed section
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **kw)

    monkeypatch.setattr(bb, "predict", predict)
    job = JobDir(tmp_path / "job")
    job.create(request, toy_pipeline.preset, out=tmp_path / "retried.mp4")
    events = []
    data = render(toy_pipeline, request, tmp_path / "retried.mp4", job.root / "segments", on_event=events.append, job=job)
    resumed = [e for e in events if type(e).__name__ == "Resumed"]
    assert len(resumed) == 1 and resumed[0].sections_done == 1  # retried from the checkpoint, not from scratch
    assert calls["n"] == 3 * 2 + 1  # 3 sections x 2 steps, plus the failed call
    assert data["out_of_memory_retry"] and job.status == "done"
    assert np.array_equal(decoded(tmp_path / "retried.mp4"), decoded(tmp_path / "straight.mp4"))


def test_out_of_memory_twice_fails_the_job_and_the_worker_goes_on(tmp_path, monkeypatch):
    from framepack_history.backbones.toy import ToyBackbone

    real = ToyBackbone.predict
    state = {"fail": True, "calls": 0}

    def predict(self, *a, **kw):
        state["calls"] += 1
        if state["fail"] and state["calls"] > 2:  # every call after the first section
            raise RuntimeError("CUDA error: out of memory")
        return real(self, *a, **kw)

    monkeypatch.setattr(ToyBackbone, "predict", predict)
    worker = Worker(tmp_path / "outputs", preview_every_s=1e9).start()
    try:
        spec = JobSpec(GenerationRequest(prompt="camera holds", seconds=1.5, steps=2), str(TINY_TOY))
        job = worker.submit(spec)
        while not job.terminal:
            job = worker.store.wait(job.id, job.version, 1.0)
        assert job.status == "failed"
        assert "out of memory again" in job.message and "budget" in job.message and "measured peak" in job.message
        assert checkpoint(worker.jobs_dir / job.id)["status"] == "failed"
        assert checkpoint(worker.jobs_dir / job.id)["next_section"] == 1  # the finished section is kept for a resume

        state["fail"] = False
        nxt = worker.submit(JobSpec(GenerationRequest(prompt="camera holds", seconds=0.5, steps=2), str(TINY_TOY)))
        while not nxt.terminal:
            nxt = worker.store.wait(nxt.id, nxt.version, 1.0)
        assert nxt.status == "done", nxt.message
    finally:
        worker.stop(timeout=30)


def test_a_stopped_worker_leaves_its_jobs_resumable(tmp_path):
    """Stopping the server is not a cancel: the job is 'interrupted', offered for resume, and ends where it stopped."""
    outputs = tmp_path / "outputs"
    first = Worker(outputs, preview_every_s=1e9).start()
    spec = JobSpec(GenerationRequest(prompt="camera pans left", seconds=3, steps=12, seed=4), str(TINY_TOY))
    job = first.submit(spec)
    waiting = first.submit(JobSpec(GenerationRequest(prompt="camera holds", seconds=0.5, steps=1), str(TINY_TOY)))
    try:
        while job.progress.sections_done < 2:
            assert not job.terminal, job.message
            job = first.store.wait(job.id, job.version, 1.0)
    finally:
        first.stop(timeout=30)  # as on Ctrl-C: the running job stops after a step, the queued one never starts
    jd = first.jobs_dir / job.id
    ck = checkpoint(jd)
    done_before = ck["next_section"]
    assert ck["status"] == "interrupted" and checkpoint(first.jobs_dir / waiting.id)["status"] == "interrupted"

    second = Worker(outputs, preview_every_s=1e9).start()  # a restarted app
    try:
        rows = second.interrupted()
        assert [r["id"] for r in rows] == [job.id, waiting.id] and rows[0]["sections_done"] == done_before
        resumed = second.resume(job.id)
        assert [r["id"] for r in second.interrupted()] == [waiting.id]  # this process owns the resumed one now
        while not resumed.terminal:
            resumed = second.store.wait(resumed.id, resumed.version, 1.0)
        assert resumed.status == "done", resumed.message
        sections = [p for p in resumed.segments if p.name.startswith("section_")]
        assert len(sections) == 6 and len(decoded(resumed.video)) == sum(len(decoded(p)) for p in resumed.segments) >= 24
        with pytest.raises(Exception, match="already finished"):
            second.resume(job.id)
        with pytest.raises(Exception, match="not a job id"):
            second.resume("../../etc")
    finally:
        second.stop(timeout=30)


@pytest.mark.parametrize("err,oom", [
    (torch.OutOfMemoryError("CUDA out of memory"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), True),
    (MemoryError(), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of range"), False),
])
def test_what_counts_as_out_of_memory(err, oom):
    assert is_out_of_memory(err) is oom


def test_app_offers_jobs_of_a_killed_app_for_resume(tmp_path):
    """kill -9 the app mid-job; the next start lists the job, and /resume finishes it."""
    import socket

    import httpx
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "app.py", "--preset", str(TINY_TOY), "--port", str(port), "--outputs", str(tmp_path / "outputs")]

    def launch(log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.time() < deadline, "the app did not start"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.3)

    first = launch(tmp_path / "first.log")
    try:
        client = Client(url, verbose=False)
        client.submit(prompt="camera pans right", seconds=3, seed=9, preset=str(TINY_TOY), steps=30, api_name="/generate")
        deadline = time.time() + 120
        while True:
            jobs = client.predict("", api_name="/status")["jobs"]
            if jobs and jobs[0]["progress"]["sections_done"] >= 2:
                break
            assert time.time() < deadline, jobs
            time.sleep(0.2)
        job_id = jobs[0]["id"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)

    second = launch(tmp_path / "second.log")
    try:
        # The app lists interrupted jobs just after it starts serving: wait for the lines.
        deadline = time.time() + 60
        while job_id not in (log := (tmp_path / "second.log").read_text()) and time.time() < deadline:
            time.sleep(0.2)
        assert "1 interrupted job(s)" in log and job_id in log, log
        client = Client(url, verbose=False)
        listed = client.predict("", api_name="/status")["interrupted"]
        assert [row["id"] for row in listed] == [job_id] and listed[0]["sections_done"] >= 2
        assert client.predict(job_id, api_name="/resume")["status"] in ("queued", "running")
        deadline = time.time() + 120
        while (status := client.predict(job_id, api_name="/status"))["status"] not in ("done", "failed", "cancelled"):
            assert time.time() < deadline, status
            time.sleep(0.3)
        assert status["status"] == "done", status["message"]
        assert len(decoded(status["video"])) >= 24 and len(status["segments"]) >= 6
        assert client.predict("", api_name="/status")["interrupted"] == []
    finally:
        second.terminate()
        second.wait(30)
