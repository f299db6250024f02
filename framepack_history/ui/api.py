"""The HTTP API's handlers (``/generate``, ``/cancel``, ``/resume``, ``/steer``, ``/extend``, ``/status``, ``/pause_queue``, ``/resume_queue``).

A mixin of :class:`ui.handlers.Handlers`: the same submit path, ownership checks and messages as the page.
"""

from __future__ import annotations

import inspect
from typing import Any

import gradio as gr

from framepack_history.config.fields import FIELDS
from framepack_history.errors import InputError
from framepack_history.jobs.store import Job
from framepack_history.jobs.studio import client_view
from framepack_history.ui.values import _current, _num

#: request fields by their API parameter name
API_FIELDS = {row.api: row for row in FIELDS if row.api is not None}


class ApiHandlers:
    """API events; needs the page handlers' ``submit_named``, ``user``, ``own``, ``visible_jobs`` and ``interrupted``."""

    def api_generate(self, prompt: str = "", start_image: str | None = None, continue_video: Any = None, seconds: float = 5.0,
                     seed: int = 0, preset: str | None = None, steps: int | None = None, guidance: float | None = None,
                     shift: float | None = None, encoder_rate: str | None = None, history_mode: str | None = None,
                     window_frames: int | None = None, history_guidance: float | None = None,
                     start_frame: str | None = None, max_history_tokens: int | None = None,
                     lora_1: str | None = None, lora_weight_1: float = 1.0, lora_2: str | None = None,
                     lora_weight_2: float = 1.0, lora_3: str | None = None, lora_weight_3: float = 1.0,
                     cache: str | None = None, history_merge: str | None = None, end_image: str | None = None,
                     end_frame_strength: float | None = None, keyframe_images: list[Any] | None = None,
                     keyframe_times: list[float] | str | None = None, memory: str | list | None = None,
                     borrow: str | None = None,
                     request: gr.Request | None = None) -> tuple[str, str]:
        """Queue a job, wait for it, return (video path, sidecar path); an error if it fails or is cancelled.

        Parameters are named as in ``config.fields`` (a client may pass them in any order by name); every
        setting left empty is the preset's. ``start_frame``: text-to-video start (hunyuan_framepack: noise,
        black, white, green; the toy: world); empty = the backbone's default; ignored with a start image or
        video. ``max_history_tokens``: bounded history, at most that many history tokens (0 = no cap).
        ``lora_N``/``lora_weight_N``: up to three LoRAs (a name in ``loras/`` or a path) and their weights;
        none = the preset's LoRAs. ``cache``: step caching, off, fast or faster. ``history_merge``: what the
        cap merges, similar or oldest. ``end_image``: the image the video ends on, with a start image or a video
        to continue, on FramePack's original model's presets (others refuse it); ``end_frame_strength``: how
        strongly it anchors the end, 0 to 1 (empty = 1). ``keyframe_images`` with ``keyframe_times``: images the video shows at
        those times (seconds, one per image, in the same order; a list or text such as ``"8, 15"``; 0 = the start
        image), on the toy and FramePack's original model's presets (others refuse them); their prompts are
        storyboard entries at the same times in ``prompt`` (which names no image files itself). ``memory``: memory
        controls as text, ``"pin 10:20; forget 30:40; cut 12"`` (seconds; or a list of ``{op, start, end}`` /
        ``{op: "cut", time}``). ``borrow``: the id of a finished job of yours whose history the new video starts with.
        """
        values = {name: value for name, value in locals().items() if name not in ("self", "request")}
        job = self.submit_named(values, owner=self.user(request))
        while not job.terminal:
            job = self.store.wait(job.id, job.version, 5.0)
        if job.status != "done":
            raise gr.Error(self.studio.say(f"job {job.id} {job.status}: {job.message}"))
        return str(job.video), str(job.sidecar)

    def view(self, job: Job) -> dict:
        """A job as API clients see it: files relative to outputs/, no server folders."""
        return client_view(job.snapshot(), self.worker.outputs, self.studio)

    def api_cancel(self, job_id: str, request: gr.Request | None = None) -> dict:
        """Cancel a job by id; returns its status."""
        try:
            return self.view(self.worker.cancel(self.own(job_id, request)))
        except InputError as e:
            raise self._error(e) from None

    def api_resume(self, job_id: str, request: gr.Request | None = None) -> dict:
        """Queue an interrupted job again (ids are in ``/status``'s ``interrupted``); returns its status."""
        try:
            return self.view(self.worker.resume(self.own(job_id, request)))
        except InputError as e:
            raise self._error(e) from None

    def api_steer(self, job_id: str, prompt: str, request: gr.Request | None = None) -> dict:
        """Change a queued or running job's storyboard; sections not yet started follow it. Returns its status."""
        try:
            job = self.worker.steer(self.own(job_id, request), prompt if isinstance(prompt, str) else str(prompt or ""))
            return self.view(job)
        except InputError as e:
            raise self._error(e) from None

    def api_extend(self, job_id: str, prompt: str = "", seconds: float = 5.0, request: gr.Request | None = None) -> dict:
        """Continue finished job ``job_id`` from its saved history for ``seconds`` more; ``prompt`` is the storyboard
        of the whole video (times from its start; empty = the old one's). Queues a new job; returns its status."""
        try:
            secs = _num(seconds, "seconds")
            job = self.worker.extend(self.own(job_id, request), prompt or None, 5.0 if secs is None else secs,
                                     owner=self.user(request))
            return self.view(job)
        except InputError as e:
            raise self._error(e) from None

    def api_pause_queue(self, request: gr.Request | None = None) -> dict:
        """Hold the queue: the running job finishes, queued jobs wait in their order, and the device is freed.

        It holds every user's jobs, so with --auth only an admin may. Returns ``{"paused", "state", "queued"}``.
        """
        try:
            self._may_pause(request)
        except InputError as e:
            raise self._error(e) from None
        self.worker.pause_queue()
        return self._queue_view()

    def api_resume_queue(self, request: gr.Request | None = None) -> dict:
        """Go on with the queued jobs after ``/pause_queue``, in their order. Returns ``{"paused", "state", "queued"}``."""
        try:
            self._may_pause(request)
        except InputError as e:
            raise self._error(e) from None
        self.worker.resume_queue()
        return self._queue_view()

    def _queue_view(self) -> dict:
        return {"paused": self.worker.paused, "state": self.worker.queue_state(), "queued": len(self.worker.queued())}

    def api_status(self, job_id: str, request: gr.Request | None = None) -> dict:
        """One job's status by id, or with an empty id all of this user's jobs (newest first) and interrupted ones.

        Files are named relative to outputs/; with --auth a user sees only their own jobs (an admin all).
        """
        if job_id:
            try:
                return self.view(self.store.get(self.own(job_id, request)))
            except InputError as e:
                raise self._error(e) from None
        jobs = self.visible_jobs(request)
        current = _current(jobs)
        mine = {j.id for j in jobs}
        return {"current": current.id if current else None, "queued": [i for i in self.worker.queued() if i in mine],
                "jobs": [self.view(j) for j in reversed(jobs)], "interrupted": self.interrupted(request),
                "devices": [self._lane_row(lane, jobs) for lane in self.worker.lanes], "paused": self.worker.paused}

    @staticmethod
    def _lane_row(lane: Any, jobs: list[Job]) -> dict:
        """One worker: its device and the job it runs (if it is one of ``jobs``, those this user sees)."""
        running = [j for j in jobs if j.status == "running" and j.worker == lane.index]
        return {"worker": lane.index, "device": lane.device, "job": running[0].id if running else None}


