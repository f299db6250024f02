"""Page and API values: numbers, file inputs and LoRA slots as the handlers read them, and the request they make."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from framepack_history.config.fields import FIELDS, RequestField
from framepack_history.config.memory import parse_memory_text
from framepack_history.config.request import GenerationRequest
from framepack_history.config.storyboard import split_keyframes, with_entries
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
    _, images = split_keyframes(fields["prompt"])
    if images:  # a path typed on the page or sent to the API would read the server's files
        raise InputError("--prompt", f"{images[0][2]}: here a storyboard names no files; upload the image as a keyframe "
                                     "(the Keyframes list, or /generate's keyframe_images with keyframe_times) and give "
                                     "its prompt there or as a plain storyboard entry")
    rows = itertools.takewhile(lambda i: f"keyframe_time_{i}" in values, itertools.count(1))  # the page's rows
    page = [(values.get(f"keyframe_image_{i}"), values.get(f"keyframe_time_{i}"), values.get(f"keyframe_prompt_{i}"))
            for i in rows]
    keyframes, entries = _keyframes(values.get("keyframe_images"), values.get("keyframe_times"), page)
    fields["keyframes"] = keyframes
    fields["prompt"] = with_entries(fields["prompt"], entries)
    return GenerationRequest(**fields)


def _times(value: Any) -> list[Any]:
    """The API's keyframe times: a list of numbers, or text such as ``"8, 15"``."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [t for t in value.replace(";", ",").split(",") if t.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _time(value: Any, i: int, image: Any) -> float | None:
    """Keyframe ``i``'s time in seconds (None: left empty); an error names the keyframe."""
    try:
        return _num(value.strip().removesuffix("s").strip() if isinstance(value, str) else value, "--keyframe")  # "8s" too
    except InputError as e:
        name = f" ({Path(_path(image)).name})" if _path(image) else ""
        raise InputError("--keyframe", f"keyframe {i}{name}: its time {e.message}") from None


def _keyframes(images: Any, times: Any, rows: list[tuple[Any, Any, Any]]) -> tuple[list[dict] | None, list[tuple[float, str]]]:
    """Keyframes from the API's two lists or the page's rows (image, time, prompt); and the rows' storyboard entries.

    A row with a time and a prompt but no image is a plain storyboard entry (Reuse settings fills rows so).
    """
    files = [] if images is None or images == "" else list(images) if isinstance(images, (list, tuple)) else [images]
    stamps = _times(times)
    if len(files) != len(stamps):
        raise InputError("--keyframe", f"{len(files)} keyframe image(s) and {len(stamps)} time(s): give one time per image "
                                       "(keyframe_images and keyframe_times, in the same order)")
    out = [{"time": _time(t, i + 1, f), "image": _path(f)} for i, (f, t) in enumerate(zip(files, stamps))]
    entries: list[tuple[float, str]] = []
    for i, (image, time, prompt) in enumerate(rows, 1):
        path, t, text = _path(image), _time(time, i, image), str(prompt or "").strip()
        if path is None and not text:
            continue  # an empty row (a time alone says nothing)
        if t is None:
            raise InputError("--keyframe", f"keyframe {i}{f' ({Path(path).name})' if path else ''}: give its time in seconds")
        if path:
            out.append({"time": t, "image": path})
        if text:
            entries.append((t, text))
    for i, kf in enumerate(out):
        if kf["time"] is None or kf["image"] is None:
            raise InputError("--keyframe", f"keyframe {i + 1}: needs an image and a time")
    return (out or None), entries


def _read(row: RequestField, value: Any) -> Any:
    """One page/API value as the request holds it; empty is the request's default (None: the preset's)."""
    if row.kind in ("image", "video"):
        return _path(value)
    if row.kind in ("int", "float"):
        number = _num(value, row.flag, integer=row.kind == "int")
        return row.default if number is None else number
    if row.kind == "text":
        return str(value or row.default)
    if row.kind == "keyframes":
        return None  # images with their times: read together (``_keyframes``)
    if row.kind == "memory":  # entries as a list (a JSON client), or text: "pin 10:20; forget 30:40; cut 12"
        if isinstance(value, list):
            return value or None
        return parse_memory_text(value) or None if isinstance(value, str) and value.strip() else None
    return str(value) if value else None  # a name: checked against its choices by the request
