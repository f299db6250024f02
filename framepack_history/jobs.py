"""Jobs, the server-side job store and the one worker thread that owns the device.

* Jobs and their store live in :mod:`.job_store` (re-exported here).
* The :class:`Worker` is the only thread that touches models. It is a thin
  facade over three parts with one job each: :class:`~.job_queue.JobQueue`
  (FIFO order, a maximum size, cancelling what has not started),
  :class:`~.model_cache.ModelCache` (models loaded lazily when a job first
  needs them, kept LRU) and :class:`~.job_runner.JobRunner` (runs one job:
  progress, previews, status). Cancelling raises :class:`~.sampling.Cancelled`
  from the step callback; a bad job fails alone and the worker goes on.
* Every job also has a job folder under ``jobs_dir`` (:class:`~.checkpoint.JobDir`):
  request, preset and a checkpoint after every section, so a job whose
  process died can be resumed (:meth:`Worker.resume`). Segments and videos
  stay in ``outputs/``; the job folders are never served by the page.

This module imports no torch at import time, so the UI can use it freely.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from .checkpoint import JobDir, interrupted_jobs
from .config import GenerationRequest, InputError, Preset, load_preset
from .job_queue import JobQueue
from .job_runner import JobRunner, record_status
from .job_store import STATUSES, TERMINAL, Job, JobSpec, JobStore, Progress, new_job_id
from .model_cache import ModelCache

__all__ = ["STATUSES", "TERMINAL", "Job", "JobSpec", "JobStore", "Progress", "Worker", "past_results", "plan_lines"]

log = logging.getLogger(__name__)

def check_inputs(request: GenerationRequest, preset: Preset, fields: tuple[str, str] = ("start image", "video to continue")) -> None:
    """Read the start image / probe the video now, so a bad file fails at submit; record the size it gets."""
    from .buckets import choose_size, source_size

    source = source_size(request, fields)
    if request.width is None or request.height is None:
        request.width, request.height = choose_size(preset, source, fields[1] if request.continue_video else fields[0])
    from .lora.check import check_loras

    check_loras(request, preset)  # found, safetensors, fits the DiT: recorded with their hashes


def keep_inputs(request: GenerationRequest, folder: Path) -> None:
    """Copy uploads into the job folder: upload caches are emptied, jobs are not."""
    import shutil

    for name in ("image", "continue_video"):
        src = getattr(request, name)
        if src:
            folder.mkdir(parents=True, exist_ok=True)
            dst = folder / f"{name}{Path(src).suffix.lower()}"
            shutil.copyfile(src, dst)
            setattr(request, name, str(dst))


class Worker:
    """The one thread that owns models and device: a facade over the queue, the model cache and the runner."""

    def __init__(
        self,
        outputs: str | Path = "outputs",
        store: JobStore | None = None,
        max_queue: int = 16,
        preview_every_s: float = 0.5,
        max_models: int = 2,
        jobs_dir: str | Path | None = None,
    ) -> None:
        self.outputs = Path(outputs)
        #: job folders (checkpoints); beside outputs/, not inside it, so the page never serves them
        self.jobs_dir = Path(jobs_dir) if jobs_dir is not None else self.outputs.resolve().parent / "jobs"
        self.store = store or JobStore()
        self.queue = JobQueue(max_queue)
        self.models = ModelCache(max_models)  # touched only by the worker thread
        self.runner = JobRunner(self.store, self.job_dir, self.models.pipeline_for, preview_every_s,
                                stopping=lambda: self.queue.closed)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loads(self) -> int:
        """How many times a backbone was loaded (tests check the cache)."""
        return self.models.loads

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
            if self._thread is None or not self._thread.is_alive():
                self.queue.reopen()
                self._thread = threading.Thread(target=self._loop, name="framepack-worker", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every job and end the thread (tests, shutdown).

        Unlike a user's cancel, their job folders say "interrupted": the next
        start of the app offers them for resume.
        """
        self.queue.close()
        for job in self.store.jobs():
            if not job.terminal:
                self.cancel(job.id)
                if job.status == "cancelled":  # it was queued: never started
                    record_status(self.job_dir(job.id), "interrupted", "the server stopped before it started")
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, spec: JobSpec) -> Job:
        """Validate (cheaply: no file reads, no weights) and queue a job.

        Raises :class:`InputError` for a bad preset, request or rate, or a
        full queue; nothing is queued then.
        """
        preset = load_preset(spec.preset)
        spec.request.validate(preset)
        rates = [preset.model.encoder_rate] if preset.model.encoder else preset.model.encoder_rates
        if spec.encoder_rate is not None and spec.encoder_rate not in rates:
            raise InputError("encoder rate", f"{spec.encoder_rate!r} is not offered by {preset.name} (choices: {', '.join(rates)})")
        self.queue.check_room()
        check_inputs(spec.request, preset)
        job_id = new_job_id()
        job = Job(job_id, spec, self.outputs / dt.date.today().isoformat() / job_id)

        def admit() -> None:
            keep_inputs(spec.request, job.folder / "inputs")
            try:  # written before it is queued: a restart finds queued jobs too
                self.job_dir(job_id).create(spec.request, preset, out=job.folder / "video.mp4", segments_dir=job.folder / "segments",
                                            preset_ref=spec.preset, encoder_rate=spec.encoder_rate, folder=str(job.folder))
            except OSError as e:
                raise InputError("job", f"could not write its job folder ({e.strerror or e})") from None
            self.store.add(job)

        self.queue.put(job_id, admit)
        return job

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

    def queued(self) -> list[str]:
        return self.queue.ids()

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
                         "status": ck.get("status"), "folder": str(jd.root)})
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
        folder = Path(info.extra.get("folder") or info.out.parent)
        job = Job(job_id, JobSpec(info.request, info.preset_ref, info.encoder_rate), folder,
                  message="resumes after its last finished section")

        def admit() -> None:
            if any(j.id == job_id and not j.terminal for j in self.store.jobs()):
                raise InputError("job", f"{job_id} is already queued or running")
            jd.set_status("queued", job.message)  # this process owns it now
            self.store.add(job)

        self.queue.put(job_id, admit)
        return job

    # ----------------------------------------------------------------- thread
    def _loop(self) -> None:
        while (job_id := self.queue.take()) is not None:
            job = self.store.get(job_id)
            self.store.update(job, status="running", started=time.time(), message="loading models…")
            try:
                self.runner.run(job)
            except BaseException:  # the worker must outlive any job
                log.exception("job %s crashed the worker loop", job.id)
                if not job.terminal:
                    self.store.update(job, status="failed", message="internal error (see the server log)", finished=time.time())


