"""How a request or a preset names LoRAs: ``FILE[:WEIGHT]`` text and ``{"name", "weight"}`` entries.

Syntax only: finding and reading the files is :mod:`framepack_history.lora.files`'.
"""

from __future__ import annotations

import math
from typing import Any

from framepack_history.errors import InputError

MAX_WEIGHT = 10.0  # beyond this a LoRA only amplifies its own artefacts
MAX_LORAS = 8


def parse_arg(text: str, field: str = "--lora") -> dict[str, Any]:
    """``FILE[:WEIGHT]`` -> ``{"name": FILE, "weight": WEIGHT}`` (weight 1 when left out).

    The weight is what follows the last colon when it reads as a number, so ``C:\\x.safetensors`` keeps its drive.
    """
    text = str(text).strip()
    name, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
            name = head
        except ValueError:
            pass
    if not name:
        raise InputError(field, f"{text!r} names no file (write FILE or FILE:WEIGHT)")
    return check_entry({"name": name, "weight": weight}, field)


def check_entry(entry: Any, field: str = "--lora") -> dict[str, Any]:
    """One request entry: a dict with a ``name`` and a finite ``weight`` in [-MAX_WEIGHT, MAX_WEIGHT]."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
        raise InputError(field, f"each LoRA needs a file name and a weight (got {entry!r})")
    w = entry.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or abs(w) > MAX_WEIGHT:
        raise InputError(field, f"{entry['name']}: weight must be a number in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}] (got {w!r})")
    unknown = set(entry) - {"name", "weight", "path", "sha256"}
    if unknown:
        raise InputError(field, f"{entry['name']}: unknown key {sorted(unknown)[0]!r} (known: name, weight, path, sha256)")
    return {**entry, "name": entry["name"].strip(), "weight": float(w)}


def check_entries(entries: Any, field: str = "--lora") -> None:
    if entries is None:
        return
    if not isinstance(entries, list):
        raise InputError(field, f"must be a list of {{name, weight}} entries (got {type(entries).__name__})")
    if len(entries) > MAX_LORAS:
        raise InputError(field, f"{len(entries)} LoRAs; at most {MAX_LORAS} at once")
    for e in entries:
        check_entry(e, field)
