"""Who asks and what they may see: the page's bound worker, the studio's rules and the user of a request.

Every part of the handlers (:mod:`.queue_actions`, :mod:`.gallery_actions`, :mod:`.plan`, :mod:`.follow`,
:mod:`.memory_tab`, the API) reads jobs and videos through this, so a job id from a client is checked
the same way everywhere.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from framepack_history.errors import InputError
from framepack_history.jobs.gallery import past_results
from framepack_history.jobs.store import Job
from framepack_history.jobs.studio import Studio
from framepack_history.jobs.worker import Worker
from framepack_history.ui.progress import progress_html


class PageContext:
    """Bound to one Worker: the presets a page or API call may ask for, and who sees which job (``--auth``)."""

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

    def gallery(self, request: gr.Request | None = None) -> list[tuple[str, str]]:
        """Finished videos under outputs/ that this user may see."""
        if self.studio.sees_all(user := self.user(request)):
            return past_results(self.worker.outputs)
        return past_results(self.worker.outputs,
                            visible=lambda video: self.studio.may_see(user, self.worker.owner_of_file(video)))

    def _error(self, e: InputError, title: str | None = None) -> gr.Error:
        """An input error as the page shows it (without server folders when the studio is shared)."""
        text = self.studio.say(f"{e.field.lstrip('-')}: {e.message}")
        return gr.Error(text, title=title) if title else gr.Error(text)

    def html(self, job: Job | None) -> str:
        """The progress box for ``job``, scrubbed of server folders when the studio is shared."""
        return progress_html(job, scrub=self.studio.shared)
