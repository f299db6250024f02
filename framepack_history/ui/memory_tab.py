"""The Memory tab and ``/recall``: a past frame recalled from a job's history embedding beside the real one.

The recall itself runs in the worker's inspector (on the CPU, from the job's last checkpoint); this
room only checks who may see the job, reads the page's values and shapes the answers.
"""

from __future__ import annotations

import uuid
from typing import Any

import gradio as gr

from framepack_history.errors import InputError
from framepack_history.ui.handlers import Handlers
from framepack_history.ui.queue_actions import job_choices
from framepack_history.ui.values import _num


class MemoryTab:
    """Handlers of the Memory tab and the ``/recall`` API, on top of the page's :class:`Handlers`."""

    def __init__(self, handlers: Handlers) -> None:
        self.h = handlers

    def _recall(self, job_id: Any, at: Any, steps: Any = None, request: gr.Request | None = None):
        """The worker's recall (CPU, the job's last checkpoint); bad input and jobs without an embedding as errors."""
        if not job_id:
            raise gr.Error("No job chosen.", title="Can't recall")
        job_id = self.h.own(job_id, request)
        try:
            when = _num(at, "time")
            return self.h.worker.recall(str(job_id), 0.0 if when is None else float(when),
                                      _num(steps, "steps", integer=True))
        except InputError as e:
            raise self.h._error(e, "Can't recall") from None

    def recall_click(self, job_id: Any, at: Any, request: gr.Request | None = None) -> tuple:
        """Memory tab: the frame recalled from the embedding, the real frame, and their PSNR."""
        r = self._recall(job_id, at, request=request)
        return r.recalled, r.real, f"{r.summary()} · saved history: {r.sections} sections, {r.seconds:g} s · {r.layout_text()}"

    def recall_choices(self, request: gr.Request | None = None) -> Any:
        """Memory tab: every job this user sees, newest first."""
        return gr.update(choices=job_choices(self.h.visible_jobs(request)))

    def recall_job(self, job_id: Any, request: gr.Request | None = None) -> Any:
        """Memory tab: the time slider spans what the chosen job made (a cancelled job: its finished sections)."""
        try:
            job = self.h.store.get(self.h.own(job_id, request)) if job_id else None
        except (InputError, gr.Error):
            job = None
        if job is None:
            return gr.skip()
        p, seconds = job.progress, job.spec.request.seconds
        if job.terminal and p.sections_total and p.sections_done < p.sections_total:
            seconds = seconds * p.sections_done / p.sections_total
        return gr.update(maximum=seconds) if seconds else gr.skip()

    def api_recall(self, job_id: str, at: float, steps: int | None = None,
                   request: gr.Request | None = None) -> tuple[str, str, dict]:
        """Recall the frame at ``at`` s of a job from its history embedding: (recalled PNG, real PNG, details)."""
        from PIL import Image  # PIL: only when an image is read or written

        r = self._recall(job_id, at, steps, request)
        name = f"recall-{uuid.uuid4().hex[:8]}"
        paths = [self.h.temp_dir / f"{name}-{kind}.png" for kind in ("recalled", "real")]
        for image, path in zip((r.recalled, r.real), paths):
            Image.fromarray(image).save(path)
        info = {"psnr": r.psnr, "at": r.at, "latent_frame": r.frame, "age_s": r.age_s, "sections": r.sections,
                "history_tokens": r.history_tokens, "time_reduction": r.coarse, "seconds": r.seconds, "summary": r.summary(),
                "layout": [list(run) for run in r.layout]}
        return str(paths[0]), str(paths[1]), info
