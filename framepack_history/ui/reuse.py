"""Reuse settings: a past video's sidecar (``video.json``) read back into the form's values.

Only JSON is read, never anything executable; every problem is an :class:`InputError`
that names the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from framepack_history.config.fields import FIELDS, resolve
from framepack_history.config.memory import memory_text
from framepack_history.config.presets import Preset, load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.config.storyboard import join_entries, parse_storyboard
from framepack_history.errors import InputError

MAX_SIDECAR_BYTES = 4 << 20  # a sidecar is a few KB; anything this large is not one
FIELD = "settings"


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The JSON object of a sidecar, with its ``request`` checked to be one this version knows."""
    p = Path(path)
    if not p.is_file():
        raise InputError(FIELD, f"no such file: {p.name}")
    if p.stat().st_size > MAX_SIDECAR_BYTES:
        raise InputError(FIELD, f"{p.name} is {p.stat().st_size} bytes; a video's sidecar is a small .json file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(FIELD, f"{p.name} is not JSON ({type(e).__name__}); load the .json written beside a video") from None
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        raise InputError(FIELD, f"{p.name} is not a video sidecar: it has no \"request\" object")
    known = {f.name for f in dataclasses.fields(GenerationRequest)}
    unknown = sorted(set(data["request"]) - known)
    if unknown:
        raise InputError(FIELD, f"{p.name}: unknown request field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return data


def pick_preset(data: dict[str, Any], offered: list[str]) -> str | None:
    """Which of the ``offered`` presets the sidecar's job ran on (by name or .toml path), or None."""
    preset = data.get("preset") if isinstance(data.get("preset"), dict) else {}
    names = {str(preset.get("name") or ""), str(preset.get("path") or ""), str(data.get("preset_ref") or "")} - {""}
    for value in offered:
        if value in names or Path(value).stem in names or str(Path(value).resolve()) in names:
            return value
    return None


def form_values(path: str | Path, offered: list[str], default_preset: str) -> tuple[dict[str, Any], list[str]]:
    """``(values by form field, notes for the user)`` from the sidecar at ``path``.

    Fields the request left unset take the preset's values, as a new job would. The request is
    validated against that preset, so a sidecar the form could not run is refused here.
    """
    data = read_sidecar(path)
    name = Path(path).name
    notes: list[str] = []
    chosen = pick_preset(data, offered)
    if chosen is None:
        ran = (data.get("preset") or {}).get("name") if isinstance(data.get("preset"), dict) else None
        notes.append(f"its preset {ran or '?'!r} is not offered here; the form keeps {Path(default_preset).stem}")
        chosen = default_preset
    preset = load_preset(chosen)
    try:
        # the size is not a form field: the preset's, or the bucket of an input, chosen again on submit
        request = dataclasses.replace(GenerationRequest(**data["request"]), width=None, height=None)
        request.validate(preset)
    except InputError as e:
        raise InputError(FIELD, f"{name}: {e.field.lstrip('-')} {e.message}") from None
    except TypeError as e:
        raise InputError(FIELD, f"{name}: {e}") from None
    values = {"preset": chosen, **_form(request, preset)}
    rate = data.get("encoder_rate")
    values["encoder_rate"] = rate if isinstance(rate, str) and rate else preset.model.encoder_rate
    if request.image or request.continue_video:
        notes.append("it started from " + ("an image" if request.image else "a video") + "; upload it again to use it")
    if request.end_image:  # as the start image: a path in a sidecar is never handed back to the page
        notes.append("it ended on an end image; upload it again to use it (its strength is in the form)")
    values["prompt"], values["keyframes"] = keyframe_rows(request)
    if request.keyframes:  # as the start image: a path in a sidecar is never handed back to the page
        named = ", ".join(f"{kf['time']:g}s ({kf.get('name') or Path(str(kf['image'])).name})" for kf in request.keyframes)
        notes.append(f"it had keyframes at {named}; their times and prompts are in the Keyframes list: upload the "
                     "images again to use them")
    # memory controls as the page's text (a storyboard's [cut] marks are cut entries by now); a borrowed job by its id
    values["memory"] = memory_text(request.memory)
    values["borrow"] = Path(str(request.borrow)).name if request.borrow else ""
    if request.borrow:
        notes.append(f"it started with the memory of job {values['borrow']}; that job must still be here to borrow it again")
    if data.get("steers"):
        notes.append(f"its storyboard was edited {len(data['steers'])} time(s) while it ran; the form has the first one")
    return values, notes


def keyframe_rows(request: GenerationRequest) -> tuple[str, list[tuple[float, str]]]:
    """The storyboard and the keyframe rows (time, prompt) that give it back on submit, images left out.

    A keyframe whose time has a storyboard entry takes that entry's text into its row (the page puts it back).
    """
    times = [float(kf["time"]) for kf in request.keyframes or ()]
    if not times:
        return request.prompt, []
    board = parse_storyboard(request.prompt) if request.prompt.strip() else []
    # an entry that blends in stays in the storyboard: a row has no blend
    rows = [(t, next((e[1] for e in board if abs(e[0] - t) < 1e-6 and not e.blend), "")) for t in times]
    moved = {t for t, text in rows if text}
    if not moved:
        return request.prompt, rows
    return join_entries([e for e in board if not any(abs(e[0] - t) < 1e-6 for t in moved)]), rows


def _form(request: GenerationRequest, preset: Preset) -> dict[str, Any]:
    """The form's request fields (``config.fields``: a row's ``form`` key): settings resolved as a job would."""
    settings = resolve(request, preset)
    return {row.form: getattr(settings if row.preset else request, row.name) for row in FIELDS if row.form}
