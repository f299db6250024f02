"""The first screen: which preset runs, what it needs (weights, with a Download button), what to do next."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from gradio.components import Component

from framepack_history.ui.tabs import PRIVATE
from framepack_history.ui.weights import WeightsPanel


@dataclass(frozen=True)
class FirstScreen:
    """The first screen's text, its Download button and the download's progress."""

    text: gr.Markdown
    download: gr.Button
    progress: gr.HTML

    @property
    def outputs(self) -> list[Component]:
        """What :meth:`WeightsPanel.follow` yields to, in its order."""
        return [self.text, self.download, self.progress]


def build_first_screen(weights: WeightsPanel, preset_ref: str) -> FirstScreen:
    """The first screen for the launch preset, drawn without asking the hub (the load event does that)."""
    with gr.Group(elem_id="fph-first"):
        text = gr.Markdown(weights.view(preset_ref, sizes=False)[0], elem_id="fph-weights", padding=True)
        download = gr.Button("Download", visible=False, variant="primary", elem_id="fph-download")
        progress = gr.HTML("", elem_id="fph-download-progress")
    return FirstScreen(text, download, progress)


def follow_preset(demo: gr.Blocks, weights: WeightsPanel, first: FirstScreen, preset: gr.Dropdown) -> None:
    """The first screen follows the preset picked in the form; Download runs beside the worker and reports progress."""
    for event in (demo.load, preset.change):
        event(weights.follow, [preset], first.outputs, concurrency_limit=None, show_progress="hidden", **PRIVATE)
    fetching = first.download.click(weights.start, [preset], None, concurrency_limit=None, **PRIVATE)
    fetching.success(weights.follow, [preset], first.outputs, concurrency_limit=None, show_progress="hidden", **PRIVATE)
