"""Steering: storyboard edits to a running job, which the sections not yet started follow.

The page (or the API) only posts an edit on the job (:meth:`~.worker.Worker.steer`, after
validating it as a new job's storyboard); the worker takes it before its next section
starts, so the device and the :class:`~framepack_history.generation.pipeline.Generation` stay the worker's alone.
Every edit is recorded in the job folder (``steers.json``: the new storyboard and the
section it took effect at) before that section starts, so a resume after a kill, or a
cancel and a resume, goes on with the storyboard in force. The sidecar lists the edits.

No torch here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from framepack_history.config.storyboard import parse_storyboard
from framepack_history.fsio import atomic_write_json

if TYPE_CHECKING:
    from framepack_history.generation.pipeline import Generation

STEERS = "steers.json"


def read_steers(folder: str | Path | None) -> list[dict]:
    """The edits recorded in a job folder, oldest first (none when there is no folder or no file)."""
    path = Path(folder) / STEERS if folder else None
    if path is None or not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [s for s in data.get("steers", []) if isinstance(s, dict) and "section" in s and "prompt" in s]


def storyboard_in_force(steers: list[dict], section: int) -> str | None:
    """The storyboard text of the last edit that took effect at or before ``section`` (None: the request's)."""
    current = None
    for s in steers:
        if int(s["section"]) <= section:
            current = str(s["prompt"])
    return current


class Steering:
    """The pipeline's ``before_section`` hook: take a posted edit, record it, apply the storyboard in force."""

    def __init__(self, folder: str | Path | None, pending: Callable[[bool], str | None] | None = None,
                 on_change: Callable[[list[dict]], None] | None = None) -> None:
        self.folder = Path(folder) if folder else None
        self.pending = pending or (lambda last: None)
        self.on_change = on_change
        self.steers = read_steers(self.folder)
        if self.steers and on_change is not None:
            on_change(list(self.steers))

    def __call__(self, gen: Generation) -> None:
        # ``last``: no section follows this one, so whoever posts edits stops taking them (atomically)
        new = self.pending(gen.next_section >= gen.total_sections - 1)
        if new is not None:
            self.steers.append({"section": gen.next_section, "prompt": new, "time": time.time()})
            if self.folder is not None:  # durable before the section that follows it starts
                atomic_write_json(self.folder / STEERS, {"steers": self.steers})
            if self.on_change is not None:
                self.on_change(list(self.steers))
        prompt = storyboard_in_force(self.steers, gen.next_section)
        if prompt is not None:
            gen.storyboard = parse_storyboard(prompt)  # validated when it was posted
