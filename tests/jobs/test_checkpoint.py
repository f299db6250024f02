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

from framepack_history.cli.main import main
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.jobs.checkpoint import JobDir, chunk_file
from framepack_history.jobs.store import JobSpec
from framepack_history.jobs.worker import Worker
from framepack_history.memory.oom import is_out_of_memory
from tests.conftest import TINY_TOY
from tests.waiting import cpu_progress, until

ROOT = Path(__file__).resolve().parents[2]
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


def test_kill_9_mid_section_then_resume_is_frame_identical(tmp_path, capsys):
    # 12 steps: a section lasts many polls of the checkpoint below, so the kill lands mid-run, and the three runs
    # (killed, resumed, straight) stay short
    args = ["--preset", str(TINY_TOY), "--prompt", STORYBOARD, "--seconds", "3", "--steps", "12", "--seed", "11", "--quiet"]
    job = tmp_path / "job"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "framepack_history", "generate", *args, "--job-dir", str(job),
                             "--out", str(tmp_path / "resumed.mp4")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def two_safe() -> bool:  # two sections are safe on disk ...
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            return checkpoint(job).get("next_section", 0) >= 2

        # as long as it takes while the process works (a busy machine starts and renders it slower)
        until(two_safe, cpu_progress(proc.pid), "no checkpoint appeared", every=0.05, limit_s=600)
        time.sleep(0.05)  # ... and the third is being denoised
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    ck = checkpoint(job)
    assert proc.returncode == -signal.SIGKILL and ck["status"] == "running"
    done_before = ck["next_section"]
    assert 2 <= done_before < 6, "the kill should land mid-run"
    assert ck["chunks"] == done_before + 1  # the start state + one chunk per finished section
    assert all((job / f).is_file() for f in [*(chunk_file(i) for i in range(ck["chunks"])), ck["cond"]])
    # kill -9 may land inside an atomic write and leave its temp file: never named, removed by the next checkpoint
    assert not any(str(v).endswith(".tmp") for v in ck.values()), "no half-written file is ever named as the checkpoint"
    first_segment = job / "segments" / "section_00000.mp4"
    kept = first_segment.stat().st_mtime_ns

    # resumed in this process: the kill needs a real process, the resume does not (the import is half its time)
    assert main(["resume", str(job), "--quiet"]) == 0, capsys.readouterr().err[-2000:]
    assert first_segment.stat().st_mtime_ns == kept  # finished sections are not generated again
    ck = checkpoint(job)
    assert ck["status"] == "done" and ck["next_section"] == 6 and ck["chunks"] == 7 and ck["cond"] == "cond.safetensors"
    assert on_disk(job) == named(ck)  # a finished job keeps its history (Extend), and nothing else
    assert sorted(p.name for p in job.rglob("*.tmp")) == []  # what a kill left half-written is cleaned up
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


class _Crash(BaseException):
    """The process dies here: nothing after this point reaches the disk."""


class CrashingJobDir(JobDir):
    """A job folder whose process dies between two steps of the checkpoint after section ``section``."""

    def __init__(self, root: Path, at: str, section: int) -> None:
        super().__init__(root)
        self.at, self.section, self.dead = at, section, False

    def _die(self, at: str, ck: dict) -> None:
        if self.at == at and ck.get("next_section") == self.section:
            self.dead = True
            raise _Crash(at)

    def _commit(self, ck: dict) -> int:
        self._die("before_commit", ck)  # the chunk is on disk, checkpoint.json does not name it yet
        return super()._commit(ck)

    def _cleanup(self, ck: dict) -> None:
        self._die("before_cleanup", ck)  # checkpoint.json names the chunk, nothing was deleted yet
        super()._cleanup(ck)

    def set_status(self, *args, **kwargs) -> None:
        if not self.dead:
            super().set_status(*args, **kwargs)


def on_disk(job: Path) -> set[str]:
    return {p.relative_to(job).as_posix() for p in [*job.glob("history/*"), *job.glob("*.safetensors*")]}


def named(ck: dict) -> set[str]:
    return {chunk_file(i) for i in range(ck.get("chunks", 0))} | ({ck["cond"]} if ck.get("cond") else set())


