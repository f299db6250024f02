"""The Memory tab: what the history embedding remembers, a recalled frame beside the real one."""

from __future__ import annotations

import gradio as gr

from framepack_history.config.presets import Preset
from framepack_history.ui.memory_tab import MemoryTab
from framepack_history.ui.tabs import PRIVATE


def build_memory_tab(demo: gr.Blocks, memory: MemoryTab, preset: Preset) -> None:
    """The Memory tab: pick a job and a time; Recall shows the frame from the embedding, the real one and their PSNR."""
    with gr.Tab("Memory", elem_id="fph-memory"):
        gr.Markdown("What the history embedding remembers: pick a job and a time. The frame is recalled from the "
                    "embedding alone (on the CPU, from the job's last finished section) beside the real frame.")
        with gr.Row(equal_height=True):
            recall_job = gr.Dropdown([], label="Job", scale=3, elem_id="fph-recall-job")
            recall_at = gr.Slider(0, preset.video.max_seconds, value=0, step=0.25, label="Time (s)", scale=4,
                                  elem_id="fph-recall-at")
            recall_button = gr.Button("Recall", scale=1, min_width=100)
        with gr.Row():
            recalled = gr.Image(label="Recalled from the history embedding", interactive=False, height=256,
                                elem_id="fph-recalled", buttons=[])
            real_frame = gr.Image(label="Real frame", interactive=False, height=256, elem_id="fph-real", buttons=[])
        recall_md = gr.Markdown("", elem_id="fph-recall-psnr")
    for event in (demo.load, recall_job.focus):
        event(memory.recall_choices, None, recall_job, **PRIVATE)
    recall_job.change(memory.recall_job, [recall_job], [recall_at], **PRIVATE)
    recall_button.click(memory.recall_click, [recall_job, recall_at], [recalled, real_frame, recall_md],
                        concurrency_limit=1, **PRIVATE)
