"""Event handlers: turn page events into Worker calls and job state into page updates.

Nothing here touches models; everything goes through :class:`Worker` and its
:class:`JobStore`, so the page can be reloaded or opened twice and still show
the same jobs.
"""

from __future__ import annotations

import html
import os
import random
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import gradio as gr

from framepack_history.config.fields import page_label
from framepack_history.config.presets import START_FRAMES, Preset, load_preset
from framepack_history.errors import InputError
from framepack_history.generation.video import concat_segments
from framepack_history.hub import files as hub
from framepack_history.jobs.admission import least_cap
from framepack_history.jobs.store import TERMINAL, Job, JobSpec
from framepack_history.jobs.studio import Studio
from framepack_history.jobs.studio import scrub as _scrub
from framepack_history.jobs.worker import Worker, past_results, plan_lines
from framepack_history.lora.files import available
from framepack_history.ui.api import ApiHandlers
from framepack_history.ui.reuse import form_values
from framepack_history.ui.values import _current, _fmt_time, _num, _path, request_of

LORA_SLOTS = 3  # LoRA pickers on the page (and lora_N arguments of the API)
CATCH_UP_AFTER = 3  # more finished segments than this are sent to a re-attached page as one chunk
WAIT_S = 1.0  # how often a follower re-checks that its page still wants it
FOLLOW_OUTPUTS = 5  # what a follower streams to: player, preview, progress, plan, files


def lora_choices() -> list[str]:
    """LoRA files in the LoRA folder (``loras/``), for the page's pickers."""

    return available()


