"""The stage: the right-hand column where the followed job plays, and the wiring that follows a job into it.

Every event that points the page at a job (Generate, Resume, Extend, Show, page load) ends in
:meth:`Stage.follow`, so one follower per page streams into the same five outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
from gradio.components import Component
from gradio.events import Dependency

from framepack_history.config.presets import Preset
from framepack_history.ui.follow import Follower
from framepack_history.ui.handlers import Handlers
from framepack_history.ui.progress import progress_html
from framepack_history.ui.tabs import PRIVATE


@dataclass(frozen=True)
class Stage:
    """The followed job's id and what its follower streams to."""

    job_id: gr.State
    player: gr.Video
    preview: gr.Image
    progress: gr.HTML
    plan: gr.Markdown
    files: gr.File
    follower: Follower

    @property
    def outputs(self) -> list[Component]:
        """The follower's outputs, in the order it yields them."""
        return [self.player, self.preview, self.progress, self.plan, self.files]

    def follow(self, after: Callable[..., Dependency]) -> Dependency:
        """Follow the job in ``job_id`` once ``after`` fires (an event's ``.success`` or ``.then``)."""
        return after(self.follower.follow, [self.job_id], self.outputs, concurrency_limit=None, show_progress="hidden",
                     **PRIVATE)


def build_stage(demo: gr.Blocks, h: Handlers, job_id: gr.State, default_preset: str, preset: Preset) -> Stage:
    """The right column: the growing player, the denoising preview, progress and plan, the finished files.

    On page load it re-attaches to this user's running job, else their newest.
    """
    with gr.Column(scale=3, min_width=420):
        player = gr.Video(label="Video (grows section by section)", streaming=True, autoplay=True,
                          interactive=False, elem_id="fph-player", height=360)
        with gr.Row(equal_height=False):
            preview = gr.Image(label="Denoising", interactive=False, elem_id="fph-preview", height=180,
                               scale=1, min_width=160, buttons=[])
            with gr.Column(scale=2):
                progress = gr.HTML(progress_html(None), elem_id="fph-progress")
                plan = gr.Markdown(h.preview_plan(default_preset, preset.model.encoder_rate, 5), elem_id="fph-plan")
        files = gr.File(label="Video and sidecar", file_count="multiple", interactive=False, visible=False)
    stage = Stage(job_id, player, preview, progress, plan, files, h.follower)
    loaded = demo.load(h.follower.attach, None, job_id, **PRIVATE)
    stage.follow(loaded.then)
    return stage