def resume_checking_files(pipeline, request, job_root: Path, out: Path) -> list:
    """Finish the job; after every section the folder holds exactly the files checkpoint.json names."""
    from framepack_history.generation.pipeline import SectionDone
    from framepack_history.jobs.render import render

    seen = []

    def on_event(ev) -> None:
        if isinstance(ev, SectionDone):
            ck = checkpoint(job_root)
            seen.append(ck)
            assert on_disk(job_root) == named(ck), "stale or missing tensor files"

    render(pipeline, request, out, job_root / "segments", on_event=on_event, job=JobDir(job_root))
    return seen


@pytest.mark.parametrize("at", ["before_commit", "before_cleanup"])
def test_crash_inside_a_checkpoint_loses_at_most_that_section(toy_pipeline, tmp_path, at):
    from framepack_history.jobs.render import render

    request = GenerationRequest(prompt=STORYBOARD, seconds=3, seed=3, steps=2)
    render(toy_pipeline, request, tmp_path / "straight.mp4", tmp_path / "seg-a")
    job = CrashingJobDir(tmp_path / "job", at, section=3)
    job.create(request, toy_pipeline.preset, out=tmp_path / "resumed.mp4")
    with pytest.raises(_Crash):
        render(toy_pipeline, request, tmp_path / "resumed.mp4", job.root / "segments", job=job)
    ck = checkpoint(job.root)
    assert ck["status"] == "running"
    if at == "before_commit":  # the new chunk is on disk but not named: the checkpoint is still section 2's
        assert ck["next_section"] == 2 and "history/chunk-00003.safetensors" in on_disk(job.root) - named(ck)
    else:  # committed: section 3 is safe
        assert ck["next_section"] == 3 and on_disk(job.root) == named(ck)
    (job.root / "history" / "chunk-00099.safetensors.tmp").write_bytes(b"half a file")  # a kill mid-write
    gen, resumed = JobDir(job.root).restore(toy_pipeline)
    assert resumed.sections_done == gen.next_section == ck["next_section"]
    assert gen.history.num_frames == ck["progress"]["history_frames"] and gen.history.num_tokens == ck["history_tokens"]
    assert [p.name for p in resumed.segments] == ["context.mp4"] + [f"section_{i:05d}.mp4" for i in range(ck["next_section"])]
    assert [s["index"] for s in resumed.sections] == list(range(ck["next_section"]))

    seen = resume_checking_files(toy_pipeline, request, job.root, tmp_path / "resumed.mp4")
    assert [c["next_section"] for c in seen] == list(range(ck["next_section"] + 1, 7))
    final = checkpoint(job.root)
    assert final["status"] == "done" and on_disk(job.root) == named(final)  # the history stays for Extend
    assert np.array_equal(decoded(tmp_path / "resumed.mp4"), decoded(tmp_path / "straight.mp4"))


def test_checkpoints_write_only_the_new_section(toy_pipeline, tmp_path):
    """Each chunk holds one section's latents and tokens; together they rebuild the history exactly."""
    from framepack_history.jobs.render import render

    request = GenerationRequest(prompt="camera pans right", seconds=5, seed=1, steps=1)
    job = CrashingJobDir(tmp_path / "job", "before_cleanup", section=10)  # stop after the last section's chunk
    job.create(request, toy_pipeline.preset, out=tmp_path / "v.mp4")
    with pytest.raises(_Crash):
        render(toy_pipeline, request, tmp_path / "v.mp4", job.root / "segments", job=job)
    ck = checkpoint(job.root)
    sizes = [(job.root / chunk_file(i)).stat().st_size for i in range(1, ck["chunks"])]  # chunk 0: the start frame
    whole = toy_pipeline.last_generation.history
    assert len(sizes) == 10 and max(sizes) <= 1.2 * min(sizes), sizes  # flat, not growing with the video
    full = sum(t.numel() * t.element_size() for t in whole.chunk(0, 0).values())
    assert sizes[-1] < full / 5
    gen, _ = JobDir(job.root).restore(toy_pipeline)
    for name, t in whole.chunk(0, 0).items():
        assert torch.equal(gen.history.chunk(0, 0)[name], t), name
    assert torch.equal(gen.history.tokens()[0], whole.tokens()[0])