class Handlers(ApiHandlers):
    """Bound to one Worker; each method is one page or API event."""

    def __init__(self, worker: Worker, default_preset: str, presets: list[str] | None = None,
                 temp_dir: str | Path | None = None, studio: Studio | None = None) -> None:
        self.worker = worker
        self.studio = studio or Studio()  # who sees which job (no --auth: everyone sees everything)
        self.presets = presets or [default_preset]  # what a page or API call may ask for
        self.store = worker.store
        self.default_preset = default_preset
        # catch-up chunks go beside the page's other temporary files (the app removes that folder at exit)
        base = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="fph-catchup-", dir=base))
        self._views: dict[str, str] = {}  # page session -> token of the follower it wants
        self._lock = threading.Lock()

    # ------------------------------------------------------------- submitting
    def spec(self, prompt: Any, start_image: Any = None, continue_video: Any = None, seconds: Any = None,
             seed: Any = None, preset: Any = None, steps: Any = None, guidance: Any = None, shift: Any = None,
             encoder_rate: Any = None, history_mode: Any = None, window_frames: Any = None, history_guidance: Any = None,
             start_frame: Any = None, max_history_tokens: Any = None, lora_1: Any = None, lora_weight_1: Any = 1.0,
             lora_2: Any = None, lora_weight_2: Any = 1.0, lora_3: Any = None, lora_weight_3: Any = 1.0,
             cache: Any = None, history_merge: Any = None) -> JobSpec:
        """The page's values, in the order of its Generate inputs -> a job spec (read by name: :meth:`spec_of`)."""
        return self.spec_of({name: value for name, value in locals().items() if name != "self"})

    def spec_of(self, values: Mapping[str, Any]) -> JobSpec:
        """Page or API values by the API's parameter names -> a job spec (the request: ``values.request_of``).

        Numbers are checked here; the request, the preset and the files in ``Worker.submit``.
        """
        request = request_of(values)
        preset = values.get("preset") or self.default_preset
        if preset not in self.presets:
            raise InputError("preset", f"unknown preset {preset!r} (choices: {', '.join(self.presets)})")
        return JobSpec(request, preset, values.get("encoder_rate") or None)

    def submit(self, *values: Any, owner: str | None = None, page: bool = False) -> Job:
        """Queue a job from the page's values (in its inputs' order); ``page``: errors name the page's fields."""
        return self._queue(lambda: self.spec(*values), owner, page)

    def submit_named(self, values: Mapping[str, Any], owner: str | None = None) -> Job:
        """Queue a job from the API's values by parameter name; errors name the request's fields."""
        return self._queue(lambda: self.spec_of(values), owner, page=False)

    def _queue(self, make_spec: Callable[[], JobSpec], owner: str | None, page: bool) -> Job:
        """Read the values (``make_spec``) and queue the job: ``Worker.submit`` admits it (``admit_request``).

        ``page``: errors name the page's fields (``config.fields``), else the request's (``history-merge: ...``).
        """
        try:
            spec = make_spec()
            spec.owner = owner
            model = load_preset(spec.preset).model
            if gone := hub.missing(model):  # a job never starts a silent multi-GB download
                raise InputError("weights", hub.missing_message(model, gone, spec.preset))
            return self.worker.submit(spec)
        except InputError as e:
            if page:
                e = InputError(page_label(e.field), e.message)
            raise self._error(e, "Can't start this job") from None

    def generate_click(self, *values: Any, request: gr.Request | None = None) -> str:
        """Page Generate: queue the job and point this page at it (its id; :meth:`started` then shows it).

        Only the hidden job id is this event's output, so a refused request's error marks no part of the
        page that still shows the previous job.
        """
        return self.submit(*values, owner=self.user(request), page=True).id

    def started(self, job_id: str) -> tuple[Any, str]:
        """After Generate: the previous job's files hidden, the new job's progress shown."""
        return gr.update(value=None, visible=False), self.html(self.store.get(job_id))

    # ------------------------------------------------------------ ownership
    def user(self, request: gr.Request | None = None) -> str | None:
        """The logged-in user of ``request`` (of the event being handled when not given); ``None`` without --auth."""
        if request is None:
            from gradio.context import LocalContext  # handlers taking *values cannot ask gradio for the request

            request = LocalContext.request.get(None)
        return getattr(request, "username", None) or None

    def own(self, job_id: Any, request: gr.Request | None = None) -> str:
        """``job_id`` if the request's user may see and act on that job, else the error an unknown id gets.

        Call it first in every handler that takes a job id from a client: another user's job and a job
        that does not exist read the same, so ids cannot be probed.
        """
        job_id = str(job_id or "")
        if not self.studio.may_see(self.user(request), self.worker.owner_of(job_id)):
            raise gr.Error(f"job: no job with id {job_id!r}")
        return job_id

    def visible_jobs(self, request: gr.Request | None = None) -> list[Job]:
        """The jobs this user sees, oldest first."""
        user = self.user(request)
        return [j for j in self.store.jobs() if self.studio.may_see(user, j.spec.owner)]

    def _error(self, e: InputError, title: str | None = None) -> gr.Error:
        """An input error as the page shows it (without server folders when the studio is shared)."""
        text = self.studio.say(f"{e.field.lstrip('-')}: {e.message}")
        return gr.Error(text, title=title) if title else gr.Error(text)

    def html(self, job: Job | None) -> str:
        return self.progress_html(job, scrub=self.studio.shared)

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

    def attach(self, request: gr.Request | None = None) -> str:
        """Page load: this user's running job, else their newest one ('' when there is none)."""
        job = _current(self.visible_jobs(request))
        return job.id if job else ""

    def follow(self, job_id: str, request: gr.Request | None = None) -> Iterator[tuple]:
        """Stream a job to one page: finished segments to the player, then every change.

        A page that re-attaches gets the segments so far as one chunk (joined
        without re-encoding), then each new section as it lands. The follower
        ends when the job does, or when its page starts following another job.
        """
        session, token = self._claim(request)
        try:
            if job_id and self.studio.may_see(self.user(request), self.worker.owner_of(str(job_id))):
                yield from self._follow(job_id, session, token)
            else:  # nothing to follow: leave the page as it is (a generator that yields nothing blanks its outputs)
                yield (gr.skip(),) * FOLLOW_OUTPUTS
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
            yield chunk, preview, self.html(job), plan, gr.update(value=files, visible=True) if files else gr.skip()
            if terminal and sent >= len(segments):
                return

    # --------------------------------------------------------------- display
    @staticmethod
    def progress_html(job: Job | None, scrub: bool = False) -> str:
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
        message = _scrub(job.message) if scrub else job.message
        msg = f"<div class='fph-msg'>{html.escape(message)}</div>" if message else ""
        return (f"<div class='fph-progress {status}'><div class='fph-line'>{' · '.join(parts)}</div>"
                f"<div class='fph-bar'><div style='width:{pct:.1f}%'></div></div>{msg}</div>")

    def plan_md(self, job: Job) -> str:
        r = job.spec.request
        size = (r.width, r.height) if r.width and r.height else None  # the request's resolution bucket
        loras = tuple(e["path"] if e.get("path") else e["name"] for e in r.loras or ())
        return self.studio.say(self._plan_md(job.spec.preset, job.spec.encoder_rate, r.seconds, job.progress.history_tokens,
                                             r.history_mode, size, r.max_history_tokens, r.history_merge, loras))

    def preview_plan(self, preset: str, encoder_rate: str | None, seconds: Any, history: str | None = None,
                     max_tokens: Any = None, merge: str | None = None, *loras: Any) -> str:
        """The plan shown before a job starts (preset, rate, length, history mode, cap or LoRAs changed)."""
        try:
            secs = _num(seconds, "seconds") or 5.0
            cap = _num(max_tokens, "history-token cap", integer=True)
        except InputError as e:
            return f"{e.field}: {e.message}"
        names = tuple(str(n) for n in loras if n)
        return self.studio.say(self._plan_md(preset or self.default_preset, encoder_rate or None, secs, None, history or None,
                                             None, cap, merge or None, names))

    @staticmethod
    def _plan_md(preset: str, rate: str | None, seconds: float, tokens: int | None, mode: str | None,
                 size: tuple[int, int] | None = None, max_tokens: int | None = None, merge: str | None = None,
                 loras: tuple[str, ...] = ()) -> str:
        try:
            lines = plan_lines(preset, rate, seconds, tokens, mode, size, max_tokens, merge, loras)
        except (InputError, OSError, ValueError) as e:
            return f"memory plan unavailable: {e}"
        return "\n".join(f"- {line}" for line in lines)

    def lora_refresh(self) -> tuple:
        """The LoRA pickers list what is in ``loras/`` now (files added while the page was open)."""
        choices = lora_choices()
        return tuple(gr.update(choices=choices) for _ in range(LORA_SLOTS))

    def preset_defaults(self, preset: str) -> tuple:
        """Advanced settings follow the preset: its sampling defaults and encoder rates."""
        try:
            p = load_preset(preset or self.default_preset)
        except InputError as e:
            raise self._error(e) from None
        rates = [p.model.encoder_rate] if p.model.encoder else p.model.encoder_rates
        return (
            gr.update(value=p.sampling.steps), gr.update(value=p.sampling.guidance), gr.update(value=p.sampling.shift),
            gr.update(choices=rates, value=p.model.encoder_rate, visible=len(rates) > 1),
            gr.update(value=p.history.mode), gr.update(value=p.history.window_frames),
            gr.update(value=p.history.guidance),
            gr.update(maximum=p.video.max_seconds),
            start_frame_update(p.model.backbone),
            gr.update(value=p.history.max_tokens, info=cap_info(p)),
            gr.update(value=p.sampling.cache),
            gr.update(value=p.history.merge),
        )

    # ------------------------------------------------------------ the queue
    def queue_rows(self, request: gr.Request | None = None) -> list[list[Any]]:
        """This user's jobs, newest first; the last column says which device (and worker) runs or ran each."""
        rows = []
        for job in reversed(self.visible_jobs(request)):
            p = job.progress
            rows.append([job.id, job.status, f"{p.sections_done}/{p.sections_total or '?'}", f"{job.spec.request.seconds:g}",
                         job.spec.request.prompt[:60], self.studio.say(job.message)[:80], self._device(job)])
        return rows

    def _device(self, job: Job) -> str:
        if job.device is None:
            return ""
        return f"{job.device} #{job.worker}" if len(self.worker.lanes) > 1 and job.worker else job.device

    def refresh(self, seen: list | None, picked_video: str | None = None, request: gr.Request | None = None) -> tuple:
        """Timer: queue table, job picker and gallery (this user's), only when something changed.

        A new listing keeps the picked video selected where it now sits (new videos come first), so the
        preview shows the video that Reuse settings and Extend act on.
        """
        jobs = self.visible_jobs(request)
        key = [(j.id, j.status, j.progress.sections_done, j.device) for j in jobs]
        if seen == key:
            return seen, gr.skip(), gr.skip(), gr.skip()
        ids = job_choices(jobs)
        finished = [k for k in key if k[1] in TERMINAL]
        gallery = gr.skip()
        if seen is None or finished != [k for k in seen if k[1] in TERMINAL]:
            items = self.gallery(request)
            where = next((i for i, (video, _) in enumerate(items) if picked_video and video == picked_video), None)
            gallery = gr.update(value=items, selected_index=where)
        return key, self.queue_rows(request), gr.update(choices=ids), gallery

    def gallery(self, request: gr.Request | None = None) -> list[tuple[str, str]]:
        """Finished videos under outputs/ that this user may see."""
        if self.studio.sees_all(user := self.user(request)):
            return past_results(self.worker.outputs)
        return past_results(self.worker.outputs, visible=lambda video: self.studio.may_see(user, self.worker.owner_of_file(video)))

    def cancel_click(self, job_id: str, request: gr.Request | None = None) -> str:
        """Cancel button: the chosen job (or the one on screen)."""
        if not job_id:
            raise gr.Error("No job to cancel.")
        try:
            job = self.worker.cancel(self.own(job_id, request))
        except InputError as e:
            raise self._error(e) from None
        return self.html(job)

    # ------------------------------------------------------------ resuming
    def interrupted(self, request: gr.Request | None = None) -> list[dict[str, Any]]:
        """This user's jobs that a dead process left unfinished (without server folders)."""
        user = self.user(request)
        return [{k: v for k, v in r.items() if k != "folder"} for r in self.worker.interrupted()
                if self.studio.may_see(user, r.get("owner"))]

    def interrupted_choices(self, request: gr.Request | None = None) -> tuple[Any, Any]:
        """Jobs a dead process left unfinished: the picker's choices, and whether to show the box."""
        rows = self.interrupted(request)
        choices = [(f"{r['id']} · {r['sections_done']}/{r['sections_total'] or '?'} sections · {r['prompt'][:50]}", r["id"])
                   for r in rows]
        return gr.update(choices=choices, value=choices[0][1] if choices else None), gr.update(visible=bool(rows))

    def resume_click(self, job_id: str | None, request: gr.Request | None = None) -> tuple[str, str]:
        """Resume: queue the interrupted job again and point this page at it."""
        if not job_id:
            raise gr.Error("No interrupted job chosen.")
        try:
            job = self.worker.resume(self.own(job_id, request))
        except InputError as e:
            raise self._error(e, "Can't resume this job") from None
        return job.id, self.html(job)

    # ------------------------------------------------------------ steering
    def steer_click(self, job_id: str, prompt: Any, request: gr.Request | None = None) -> str:
        """Edit storyboard: post the new text to the job this page shows; later sections follow it."""
        if not job_id:
            raise gr.Error("No job to edit: start one, or pick one in the Queue tab and press Show.")
        try:
            job = self.worker.steer(self.own(job_id, request), str(prompt or ""))
        except InputError as e:
            raise self._error(e, "Can't apply this edit") from None
        gr.Info(f"Job {job.id}: the sections not yet started follow the new storyboard.")
        return self.progress_html(job)

    # ---------------------------------------------------- gallery: extend, reuse
    def gallery_pick(self, evt: gr.SelectData, request: gr.Request | None = None) -> str:
        """The video picked in the Gallery (its path in outputs/, by its place in this user's listing)."""
        items = self.gallery(request)
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return items[index][0] if isinstance(index, int) and 0 <= index < len(items) else ""

    def job_of_video(self, video: str | None) -> str:
        """The job id of a video in outputs/ (``outputs/DATE/JOB/video.mp4``)."""
        if not video:
            raise InputError("video", "pick a video in the Gallery first")
        job_id = Path(video).parent.name
        try:
            if self.worker.job_dir(job_id).exists():
                return job_id
        except InputError:
            pass
        raise InputError("video", f"{Path(video).name} was not made by a job of this app (no job folder {job_id!r}); "
                                  "continue it with 'Video to continue' instead")

    def extend_click(self, video: str | None, prompt: Any, seconds: Any, request: gr.Request | None = None) -> tuple[str, str]:
        """Extend: continue the picked finished video from its saved history; follow the new job here."""
        try:
            job_id = self.own(self.job_of_video(video), request)
            secs = _num(seconds, "seconds to add")
            job = self.worker.extend(job_id, str(prompt or "").strip() or None, 5.0 if secs is None else secs,
                                     owner=self.user(request))
        except InputError as e:
            raise self._error(e, "Can't extend this video") from None
        return job.id, self.progress_html(job)

    def reuse_settings(self, video: str | None, upload: Any = None) -> tuple:
        """Reuse settings: the picked video's sidecar (or an uploaded video.json) into the form."""

        source = _path(upload) or (str(Path(video).with_suffix(".json")) if video else None)
        if not source:
            raise gr.Error("Pick a video in the Gallery, or upload a video.json.", title="No settings to load")
        try:
            v, notes = form_values(source, self.presets, self.default_preset)
        except InputError as e:
            raise gr.Error(f"{e.field}: {e.message}", title="Can't load these settings") from None
        for note in notes:
            gr.Info(note)
        p = load_preset(v["preset"])  # the preset's own choices, as preset_defaults would set them
        rates = [p.model.encoder_rate] if p.model.encoder else p.model.encoder_rates
        frames = start_frame_update(p.model.backbone)
        if v["start_frame"]:
            frames["value"] = v["start_frame"]
        return (v["prompt"], v["seconds"], v["seed"], v["preset"], v["steps"], v["guidance"], v["shift"],
                gr.update(choices=rates, value=v["encoder_rate"] if v["encoder_rate"] in rates else p.model.encoder_rate,
                          visible=len(rates) > 1),
                v["history"], v["window"], v["history_guidance"], frames, v["max_tokens"], v["merge"], v["cache"])

    def cancel_picked(self, job_id: str, request: gr.Request | None = None) -> None:
        """Queue tab: cancel any of this user's jobs; the page keeps showing the one it follows."""
        if job_id:
            try:
                job = self.store.get(self.own(job_id, request))
            except InputError as e:
                raise self._error(e) from None
            if job.terminal:
                gr.Info(f"Job {job_id} has already ended ({job.status}); nothing to cancel.")
                return
        self.cancel_click(job_id, request)
        gr.Info(f"Cancelling job {job_id}.")


