"""The Tools tab: loop, join, export, upscale or interpolate the video picked in the Gallery, as a new job."""

from __future__ import annotations

import gradio as gr

from framepack_history.jobs.tools import FORMATS, LOOP_MODES, SETTINGS, TOOLS
from framepack_history.ui.handlers import Handlers
from framepack_history.ui.tabs import PRIVATE
from framepack_history.ui.tabs.gallery import GalleryTab
from framepack_history.ui.tabs.stage import Stage
from framepack_history.ui.tools_api import ToolsApi


def build_tools_tab(h: Handlers, gallery: GalleryTab, stage: Stage) -> None:
    """The tab; Run queues the tool on the Gallery's pick (the original is kept) and the stage follows the new job."""
    tools = ToolsApi(h)
    with gr.Tab("Tools"):
        gr.Markdown("Works on the video picked in the **Gallery**: a new job on the worker, in the queue with the others; "
                    "the original is kept. Upscaling is nearest or bicubic, interpolation blends neighbouring frames.")
        tool = gr.Radio(list(TOOLS), value="upscale", label="Tool", elem_id="fph-tool")
        widgets = {
            "mode": gr.Radio(list(LOOP_MODES), value="pingpong", label="Loop", visible=False),
            "fade_frames": gr.Number(value=8, precision=0, minimum=1, label="Fade frames (crossfade)", visible=False),
            "format": gr.Dropdown(list(FORMATS), value="h264", label="Format", visible=False),
            "quality": gr.Number(value=None, precision=0, label="Quality (CRF; GIF: colours; empty = the format's default)",
                                 visible=False),
            "scale": gr.Radio([2, 4], value=2, label="Scale"),
            "method": gr.Radio(["nearest", "bicubic"], value="bicubic", label="Method"),
            "factor": gr.Radio([2, 4], value=2, label="Factor (frame rate)", visible=False),
        }
        join_with = gr.Textbox(label="Join with (job ids, after the picked video)", visible=False)
        run = gr.Button("Run tool", variant="primary", elem_id="fph-run-tool")
    names = [name for names in SETTINGS.values() for name in names]  # page_tool's order

    def shown(which: str) -> list:
        return [gr.update(visible=name in SETTINGS.get(which, ())) for name in names] + [gr.update(visible=which == "join")]

    tool.change(shown, [tool], [widgets[n] for n in names] + [join_with], **PRIVATE)
    started = run.click(tools.page_tool, [gallery.picked_video, tool, join_with, *(widgets[n] for n in names)],
                        [stage.job_id, stage.progress], concurrency_limit=None, **PRIVATE)
    stage.follow(started.success)
