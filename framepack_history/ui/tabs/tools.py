"""The Tools tab: loop, join, export, upscale or interpolate the video picked in the Gallery, as a new job."""

from __future__ import annotations

import gradio as gr

from framepack_history.jobs.tools import (
    FORMATS,
    INTERPOLATE_METHODS,
    LOOP_MODES,
    TOOLS,
    UPSCALE_METHODS,
    model_names,
)
from framepack_history.hub.finishing_weights import known_scale
from framepack_history.ui.handlers import Handlers
from framepack_history.ui.tabs import PRIVATE
from framepack_history.ui.tabs.gallery import GalleryTab
from framepack_history.ui.tabs.stage import Stage
from framepack_history.ui.tools_api import PAGE_FIELDS, ToolsApi


def build_tools_tab(h: Handlers, gallery: GalleryTab, stage: Stage) -> None:
    """The tab; Run queues the tool on the Gallery's pick (the original is kept) and the stage follows the new job."""
    tools = ToolsApi(h)
    with gr.Tab("Tools"):
        gr.Markdown("Works on the video picked in the **Gallery**: a new job on the worker, in the queue with the others; "
                    "the original is kept. Upscaling is nearest, bicubic or **esrgan** (a learned ESRGAN-family model, "
                    "run in tiles); interpolation blends neighbouring frames or makes them with **rife**. A model is a "
                    "known name (fetch it with `python -m framepack_history download --finishing NAME`) or a "
                    ".safetensors file on the server.")
        tool = gr.Radio(list(TOOLS), value="upscale", label="Tool", elem_id="fph-tool")
        ups, interp = model_names("esrgan"), model_names("rife")
        widgets = {
            ("loop", "mode"): gr.Radio(list(LOOP_MODES), value="pingpong", label="Loop", visible=False),
            ("loop", "fade_frames"): gr.Number(value=8, precision=0, minimum=1, label="Fade frames (crossfade)",
                                               visible=False),
            ("export", "format"): gr.Dropdown(list(FORMATS), value="h264", label="Format", visible=False),
            ("export", "quality"): gr.Number(value=None, precision=0, visible=False,
                                             label="Quality (CRF; GIF: colours; empty = the format's default)"),
            ("upscale", "scale"): gr.Radio([2, 4], value=2, label="Scale"),
            ("upscale", "method"): gr.Radio(list(UPSCALE_METHODS), value="bicubic", label="Method"),
            ("upscale", "model"): gr.Dropdown(ups, value=ups[0] if ups else None, allow_custom_value=True,
                                              label="Model (esrgan: a name or a .safetensors path)"),
            ("interpolate", "factor"): gr.Radio([2, 4], value=2, label="Factor (frame rate)", visible=False),
            ("interpolate", "method"): gr.Radio(list(INTERPOLATE_METHODS), value="blend", label="Method", visible=False),
            ("interpolate", "model"): gr.Dropdown(interp, value=interp[0] if interp else None, allow_custom_value=True,
                                                  label="Model (rife: a name or a .safetensors path)", visible=False),
        }
        join_with = gr.Textbox(label="Join with (job ids, after the picked video)", visible=False)
        run = gr.Button("Run tool", variant="primary", elem_id="fph-run-tool")
    assert list(widgets) == PAGE_FIELDS  # page_tool reads the values in this order

    def shown(which: str) -> list:
        return [gr.update(visible=t == which) for t, _ in PAGE_FIELDS] + [gr.update(visible=which == "join")]

    def model_scale(method: str, model: str | None) -> dict:
        """A known ESRGAN-family model upscales by its own factor: the scale follows it (a file's is read on submit)."""
        scale = known_scale(model) if method == "esrgan" else None
        return gr.update(value=scale) if scale else gr.update()

    up = [widgets[("upscale", "method")], widgets[("upscale", "model")]]
    for widget in up:
        widget.change(model_scale, up, [widgets[("upscale", "scale")]], **PRIVATE)
    tool.change(shown, [tool], [widgets[f] for f in PAGE_FIELDS] + [join_with], **PRIVATE)
    started = run.click(tools.page_tool, [gallery.picked_video, tool, join_with, *(widgets[f] for f in PAGE_FIELDS)],
                        [stage.job_id, stage.progress], concurrency_limit=None, **PRIVATE)
    stage.follow(started.success)
