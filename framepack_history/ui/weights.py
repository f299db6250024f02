"""The page's first screen: which preset runs, what it needs, what to do next; and the Download button.

A download is not a model: it runs in :class:`~framepack_history.hub.download.Downloader`'s
thread, never in the worker, and this module only reads its state.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from framepack_history.config.presets import Preset, load_preset
from framepack_history.errors import DownloadError, InputError
from framepack_history.hub import files as hub
from framepack_history.hub.download import Downloader, free_space, human
from framepack_history.jobs.studio import Studio

POLL_S = 0.5


def needs(preset: Preset) -> str:
    """The hardware a preset asks for, in words."""
    hw = preset.hardware
    if hw.device == "cpu":
        return "the CPU"
    parts = [f"a {hw.device.upper()} GPU" + (f" with {hw.device_budget_gib:g} GiB free" if hw.device_budget_gib else "")]
    if hw.host_budget_gib:
        parts.append(f"{hw.host_budget_gib:g} GiB of RAM")
    return " and ".join(parts)


class WeightsPanel:
    """Page events for the first screen and the Download button, bound to one :class:`Downloader`.

    With a shared ``studio`` (``--auth``) every text drops the server's folders, as job messages do.
    """

    def __init__(self, downloader: Downloader | None = None, studio: Studio | None = None) -> None:
        self.downloads = downloader or Downloader()
        self.studio = studio or Studio()

    def view(self, preset_ref: str, sizes: bool = True) -> tuple[str, Any]:
        """(first-screen markdown, Download button update) for ``preset_ref``.

        ``sizes=False`` stays off the network (the page's first paint); the load event then asks the hub.
        """
        md, button = self._view(preset_ref, sizes)
        return self.studio.say(md), button

    def _view(self, preset_ref: str, sizes: bool) -> tuple[str, Any]:
        try:
            preset = load_preset(preset_ref)
        except InputError as e:
            return f"**{html.escape(self.studio.say(str(preset_ref)))}**: {e.message}", gr.update(visible=False)
        head = f"**Preset `{preset.name}`** runs on {needs(preset)}. {preset.description}".rstrip()
        if not hub.components(preset.model):
            return (f"{head}\n\nIts weights ship with the project: nothing to download. "
                    "**Next:** type a prompt or a storyboard and press **Generate**."), gr.update(visible=False)
        gone = hub.missing(preset.model)
        state = self.downloads.state(preset_ref)
        if not gone:
            return (f"{head}\n\nWeights: downloaded. **Next:** type a prompt (optionally a start image) "
                    "and press **Generate**."), gr.update(visible=False)
        if state.status == "running":
            return f"{head}\n\nWeights: downloading…", gr.update(visible=True, interactive=False, value="Downloading…")
        names = ", ".join(f"{c.name}" for c in gone)
        cmd = f"`{hub.download_command(preset_ref)}`"
        if not sizes:
            return f"{head}\n\nWeights **not downloaded**: {names} (asking the hub for their size…).", gr.update(visible=False)
        try:
            plan = self.downloads.plan(preset.model, preset_ref)
        except DownloadError as e:
            return (f"{head}\n\nWeights **not downloaded**: {names}. {e}"), gr.update(visible=False)
        failed = f"\n\nThe last download stopped: {state.message}" if state.status == "failed" else ""
        return (f"{head}\n\nWeights **not downloaded**: {human(plan.todo)} to fetch "
                f"({len([f for f in plan.files if not f.done])} files from {', '.join(plan.commits)}; "
                f"{human(free_space(plan.target))} free in `{plan.target}`). **Next:** press **Download** "
                f"(or run {cmd}), then Generate.{failed}"), gr.update(visible=True, interactive=True, value="Download")

    def start(self, preset_ref: str) -> str:
        """Download button: start (or join) the preset's download."""
        try:
            preset = load_preset(preset_ref)
            self.downloads.start(preset.model, preset_ref)
        except (InputError, DownloadError) as e:
            raise gr.Error(self.studio.say(str(getattr(e, "message", e))), title="Can't download") from None
        return preset_ref

    def follow(self, preset_ref: str) -> Iterator[tuple[str, Any, str]]:
        """Progress of the preset's download until it ends, then the first screen again."""
        while True:
            s = self.downloads.state(preset_ref)
            if s.status != "running":
                break
            md, _ = self.view(preset_ref)
            yield md, gr.update(visible=True, interactive=False, value="Downloading…"), progress_html(s, self.studio.say)
            time.sleep(POLL_S)
        md, button = self.view(preset_ref)
        yield md, button, progress_html(s, self.studio.say)


def progress_html(s: Any, say: Callable[[str], str] = str) -> str:
    """A bar with bytes and files; the message when it failed (``say``: what a client may read of it, before escaping)."""
    if s.status == "idle":
        return ""
    pct = 100.0 if s.status == "done" else (100.0 * s.done / s.total if s.total else 0.0)
    line = {"running": f"downloading {html.escape(s.file.rsplit('/', 1)[-1]) or '…'}",
            "done": "download finished", "failed": "download stopped"}[s.status]
    msg = f"<div class='fph-msg'>{html.escape(say(s.message))}</div>" if s.message else ""
    return (f"<div class='fph-progress'><div class='fph-line'><b class='fph-status {s.status}'>{s.status}</b> {line} · "
            f"{human(s.done)} / {human(s.total)} · file {s.files_done}/{s.files_total}</div>"
            f"<div class='fph-bar'><div style='width:{pct:.1f}%'></div></div>{msg}</div>")
