"""Event handlers: turn page events into Worker calls and job state into page updates.

:class:`Handlers` queues jobs from the page's and the API's values; the other events live by job in
their own classes (:mod:`.queue_actions`, :mod:`.gallery_actions`, :mod:`.plan`, :mod:`.api`, on
:class:`~.context.PageContext`), and :class:`~.follow.Follower` streams a job to a page.
Nothing here touches models; everything goes through :class:`Worker` and its
:class:`JobStore`, so the page can be reloaded or opened twice and still show
the same jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import gradio as gr

from framepack_history.config.fields import page_label
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
from framepack_history.ui.values import request_of


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
    def spec(self, prompt: Any, start_image: Any = None, continue_video: Any = None, seconds: Any = None,
             seed: Any = None, preset: Any = None, steps: Any = None, guidance: Any = None, shift: Any = None,
             encoder_rate: Any = None, history_mode: Any = None, window_frames: Any = None, history_guidance: Any = None,
             start_frame: Any = None, max_history_tokens: Any = None, lora_1: Any = None, lora_weight_1: Any = 1.0,
             lora_2: Any = None, lora_weight_2: Any = 1.0, lora_3: Any = None, lora_weight_3: Any = 1.0,
             cache: Any = None, history_merge: Any = None, end_image: Any = None,
             end_frame_strength: Any = None,
             keyframe_image_1: Any = None, keyframe_time_1: Any = None, keyframe_prompt_1: Any = None,
             keyframe_image_2: Any = None, keyframe_time_2: Any = None, keyframe_prompt_2: Any = None,
             keyframe_image_3: Any = None, keyframe_time_3: Any = None, keyframe_prompt_3: Any = None,
             keyframe_image_4: Any = None, keyframe_time_4: Any = None, keyframe_prompt_4: Any = None,
             memory: Any = None, borrow: Any = None) -> JobSpec:
        """The page's values, in the order of its Generate inputs -> a job spec (read by name: :meth:`spec_of`).

        The keyframe rows (``KEYFRAME_SLOTS`` of image, time and prompt) come after the end image; the memory
        controls (text) and the job to borrow from (an id) last.
        """
        values = {name: value for name, value in locals().items() if name != "self"}
        if not end_image:  # the page's slider always sends a strength; it counts only with an end image
            values["end_frame_strength"] = None
        return self.spec_of(values)

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
            self._check_borrow(spec.request, owner)
            preset = load_preset(spec.preset)
            spec.request.validate(preset)  # as the CLI: a request the preset refuses says so before missing weights do
            model = preset.model
            if gone := hub.missing(model):  # a job never starts a silent multi-GB download
                raise InputError("weights", hub.missing_message(model, gone, spec.preset))
            return self.worker.submit(spec)
        except InputError as e:
            if page:
                e = InputError(page_label(e.field), e.message)
            raise self._error(e, "Can't start this job") from None

    def _check_borrow(self, request: GenerationRequest, owner: str | None) -> None:
        """A borrowed job named by a client is a job id this user may see (another user's reads as unknown)."""
        if request.borrow is None:
            return
        job_id = str(request.borrow).strip()
        try:
            self.worker.job_dir(job_id)  # an id, never a folder: clients name jobs, not paths
        except InputError as e:
            raise InputError("--borrow", e.message) from None
        if not self.studio.may_see(owner, self.worker.owner_of(job_id)):
            raise InputError("--borrow", f"no job with id {job_id!r}")
        request.borrow = job_id

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
