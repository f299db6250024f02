"""The Gallery's list: finished videos under ``outputs/``, newest first, each with a caption.

Read from the sidecars beside the videos (a finishing tool's says what was done to what), so it
also lists what an earlier run of the app made. No torch: the page imports it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

from framepack_history.jobs.tools import describe


def past_results(outputs: str | Path, limit: int = 24,
                 visible: Callable[[Path], bool] | None = None) -> list[tuple[str, str]]:
    """``(video path, caption)`` of finished videos under ``outputs``, newest first (those ``visible(video)`` allows)."""
    root = Path(outputs)
    found = []
    for sc in root.glob("*/**/*.json"):
        if "segments" in sc.parts or sc.name == "job.json":
            continue
        video = sc.with_suffix(".mp4")
        if video.is_file():
            found.append((sc.stat().st_mtime, video, sc))
    items = []
    shown = (f for f in sorted(found, reverse=True) if visible is None or visible(f[1]))
    for _, video, sc in itertools.islice(shown, limit):
        items.append((str(video), _caption(sc, video)))
    return items


def _caption(sidecar: Path, video: Path) -> str:
    """A gallery caption: the video's length (when recorded), whether it was cancelled, and its prompt."""
    try:
        data = json.loads(sidecar.read_text())
        if "tool" in data:  # a finishing tool's output says what was done to what
            prompt = describe(data["tool"], data["settings"], data["sources"])
        else:
            prompt = str(data["request"]["prompt"] or "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return video.parent.name[:80]
    seconds = data.get("seconds")
    head = f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    head += ", cancelled" if data.get("cancelled") else ""
    return (f"{head} · " if head else "") + (prompt or video.parent.name)[:80]
