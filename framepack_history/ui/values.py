"""Page and API values: numbers, file inputs and LoRA slots as the handlers read them."""

from __future__ import annotations

import math
from typing import Any

from framepack_history.errors import InputError
from framepack_history.jobs.store import Job


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _num(value: Any, name: str, integer: bool = False) -> float | int | None:
    """A page/API number, or None when left empty."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(name, f"must be a number (got {value!r})") from None
    if not math.isfinite(x):
        raise InputError(name, f"must be a finite number (got {value!r})")
    if integer:
        if x != int(x):
            raise InputError(name, f"must be a whole number (got {value!r})")
        return int(x)
    return x


def _current(jobs: list[Job]) -> Job | None:
    """The job a page shows first: the running one, else the newest."""
    running = [j for j in jobs if j.status == "running"]
    return running[0] if running else (jobs[-1] if jobs else None)


def _path(value: Any) -> str | None:
    """File inputs arrive as a path, a dict with 'path'/'video', or nothing."""
    if isinstance(value, dict):
        value = value.get("video") or value.get("path")
        if isinstance(value, dict):
            value = value.get("path")
    return str(value) if value else None


def _loras(*picks: tuple[Any, Any]) -> list[dict] | None:
    """The LoRA slots (file, weight) that name a file; None when none does (the preset's LoRAs then)."""
    chosen = [{"name": str(name).strip(), "weight": _num(weight, f"LoRA {name} weight")}
              for name, weight in picks if name and str(name).strip()]
    for entry in chosen:
        entry["weight"] = 1.0 if entry["weight"] is None else entry["weight"]
    return chosen or None