# ------------------------------------------------------------- page helpers
def past_results(outputs: str | Path, limit: int = 24) -> list[tuple[str, str]]:
    """``(video path, caption)`` of finished videos under ``outputs``, newest first."""
    root = Path(outputs)
    found = []
    for sc in root.glob("*/**/*.json"):
        if "segments" in sc.parts or sc.name == "job.json":
            continue
        video = sc.with_suffix(".mp4")
        if video.is_file():
            found.append((sc.stat().st_mtime, video, sc))
    items = []
    for _, video, sc in sorted(found, reverse=True)[:limit]:
        try:
            prompt = json.loads(sc.read_text())["request"]["prompt"]
        except (OSError, ValueError, KeyError, TypeError):
            prompt = ""
        items.append((str(video), (prompt or video.parent.name)[:80]))
    return items


def plan_lines(preset_name: str, encoder_rate: str | None, seconds: float, history_tokens: int | None = None,
               history_mode: str | None = None, size: tuple[int, int] | None = None) -> list[str]:
    """What the device will hold: history tokens now, for the whole request (at ``size``, its bucket), and the memory plan."""
    now = [f"history tokens now: **{history_tokens}**"] if history_tokens is not None else []
    return now + list(_plan_lines(preset_name, encoder_rate, float(seconds), history_mode, size))


@functools.lru_cache(maxsize=64)
def _plan_lines(preset_name: str, encoder_rate: str | None, seconds: float, history_mode: str | None,
                size: tuple[int, int] | None = None) -> tuple[str, ...]:
    """Cached: the memory planner traces models on the meta device (seconds for the large presets)."""
    from .budget import history_budget

    preset = load_preset(preset_name)
    rate = encoder_rate or preset.model.encoder_rate
    mode = history_mode or preset.history.mode
    budget = history_budget(preset, seconds=max(seconds, 1.0))
    row = budget["rates"].get(rate) or next(iter(budget["rates"].values()))
    if mode == "encoder":
        tokens = (f"at {seconds:g} s: **{row['tokens']}** history tokens (rate {rate}, "
                  f"{row['tokens_per_second']:.1f}/s, 1/{row['compression']:.0f} of the raw DiT tokens)")
        lines = [tokens]
    else:
        lines = [f"history mode **{mode}**: no history tokens"]
    hw = preset.hardware
    try:
        from .memory import plan

        lines.append(plan(preset, seconds, history_mode=mode, rate=rate, size=size).summary())
    except Exception:  # the plan is advice: its absence or failure must not break the page
        log.warning("no memory plan for %s", preset.name, exc_info=True)
        budget_gib = f"{hw.device_budget_gib:g} GiB" if hw.device_budget_gib else "whatever is free"
        lines.append(f"device: {hw.device} ({hw.dtype}), budget {budget_gib}")
    return tuple(lines)
