"""Event handlers: turn page events into Worker calls and job state into page updates.

:class:`Handlers` queues jobs from the page's and the API's values; the other events live by job in
their own classes (:mod:`.queue_actions`, :mod:`.gallery_actions`, :mod:`.plan`, :mod:`.api`, on
:class:`~.context.PageContext`), and :class:`~.follow.Follower` streams a job to a page.
Nothing here touches models; everything goes through :class:`Worker` and its
:class:`JobStore`, so the page can be reloaded or opened twice and still show
the same jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.hub import files as hub
from framepack_history.jobs.store import Job, JobSpec
from framepack_history.jobs.studio import Studio
from framepack_history.jobs.worker import Worker
from framepack_history.ui.api import ApiHandlers
from framepack_history.ui.follow import Follower
from framepack_history.ui.gallery_actions import GalleryActions
from framepack_history.ui.plan import LORA_SLOTS, PlanInfo, cap_info  # noqa: F401 (LORA_SLOTS, cap_info: imported from here)
from framepack_history.ui.queue_actions import QueueActions
from framepack_history.ui.values import _loras, _num, _path

#: request fields (named as on the command line) as the page labels them, for the page's error messages
PAGE_LABELS = {"--prompt": "Prompt or storyboard", "--seconds": "Length (seconds)", "--seed": "Seed", "--shift": "Shift",
               "--history": "History", "--history-guidance": "History guidance", "--max-history-tokens": "History-token cap",
               "--history-merge": "Cap merges", "--image": "Start image", "--steps": "Steps", "--guidance": "Guidance",
               "--window-frames": "Sliding-window frames", "--cache": "Step cache", "--start-frame": "Start frame"}


class Handlers(ApiHandlers, QueueActions, GalleryActions, PlanInfo):
    """Bound to one Worker; each method is one page or API event.

    Queueing a job is this class's own; the other events come from their job's class (the API, the
    queue, the gallery, the plan), and ``follower`` streams a job to a page.
    """

    def __init__(self, worker: Worker, default_preset: str, presets: list[str] | None = None,
                 temp_dir: str | Path | None = None, studio: Studio | None = None) -> None:
        super().__init__(worker, default_preset, presets, temp_dir, studio)
        self.follower = Follower(self)

    # ------------------------------------------------------------- submitting
    def spec(self, prompt: Any, image: Any, video: Any, seconds: Any, seed: Any, preset: Any, steps: Any, guidance: Any,
             shift: Any, encoder_rate: Any, history: Any, window: Any, history_guidance: Any = None,
             start_frame: Any = None, max_history_tokens: Any = None, lora_1: Any = None, lora_weight_1: Any = 1.0,
             lora_2: Any = None, lora_weight_2: Any = 1.0, lora_3: Any = None, lora_weight_3: Any = 1.0,
             cache: Any = None, history_merge: Any = None) -> JobSpec:
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
            max_history_tokens=_num(max_history_tokens, "history-token cap", integer=True),
            loras=_loras((lora_1, lora_weight_1), (lora_2, lora_weight_2), (lora_3, lora_weight_3)),
            cache=str(cache) if cache else None,  # checked with the request (names the field)
            history_merge=str(history_merge) if history_merge else None,  # checked with the request too
        )
        preset = preset or self.default_preset
        if preset not in self.presets:
            raise InputError("preset", f"unknown preset {preset!r} (choices: {', '.join(self.presets)})")
        return JobSpec(request, preset, encoder_rate or None)

    def submit(self, *values: Any, owner: str | None = None, page: bool = False) -> Job:
        """Queue a job from the page's (or the API's) values; ``page``: errors name the page's fields."""
        try:
            spec = self.spec(*values)
            spec.owner = owner
            model = load_preset(spec.preset).model
            if gone := hub.missing(model):  # a job never starts a silent multi-GB download
                raise InputError("weights", hub.missing_message(model, gone, spec.preset))
            return self.worker.submit(spec)
        except InputError as e:
            if page and e.field in PAGE_LABELS:
                e = InputError(PAGE_LABELS[e.field], e.message)
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

    # ------------------------------------------------------------- following
    # the page wires ``follower`` itself (gradio streams only from a generator function); scripts and
    # tests reach it through the handlers as before
    def attach(self, request: gr.Request | None = None) -> str:
        """Page load: this user's running job, else their newest one ('' when there is none)."""
        return self.follower.attach(request)

    def follow(self, job_id: str, request: gr.Request | None = None) -> Iterator[tuple]:
        """Stream a job to one page (:meth:`Follower.follow`)."""
        return self.follower.follow(job_id, request)