#: the API's own inputs for job-level parameters (the request's come from ``config.fields``)
_JOB_INPUTS: dict[str, tuple[type[gr.components.Component], dict[str, Any]]] = {
    "preset": (gr.Textbox, {"label": "Preset"}),
    "encoder_rate": (gr.Textbox, {"label": "Encoder rate (HxWxT)"}),
}


def generate_inputs() -> list[gr.components.Component]:
    """Hidden inputs of ``/generate``, one per parameter of :meth:`ApiHandlers.api_generate`, in its order.

    The endpoint has inputs of its own, so its parameters never follow the page's widgets or their order.
    Each holds its parameter's default (a client may leave out any parameter with one). Call it inside
    the page's ``gr.Blocks``.
    """
    out = []
    for name, param in inspect.signature(ApiHandlers.api_generate).parameters.items():
        if name in ("self", "request"):
            continue
        kind, kw = _input(name)
        default = None if param.default is inspect.Parameter.empty else param.default
        out.append(kind(value=default, visible=False, **kw))
    return out


def _input(name: str) -> tuple[type[gr.components.Component], dict[str, Any]]:
    """The kind of input of one ``/generate`` parameter: a request field's from its row, else a job or LoRA slot's."""
    if name in _JOB_INPUTS:
        return _JOB_INPUTS[name]
    if name == "keyframe_times":  # keyframe_images' partner: one time per image
        return gr.JSON, {"label": "Keyframe times (seconds)"}
    if name.startswith("lora_weight_"):
        return gr.Number, {"label": f"LoRA {name.rsplit('_', 1)[1]} weight"}
    if name.startswith("lora_"):
        return gr.Textbox, {"label": f"LoRA {name.rsplit('_', 1)[1]}"}
    row = API_FIELDS[name]
    label = row.label or row.name
    if row.kind == "image":
        return gr.Image, {"label": label, "type": "filepath"}
    if row.kind == "keyframes":
        return gr.File, {"label": label, "file_count": "multiple", "file_types": ["image"]}
    if row.kind == "video":
        return gr.Video, {"label": label}
    if row.kind in ("int", "float"):
        return gr.Number, {"label": label, "precision": 0 if row.kind == "int" else None}
    if row.choices:
        return gr.Radio, {"label": label, "choices": list(row.choices)}
    return gr.Textbox, {"label": label}
