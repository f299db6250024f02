"""Jobs, the server-side job store and the one worker thread that owns the device.

* Jobs and their store live in :mod:`.job_store` (re-exported here).
* The :class:`Worker` is the only thread that touches models: it loads them
  lazily when a job first needs them, caches them, and runs jobs one at a
  time in FIFO order. Cancelling raises :class:`~.sampling.Cancelled` from
  the step callback; a bad job fails alone and the worker goes on.
* Every job also has a job folder under ``jobs_dir`` (:class:`~.checkpoint.JobDir`):
  request, preset and a checkpoint after every section, so a job whose
  process died can be resumed (:meth:`Worker.resume`). Segments and videos
  stay in ``outputs/``; the job folders are never served by the page.

This module imports no torch at import time, so the UI can use it freely.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from .checkpoint import JobDir, interrupted_jobs
from .config import GenerationRequest, InputError, Preset, load_preset
from .job_store import STATUSES, TERMINAL, Job, JobSpec, JobStore, Progress, new_job_id

__all__ = ["STATUSES", "TERMINAL", "Job", "JobSpec", "JobStore", "Progress", "Worker", "past_results", "plan_lines"]

log = logging.getLogger(__name__)

def check_inputs(request: GenerationRequest, preset: Preset, fields: tuple[str, str] = ("start image", "video to continue")) -> None:
    """Read the start image / probe the video now, so a bad file fails at submit."""
    from .video import probe_video, read_image

    if request.image:
        read_image(request.image, preset.video.width, preset.video.height, field=fields[0])
    if request.continue_video:
        probe_video(request.continue_video, field=fields[1])


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
    """One thread that owns models and device; a FIFO queue of jobs."""

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
        self.max_queue = max_queue
        self.preview_every_s = preview_every_s
        self.max_models = max_models
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        # model cache, touched only by the worker thread
        self._backbones: OrderedDict[str, Any] = OrderedDict()
        self._pipelines: dict[tuple[str, str | None, bool], Any] = {}
        self.loads = 0  # how many times a backbone was loaded (tests check the cache)

    # ---------------------------------------------------------------- control
    def start(self) -> Worker:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stop = False
                self._thread = threading.Thread(target=self._loop, name="framepack-worker", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every job and end the thread (tests, shutdown).

        Unlike a user's cancel, their job folders say "interrupted": the next
        start of the app offers them for resume.
        """
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for job in self.store.jobs():
            if not job.terminal:
                self.cancel(job.id)
                if job.status == "cancelled":  # it was queued: never started
                    self._set_job_dir_status(job, "interrupted", "the server stopped before it started")
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
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise InputError("queue", f"is full ({len(self._queue)} jobs waiting); try again when one finishes")
        check_inputs(spec.request, preset)
        with self._cond:
            job_id = new_job_id()
            job = Job(job_id, spec, self.outputs / dt.date.today().isoformat() / job_id)
            keep_inputs(spec.request, job.folder / "inputs")
            try:  # written before it is queued: a restart finds queued jobs too
                self.job_dir(job_id).create(spec.request, preset, out=job.folder / "video.mp4", segments_dir=job.folder / "segments",
                                            preset_ref=spec.preset, encoder_rate=spec.encoder_rate, folder=str(job.folder))
            except OSError as e:
                raise InputError("job", f"could not write its job folder ({e.strerror or e})") from None
            self.store.add(job)
            self._queue.append(job_id)
            self._cond.notify_all()
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or a running one at its next denoising step."""
        job = self.store.get(job_id)
        with self._cond:
            if job.status == "queued" and job_id in self._queue:
                self._queue.remove(job_id)
                self.store.update(job, status="cancelled", message="cancelled before it started", finished=time.time())
                self._set_job_dir_status(job, "cancelled", job.message)
                return job
        if job.status == "running":
            job.cancel_requested.set()
            self.store.update(job, message="cancelling at the next step…")
        return job

    def queued(self) -> list[str]:
        with self._cond:
            return list(self._queue)

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
        with self._cond:
            known = self.store.jobs()
            if any(j.id == job_id and not j.terminal for j in known):
                raise InputError("job", f"{job_id} is already queued or running")
            if len(self._queue) >= self.max_queue:
                raise InputError("queue", f"is full ({len(self._queue)} jobs waiting); try again when one finishes")
            folder = Path(info.extra.get("folder") or info.out.parent)
            job = Job(job_id, JobSpec(info.request, info.preset_ref, info.encoder_rate), folder,
                      message="resumes after its last finished section")
            jd.set_status("queued", job.message)  # this process owns it now
            self.store.add(job)
            self._queue.append(job_id)
            self._cond.notify_all()
        return job

    def _set_job_dir_status(self, job: Job, status: str, message: str = "") -> None:
        try:
            jd = self.job_dir(job.id)
            if jd.exists():
                jd.set_status(status, message)
        except (InputError, OSError):
            log.warning("could not record %s in the job folder of %s", status, job.id, exc_info=True)

    # ----------------------------------------------------------------- thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or bool(self._queue))
                if self._stop:
                    return
                job = self.store.get(self._queue.popleft())
                self.store.update(job, status="running", started=time.time(), message="loading models…")
            try:
                self._run(job)
            except BaseException:  # the worker must outlive any job
                log.exception("job %s crashed the worker loop", job.id)
                if not job.terminal:
                    self.store.update(job, status="failed", message="internal error (see the server log)", finished=time.time())

    def pipeline_for(self, preset: Preset, spec: JobSpec):
        """The cached pipeline for (model spec + hardware, encoder rate, needs an encoder)."""
        from .loading import build_encoder, fits_beside, load_for_device
        from .pipeline import Pipeline

        mode = spec.request.history_mode or preset.history.mode
        needs = mode == "encoder"
        rate = (spec.encoder_rate or preset.model.encoder_rate) if needs else None
        model_key = json.dumps([dataclasses.asdict(preset.model), dataclasses.asdict(preset.hardware)], sort_keys=True)
        key = (model_key, rate, needs)
        if model_key not in self._backbones:
            # evict the least recently used backbone (one large one per device unless the budget holds two)
            while self._backbones and (len(self._backbones) >= self.max_models
                                       or not fits_beside(preset, list(self._backbones.values()))):
                old, (_, memory) = self._backbones.popitem(last=False)
                if memory is not None:
                    memory.unload()
                for k in [k for k in self._pipelines if k[0] == old]:
                    del self._pipelines[k]
                _free_device_memory()
            self._backbones[model_key] = load_for_device(preset)  # (backbone, memory manager or None)
            self.loads += 1
        self._backbones.move_to_end(model_key)
        if key not in self._pipelines:
            backbone, memory = self._backbones[model_key]
            encoder = build_encoder(preset.model, backbone, rate) if needs else None
            self._pipelines[key] = Pipeline(backbone, encoder, preset, memory=memory)
        pipe = self._pipelines[key]
        pipe.preset = preset  # sampling/video defaults may have changed; the weights did not
        return pipe

    def _run(self, job: Job) -> None:
        from .backbones.base import WeightsNotFoundError
        from .checkpoint import OutOfMemoryFailure, Resumed, free_device_memory
        from .sampling import Cancelled

        store = self.store
        spec = job.spec
        t_start = time.perf_counter()
        jd = self.job_dir(job.id)
        try:
            preset = jd.info().preset if jd.exists() else load_preset(spec.preset)  # as it was when the job was queued
            pipeline = self.pipeline_for(preset, spec)
            job.timings["load_s"] = round(time.perf_counter() - t_start, 3)
        except (InputError, WeightsNotFoundError) as e:
            store.update(job, status="failed", message=str(e), finished=time.time())
            self._set_job_dir_status(job, "failed", str(e))
            return
        if job.cancel_requested.is_set():
            store.update(job, status="cancelled", message="cancelled before the first section", finished=time.time())
            return
        store.update(job, message="")
        clock = _Clock(self.preview_every_s)
        sections: list[dict] = []

        def check_cancel() -> None:
            if job.cancel_requested.is_set():
                raise Cancelled()

        def on_step(index: int, info: dict) -> None:
            check_cancel()
            now = time.perf_counter()
            preview = None
            if now - clock.last_preview >= clock.every:  # previews cost a decode: throttled
                clock.last_preview = now
                preview = pipeline.preview(index, info).image

            def change(j: Job) -> None:
                p = j.progress
                p.section, p.step, p.steps = index, info["step"], info["total"]
                p.eta_s = clock.eta(p, now)
                if preview is not None:
                    j.preview = preview
                    j.preview_version += 1

            store.mutate(job, change, notify=preview is not None or info["step"] == info["total"])

        def on_event(ev) -> None:
            from .pipeline import ContextFrames, SectionDone, SectionStarted

            if isinstance(ev, Resumed):  # continuing from the checkpoint: what is on disk is the truth
                clock.context_frames = ev.context_frames
                sections[:] = [{"index": s.get("index"), "history_tokens": s.get("history_tokens")} for s in ev.sections]

                def change(j: Job) -> None:
                    j.segments = list(ev.segments)
                    p = j.progress
                    p.sections_done, p.section, p.step, p.frames = ev.sections_done, ev.sections_done, 0, ev.frames
                    p.history_tokens = ev.history_tokens
                    p.sections_total = ev.total or p.sections_total

                store.mutate(job, change)
            elif isinstance(ev, ContextFrames):
                clock.context_frames = len(ev.frames)
            elif isinstance(ev, SectionStarted):
                clock.section_started()

                def change(j: Job) -> None:
                    j.progress.section, j.progress.sections_total, j.progress.step = ev.index, ev.total, 0

                store.mutate(job, change)
            elif isinstance(ev, SectionDone):
                sections.append({"index": ev.index, "history_tokens": ev.history_tokens})

                def change(j: Job) -> None:
                    p = j.progress
                    p.sections_done, p.frames, p.history_tokens = ev.index + 1, p.frames + len(ev.frames), ev.history_tokens
                    p.s_per_frame = clock.elapsed() / max(1, p.frames)
                    p.eta_s = clock.eta(p, time.perf_counter())

                store.mutate(job, change)
            check_cancel()

        def on_segment(path: Path) -> None:
            def change(j: Job) -> None:
                j.segments.append(path)
                j.timings.setdefault("first_segment_s", round(time.perf_counter() - t_start, 3))

            store.mutate(job, change)

        from .render import render

        out = job.folder / "video.mp4"
        try:
            if not jd.exists():  # a job queued by an older worker: give it a folder now
                jd.create(spec.request, preset, out=out, segments_dir=job.folder / "segments", preset_ref=spec.preset,
                          encoder_rate=spec.encoder_rate, folder=str(job.folder))
            render(pipeline, spec.request, out, job.folder / "segments", on_event=on_event, on_step=on_step, on_segment=on_segment,
                   job=jd)
        except Cancelled:
            self._keep_partial(job, preset, sections, job.progress.frames + clock.context_frames)
            done = job.progress.sections_done
            store.update(job, status="cancelled", message=f"cancelled after {done} of {job.progress.sections_total} sections",
                         finished=time.time())
            if self._stop:  # the server is shutting down, nobody cancelled it: resumable after a restart
                self._set_job_dir_status(job, "interrupted", "the server stopped; resume it from its last finished section")
        except (InputError, WeightsNotFoundError) as e:
            store.update(job, status="failed", message=str(e), finished=time.time())
            self._set_job_dir_status(job, "failed", str(e))
        except OutOfMemoryFailure as e:  # twice, the second time with a more conservative plan
            log.warning("job %s: %s", job.id, e)
            store.update(job, status="failed", message=str(e), finished=time.time())
            free_device_memory()  # the next job starts with the device as empty as this one found it
        except Exception as e:  # a bug or a device error: this job fails, the worker lives
            log.exception("job %s failed", job.id)
            store.update(job, status="failed", message=f"{type(e).__name__}: {e}", finished=time.time())
            free_device_memory()
        else:
            store.update(job, status="done", video=out, sidecar=out.with_suffix(".json"), message="", finished=time.time())
        self._write_job_file(job)

    def _keep_partial(self, job: Job, preset: Preset, sections: list[dict], frames: int) -> None:
        """A cancelled job keeps what it finished: segments joined without re-encoding."""
        if not job.segments:
            return
        from .render import SegmentLog, sidecar
        from .video import concat_segments, write_json

        out = job.folder / "video.mp4"
        concat_segments(job.segments, out)
        seg_log = SegmentLog(job.folder / "segments", preset.video.fps, list(job.segments), sections, frames)
        write_json(sidecar(job.spec.request, preset, seg_log, {"cancelled": True, "video": str(out)}), out.with_suffix(".json"))
        self.store.update(job, video=out, sidecar=out.with_suffix(".json"))

    def _write_job_file(self, job: Job) -> None:
        try:
            from .video import write_json

            job.folder.mkdir(parents=True, exist_ok=True)
            write_json(job.snapshot(), job.folder / "job.json")
        except OSError:
            log.warning("could not write %s/job.json", job.folder, exc_info=True)


class _Clock:
    """Timing for ETA and seconds per frame, measured over the sampling only."""

    def __init__(self, preview_every_s: float) -> None:
        self.every = preview_every_s
        self.last_preview = float("-inf")
        self.t0: float | None = None
        self.context_frames = 0

    def section_started(self) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else time.perf_counter() - self.t0

    def eta(self, p: Progress, now: float) -> float | None:
        """Remaining steps at the average pace so far (decode and writing included)."""
        if self.t0 is None or not p.steps or not p.sections_total:
            return None
        done = p.sections_done * p.steps + (p.step if p.section >= p.sections_done else 0)
        if done <= 0:
            return None
        return (now - self.t0) / done * (p.sections_total * p.steps - done)


def _free_device_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


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
               history_mode: str | None = None) -> list[str]:
    """What the device will hold: history tokens now, for the whole request, and the memory plan."""
    now = [f"history tokens now: **{history_tokens}**"] if history_tokens is not None else []
    return now + list(_plan_lines(preset_name, encoder_rate, float(seconds), history_mode))


@functools.lru_cache(maxsize=64)
def _plan_lines(preset_name: str, encoder_rate: str | None, seconds: float, history_mode: str | None) -> tuple[str, ...]:
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

        lines.append(plan(preset, seconds, history_mode=mode, rate=rate).summary())
    except Exception:  # the plan is advice: its absence or failure must not break the page
        log.warning("no memory plan for %s", preset.name, exc_info=True)
        budget_gib = f"{hw.device_budget_gib:g} GiB" if hw.device_budget_gib else "whatever is free"
        lines.append(f"device: {hw.device} ({hw.dtype}), budget {budget_gib}")
    return tuple(lines)
