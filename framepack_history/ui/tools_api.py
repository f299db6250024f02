"""The finishing tools over HTTP: ``/tool`` queues loop, join, export, upscale or interpolate on the worker.

A tool works on finished jobs' videos (a Gallery pick: the job id is the video's folder name) or on
uploaded videos. Jobs are checked with :meth:`PageContext.own` like every other handler, bad input is
refused before queueing with the field named (:meth:`Worker.submit_tool`), and the job is a job like
any other: ``/status`` follows it, ``/cancel`` stops it.
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr

from framepack_history.errors import InputError
from framepack_history.jobs.store import Job
from framepack_history.jobs.studio import client_view
from framepack_history.jobs.tools import LEARNED, SETTINGS, ToolSpec
from framepack_history.ui.gallery_actions import GalleryActions

#: the Tools tab's setting widgets, in the order :meth:`ToolsApi.page_tool` takes their values: each tool's own
#: (upscale and interpolate both have a method and a model, each its own widget)
PAGE_FIELDS = [(tool, name) for tool, names in SETTINGS.items() for name in names]


class ToolsApi:
    """The ``/tool`` endpoint of one page's context (its worker, its studio, who asks)."""

    def __init__(self, page: GalleryActions) -> None:
        self.page = page

    def api_tool(self, tool: str, job_ids: Any = None, files: Any = None, settings: Any = None, wait: bool = False,
                 request: gr.Request | None = None) -> tuple[dict, str | None]:
        """Queue ``tool`` (loop, join, export, upscale, interpolate) on ``job_ids``' videos, then ``files``.

        ``job_ids``: finished jobs (a list, or text such as ``"a, b"``); ``files``: uploaded videos;
        ``settings``: the tool's settings as an object (loop: mode, fade_frames; export: format, quality;
        upscale: scale, method (nearest, bicubic, esrgan), model; interpolate: factor, method (blend, rife),
        model; join: none), each left out = its default. ``model``: for esrgan or rife, a known model's name
        or a ``.safetensors`` file on the server (default: the method's default model).
        Returns the job's status and, with ``wait``, the finished video (else ``None``).
        """
        page = self.page
        try:
            ids = [page.own(i, request) for i in _ids(job_ids)]
            paths = [_path(f) for f in (files if isinstance(files, list) else [files] if files else [])]
            if settings in (None, ""):
                settings = {}
            if not isinstance(settings, dict):
                raise InputError("settings", f"must be an object of the tool's settings (got {type(settings).__name__})")
            job = page.worker.submit_tool(str(tool or ""), settings, job_ids=ids, files=paths, owner=page.user(request),
                                          preset=page.default_preset)
        except InputError as e:
            raise page._error(e) from None
        while wait and not job.terminal:
            job = page.store.wait(job.id, job.version, 5.0)
        if wait and job.status != "done":
            raise gr.Error(page.studio.say(f"job {job.id} {job.status}: {job.message}"))
        return self.view(job), str(job.video) if wait else None

    def page_tool(self, video: str | None, tool: str, join_with: Any, *values: Any,
                  request: gr.Request | None = None) -> tuple[str, str]:
        """The Tools tab's Run: ``tool`` on the video picked in the Gallery (then ``join_with``'s jobs, for a join).

        ``values``: every tool's settings in :data:`PAGE_FIELDS` order; the tool takes its own (a model only
        with a learned method). Returns the new job's id and progress box (the stage follows it).
        """
        page = self.page
        given = dict(zip(PAGE_FIELDS, values, strict=True))
        try:
            ids = [page.own(page.job_of_video(video), request), *(page.own(i, request) for i in _ids(join_with))]
            settings = {name: given[(tool, name)] for name in SETTINGS.get(tool, ())}
            if settings.get("method") not in LEARNED:  # the model box is only read for esrgan and rife
                settings.pop("model", None)
            job = page.worker.submit_tool(str(tool or ""), settings, job_ids=ids, owner=page.user(request),
                                          preset=page.default_preset)
        except InputError as e:
            raise page._error(e, f"Can't {tool} this video") from None
        return job.id, page.html(job)

    def view(self, job: Job) -> dict:
        """A tool job as clients see it (``/status``'s view, plus the tool and its settings)."""
        view = client_view(job.snapshot(), self.page.worker.outputs, self.page.studio)
        if isinstance(job.spec, ToolSpec):
            view["tool"] = {"name": job.spec.tool, "settings": dict(job.spec.settings),
                            "sources": [s.get("job") or s.get("name") or "upload" for s in job.spec.sources]}
        return view


def _ids(job_ids: Any) -> list[str]:
    """Job ids from a list or from text (``"a, b"``)."""
    if job_ids in (None, ""):
        return []
    if isinstance(job_ids, str):
        return [i for i in re.split(r"[\s,]+", job_ids) if i]
    if isinstance(job_ids, list):
        return [str(i) for i in job_ids]
    raise InputError("job_ids", f"must be a list of job ids or text (got {type(job_ids).__name__})")


def _path(f: Any) -> str:
    """An uploaded file's path (gradio gives a path, or a file object with one)."""
    if isinstance(f, str):
        return f
    path = f.get("path") if isinstance(f, dict) else getattr(f, "path", None) or getattr(f, "name", None)
    if not path:
        raise InputError("files", f"an upload without a file (got {type(f).__name__})")
    return str(path)


def build_tool_endpoints(page: GalleryActions) -> ToolsApi:
    """Register ``/tool`` (call it inside the page's ``gr.Blocks``)."""
    api = ToolsApi(page)
    button = gr.Button(visible=False)
    inputs = [gr.Textbox(visible=False, label="tool"), gr.JSON(visible=False, label="job_ids"),
              gr.File(visible=False, label="files", file_count="multiple", file_types=["video"]),
              gr.JSON(visible=False, label="settings"), gr.Checkbox(visible=False, label="wait")]
    outputs = [gr.JSON(visible=False, label="job"), gr.File(visible=False, label="video")]
    button.click(api.api_tool, inputs, outputs, api_name="tool", concurrency_limit=None)
    return api
