"""Page and API values: numbers, file inputs and LoRA slots as the handlers read them, and the request they make."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from framepack_history.config.fields import FIELDS, RequestField
from framepack_history.config.request import GenerationRequest
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


def request_of(values: Mapping[str, Any]) -> GenerationRequest:
    """Page or API values, by the API's parameter names (``config.fields``) -> a request.

    Numbers are read here (an error names the field's flag); everything else is checked by the request.
    The text-to-video start frame is dropped when a start image or video is given (the page always sends one).
    """
    fields = {row.name: _read(row, values.get(row.api)) for row in FIELDS if row.api is not None}
    slots = itertools.takewhile(lambda i: f"lora_{i}" in values, itertools.count(1))  # lora_1, lora_2, ...
    fields["loras"] = _loras(*((values[f"lora_{i}"], values.get(f"lora_weight_{i}", 1.0)) for i in slots))
    if fields["image"] or fields["continue_video"]:
        fields["start_frame"] = None
    return GenerationRequest(**fields)


def _read(row: RequestField, value: Any) -> Any:
    """One page/API value as the request holds it; empty is the request's default (None: the preset's)."""
    if row.kind in ("image", "video"):
        return _path(value)
    if row.kind in ("int", "float"):
        number = _num(value, row.flag, integer=row.kind == "int")
        return row.default if number is None else number
    if row.kind == "text":
        return str(value or row.default)
    return str(value) if value else None  # a name: checked against its choices by the request
