"""Following a job: one generator per page streams the job's segments into the player and its progress,
denoising preview, plan and files into the rest of the page.

A follower starts on Generate, Resume, Extend, Show (Queue tab) and page load (re-attach). A page
session follows one job at a time: starting a follower retires that page's previous one, which ends at
its next look. Nothing here acts on a job; it only reads the store.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import gradio as gr

from framepack_history.errors import InputError
from framepack_history.generation.video import concat_segments
from framepack_history.jobs.store import Job
from framepack_history.ui.plan import PlanInfo
from framepack_history.ui.values import _current

CATCH_UP_AFTER = 3  # more finished segments than this are sent to a re-attached page as one chunk
WAIT_S = 1.0  # how often a follower re-checks that its page still wants it
FOLLOW_OUTPUTS = 5  # what a follower streams to: player, preview, progress, plan, files


class Follower:
    """Streams jobs to pages; ``page`` gives the store, who sees which job, the progress box and the plan."""

    def __init__(self, page: PlanInfo) -> None:
        self.page = page
        self._views: dict[str, str] = {}  # page session -> token of the follower it wants
        self._lock = threading.Lock()

    def attach(self, request: gr.Request | None = None) -> str:
        """Page load: this user's running job, else their newest one ('' when there is none)."""
        job = _current(self.page.visible_jobs(request))
        return job.id if job else ""

    def follow(self, job_id: str, request: gr.Request | None = None) -> Iterator[tuple]:
        """Stream a job to one page: finished segments to the player, then every change.

        A page that re-attaches gets the segments so far as one chunk (joined
        without re-encoding), then each new section as it lands. The follower
        ends when the job does, or when its page starts following another job.
        """
        session, token = self._claim(request)
        try:
            page = self.page
            if job_id and page.studio.may_see(page.user(request), page.worker.owner_of(str(job_id))):
                yield from self._follow(job_id, session, token)
            else:  # nothing to follow: leave the page as it is (a generator that yields nothing blanks its outputs)
                yield (gr.skip(),) * FOLLOW_OUTPUTS
        finally:
            self._release(session, token)

    def _follow(self, job_id: str, session: str, token: str) -> Iterator[tuple]:
        store = self.page.store
        try:
            store.get(job_id)
        except InputError:
            return
        sent, seen, preview_seen, plan_key = 0, -1, -1, None
        while self._wanted(session, token):
            job = store.wait(job_id, seen, WAIT_S)
            if job.version == seen:
                continue
            # The job keeps changing under us: read what this update shows once.
            seen, terminal, segments = job.version, job.terminal, list(job.segments)
            chunk, sent = self._chunk(job, segments, sent)
            if sent < len(segments):
                seen = -1  # more segments are waiting: come back without blocking
            preview = gr.skip()
            if job.preview is not None and job.preview_version != preview_seen:
                preview, preview_seen = job.preview, job.preview_version
            key = (job.progress.history_tokens, job.status)
            plan = gr.skip()
            if key != plan_key:
                plan, plan_key = self.page.plan_md(job), key
            files = [str(p) for p in (job.video, job.sidecar) if p] if terminal else None
            yield chunk, preview, self.page.html(job), plan, gr.update(value=files, visible=True) if files else gr.skip()
            if terminal and sent >= len(segments):
                return

    def _chunk(self, job: Job, segments: list, sent: int) -> tuple[Any, int]:
        """What the player gets next, and how many segments it then has: one segment, or all it missed as one."""
        if len(segments) - sent > CATCH_UP_AFTER:
            joined = concat_segments(segments[sent:], self.page.temp_dir / f"{job.id}-{uuid.uuid4().hex[:8]}.mp4")
            return str(joined), len(segments)
        if len(segments) > sent:
            return str(segments[sent]), sent + 1
        return gr.skip(), sent

    # a page session wants the follower holding its newest token; older ones stop at their next look
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
