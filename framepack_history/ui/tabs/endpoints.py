"""The HTTP API (gradio_client): ``/generate``, ``/cancel``, ``/status``, ``/resume``, ``/recall``, ``/steer``, ``/extend``,
``/tool``, ``/sweep``, ``/export_queue``, ``/import_queue``, ``/pause_queue``, ``/resume_queue``.

Hidden components carry the endpoints that take files or the page's own inputs; the rest are plain functions.
"""

from __future__ import annotations

import gradio as gr

from framepack_history.ui.api import generate_inputs
from framepack_history.ui.handlers import Handlers
from framepack_history.ui.memory_tab import MemoryTab
from framepack_history.ui.tabs.sweep import build_sweep_endpoints
from framepack_history.ui.tools_api import build_tool_endpoints


def build_endpoints(h: Handlers, memory: MemoryTab) -> None:
    """The named endpoints, wired to the page's handlers and the Memory tab's."""
    api_video = gr.File(visible=False, label="video")
    api_sidecar = gr.File(visible=False, label="sidecar")
    api_button = gr.Button(visible=False)
    # /generate has inputs of its own (named by the field table), not the page's widgets in their order
    api_button.click(h.api_generate, generate_inputs(), [api_video, api_sidecar], api_name="generate",
                     concurrency_limit=None, preprocess=False)
    gr.api(h.api_cancel, api_name="cancel", concurrency_limit=None)
    gr.api(h.api_status, api_name="status", concurrency_limit=None)
    gr.api(h.api_resume, api_name="resume", concurrency_limit=None)
    api_recall_button = gr.Button(visible=False)
    api_recall_outputs = [gr.File(visible=False, label="recalled"), gr.File(visible=False, label="real"),
                          gr.JSON(visible=False, label="recall")]
    api_recall_button.click(memory.api_recall, [gr.Textbox(visible=False), gr.Number(visible=False), gr.Number(visible=False)],
                            api_recall_outputs, api_name="recall", concurrency_limit=1)
    gr.api(h.api_steer, api_name="steer", concurrency_limit=None)
    gr.api(h.api_extend, api_name="extend", concurrency_limit=None)
    gr.api(h.api_pause_queue, api_name="pause_queue", concurrency_limit=None)
    gr.api(h.api_resume_queue, api_name="resume_queue", concurrency_limit=None)
    build_tool_endpoints(h)  # /tool: loop, join, export, upscale, interpolate
    build_sweep_endpoints(h)  # /sweep, /export_queue, /import_queue