def test_format_1_job_folders_still_resume(toy_pipeline, tmp_path):
    """A folder written when every checkpoint held the whole history resumes, and is converted."""
    from safetensors.torch import save_file

    from framepack_history.jobs.render import render

    request = GenerationRequest(prompt=STORYBOARD, seconds=3, seed=8, steps=2)
    render(toy_pipeline, request, tmp_path / "straight.mp4", tmp_path / "seg-a")
    job = CrashingJobDir(tmp_path / "job", "before_commit", section=3)
    job.create(request, toy_pipeline.preset, out=tmp_path / "resumed.mp4")
    with pytest.raises(_Crash):
        render(toy_pipeline, request, tmp_path / "resumed.mp4", job.root / "segments", job=job)
    gen, resumed = JobDir(job.root).restore(toy_pipeline)  # rewrite the folder as format 1 wrote it
    ck = checkpoint(job.root)
    gen.history.save(job.root / "history-00002.safetensors")
    save_file({**{f"cond.{k}": v for k, v in gen.image_cond.tensors.items()}, "rng.cpu": torch.get_rng_state()},
              str(job.root / "tensors-00002.safetensors"))
    for f in named(ck) | on_disk(job.root) - {"history-00002.safetensors", "tensors-00002.safetensors"}:
        (job.root / f).unlink()
    for key in ("chunks", "cond", "progress"):
        del ck[key]
    ck.update(format=1, history="history-00002.safetensors", tensors="tensors-00002.safetensors",
              segments=[p.name for p in resumed.segments], sections=resumed.sections)
    (job.root / "checkpoint.json").write_text(json.dumps(ck))

    seen = resume_checking_files(toy_pipeline, request, job.root, tmp_path / "resumed.mp4")
    first = seen[0]  # the first new checkpoint holds the whole history once, then one section each
    assert first["format"] == 2 and first["chunks"] == 1 and "segments" not in first and "history" not in first
    assert not (job.root / "history-00002.safetensors").exists()
    assert np.array_equal(decoded(tmp_path / "resumed.mp4"), decoded(tmp_path / "straight.mp4"))

    ck = checkpoint(job.root)
    ck.update(format=99, status="running")
    (job.root / "checkpoint.json").write_text(json.dumps(ck))
    with pytest.raises(InputError, match="checkpoint format 99 is not one this version reads"):
        JobDir(job.root).restore(toy_pipeline)


def test_out_of_memory_once_retries_from_the_checkpoint(toy_pipeline, tmp_path, monkeypatch):
    from framepack_history.jobs.render import render

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
    """kill -9 the app mid-job; the next start (with two workers) lists the job, and /resume finishes it."""
    import socket

    import httpx
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "app.py", "--preset", str(TINY_TOY), "--port", str(port), "--outputs", str(tmp_path / "outputs")]

    def launch(log: Path, *extra: str) -> subprocess.Popen:
        proc = subprocess.Popen([*cmd, *extra], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)

        def answers() -> bool:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        until(answers, cpu_progress(proc.pid), "the app did not start", every=0.3, limit_s=600)  # while it starts up
        return proc

    first = launch(tmp_path / "first.log")
    try:
        client = Client(url, verbose=False)
        # 30 steps: the four sections left after the second outlast the polls that see it over HTTP on a loaded
        # machine (at 12 the job could finish before the kill, and the restarted app had nothing to offer)
        client.submit(prompt="camera pans right", seconds=3, seed=9, preset=str(TINY_TOY), steps=30, api_name="/generate")
        jobs: list = []

        def two_done() -> bool:
            jobs[:] = client.predict("", api_name="/status")["jobs"]
            return bool(jobs) and jobs[0]["progress"]["sections_done"] >= 2

        until(two_done, lambda: [(j["status"], j["progress"]) for j in jobs], lambda: str(jobs))  # while its steps advance
        job_id = jobs[0]["id"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)

    second = launch(tmp_path / "second.log", "--devices", "cpu,cpu")  # restarted with two workers, it still resumes
    try:
        # The app lists interrupted jobs just after it starts serving: wait for the lines.
        log = ""

        def lines_written() -> bool:
            nonlocal log
            log = (tmp_path / "second.log").read_text()
            return job_id in log

        until(lines_written, what=lambda: log)
        assert "1 interrupted job(s)" in log and job_id in log, log
        client = Client(url, verbose=False)
        listed = client.predict("", api_name="/status")["interrupted"]
        assert [row["id"] for row in listed] == [job_id] and listed[0]["sections_done"] >= 2
        assert client.predict(job_id, api_name="/resume")["status"] in ("queued", "running")
        status: dict = {}

        def ended() -> bool:
            status.update(client.predict(job_id, api_name="/status"))
            return status["status"] in ("done", "failed", "cancelled")

        until(ended, lambda: (status["status"], status["progress"]), lambda: str(status), every=0.3)  # while its steps advance
        assert status["status"] == "done", status["message"]
        assert len(decoded(tmp_path / "outputs" / status["video"])) >= 24 and len(status["segments"]) >= 6  # relative to outputs/
        assert client.predict("", api_name="/status")["interrupted"] == []
    finally:
        second.terminate()
        second.wait(30)


