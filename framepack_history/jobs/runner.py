"""Running one job on the worker thread: pipeline, render, progress, throttled previews, final status.

The runner turns pipeline events into :class:`~.store.Job` updates (what
pages show) and the job's outcome into its status, in the store and in its
job folder. Which job runs when is the queue's business; which models are
loaded is the model cache's.

No torch at import time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_history.config.presets import Preset, load_preset
from framepack_history.device import free_device_memory
from framepack_history.errors import Cancelled, InputError, OutOfMemoryFailure, WeightsNotFoundError
from framepack_history.generation.video import concat_segments, count_frames, write_json
from framepack_history.jobs.checkpoint import CHECKPOINT, JobDir, Resumed
from framepack_history.jobs.store import Job, JobSpec, JobStore, Progress
from framepack_history.jobs.tools import ToolSpec, run_tool

if TYPE_CHECKING:
    from framepack_history.generation.pipeline import Pipeline

log = logging.getLogger(__name__)


def record_status(jd: JobDir, status: str, message: str = "") -> None:
    """Write ``status`` into a job folder if there is one; a failure is logged, never raised."""
    try:
        if jd.exists() and (jd.root / CHECKPOINT).is_file():  # a tool job's folder is a record without a status
            jd.set_status(status, message)
    except (InputError, OSError):
        log.warning("could not record %s in the job folder %s", status, jd.root, exc_info=True)


def on_device(preset: Preset, device: str | None) -> Preset:
    """``preset`` run on ``device`` (a copy; ``None`` keeps the preset's own)."""
    if not device or device == preset.hardware.device:
        return preset
    return dataclasses.replace(preset, hardware=dataclasses.replace(preset.hardware, device=device))


class JobRunner:
    """Runs one job at a time (called by the worker thread only)."""

    def __init__(self, store: JobStore, job_dir: Callable[[str], JobDir],
                 pipeline_for: Callable[[Preset, JobSpec], Pipeline], preview_every_s: float = 0.5,
                 stopping: Callable[[], bool] = lambda: False, device: str | None = None) -> None:
        self.store = store
        self.job_dir = job_dir
        self.pipeline_for = pipeline_for
        self.preview_every_s = preview_every_s
        self.stopping = stopping  # the server is shutting down: a stopped job stays resumable
        self.device = device  # this worker's device; None = each job's preset says

    def run(self, job: Job) -> None:
        """Run ``job`` to its end; every outcome (done, cancelled, failed) is recorded, none raises."""
        if isinstance(job.spec, ToolSpec):  # a finishing tool: no pipeline (a learned method loads its own model)
            run_tool(self.store, job, self.preview_every_s, self.device)
            self._write_job_file(job)
            return
        t_start = time.perf_counter()
        jd = self.job_dir(job.id)
        loaded = self._load(job, jd)
        if loaded is None:
            return
        preset, pipeline = loaded
        job.timings["load_s"] = round(time.perf_counter() - t_start, 3)
        if job.cancel_requested.is_set():
            self.store.update(job, status="cancelled", message="cancelled before the first section", finished=time.time())
            record_status(jd, "interrupted" if self.stopping() else "cancelled", job.message)
            return
        self.store.update(job, message="")
        progress = ProgressListener(self.store, job, pipeline, self.preview_every_s, t_start)
        self._render(job, jd, preset, pipeline, progress)
        self._write_job_file(job)

    def _load(self, job: Job, jd: JobDir) -> tuple[Preset, Pipeline] | None:
        """The job's preset (as it was when queued) and its pipeline; ``None`` if the job failed here."""
        try:
            preset = on_device(jd.info().preset if jd.exists() else load_preset(job.spec.preset), self.device)
            self.store.update(job, device=preset.hardware.device)
            return preset, self.pipeline_for(preset, job.spec)
        except (InputError, WeightsNotFoundError) as e:
            self._fail(job, jd, str(e))
            return None

    def _render(self, job: Job, jd: JobDir, preset: Preset, pipeline: Pipeline, progress: ProgressListener) -> None:
        from framepack_history.jobs.render import render  # torch: kept off the page's import path

        spec, store = job.spec, self.store
        out = job.folder / "video.mp4"
        try:
            if not jd.exists():  # a job queued by an older worker: give it a folder now
                jd.create(spec.request, preset, out=out, segments_dir=job.folder / "segments", preset_ref=spec.preset,
                          encoder_rate=spec.encoder_rate, folder=str(job.folder))
            render(pipeline, spec.request, out, job.folder / "segments", on_event=progress.on_event,
                   on_step=progress.on_step, on_segment=progress.on_segment, job=jd,
                   pending_steer=lambda last: self._take_steer(job, last), on_steer=lambda steers: store.update(
                       job, steers=steers, message=f"storyboard edited; in force from section {steers[-1]['section'] + 1}"))
        except Cancelled:
            self._keep_partial(job, preset, progress.sections, getattr(pipeline.backbone, "speed", None))
            done = job.progress.sections_done
            store.update(job, status="cancelled", message=f"cancelled after {done} of {job.progress.sections_total} sections",
                         finished=time.time())
            if self.stopping():  # the server is shutting down, nobody cancelled it: resumable after a restart
                record_status(jd, "interrupted", "the server stopped; resume it from its last finished section")
        except (InputError, WeightsNotFoundError) as e:
            self._fail(job, jd, str(e))
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

    def _take_steer(self, job: Job, last: bool) -> str | None:
        """The storyboard edit a page posted since the last section, taken (worker thread, before a section).

        Before the ``last`` section the job also stops taking edits, under the same lock as
        :meth:`Worker.steer` posts them: an edit is either taken or refused, never dropped.
        """
        taken: list[str | None] = []

        def take(j: Job) -> None:
            taken.append(j.steer_pending)
            j.steer_pending = None
            j.steer_closed = j.steer_closed or last

        self.store.mutate(job, take, notify=False)
        return taken[0]

    def _fail(self, job: Job, jd: JobDir, message: str) -> None:
        self.store.update(job, status="failed", message=message, finished=time.time())
        record_status(jd, "failed", message)

    def _keep_partial(self, job: Job, preset: Preset, sections: list[dict], speed: dict | None = None) -> None:
        """A cancelled job keeps what it finished: segments joined without re-encoding (``speed``: as a finished one).

        The frame count is read from the joined video: it holds the start frames and an overlap
        tail that FramePack-F1's decode held back, which no section's progress counted.
        """
        if not job.segments:
            return
        from framepack_history.jobs.render import (  # torch: kept off the page's import path
            SegmentLog,
            sidecar,
        )

        out = job.folder / "video.mp4"
        concat_segments(job.segments, out)
        seg_log = SegmentLog(job.folder / "segments", preset.video.fps, list(job.segments), sections, count_frames(out))
        extra = {"cancelled": True, "video": str(out), **({"steers": job.steers} if job.steers else {}),
                 **({"speed": speed} if speed else {})}
        write_json(sidecar(job.spec.request, preset, seg_log, extra),
                   out.with_suffix(".json"))
        self.store.update(job, video=out, sidecar=out.with_suffix(".json"))

    def _write_job_file(self, job: Job) -> None:
        try:

            job.folder.mkdir(parents=True, exist_ok=True)
            write_json(job.snapshot(), job.folder / "job.json")
        except OSError:
            log.warning("could not write %s/job.json", job.folder, exc_info=True)


class ProgressListener:
    """The render callbacks of one job: cancel checks, progress, ETA and throttled previews into the store."""

    def __init__(self, store: JobStore, job: Job, pipeline: Pipeline, preview_every_s: float, t_start: float) -> None:
        self.store, self.job, self.pipeline, self.t_start = store, job, pipeline, t_start
        self.clock = Clock(preview_every_s)
        self.sections: list[dict] = []  # what the sidecar of a cancelled job lists

    def check_cancel(self) -> None:

        if self.job.cancel_requested.is_set():
            raise Cancelled()

    def on_step(self, index: int, info: dict) -> None:
        self.check_cancel()
        clock, now = self.clock, time.perf_counter()
        preview = None
        if now - clock.last_preview >= clock.every:  # previews are cheap (a linear map) but wake every page: throttled
            clock.last_preview = now
            preview = self.pipeline.preview(index, info).image

        def change(j: Job) -> None:
            p = j.progress
            p.section, p.step, p.steps = index, info["step"], info["total"]
            p.eta_s = clock.eta(p, now)
            if preview is not None:
                j.preview = preview
                j.preview_version += 1

        self.store.mutate(self.job, change, notify=preview is not None or info["step"] == info["total"])

    def on_event(self, ev: Any) -> None:
        from framepack_history.generation.pipeline import (  # torch: kept off the page's import path
            ContextFrames,
            SectionDone,
            SectionStarted,
        )

        if isinstance(ev, Resumed):  # continuing from the checkpoint: what is on disk is the truth
            self._resumed(ev)
        elif isinstance(ev, ContextFrames):
            self.clock.context_frames = len(ev.frames)
        elif isinstance(ev, SectionStarted):
            self.clock.section_started()

            def change(j: Job) -> None:
                j.progress.section, j.progress.sections_total, j.progress.step = ev.index, ev.total, 0

            self.store.mutate(self.job, change)
        elif isinstance(ev, SectionDone):
            self._section_done(ev)
        self.check_cancel()

    def _resumed(self, ev: Any) -> None:
        self.clock.context_frames = ev.context_frames
        self.sections[:] = [{"index": s.get("index"), "history_tokens": s.get("history_tokens")} for s in ev.sections]

        def change(j: Job) -> None:
            j.segments = list(ev.segments)
            p = j.progress
            p.sections_done, p.section, p.step, p.frames = ev.sections_done, ev.sections_done, 0, ev.frames
            p.history_tokens = ev.history_tokens
            p.sections_total = ev.total or p.sections_total

        self.store.mutate(self.job, change)

    def _section_done(self, ev: Any) -> None:
        self.sections.append({"index": ev.index, "history_tokens": ev.history_tokens})
        clock = self.clock

        def change(j: Job) -> None:
            p = j.progress
            p.sections_done, p.frames, p.history_tokens = ev.index + 1, p.frames + len(ev.frames), ev.history_tokens
            p.s_per_frame = clock.elapsed() / max(1, p.frames)
            p.eta_s = clock.eta(p, time.perf_counter())

        self.store.mutate(self.job, change)

    def on_segment(self, path: Path) -> None:
        t_start = self.t_start

        def change(j: Job) -> None:
            j.segments.append(path)
            j.timings.setdefault("first_segment_s", round(time.perf_counter() - t_start, 3))

        self.store.mutate(self.job, change)


class Clock:
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
