"""The Sweep accordion under Generate: several seeds or an XY grid queued as jobs, and their labelled grid;
the Queue tab's Export and Import of a saved queue; and their HTTP endpoints (``/sweep``, ``/export_queue``,
``/import_queue``)."""

from __future__ import annotations

import gradio as gr

from framepack_history.ui.handlers import Handlers
from framepack_history.ui.saved_queue_actions import SavedQueueActions
from framepack_history.ui.sweep_actions import AXIS_CHOICES, SweepActions
from framepack_history.ui.tabs import PRIVATE
from framepack_history.ui.tabs.generate import Form
from framepack_history.ui.tabs.stage import Stage


def build_sweep(h: Handlers, form: Form, stage: Stage) -> None:
    """Queue sweep reads the form as Generate does; the stage follows the first cell, the grid shows at the end."""
    sweeps = SweepActions(h)
    with gr.Accordion("Sweep: several seeds, or a grid over two settings", open=False, elem_id="fph-sweep"):
        seeds = gr.Textbox(label="Seeds", placeholder="1, 2, 3", elem_id="fph-sweep-seeds",
                           info="one job per seed; with an X setting, the seeds are the grid's rows")
        with gr.Row(equal_height=True):
            x_field = gr.Dropdown(AXIS_CHOICES, value=None, label="X setting", elem_id="fph-sweep-x")
            x_values = gr.Textbox(label="X values", placeholder="1, 3, 6", elem_id="fph-sweep-x-values")
        with gr.Row(equal_height=True):
            y_field = gr.Dropdown(AXIS_CHOICES, value=None, label="Y setting", elem_id="fph-sweep-y")
            y_values = gr.Textbox(label="Y values", placeholder="off, fast", elem_id="fph-sweep-y-values")
        queue = gr.Button("Queue sweep", elem_id="fph-sweep-queue")
        line = gr.Markdown(elem_id="fph-sweep-status")
        grid = gr.Gallery(label="Sweep grid (last frames)", visible=False, columns=4, height="auto",
                          elem_id="fph-sweep-grid")
        sweep_id, shown = gr.State(""), gr.State(None)
    started = queue.click(sweeps.page_sweep, [*form.inputs, seeds, x_field, x_values, y_field, y_values],
                          [stage.job_id, sweep_id, line], concurrency_limit=None, preprocess=False, **PRIVATE)
    stage.follow(started.success)
    started.success(lambda: (None, gr.update(visible=False)), None, [shown, grid], **PRIVATE)
    gr.Timer(2.0).tick(sweeps.grid, [sweep_id, shown], [shown, line, grid], concurrency_limit=None,
                       show_progress="hidden", **PRIVATE)


def build_saved_queue(h: Handlers) -> None:
    """Export (this user's queued jobs and their inputs, one zip) and Import (its jobs join this queue)."""
    saved = SavedQueueActions(h)
    with gr.Accordion("Saved queue: export, import", open=False, elem_id="fph-saved-queue"), gr.Row(equal_height=True):
        unfinished = gr.Checkbox(label="Include unfinished jobs (they start again)", value=False, scale=1)
        export = gr.Button("Export queue", scale=1, elem_id="fph-export-queue")
        exported = gr.File(label="Saved queue", interactive=False, scale=2, elem_id="fph-exported-queue")
        upload = gr.File(label="Import a saved queue (.zip)", file_types=[".zip"], type="filepath", scale=2,
                         elem_id="fph-import-queue")
    line = gr.Markdown(elem_id="fph-import-status")
    export.click(saved.export, [unfinished], [exported], concurrency_limit=None, **PRIVATE)
    upload.upload(saved.page_import, [upload], [line], concurrency_limit=None, **PRIVATE)


def build_sweep_endpoints(h: Handlers) -> None:
    """``/sweep``, ``/export_queue`` and ``/import_queue`` (call it inside the page's ``gr.Blocks``)."""
    gr.api(SweepActions(h).api_sweep, api_name="sweep", concurrency_limit=None)
    saved = SavedQueueActions(h)
    export = gr.Button(visible=False)
    export.click(saved.export, [gr.Checkbox(visible=False, label="unfinished")], [gr.File(visible=False, label="queue")],
                 api_name="export_queue", concurrency_limit=None)
    upload = gr.Button(visible=False)
    upload.click(saved.api_import, [gr.File(visible=False, label="file", file_types=[".zip"])],
                 [gr.JSON(visible=False, label="jobs")], api_name="import_queue", concurrency_limit=None)