START_FRAME_LABELS = {"noise": "noise", "black": "black", "white": "white", "green": "green screen", "world": "the world's first view"}


def start_frame_update(backbone: str) -> Any:
    """The start-frame picker for a backbone: its choices, its default, shown when there is a choice."""
    kinds = START_FRAMES.get(backbone, ())
    return gr.update(choices=[(START_FRAME_LABELS.get(k, k), k) for k in kinds], value=kinds[0] if kinds else None,
                     visible=len(kinds) > 1)


def job_choices(jobs: list[Job]) -> list[tuple[str, str]]:
    """Job pickers' choices, newest first: the id with the job's status and the start of its prompt."""
    def label(j: Job) -> str:
        prompt = j.spec.request.prompt.replace("\n", " ")
        return f"{j.id} · {j.status} · {prompt[:40] + ('…' if len(prompt) > 40 else '')}"

    return [(label(j), j.id) for j in reversed(jobs)]


def cap_info(preset: Preset) -> str:
    """The history-token cap's help: what it does and the least a job of this preset may use."""
    try:
        least = f"at least {least_cap(preset)}, " if preset.history.mode == "encoder" or preset.model.encoder else ""
    except Exception:  # advice only: a preset whose configs cannot be read still gets the help
        least = ""
    return f"bounded history: older history coarser, recent in full detail ({least}0 = no cap)"


def random_seed() -> int:
    return random.randrange(0, 2**31 - 1)
