"""Event handlers: turn page events into Worker calls and job state into page updates.

Nothing here touches models; everything goes through :class:`Worker` and its
:class:`JobStore`, so the page can be reloaded or opened twice and still show
the same jobs.
"""

from __future__ import annotations

import html
import math
import os
import random
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from framepack_history import hub
from framepack_history.config import START_FRAMES, GenerationRequest, InputError, load_preset
from framepack_history.jobs import TERMINAL, Job, JobSpec, Worker, past_results, plan_lines
from framepack_history.video import concat_segments

CATCH_UP_AFTER = 3  # more finished segments than this are sent to a re-attached page as one chunk
WAIT_S = 1.0  # how often a follower re-checks that its page still wants it


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _num(value: Any, name: str, integer: bool = False) -> float | int | None:
    """A page/API number, or None when left empty."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(name, f"must be a number (got {value!r})") from None
    if not math.isfinite(x):
        raise InputError(name, f"must be a finite number (got {value!r})")
    if integer:
        if x != int(x):
            raise InputError(name, f"must be a whole number (got {value!r})")
        return int(x)
    return x


def _path(value: Any) -> str | None:
    """File inputs arrive as a path, a dict with 'path'/'video', or nothing."""
    if isinstance(value, dict):
        value = value.get("video") or value.get("path")
        if isinstance(value, dict):
            value = value.get("path")
    return str(value) if value else None


class Handlers:
    """Bound to one Worker; each method is one page or API event."""

    def __init__(self, worker: Worker, default_preset: str, presets: list[str] | None = None,
                 temp_dir: str | Path | None = None) -> None:
        self.worker = worker
        self.presets = presets or [default_preset]  # what a page or API call may ask for
        self.store = worker.store
        self.default_preset = default_preset
        # catch-up chunks go beside the page's other temporary files (the app removes that folder at exit)
        base = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="fph-catchup-", dir=base))
        self._views: dict[str, str] = {}  # page session -> token of the follower it wants
        self._lock = threading.Lock()

    # ------------------------------------------------------------- submitting
    def spec(self, prompt: Any, image: Any, video: Any, seconds: Any, seed: Any, preset: Any, steps: Any, guidance: Any,
             shift: Any, encoder_rate: Any, history: Any, window: Any, history_guidance: Any = None,
             start_frame: Any = None, cache: Any = None) -> JobSpec:
        """Page/API values (in the order of the page's inputs) -> a job spec.

        Numbers are checked here; the request, the preset and the files in ``Worker.submit``. The
        text-to-video start frame is dropped when a start image or video is given (the page always sends one).
        """
        seconds_v = _num(seconds, "seconds")
        seed_v = _num(seed, "seed", integer=True)
        request = GenerationRequest(
            prompt=str(prompt or ""),
            seconds=5.0 if seconds_v is None else seconds_v,
            seed=0 if seed_v is None else seed_v,
            image=_path(image),
            continue_video=_path(video),
            history_mode=history or None,
            window_frames=_num(window, "sliding-window frames", integer=True),
            history_guidance=_num(history_guidance, "history guidance"),
            steps=_num(steps, "steps", integer=True),
            guidance=_num(guidance, "guidance"),
            shift=_num(shift, "shift"),
            start_frame=None if (_path(image) or _path(video)) else (str(start_frame) if start_frame else None),
            cache=str(cache) if cache else None,  # checked with the request (names the field)
        )
        preset = preset or self.default_preset
        if preset not in self.presets:
            raise InputError("preset", f"unknown preset {preset!r} (choices: {', '.join(self.presets)})")
        return JobSpec(request, preset, encoder_rate or None)

    def submit(self, *values: Any) -> Job:
        try:
            spec = self.spec(*values)
            model = load_preset(spec.preset).model
            if gone := hub.missing(model):  # a job never starts a silent multi-GB download
                raise InputError("weights", hub.missing_message(model, gone, spec.preset))
            return self.worker.submit(spec)
        except InputError as e:
            raise gr.Error(f"{e.field.lstrip('-')}: {e.message}", title="Can't start this job") from None

    def generate_click(self, *values: Any) -> tuple[str, Any, str]:
        """Page Generate: queue the job and point this page at it."""
        job = self.submit(*values)
        return job.id, gr.update(value=None, visible=False), self.progress_html(job)

    # ------------------------------------------------------------- following
    def _claim(self, request: gr.Request | None) -> tuple[str, str]:
        session = getattr(request, "session_hash", None) or uuid.uuid4().hex
        token = uuid.uuid4().hex
        with self._lock:
            self._views[session] = token
        return session, token

    def _wanted(self, session: str, token: str) -> bool:
        with self._lock:
            return self._views.get(session) == token

    def _release(self, session: str, token: str) -> None:
        with self._lock:
            if self._views.get(session) == token:
                del self._views[session]

    def attach(self) -> str:
        """Page load: the running job, else the newest one ('' when there is none)."""
        job = self.store.current()
        return job.id if job else ""

    def follow(self, job_id: str, request: gr.Request | None = None) -> Iterator[tuple]:
        """Stream a job to one page: finished segments to the player, then every change.

        A page that re-attaches gets the segments so far as one chunk (joined
        without re-encoding), then each new section as it lands. The follower
        ends when the job does, or when its page starts following another job.
        """
        session, token = self._claim(request)
        try:
            if job_id:
                yield from self._follow(job_id, session, token)
        finally:
            self._release(session, token)

    def _follow(self, job_id: str, session: str, token: str) -> Iterator[tuple]:
        try:
            self.store.get(job_id)
        except InputError:
            return
        sent, seen, preview_seen, plan_key = 0, -1, -1, None
        while self._wanted(session, token):
            job = self.store.wait(job_id, seen, WAIT_S)
            if job.version == seen:
                continue
            # The job keeps changing under us: read what this update shows once.
            seen, terminal, segments = job.version, job.terminal, list(job.segments)
            chunk: Any = gr.skip()
            if len(segments) - sent > CATCH_UP_AFTER:
                chunk = str(concat_segments(segments[sent:], self.temp_dir / f"{job.id}-{uuid.uuid4().hex[:8]}.mp4"))
                sent = len(segments)
            elif len(segments) > sent:
                chunk = str(segments[sent])
                sent += 1
            if sent < len(segments):
                seen = -1  # more segments are waiting: come back without blocking
            preview = gr.skip()
            if job.preview is not None and job.preview_version != preview_seen:
                preview, preview_seen = job.preview, job.preview_version
            key = (job.progress.history_tokens, job.status)
            plan = gr.skip()
            if key != plan_key:
                plan, plan_key = self.plan_md(job), key
            files = [str(p) for p in (job.video, job.sidecar) if p] if terminal else None
            yield chunk, preview, self.progress_html(job), plan, gr.update(value=files, visible=True) if files else gr.skip()
            if terminal and sent >= len(segments):
                return

    # --------------------------------------------------------------- display
    @staticmethod
    def progress_html(job: Job | None) -> str:
        if job is None:
            return "<div class='fph-progress idle'>No job yet. Type a prompt and press Generate.</div>"
        p = job.progress
        total = max(1, p.sections_total * max(1, p.steps))
        done = p.sections_done * max(1, p.steps) + (p.step if p.section >= p.sections_done else 0)
        pct = 100.0 if job.status == "done" else min(100.0, 100.0 * done / total) if p.sections_total else 0.0
        status = {"queued": "queued", "running": "running", "done": "done", "cancelled": "cancelled", "failed": "failed"}[job.status]
        parts = [f"<b class='fph-status {status}'>{status}</b>", f"job <code>{html.escape(job.id)}</code>"]
        if p.sections_total:
            parts.append(f"section {min(p.sections_done + (job.status == 'running'), p.sections_total)}/{p.sections_total}")
        if job.status == "running" and p.steps:
            parts.append(f"step {p.step}/{p.steps}")
        if job.status == "running":
            parts.append(f"ETA {_fmt_time(p.eta_s)}")
        if p.s_per_frame is not None:
            parts.append(f"{p.s_per_frame:.3f} s/frame")
        msg = f"<div class='fph-msg'>{html.escape(job.message)}</div>" if job.message else ""
        return (f"<div class='fph-progress {status}'><div class='fph-line'>{' · '.join(parts)}</div>"
                f"<div class='fph-bar'><div style='width:{pct:.1f}%'></div></div>{msg}</div>")

    def plan_md(self, job: Job) -> str:
        r = job.spec.request
        size = (r.width, r.height) if r.width and r.height else None  # the request's resolution bucket
        return self._plan_md(job.spec.preset, job.spec.encoder_rate, r.seconds, job.progress.history_tokens, r.history_mode, size)

    def preview_plan(self, preset: str, encoder_rate: str | None, seconds: Any, history: str | None = None) -> str:
        """The plan shown before a job starts (preset / rate / length / history mode changed)."""
        try:
            secs = _num(seconds, "seconds") or 5.0
        except InputError as e:
            return f"{e.field}: {e.message}"
        return self._plan_md(preset or self.default_preset, encoder_rate or None, secs, None, history or None)

    @staticmethod
    def _plan_md(preset: str, rate: str | None, seconds: float, tokens: int | None, mode: str | None,
                 size: tuple[int, int] | None = None) -> str:
        try:
            lines = plan_lines(preset, rate, seconds, tokens, mode, size)
        except (InputError, OSError, ValueError) as e:
            return f"memory plan unavailable: {e}"
        return "\n".join(f"- {line}" for line in lines)

    def preset_defaults(self, preset: str) -> tuple:
        """Advanced settings follow the preset: its sampling defaults and encoder rates."""
        try:
            p = load_preset(preset or self.default_preset)
        except InputError as e:
            raise gr.Error(f"{e.field}: {e.message}") from None
        rates = [p.model.encoder_rate] if p.model.encoder else p.model.encoder_rates
        return (
            gr.update(value=p.sampling.steps), gr.update(value=p.sampling.guidance), gr.update(value=p.sampling.shift),
            gr.update(choices=rates, value=p.model.encoder_rate, visible=len(rates) > 1),
            gr.update(value=p.history.mode), gr.update(value=p.history.window_frames),
            gr.update(value=p.history.guidance),
            gr.update(maximum=p.video.max_seconds),
            start_frame_update(p.model.backbone),
            gr.update(value=p.sampling.cache),
        )

    # ------------------------------------------------------------ the queue
    def queue_rows(self) -> list[list[Any]]:
        rows = []
        for job in reversed(self.store.jobs()):
            p = job.progress
            rows.append([job.id, job.status, f"{p.sections_done}/{p.sections_total or '?'}", f"{job.spec.request.seconds:g}",
                         job.spec.request.prompt[:60], job.message[:80]])
        return rows

    def refresh(self, seen: list | None) -> tuple:
        """Timer: queue table, job picker and gallery, only when something changed."""
        jobs = self.store.jobs()
        key = [(j.id, j.status, j.progress.sections_done) for j in jobs]
        if seen == key:
            return seen, gr.skip(), gr.skip(), gr.skip()
        ids = [j.id for j in reversed(jobs)]
        finished = [k for k in key if k[1] in TERMINAL]
        gallery = gr.skip()
        if seen is None or finished != [k for k in seen if k[1] in TERMINAL]:
            gallery = self.gallery()
        return key, self.queue_rows(), gr.update(choices=ids), gallery

    def gallery(self) -> list[tuple[str, str]]:
        return past_results(self.worker.outputs)

    def cancel_click(self, job_id: str) -> str:
        """Cancel button: the chosen job (or the one on screen)."""
        if not job_id:
            raise gr.Error("No job to cancel.")
        try:
            job = self.worker.cancel(job_id)
        except InputError as e:
            raise gr.Error(f"{e.field}: {e.message}") from None
        return self.progress_html(job)

    # ------------------------------------------------------------ resuming
    def interrupted_choices(self) -> tuple[Any, Any]:
        """Jobs a dead process left unfinished: the picker's choices, and whether to show the box."""
        rows = self.worker.interrupted()
        choices = [(f"{r['id']} · {r['sections_done']}/{r['sections_total'] or '?'} sections · {r['prompt'][:50]}", r["id"])
                   for r in rows]
        return gr.update(choices=choices, value=choices[0][1] if choices else None), gr.update(visible=bool(rows))

    def resume_click(self, job_id: str | None) -> tuple[str, str]:
        """Resume: queue the interrupted job again and point this page at it."""
        if not job_id:
            raise gr.Error("No interrupted job chosen.")
        try:
            job = self.worker.resume(str(job_id))
        except InputError as e:
            raise gr.Error(f"{e.field}: {e.message}", title="Can't resume this job") from None
        return job.id, self.progress_html(job)

    def cancel_picked(self, job_id: str) -> None:
        """Queue tab: cancel any job; the page keeps showing the one it follows."""
        self.cancel_click(job_id)
        gr.Info(f"Cancelling job {job_id}.")

    # -------------------------------------------------------------- the API
    def api_generate(self, prompt: str, start_image: str | None = None, continue_video: Any = None, seconds: float = 5.0,
                     seed: int = 0, preset: str | None = None, steps: int | None = None, guidance: float | None = None,
                     shift: float | None = None, encoder_rate: str | None = None, history_mode: str | None = None,
                     window_frames: int | None = None, history_guidance: float | None = None,
                     start_frame: str | None = None, cache: str | None = None) -> tuple[str, str]:
        """Queue a job, wait for it, return (video path, sidecar path); an error if it fails or is cancelled.

        ``start_frame``: text-to-video start (hunyuan_framepack: noise, black, white, green; the toy: world);
        empty = the backbone's default; ignored with a start image or video. ``cache``: step caching,
        off, fast or faster (empty = the preset's).
        """
        job = self.submit(prompt, start_image, continue_video, seconds, seed, preset, steps, guidance, shift,
                          encoder_rate, history_mode, window_frames, history_guidance, start_frame, cache)
        while not job.terminal:
            job = self.store.wait(job.id, job.version, 5.0)
        if job.status != "done":
            raise gr.Error(f"job {job.id} {job.status}: {job.message}")
        return str(job.video), str(job.sidecar)

    def api_cancel(self, job_id: str) -> dict:
        """Cancel a job by id; returns its status."""
        try:
            return self.worker.cancel(str(job_id or "")).snapshot()
        except InputError as e:
            raise gr.Error(f"{e.field}: {e.message}") from None

    def api_resume(self, job_id: str) -> dict:
        """Queue an interrupted job again (ids are in ``/status``'s ``interrupted``); returns its status."""
        try:
            return self.worker.resume(str(job_id or "")).snapshot()
        except InputError as e:
            raise gr.Error(f"{e.field}: {e.message}") from None

    def api_status(self, job_id: str) -> dict:
        """One job's status by id, or with an empty id every job (newest first) and the interrupted ones."""
        if job_id:
            try:
                return self.store.get(str(job_id)).snapshot()
            except InputError as e:
                raise gr.Error(f"{e.field}: {e.message}") from None
        current = self.store.current()
        return {"current": current.id if current else None, "queued": self.worker.queued(),
                "jobs": [j.snapshot() for j in reversed(self.store.jobs())], "interrupted": self.worker.interrupted()}


START_FRAME_LABELS = {"noise": "noise", "black": "black", "white": "white", "green": "green screen", "world": "the world's first view"}


def start_frame_update(backbone: str) -> Any:
    """The start-frame picker for a backbone: its choices, its default, shown when there is a choice."""
    kinds = START_FRAMES.get(backbone, ())
    return gr.update(choices=[(START_FRAME_LABELS.get(k, k), k) for k in kinds], value=kinds[0] if kinds else None,
                     visible=len(kinds) > 1)


def random_seed() -> int:
    return random.randrange(0, 2**31 - 1)
