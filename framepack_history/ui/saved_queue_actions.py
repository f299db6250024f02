"""A saved queue from the page and the API: Export writes this user's queued jobs and their inputs to one zip,
Import queues a saved queue's jobs here (:mod:`framepack_history.jobs.saved_queue`)."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from framepack_history.errors import InputError
from framepack_history.jobs.saved_queue import exportable, import_queue, write_queue
from framepack_history.jobs.store import Job
from framepack_history.jobs.studio import client_view
from framepack_history.ui.handlers import Handlers


class SavedQueueActions:
    """Export and Import of one page's handlers, on the Queue tab and over HTTP."""

    def __init__(self, page: Handlers) -> None:
        self.page = page

    def export(self, unfinished: Any = False, request: gr.Request | None = None) -> str:
        """The zip of this user's queued jobs (with ``unfinished``, also running and interrupted ones)."""
        page = self.page
        user = page.user(request)
        jobs = exportable(page.worker, bool(unfinished), lambda owner: page.studio.may_see(user, owner))
        try:
            path = write_queue(jobs, page.temp_dir / f"queue-{time.strftime('%Y%m%d-%H%M%S')}-{len(jobs)}.zip")
        except InputError as e:
            raise page._error(e) from None
        return str(path)

    def import_file(self, file: Any, request: gr.Request | None = None) -> list[Job]:
        page = self.page
        path = file.get("path") if isinstance(file, dict) else getattr(file, "path", None) or file
        if not path:
            raise InputError("queue file", "upload a saved queue (.zip)")
        user = page.user(request)
        return import_queue(page.worker, str(path), owner=user, visible=lambda owner: page.studio.may_see(user, owner))

    def page_import(self, file: Any, request: gr.Request | None = None) -> str:
        """Import: the saved queue's jobs join this queue; a line saying how many."""
        try:
            jobs = self.import_file(file, request)
        except InputError as e:
            raise self.page._error(e, "Can't import this queue") from None
        return f"Imported {len(jobs)} job{'s' * (len(jobs) != 1)}: {', '.join(j.id for j in jobs)}"

    def api_import(self, file: Any, request: gr.Request | None = None) -> dict:
        """Queue a saved queue's jobs here; returns each new job's status, in order."""
        page = self.page
        try:
            jobs = self.import_file(file, request)
        except InputError as e:
            raise page._error(e) from None
        return {"jobs": [dict(client_view(j.snapshot(), page.worker.outputs, page.studio)) for j in jobs]}
