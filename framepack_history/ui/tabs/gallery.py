"""The Gallery tab: past results; reuse a video's settings, or extend it from its saved history."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from framepack_history.ui.handlers import Handlers
from framepack_history.ui.tabs import PRIVATE
from framepack_history.ui.tabs.generate import Form, replan_after
from framepack_history.ui.tabs.stage import Stage


@dataclass(frozen=True)
class GalleryTab:
    """The gallery (the listing refreshes it) and the video picked in it."""

    gallery: gr.Gallery
    picked_video: gr.State


def build_gallery_tab(h: Handlers, form: Form, stage: Stage) -> GalleryTab:
    """The Gallery tab: Reuse settings fills ``form`` (then plans again); Extend's new job plays on ``stage``."""
    with gr.Tab("Gallery"):
        gallery = gr.Gallery(label="Past results (outputs/)", columns=6, height=300, allow_preview=True)
        picked_video = gr.State("")
        with gr.Row(equal_height=True):
            reuse = gr.Button("Reuse settings", scale=1, elem_id="fph-reuse")
            settings_file = gr.File(label="…or load a video.json", file_types=[".json"], type="filepath",
                                    scale=2, elem_id="fph-settings-file")
        with gr.Row(equal_height=True):
            extend_prompt = gr.Textbox(label="Extend with storyboard", lines=1, max_length=2000, scale=4,
                                       info="of the whole video, times from its start; empty = the old one's")
            extend_seconds = gr.Number(value=5, minimum=0.5, label="Seconds to add", scale=1)
            extend = gr.Button("Extend", variant="primary", scale=1, elem_id="fph-extend")
    gallery.select(h.gallery_pick, None, picked_video, **PRIVATE)
    reused = [reuse.click(h.reuse_settings, [picked_video], form.settings, **PRIVATE),
              settings_file.upload(h.reuse_settings, [picked_video, settings_file], form.settings, **PRIVATE)]
    extended = extend.click(h.extend_click, [picked_video, extend_prompt, extend_seconds], [stage.job_id, stage.progress],
                            concurrency_limit=None, **PRIVATE)
    stage.follow(extended.success)
    replan_after(h, form, stage.plan, *reused)
    return GalleryTab(gallery, picked_video)
