"""Acting on jobs by id: the Queue tab's table and job picker, Cancel, Resume and Edit storyboard.

Every action first checks that the request's user may see the job (:meth:`PageContext.own`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from framepack_history.errors import InputError
from framepack_history.jobs.store import TERMINAL, Job
from framepack_history.ui.context import PageContext
from framepack_history.ui.progress import progress_html


class QueueActions(PageContext):
    """Page events on queued, running and interrupted jobs, and the listing that shows them."""

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

    # ------------------------------------------------------------ pausing
    def _may_pause(self, request: gr.Request | None) -> None:
        """Pausing holds everyone's jobs: in a shared studio only an admin may (without --auth, the one local user)."""
        if not self.studio.sees_all(self.user(request)):
            raise InputError("queue", "only an admin may pause or resume the queue: it holds every user's jobs")

    def pause_state(self) -> tuple[str, Any, Any]:
        """The Queue tab's status line and which of Pause / Resume queue is shown."""
        paused = self.worker.paused
        return self.worker.queue_state(), gr.update(visible=not paused), gr.update(visible=paused)

    def pause_click(self, request: gr.Request | None = None) -> tuple[str, Any, Any]:
        """Pause: the running job finishes, queued jobs wait in order, and the device is freed."""
        try:
            self._may_pause(request)
        except InputError as e:
            raise self._error(e) from None
        self.worker.pause_queue()
        return self.pause_state()

    def resume_queue_click(self, request: gr.Request | None = None) -> tuple[str, Any, Any]:
        """Resume queue: the queued jobs go on in their order."""
        try:
            self._may_pause(request)
        except InputError as e:
            raise self._error(e) from None
        self.worker.resume_queue()
        return self.pause_state()

    # ------------------------------------------------------------ cancelling
    def cancel_click(self, job_id: str, request: gr.Request | None = None) -> str:
        """Cancel button: the chosen job (or the one on screen)."""
        if not job_id:
            raise gr.Error("No job to cancel.")
        try:
            job = self.worker.cancel(self.own(job_id, request))
        except InputError as e:
            raise self._error(e) from None
        return self.html(job)

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
        return progress_html(job)


def job_choices(jobs: list[Job]) -> list[tuple[str, str]]:
    """Job pickers' choices, newest first: the id with the job's status and the start of its prompt."""
    def label(j: Job) -> str:
        prompt = j.spec.request.prompt.replace("\n", " ")
        return f"{j.id} · {j.status} · {prompt[:40] + ('…' if len(prompt) > 40 else '')}"

    return [(label(j), j.id) for j in reversed(jobs)]
