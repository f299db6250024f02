"""Jobs, the server-side job store and the worker threads that own the devices.

* Jobs and their store live in :mod:`.store`.
* The :class:`Worker`'s threads are the only ones that touch models: one
  :class:`~.lanes.Lane` per device (one by default). It is a thin facade over
  parts with one job each: :class:`~.queue.JobQueue` (FIFO order, a
  maximum size, cancelling what has not started; shared by the lanes),
  :class:`~.model_cache.ModelCache` (models loaded lazily when a job first
  needs them, kept LRU; one per lane), :class:`~.runner.JobRunner`
  (runs one job: progress, previews, status) and :class:`~.lanes.LanePolicy`
  (when a lane takes a job, and when it gives its models back: idle for
  ``--unload-after``, or the queue paused). Cancelling raises :class:`~framepack_history.errors.Cancelled`
  from the step callback; a bad job fails alone and the worker goes on.
* Every job also has a job folder under ``jobs_dir`` (:class:`~.checkpoint.JobDir`):
  request, preset and a checkpoint after every section, so a job whose
  process died can be resumed (:meth:`Worker.resume`). Segments and videos
  stay in ``outputs/``; the job folders are never served by the page.

This module imports no torch at import time, so the UI can use it freely.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from framepack_history.config.presets import Preset, load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.jobs.admission import (
    admit_request,
    check_kept_keyframes,
    keep_inputs,
    refuse_new_cuts,
    refuse_new_keyframes,
)
from framepack_history.jobs.checkpoint import REQUEST, JobDir, interrupted_jobs
from framepack_history.jobs.extend import extend_job
from framepack_history.jobs.lanes import Lane, LanePolicy
from framepack_history.jobs.model_cache import ModelCache
from framepack_history.jobs.queue import JobQueue
from framepack_history.jobs.recall import Inspector
from framepack_history.jobs.runner import JobRunner, record_status
from framepack_history.jobs.store import STATUSES, TERMINAL, Job, JobSpec, JobStore, Progress, new_job_id
from framepack_history.jobs.tools import finished_video, keep_uploads, output_of, tool_spec, write_record

__all__ = ["STATUSES", "TERMINAL", "Job", "JobSpec", "JobStore", "Lane", "Progress", "Worker"]

log = logging.getLogger(__name__)


class Worker:
    """The threads that own models and devices: a facade over the queue, the model caches and the runners.

    One worker thread (a :class:`Lane`) per entry of ``devices``, all taking jobs from one FIFO queue, so
    jobs start in the order they were queued and as many run at once as there are devices. ``devices=None``
    is one lane on whatever device each job's preset names (the single-device app).
    """

    def __init__(
        self,
        outputs: str | Path = "outputs",
        store: JobStore | None = None,
        max_queue: int = 16,
        preview_every_s: float = 0.5,
        max_models: int = 2,
        jobs_dir: str | Path | None = None,
        devices: list[str] | None = None,
        unload_after_s: float = 0.0,
    ) -> None:
        self.outputs = Path(outputs)
        #: job folders (checkpoints); beside outputs/, not inside it, so the page never serves them
        self.jobs_dir = Path(jobs_dir) if jobs_dir is not None else self.outputs.resolve().parent / "jobs"
        self.store = store or JobStore()
        self.queue = JobQueue(max_queue)

        def runner_for(models: ModelCache, device: str | None) -> JobRunner:
            return JobRunner(self.store, self.job_dir, models.pipeline_for, preview_every_s,
                             stopping=lambda: self.queue.closed, device=device)

        self.lanes = [Lane(i, d, runner_for, max_models) for i, d in enumerate(devices or [None], 1)]
        #: when a lane takes a job, and when it gives its models back (idle for ``unload_after_s``, or paused)
        self.policy = LanePolicy(self.queue, self.store, unload_after_s, also_free=self._drop_inspector)
        self.models = self.lanes[0].models  # the first lane's (single-device callers and tests)
        self.runner = self.lanes[0].runner
        self._lock = threading.Lock()
        self._owners: dict[str, str | None] = {}  # job id -> owner, read once from its job folder
        self._inspector = None  # the memory inspector's own CPU model, loaded on the first recall

    @property
    def devices(self) -> list[str | None]:
        return [lane.device for lane in self.lanes]

    @property
    def loads(self) -> int:
        """How many times a backbone was loaded, by all lanes (tests check the cache)."""
        return sum(lane.models.loads for lane in self.lanes)

    @property
    def unload_after_s(self) -> float:
        """Seconds with nothing to take after which a lane unloads its models (0 = never; app.py's --unload-after)."""
        return self.policy.unload_after_s

    @property
    def max_queue(self) -> int:
        return self.queue.max_size

    @property
    def preview_every_s(self) -> float:
        return self.runner.preview_every_s

    def pipeline_for(self, preset: Preset, spec: JobSpec):
        """The cached pipeline for ``spec`` (worker thread only)."""
        return self.models.pipeline_for(preset, spec)

    # ---------------------------------------------------------------- control
    def start(self) -> Worker:
        with self._lock:
            idle = [lane for lane in self.lanes if lane.thread is None or not lane.thread.is_alive()]
            if len(idle) == len(self.lanes):
                self.queue.reopen()
            for lane in idle:
                name = "framepack-worker" if len(self.lanes) == 1 else f"framepack-worker-{lane.index}"
                lane.thread = threading.Thread(target=self._loop, args=(lane,), name=name, daemon=True)
                lane.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every job and end the threads (tests, shutdown).

        Unlike a user's cancel, their job folders say "interrupted": the next
        start of the app offers them for resume.
        """
        self.queue.close()
        for job in self.store.jobs():
            if not job.terminal:
                self.cancel(job.id)
                if job.status == "cancelled":  # it was queued: never started
                    record_status(self.job_dir(job.id), "interrupted", "the server stopped before it started")
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))

    def submit(self, spec: JobSpec) -> Job:
        """Validate (cheaply: no file reads, no weights) and queue a job.

        Raises :class:`InputError` for a bad preset, request or rate, or a
        full queue; nothing is queued then.
        """
        preset = load_preset(spec.preset)
        self.queue.check_room()
        self._borrow_folder(spec.request)
        admit_request(spec.request, preset, spec.encoder_rate)
        job_id = new_job_id()
        job = Job(job_id, spec, self.outputs / dt.date.today().isoformat() / job_id)

        def admit() -> None:
            keep_inputs(spec.request, job.folder / "inputs")
            try:  # written before it is queued: a restart finds queued jobs too
                self.job_dir(job_id).create(spec.request, preset, out=job.folder / "video.mp4", segments_dir=job.folder / "segments",
                                            preset_ref=spec.preset, encoder_rate=spec.encoder_rate, folder=str(job.folder),
                                            owner=spec.owner, **({"sweep": spec.sweep} if spec.sweep else {}))
            except OSError as e:
                raise InputError("job", f"could not write its job folder ({e.strerror or e})") from None
            self.store.add(job)

        self.queue.put(job_id, admit)
        return job

    def _borrow_folder(self, request: GenerationRequest) -> None:
        """A request's ``borrow``: a job id from a client becomes that job's folder (no other folder is taken)."""
        if request.borrow is None:
            return
        given = str(request.borrow)
        try:
            if Path(given).resolve().parent == self.jobs_dir.resolve():  # already resolved (a job queued again)
                return
        except (OSError, ValueError):
            pass
        try:
            request.borrow = str(self.job_dir(given.strip()).root)
        except InputError as e:
            raise InputError("--borrow", e.message) from None

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or a started one at its next denoising step."""
        job = self.store.get(job_id)
        if self.queue.remove(job_id):
            self.store.update(job, status="cancelled", message="cancelled before it started", finished=time.time())
            record_status(self.job_dir(job_id), "cancelled", job.message)
        elif not job.terminal:  # running, or just taken from the queue: the runner checks before each step
            job.cancel_requested.set()
            self.store.update(job, message="cancelling at the next step…")
        return job

    def steer(self, job_id: str, prompt: str) -> Job:
        """Post a new storyboard for a queued or running job; the sections not yet started follow it.

        Checked as a new job's storyboard would be (:class:`InputError` otherwise); the worker
        takes it before its next section and records it in the job folder (:mod:`.steering`).
        """

        job = self.store.get(job_id)
        if job.terminal:  # checked again under the lock, where it counts
            raise InputError("job", f"{job_id} is {job.status}; only a queued or running job can be steered")
        if not isinstance(prompt, str):
            raise InputError("--prompt", f"must be text (got {type(prompt).__name__})")
        jd = self.job_dir(job_id)
        preset = jd.info().preset if jd.exists() else load_preset(job.spec.preset)
        refuse_new_keyframes(prompt, "a storyboard edit")
        refuse_new_cuts(prompt, "a storyboard edit")
        dataclasses.replace(job.spec.request, prompt=prompt).validate(preset)  # the job's keyframes go on

        def post(j: Job) -> None:  # under the lock the worker takes edits with (JobRunner._take_steer)
            if j.terminal:  # ended since the check above: nothing would take the edit
                raise InputError("job", f"{job_id} is {j.status}; only a queued or running job can be steered")
            if j.steer_closed:
                # an edit is taken before a section starts: none is left for it once the last one has
                n = j.progress.sections_total
                which = f" ({n} of {n})" if n else ""
                raise InputError("job", f"{job_id} is making its last section{which}; "
                                        "no section is left for a storyboard edit")
            j.steer_pending = prompt
            j.message = "storyboard edit: the next section follows it"

        self.store.mutate(job, post)
        return job

    def queued(self) -> list[str]:
        return self.queue.ids()

    # ------------------------------------------------------- memory inspector
    def recall(self, job_id: str, at: float, steps: int | None = None):
        """The frame at ``at`` s recalled from a job's history embedding (see :mod:`.recall`).

        Runs in the caller's thread, on the CPU, from the job's last checkpoint with a model of its
        own: never this worker's device or the models it holds, so a running job is not disturbed.
        """

        jd = self.job_dir(job_id)
        if not jd.exists():
            raise InputError("job", f"no job {job_id!r} has a folder under {self.jobs_dir}")
        with self._lock:
            if self._inspector is None:
                self._inspector = Inspector()
        return self._inspector.recall(jd.root, at, steps)

    # ------------------------------------------------------------- resuming
    def job_dir(self, job_id: str) -> JobDir:
        """The job folder of ``job_id`` (ids come from clients: plain names only)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}", job_id or ""):
            raise InputError("job", f"{job_id!r} is not a job id")
        return JobDir(self.jobs_dir / job_id)

    def interrupted(self) -> list[dict[str, Any]]:
        """Jobs left unfinished by a process that is gone, in queue order: id, prompt, progress."""
        mine = {j.id for j in self.store.jobs()}
        rows = []
        for jd in interrupted_jobs(self.jobs_dir, exclude=mine):
            try:
                info, ck = jd.info(), jd.checkpoint()
            except InputError:
                continue
            rows.append({"id": jd.id, "prompt": info.request.prompt, "seconds": info.request.seconds,
                         "sections_done": ck.get("next_section", 0), "sections_total": ck.get("total_sections"),
                         "status": ck.get("status"), "folder": str(jd.root), "owner": info.extra.get("owner")})
        return rows

    def resume(self, job_id: str) -> Job:
        """Queue an interrupted job again; it continues after its last finished section."""
        jd = self.job_dir(job_id)
        if not jd.exists():
            raise InputError("job", f"no job folder {job_id!r} in {self.jobs_dir}")
        info = jd.info()
        if jd.status == "done":
            raise InputError("job", f"{job_id} is already finished ({info.out})")
        if jd.owner_alive():
            raise InputError("job", f"{job_id} is being run by another process")
        check_kept_keyframes(info.request)
        folder = Path(info.extra.get("folder") or info.out.parent)
        job = Job(job_id, JobSpec(info.request, info.preset_ref, info.encoder_rate, info.extra.get("owner")), folder,
                  message="resumes after its last finished section")

        def admit() -> None:
            if any(j.id == job_id and not j.terminal for j in self.store.jobs()):
                raise InputError("job", f"{job_id} is already queued or running")
            jd.set_status("queued", job.message)  # this process owns it now
            self.store.add(job)

        self.queue.put(job_id, admit)
        return job

    # ------------------------------------------------------------- owners
    def owner_of(self, job_id: str) -> str | None:
        """Who queued ``job_id`` (``None``: nobody logged in, or no such job); from its job folder after a restart."""
        for job in self.store.jobs():
            if job.id == job_id:
                return job.spec.owner
        with self._lock:
            if job_id in self._owners:
                return self._owners[job_id]
        try:
            data = json.loads((self.job_dir(job_id).root / REQUEST).read_text(encoding="utf-8"))
        except (InputError, OSError, ValueError):
            return None  # no such job (not remembered: it may be created later)
        owner = data.get("owner") if isinstance(data, dict) else None
        with self._lock:
            self._owners[job_id] = owner  # written once, when the job was queued
        return owner

    def owner_of_file(self, path: str | Path) -> str | None:
        """The owner of a file under ``outputs/`` (``outputs/DATE/JOB/...``); ``None`` for anything else."""
        try:
            parts = Path(path).resolve().relative_to(self.outputs.resolve()).parts
        except (ValueError, OSError):
            return None
        return self.owner_of(parts[1]) if len(parts) >= 3 else None

    def extend(self, job_id: str, prompt: str | None, seconds: float, owner: str | None = None) -> Job:
        """Queue a new job that continues finished job ``job_id`` from its saved history for ``seconds`` more.

        Its video starts with the old one; ``prompt`` is the storyboard of the whole video (times
        from its start; None = the old job's), which the new sections follow (:mod:`.extend`).
        """

        src = self.job_dir(job_id)
        if not src.exists():
            raise InputError("job", f"no job folder {job_id!r} in {self.jobs_dir} (a video made without a job folder "
                                    "cannot be extended; continue it with 'Video to continue')")
        info = src.info()
        prompt = info.request.prompt if prompt is None else prompt
        if not isinstance(prompt, str):
            raise InputError("--prompt", f"must be text (got {type(prompt).__name__})")
        self.queue.check_room()
        new_id = new_job_id()
        folder = self.outputs / dt.date.today().isoformat() / new_id
        job: list[Job] = []

        def admit() -> None:
            request = extend_job(src, self.job_dir(new_id), prompt, seconds, out=folder / "video.mp4",
                                 segments_dir=folder / "segments", folder=str(folder), owner=owner)
            job.append(Job(new_id, JobSpec(request, info.preset_ref, info.encoder_rate, owner=owner), folder,
                           message=f"extends {job_id} from its saved history"))
            self.store.add(job[0])

        self.queue.put(new_id, admit)
        return job[0]

    # ------------------------------------------------------------- finishing tools
    def submit_tool(self, tool: str, settings: dict[str, Any], job_ids: list[str] = (), files: list[str] = (),
                    owner: str | None = None, preset: str | None = None) -> Job:
        """Queue a finishing tool (:mod:`.tools`) on finished jobs' videos, then uploaded ``files``, in that order.

        Checked before it is queued (:class:`InputError` naming the field); the lane runs it in queue order
        with the generation jobs, into a folder of its own; the sources are never written to. ``preset``: whose
        device and memory budget a learned method runs with where the lane names no device (default toy-cpu).
        """
        sources = [{"job": i, "file": str(finished_video(self.store, self.job_dir(i), i))} for i in job_ids]
        sources += [{"job": None, "file": str(f)} for f in files]
        self.queue.check_room()
        spec = tool_spec(tool, sources, settings, owner, preset=preset)
        job_id = new_job_id()
        job = Job(job_id, spec, self.outputs / dt.date.today().isoformat() / job_id)

        def admit() -> None:
            try:
                keep_uploads(spec, job.folder / "inputs")
                write_record(self.job_dir(job_id), spec, output_of(job), job.folder)
            except OSError as e:
                raise InputError("job", f"could not write its job folder ({e.strerror or e})") from None
            self.store.add(job)

        self.queue.put(job_id, admit)
        return job

    # ----------------------------------------------------------------- thread
    # ------------------------------------------------------------- pausing
    @property
    def paused(self) -> bool:
        return self.queue.paused

    def pause_queue(self) -> None:
        """Hold the queue: running jobs finish, no queued job starts, and each idle lane unloads its models."""
        self.queue.pause()

    def resume_queue(self) -> None:
        """Go on with the queued jobs, in their order (the first one loads its models again)."""
        self.queue.unpause()

    def queue_state(self) -> str:
        """One line for the Queue tab: whether the queue is held, what still runs and whether the models are loaded."""
        return self.policy.state(self.lanes)

    def _drop_previews(self, keep: Job) -> None:
        """Ended jobs other than ``keep`` forget their last preview (a frame of pixels each): their video shows them now."""
        def drop(j: Job) -> None:
            j.preview = None

        for j in self.store.jobs():
            if j is not keep and j.terminal and j.preview is not None:
                self.store.mutate(j, drop, notify=False)

    def _drop_inspector(self) -> None:
        """A lane unloaded with no job running: the recall model goes too (it loads again on the next recall)."""
        if self._inspector is not None:
            with self._lock:
                self._inspector = None

    def _loop(self, lane: Lane) -> None:
        if lane.device and lane.device.startswith("cuda:"):  # CUDA's current device is per thread: side streams use it
            import torch  # torch: kept off the page's import path

            torch.cuda.set_device(torch.device(lane.device))
        while (job_id := self.policy.take(lane)) is not None:
            job = self.store.get(job_id)
            self.store.update(job, status="running", started=time.time(), message="loading models…", device=lane.device,
                              worker=lane.index)
            try:
                lane.runner.run(job)
            except BaseException:  # the worker must outlive any job
                log.exception("job %s crashed the worker loop", job.id)
                if not job.terminal:
                    self.store.update(job, status="failed", message="internal error (see the server log)", finished=time.time())
            finally:
                self._drop_previews(keep=job)
                job = None  # the job's last references from this frame go before the memory is given back
                lane.models.end_job()
