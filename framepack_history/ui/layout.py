"""The page: Gradio Blocks layout and event wiring, nothing else.

:func:`build_app` composes the page's parts (:mod:`.tabs`), each built and wired by its own builder.
Three kinds of events:
* page events (Generate, Cancel, preset changes), private to the page;
* followers: a generator per page that streams one job's segments into the
  player and its progress into the rest (:class:`~.follow.Follower`), started by
  Generate, Resume, Extend, "Show" in the queue and on page load (re-attach);
* the HTTP API: ``/generate``, ``/cancel``, ``/status``, ``/resume``, ``/recall``, ``/steer`` and ``/extend``.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from framepack_history.config.presets import available_presets, load_preset
from framepack_history.jobs.studio import Studio
from framepack_history.jobs.worker import Worker
from framepack_history.ui.handlers import Handlers
from framepack_history.ui.memory_tab import MemoryTab
from framepack_history.ui.tabs.endpoints import build_endpoints
from framepack_history.ui.tabs.first_screen import build_first_screen, follow_preset
from framepack_history.ui.tabs.gallery import build_gallery_tab
from framepack_history.ui.tabs.generate import build_generate
from framepack_history.ui.tabs.memory import build_memory_tab
from framepack_history.ui.tabs.queue import build_queue_tab, keep_listed
from framepack_history.ui.tabs.sweep import build_sweep
from framepack_history.ui.tabs.tools import build_tools_tab
from framepack_history.ui.weights import WeightsPanel

CSS = """
.fph-progress { font-size: 0.95rem; padding: 6px 2px; }
.fph-line { margin-bottom: 6px; }
.fph-bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.dark .fph-bar { background: var(--neutral-700); }
.fph-bar > div { height: 100%; background: var(--color-accent); transition: width 0.4s; }
.fph-status { text-transform: uppercase; font-size: 0.75rem; padding: 1px 6px; border-radius: 4px;
              background: var(--neutral-200); margin-right: 2px; }
.fph-status.running { background: #dbeafe; color: #1e40af; }
.fph-status.done { background: #dcfce7; color: #166534; }
.fph-status.failed { background: #fee2e2; color: #991b1b; }
.fph-status.cancelled { background: #fef3c7; color: #92400e; }
.fph-msg { margin-top: 6px; color: var(--body-text-color-subdued); }
#fph-preview img { image-rendering: pixelated; object-fit: contain; }
#fph-player video { image-rendering: pixelated; }
#fph-recalled img, #fph-real img { image-rendering: pixelated; object-fit: contain; }
"""
HEADER = ("## FramePack History · long video, section by section\n"
          "Every finished section plays at once; the whole past is kept as a short history embedding.")


def preset_choices(default: str) -> list[tuple[str, str]]:
    """Preset names from presets/, plus the launch preset when it is a .toml path."""
    names = available_presets()
    choices = [(n, n) for n in names]
    if default not in names:
        choices.insert(0, (Path(default).stem, default))
    return choices


def build_app(worker: Worker, default_preset: str = "toy-cpu", studio: Studio | None = None) -> gr.Blocks:
    """The whole page, wired to ``worker``; ``studio`` says who sees which job (``--auth``).

    Top to bottom: the first screen, the Generate section (form and stage), the Queue, Gallery and
    Memory tabs; then the listing's timer and the API's hidden endpoints.
    """
    choices = preset_choices(default_preset)
    h = Handlers(worker, default_preset, [value for _, value in choices], studio=studio)
    preset = load_preset(default_preset)
    with gr.Blocks(title="FramePack History") as demo:
        job_id, seen = gr.State(""), gr.State(None)  # the job this page follows; the listing it shows
        gr.Markdown(HEADER)
        weights = WeightsPanel(studio=studio)
        first = build_first_screen(weights, default_preset)
        form, stage = build_generate(demo, h, choices, default_preset, preset, job_id)
        build_sweep(h, form, stage)  # several seeds or an XY grid, queued as jobs; their grid
        follow_preset(demo, weights, first, form.preset)
        memory = MemoryTab(h)
        with gr.Tabs():
            queue = build_queue_tab(h, stage)
            gallery = build_gallery_tab(h, form, stage)
            build_tools_tab(h, gallery, stage)
            build_memory_tab(demo, memory, preset)
        keep_listed(demo, h, gr.Timer(2.0), seen, queue, gallery)
        build_endpoints(h, memory)
    return demo