def test_atomic_writes_are_fsynced_before_they_are_named(tmp_path, monkeypatch):
    from framepack_history import fsio

    target = tmp_path / "a.json"
    fsio.atomic_write_json(target, {"v": 1})
    events = []
    real_file, real_dir = fsio.fsync_file, fsio.fsync_dir
    monkeypatch.setattr(fsio, "fsync_file", lambda p: (events.append(("file", Path(p).name, target.read_text())), real_file(p)))
    monkeypatch.setattr(fsio, "fsync_dir", lambda p: (events.append(("dir", Path(p).name, target.read_text())), real_dir(p)))
    fsio.atomic_write_json(target, {"v": 2})
    old, new = json.dumps({"v": 1}, indent=2), json.dumps({"v": 2}, indent=2)
    # the data reaches the disk under the temp name, then the rename, then the folder entry
    assert events == [("file", "a.json.tmp", old), ("dir", tmp_path.name, new)]

    with pytest.raises(RuntimeError), fsio.atomic_path(target) as tmp:
        tmp.write_text('{"v": 3')  # half written when the writer fails
        raise RuntimeError("the writer failed")
    assert json.loads(target.read_text()) == {"v": 2} and sorted(tmp_path.iterdir()) == [target]
    with fsio.atomic_path(tmp_path / "v.mp4", keep_suffix=True) as tmp:  # ffmpeg picks the format by extension
        assert tmp.name == "v.part.mp4"
        tmp.write_bytes(b"x")
    assert (tmp_path / "v.mp4").read_bytes() == b"x"


class _PlanRecorder:
    """A memory manager stand-in that records the plans asked of it."""

    def __init__(self) -> None:
        self.plans: list[dict] = []

    def prepare(self, preset, seconds, **kw) -> str:
        self.plans.append({"seconds": seconds, "max_tokens": preset.history.max_tokens,
                           "guidance": preset.history.guidance, "merge": preset.history.merge, **kw})
        return ""

    def phase(self, name, section=None):
        from contextlib import nullcontext

        return nullcontext()


def test_a_resumed_job_is_planned_as_its_start_was(toy_pipeline, tmp_path):
    """After a restart the memory manager plans the job's own request (length, mode, cap, size), not its first plan."""
    from framepack_history.jobs.render import render

    request = GenerationRequest(prompt="0s: camera pans right; 2s: camera holds", seconds=4, seed=2, steps=1,
                                max_history_tokens=160, history_guidance=1.5, history_merge="oldest")
    job = CrashingJobDir(tmp_path / "job", "before_cleanup", section=2)
    job.create(request, toy_pipeline.preset, out=tmp_path / "v.mp4")
    recorder = _PlanRecorder()
    toy_pipeline.memory = recorder
    try:
        with pytest.raises(_Crash):
            render(toy_pipeline, request, tmp_path / "v.mp4", job.root / "segments", job=job)
        started = list(recorder.plans)
        gen, _ = JobDir(job.root).restore(toy_pipeline)
    finally:
        toy_pipeline.memory = None
    assert gen.next_section == 2 and len(started) == 1
    assert recorder.plans[1:] == started  # the same plan again, from the saved request alone
    assert started[0]["seconds"] == 4 and started[0]["max_tokens"] == 160 and started[0]["guidance"] == 1.5
    assert started[0]["merge"] == "oldest" != toy_pipeline.preset.history.merge  # the request's rule is planned
