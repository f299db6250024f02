"""The Queue tab: this user's jobs, and a picker to show or cancel one; the listing that keeps it current."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from framepack_history.ui.handlers import Handlers
from framepack_history.ui.tabs import PRIVATE
from framepack_history.ui.tabs.gallery import GalleryTab
from framepack_history.ui.tabs.stage import Stage
from framepack_history.ui.tabs.sweep import build_saved_queue


@dataclass(frozen=True)
class QueueTab:
    """The jobs table and the job picker (both follow :meth:`QueueActions.refresh`)."""

    table: gr.Dataframe
    picked: gr.Dropdown
    #: whether the queue is held, and what is loaded (follows the timer)
    state: gr.Markdown
    pause: gr.Button
    resume: gr.Button


def build_queue_tab(h: Handlers, stage: Stage) -> QueueTab:
    """The Queue tab; Show points the stage at the picked job, Cancel job cancels it (the stage keeps its own)."""
    with gr.Tab("Queue"):
        with gr.Row():
            state = gr.Markdown("", elem_id="fph-queue-state")
            pause = gr.Button("Pause queue", scale=0, min_width=140, elem_id="fph-pause")
            resume = gr.Button("Resume queue", variant="primary", scale=0, min_width=140, visible=False,
                               elem_id="fph-resume-queue")
        table = gr.Dataframe(headers=["job", "status", "sections", "seconds", "prompt", "message", "device"],
                             interactive=False, wrap=True, elem_id="fph-queue")
        with gr.Row():
            picked = gr.Dropdown([], label="Job", allow_custom_value=False, scale=3)
            show = gr.Button("Show", scale=1)
            cancel_picked = gr.Button("Cancel job", variant="stop", scale=1)
        build_saved_queue(h)  # Export / Import: the queue as one zip
    shown = show.click(lambda j: (j or ""), [picked], [stage.job_id], **PRIVATE)
    stage.follow(shown.then)
    cancel_picked.click(h.cancel_picked, [picked], None, concurrency_limit=None, **PRIVATE)
    pause.click(h.pause_click, None, [state, pause, resume], concurrency_limit=None, **PRIVATE)
    resume.click(h.resume_queue_click, None, [state, pause, resume], concurrency_limit=None, **PRIVATE)
    return QueueTab(table, picked, state, pause, resume)


def keep_listed(demo: gr.Blocks, h: Handlers, timer: gr.Timer, seen: gr.State, queue: QueueTab, gallery: GalleryTab) -> None:
    """The jobs table, the job picker and the gallery follow the store: on load, then at every tick that changed them."""
    outputs = [seen, queue.table, queue.picked, gallery.gallery]
    demo.load(h.refresh, [seen, gallery.picked_video], outputs, **PRIVATE)
    timer.tick(h.refresh, [seen, gallery.picked_video], outputs, concurrency_limit=None, show_progress="hidden", **PRIVATE)
    paused = [queue.state, queue.pause, queue.resume]  # another page (or the API) may pause the queue
    demo.load(h.pause_state, None, paused, **PRIVATE)
    timer.tick(h.pause_state, None, paused, concurrency_limit=None, show_progress="hidden", **PRIVATE)
