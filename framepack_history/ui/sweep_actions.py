"""Sweeps from the page and the API: several seeds or an XY grid queued as ordinary jobs, and their grid.

The page's Queue sweep reads the Generate form as Generate does (:meth:`Handlers.spec`) plus the sweep's
fields; ``/sweep`` takes the API's parameters by name. Either way :func:`~framepack_history.jobs.sweep.submit_sweep`
admits every cell before queueing any, so a bad cell refuses the sweep naming its axis and value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr

from framepack_history.config.fields import FIELDS, page_label
from framepack_history.config.presets import load_preset
from framepack_history.errors import InputError
from framepack_history.hub import files as hub
from framepack_history.jobs.store import Job, JobSpec
from framepack_history.jobs.sweep import (
    LORA_WEIGHT,
    SWEEPABLE,
    axis,
    grid,
    make_sweep,
    parse_axis_arg,
    submit_sweep,
    sweep_jobs,
)
from framepack_history.jobs.studio import client_view
from framepack_history.ui.handlers import Handlers

#: the sweep fields as the page labels them (its error messages name them so)
LABELS = {"--sweep-seeds": "Sweep seeds", "--sweep-x": "Sweep X", "--sweep-y": "Sweep Y"}
#: the settings an axis may vary, as the page's pickers offer them
AXIS_CHOICES = [(f.label or f.name, f.name) for f in FIELDS if f.name in SWEEPABLE] + [("LoRA weight", LORA_WEIGHT)]
#: the API parameters ``/sweep``'s settings may not carry: files (a path would read the server's files)
_FILE_PARAMS = {f.api for f in FIELDS if f.kind in ("image", "video", "keyframes") and f.api} | {"keyframe_times"}


class SweepActions:
    """Queue sweep, the grid and ``/sweep`` of one page's handlers."""

    def __init__(self, page: Handlers) -> None:
        self.page = page

    # ---------------------------------------------------------------- queueing
    def sweep_of(self, seeds: Any, x_field: Any, x_values: Any, y_field: Any, y_values: Any):
        """The sweep the fields ask for; an axis with no setting picked is left out."""
        x = axis(str(x_field), x_values or "", "x") if x_field else None
        y = axis(str(y_field), y_values or "", "y") if y_field else None
        if y is not None and x is None:
            raise InputError("--sweep-y", "pick an X setting too (the Y axis is the grid's rows)")
        sweep = make_sweep(seeds if isinstance(seeds, str) and seeds.strip() else None, x, y)
        if sweep is None:
            raise InputError("--sweep-seeds", "give seeds (1, 2, 3) or pick an X setting with its values")
        return sweep

    def queue(self, spec: JobSpec, sweep: Any, owner: str | None) -> list[Job]:
        """Check as Generate does (the request against the preset, the weights), then queue every cell."""
        page = self.page
        spec.owner = owner
        page._check_borrow(spec.request, owner)  # a borrowed job named by a client is one it may see
        preset = load_preset(spec.preset)
        spec.request.validate(preset)
        if gone := hub.missing(preset.model):
            raise InputError("weights", hub.missing_message(preset.model, gone, spec.preset))
        return submit_sweep(page.worker, spec, sweep)

    def page_sweep(self, *values: Any, request: gr.Request | None = None) -> tuple[str, str, str]:
        """Queue sweep: Generate's values then seeds, X setting, X values, Y setting, Y values.

        Returns the first cell's job id (the stage follows it), the sweep id (the grid follows it) and a line.
        """
        page = self.page
        *form, seeds, x_field, x_values, y_field, y_values = values
        try:
            sweep = self.sweep_of(seeds, x_field, x_values, y_field, y_values)
            jobs = self.queue(page.spec(*form), sweep, page.user(request))
        except InputError as e:
            raise page._error(InputError(LABELS.get(e.field) or page_label(e.field), e.message),
                              "Can't queue this sweep") from None
        sweep_id = jobs[0].spec.sweep["id"]
        return jobs[0].id, sweep_id, f"Sweep {sweep_id}: {len(jobs)} jobs queued; the grid shows when all have finished."

    def api_sweep(self, settings: Any = None, seeds: str = "", x: str = "", y: str = "",
                  request: gr.Request | None = None) -> dict:
        """Queue a sweep: ``settings`` are ``/generate``'s parameters by name (no files), ``seeds`` ``"1, 2, 3"``,
        ``x`` and ``y`` axes as ``"guidance=1,3"`` / ``"cache=off,fast"``. Returns the sweep id and its jobs in
        grid order (the first axis fastest); ``/status`` follows each job."""
        page = self.page
        try:
            values = _settings(settings)
            xa = parse_axis_arg(x, "x") if x else None
            ya = parse_axis_arg(y, "y") if y else None
            if ya is not None and xa is None:
                raise InputError("--sweep-y", "give an x axis too (the y axis is the grid's rows)")
            sweep = make_sweep(seeds if isinstance(seeds, str) and seeds.strip() else None, xa, ya)
            if sweep is None:
                raise InputError("--sweep-seeds", "give seeds or an x axis")
            jobs = self.queue(page.spec_of(values), sweep, page.user(request))
        except InputError as e:
            raise page._error(e) from None
        return {"sweep": jobs[0].spec.sweep["id"],
                "jobs": [dict(client_view(j.snapshot(), page.worker.outputs, page.studio)) for j in jobs]}

    # ---------------------------------------------------------------- the grid
    def grid(self, sweep_id: str, shown: Any, request: gr.Request | None = None) -> tuple[Any, Any, Any]:
        """Timer: the sweep's state; once every cell has ended, its grid (each result's last frame, captioned)."""
        if not sweep_id:
            return shown, gr.skip(), gr.skip()
        page = self.page
        user = page.user(request)
        jobs = [j for j in sweep_jobs(page.store, sweep_id) if page.studio.may_see(user, j.spec.owner)]
        key = [[j.id, j.status] for j in jobs]
        if key == shown or not jobs:
            return shown, gr.skip(), gr.skip()
        ended = [j for j in jobs if j.terminal]
        line = f"Sweep {sweep_id}: {len(ended)} of {len(jobs)} finished"
        if len(ended) < len(jobs):
            return key, line + ".", gr.skip()
        cells = grid(jobs)
        items = [(frame, caption) for frame, caption in cells if frame is not None]
        failed = [caption for frame, caption in cells if frame is None]
        cols = len(jobs) // max(1, 1 + max(j.spec.sweep["row"] for j in jobs))
        more = f"; no frame for {', '.join(failed)}" if failed else ""
        return key, line + more + ".", gr.update(value=items, columns=max(1, cols), visible=True)


def _settings(settings: Any) -> Mapping[str, Any]:
    """``/sweep``'s settings: ``/generate``'s parameters by name, files refused (they would name the server's)."""
    if settings in (None, ""):
        return {}
    if not isinstance(settings, dict):
        raise InputError("settings", f"must be an object of /generate's parameters (got {type(settings).__name__})")
    for name in settings:
        if name in _FILE_PARAMS:
            raise InputError(name, "a sweep over the API takes no files (queue jobs with inputs through /generate)")
    return settings

