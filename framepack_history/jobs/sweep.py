"""Sweeps: one request, several seeds or an XY grid over two settings, queued as ordinary jobs.

A :class:`Sweep` names up to two axes, each a request field of :data:`~framepack_history.config.fields.FIELDS`
(or ``lora_weight``: the weight of every LoRA the request names) with a list of values; ``seeds`` is a seed
axis. :func:`expand` makes one :class:`Cell` per combination, each an ordinary request with its labels.
:func:`submit_sweep` admits every cell before it queues any (a bad cell refuses the whole sweep, naming
its axis and value) and queues them in grid order; the jobs share a sweep id (``JobSpec.sweep``, recorded
in each job's ``request.json``). :func:`grid` gives each finished cell's last frame with its caption.

No torch here: the page imports this.
"""

from __future__ import annotations

import copy
import dataclasses
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from framepack_history.config.fields import BY_NAME, FIELDS, RequestField
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.video import probe_video, read_video
from framepack_history.jobs.admission import admit_request
from framepack_history.jobs.store import Job, JobSpec, JobStore

#: the most cells one sweep may have (each is a job in the queue)
MAX_CELLS = 64
#: the pseudo-field of a LoRA-weight axis: the weight of every LoRA the request names
LORA_WEIGHT = "lora_weight"
#: request fields an axis may vary: single values (no files, lists or sizes)
SWEEPABLE = tuple(r.name for r in FIELDS if r.kind in ("text", "int", "float", "name") and r.cli
                  and r.name not in ("borrow",))
#: the flag an error about each axis names (the page shows its own label for it)
AXIS_FLAGS = {"seeds": "--sweep-seeds", "x": "--sweep-x", "y": "--sweep-y"}


@dataclass(frozen=True)
class Axis:
    """One axis: a request field (its ``GenerationRequest`` name) and the values it takes, in order."""

    field: str
    values: tuple[Any, ...]
    #: which axis of the sweep it is (``seeds``, ``x``, ``y``): errors name its flag
    slot: str = "x"

    @property
    def flag(self) -> str:
        return AXIS_FLAGS[self.slot]


@dataclass(frozen=True)
class Sweep:
    """Up to two axes; the first varies fastest (the grid's columns)."""

    axes: tuple[Axis, ...]

    @property
    def size(self) -> int:
        n = 1
        for a in self.axes:
            n *= len(a.values)
        return n

    def to_dict(self) -> dict[str, Any]:
        return {"axes": [{"field": a.field, "values": list(a.values), "slot": a.slot} for a in self.axes]}


@dataclass
class Cell:
    """One combination: its request, its labels (field, value) in axis order, and its place in the grid."""

    request: GenerationRequest
    labels: tuple[tuple[str, Any], ...]
    row: int
    col: int

    @property
    def caption(self) -> str:
        """``guidance=3 · cache=fast``."""
        return " · ".join(f"{_short(name)}={_fmt(value)}" for name, value in self.labels)


def _short(name: str) -> str:
    """An axis as captions name it: the flag without dashes (``history``, ``max-history-tokens``)."""
    return name if name == LORA_WEIGHT else BY_NAME[name].flag.lstrip("-")


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------ parsing
def field_of(name: str, flag: str) -> RequestField | None:
    """The request field an axis names: its field name, its flag (with or without dashes) or its API name."""
    key = str(name).strip().lower().replace("-", "_").lstrip("_")
    if key in (LORA_WEIGHT, "lora"):
        return None
    for row in FIELDS:
        names = {row.name, row.flag.lstrip("-").replace("-", "_"), row.api or row.name}
        if key in names:
            if row.name not in SWEEPABLE:
                raise InputError(flag, f"{name!r} cannot be swept (an axis varies one of: "
                                       f"{', '.join(_short(n) for n in SWEEPABLE)}, lora_weight)")
            return row
    raise InputError(flag, f"{name!r} is not a request field (an axis varies one of: "
                           f"{', '.join(_short(n) for n in SWEEPABLE)}, lora_weight)")


def split_values(text: str) -> list[str]:
    """``"1, 2, 3"`` -> ``["1", "2", "3"]``; ``|`` separates values when one holds a comma (prompts)."""
    sep = "|" if "|" in text else ","
    return [v.strip() for v in text.split(sep) if v.strip()]


def _value(row: RequestField | None, text: Any, flag: str) -> Any:
    """One axis value in the field's type (numbers read here; the request's own check judges them)."""
    kind = "float" if row is None else row.kind
    name = LORA_WEIGHT if row is None else _short(row.name)
    if kind in ("int", "float"):
        if isinstance(text, bool):
            raise InputError(flag, f"{name}={text!r}: must be a number")
        try:
            x = float(text)
        except (TypeError, ValueError):
            raise InputError(flag, f"{name}={text!r}: must be a number") from None
        if kind == "int":
            if not x.is_integer():
                raise InputError(flag, f"{name}={text!r}: must be a whole number")
            return int(x)
        return x
    if not isinstance(text, str):
        raise InputError(flag, f"{name}={text!r}: must be text")
    return text


def axis(name: str, values: str | Sequence[Any], slot: str = "x") -> Axis:
    """An axis from a field name and its values (text ``"1, 3"`` or a list); :class:`InputError` naming the axis."""
    flag = AXIS_FLAGS[slot]
    if not isinstance(name, str) or not name.strip():
        raise InputError(flag, "name the setting the axis varies (e.g. guidance=1,3)")
    row = field_of(name, flag)
    raw = split_values(values) if isinstance(values, str) else list(values or ())
    if not raw:
        raise InputError(flag, f"{name}: give at least one value")
    parsed = tuple(_value(row, v, flag) for v in raw)
    if len(set(parsed)) != len(parsed):
        raise InputError(flag, f"{name}: a value is given twice")
    return Axis(LORA_WEIGHT if row is None else row.name, parsed, slot)


def parse_axis_arg(text: str, slot: str) -> Axis:
    """The command line's ``FIELD=V1,V2,...`` (``--sweep-x guidance=1,3``)."""
    name, eq, values = str(text).partition("=")
    if not eq:
        raise InputError(AXIS_FLAGS[slot], f"{text!r}: write FIELD=V1,V2 (e.g. guidance=1,3)")
    return axis(name, values, slot)


def make_sweep(seeds: str | Sequence[Any] | None = None, x: Axis | None = None, y: Axis | None = None) -> Sweep | None:
    """A sweep of a seed list and/or an X and a Y axis (None when nothing is swept); at most two axes."""
    axes = [a for a in (x, y) if a is not None]
    if seeds is not None and (not isinstance(seeds, str) or seeds.strip()):
        s = axis("seed", seeds, "seeds")
        if len(axes) == 2:
            raise InputError("--sweep-seeds", "a sweep has at most two axes: seeds with an X axis, or an X and a Y axis")
        axes.append(s)
    if not axes:
        return None
    fields = [a.field for a in axes]
    if len(set(fields)) != len(fields):
        raise InputError(axes[-1].flag, f"{_short(fields[-1])} is on two axes")
    sweep = Sweep(tuple(axes))
    if sweep.size > MAX_CELLS:
        raise InputError(axes[-1].flag, f"{sweep.size} cells; a sweep has at most {MAX_CELLS}")
    return sweep


# ------------------------------------------------------------------ expanding
def expand(base: GenerationRequest, sweep: Sweep) -> list[Cell]:
    """One cell per combination, the first axis fastest; each request a copy of ``base`` with its values."""
    first = sweep.axes[0]
    second = sweep.axes[1] if len(sweep.axes) > 1 else None
    cells = []
    for r, yv in enumerate(second.values if second else (None,)):
        for c, xv in enumerate(first.values):
            request = copy.deepcopy(base)
            labels = [(first.field, xv)] + ([(second.field, yv)] if second else [])
            for name, value in labels:
                _set(request, name, value, first if name == first.field else second)
            cells.append(Cell(request, tuple(labels), r, c))
    return cells


def _set(request: GenerationRequest, name: str, value: Any, ax: Axis | None) -> None:
    if name != LORA_WEIGHT:
        setattr(request, name, value)
        return
    if not request.loras:
        raise InputError(ax.flag if ax else "--sweep-x",
                         "lora_weight varies the weight of the request's LoRAs; give one (--lora)")
    request.loras = [dict(e, weight=value) for e in request.loras]


def check_cells(cells: list[Cell], sweep: Sweep, admit: Callable[[GenerationRequest], Any]) -> None:
    """``admit`` each cell's request (a copy) before any is queued; a refusal names the axis and the value."""
    own = {(BY_NAME[a.field].flag if a.field != LORA_WEIGHT else "--lora"): a.flag for a in sweep.axes}
    for cell in cells:
        try:
            admit(copy.deepcopy(cell.request))
        except InputError as e:
            if e.field not in own:  # not about an axis: the request itself (or a file it names) is refused
                raise InputError(e.field, f"{cell.caption}: {e.message}") from None
            raise InputError(own[e.field], f"{cell.caption}: {e.field}: {e.message}") from None


def submit_sweep(worker: Any, spec: JobSpec, sweep: Sweep) -> list[Job]:
    """Admit every cell, then queue them all as ordinary jobs sharing a sweep id; nothing is queued on a refusal.

    ``worker`` is the app's :class:`~.worker.Worker`. A cell the worker refuses after the others were queued (the
    queue filled meanwhile) cancels those it queued.
    """
    preset = load_preset(spec.preset)
    cells = expand(spec.request, sweep)
    free = worker.queue.max_size - len(worker.queue.ids())
    if len(cells) > free:
        raise InputError("queue", f"the sweep has {len(cells)} cells and the queue has room for {free}")
    worker._borrow_folder(spec.request)  # a client's job id becomes its folder, as submit does
    for cell in cells:
        cell.request.borrow = spec.request.borrow
    check_cells(cells, sweep, lambda r: admit_request(r, preset, spec.encoder_rate))
    sweep_id = f"sweep-{secrets.token_hex(4)}"
    jobs: list[Job] = []
    try:
        for i, cell in enumerate(cells):
            record = {"id": sweep_id, "index": i, "cells": len(cells), "row": cell.row, "col": cell.col,
                      "axes": [a.field for a in sweep.axes], "labels": {k: v for k, v in cell.labels},
                      "caption": cell.caption}
            jobs.append(worker.submit(dataclasses.replace(spec, request=cell.request, sweep=record)))
    except InputError as e:
        for job in jobs:
            worker.cancel(job.id)
        raise InputError(e.field, f"{cells[len(jobs)].caption}: {e.message} (nothing of the sweep was queued)") from None
    return jobs


# ------------------------------------------------------------------ the grid
def sweep_jobs(store: JobStore, sweep_id: str) -> list[Job]:
    """The jobs of one sweep, in grid order."""
    jobs = [j for j in store.jobs() if (j.spec.sweep or {}).get("id") == sweep_id]
    return sorted(jobs, key=lambda j: j.spec.sweep["index"])


def sweeps_of(jobs: list[Job]) -> list[str]:
    """The sweep ids among ``jobs``, newest first."""
    seen: dict[str, None] = {}
    for j in reversed(jobs):
        if j.spec.sweep:
            seen.setdefault(j.spec.sweep["id"], None)
    return list(seen)


def last_frame(video: str | Path) -> np.ndarray:
    """A video's last frame, ``uint8 [H, W, 3]``."""
    meta = probe_video(video, "video")
    w, h = meta["size"]
    fps = max(1, round(float(meta.get("fps") or 8)))
    return read_video(video, w, h, fps, 1, "video")[-1]


def grid(jobs: list[Job]) -> list[tuple[np.ndarray | None, str]]:
    """Each cell's last frame (None while unfinished or failed) and its caption, in grid order."""
    out = []
    for j in jobs:
        caption = j.spec.sweep["caption"]
        if j.status == "done" and j.video:
            out.append((last_frame(j.video), caption))
        else:
            out.append((None, f"{caption} ({j.status})"))
    return out


def grid_image(cells: list[tuple[np.ndarray | None, str]], cols: int, scale: int = 1) -> np.ndarray:
    """The frames side by side, ``cols`` per row (gaps black; a missing frame is grey); captions stay beside."""
    frames = [f for f, _ in cells if f is not None]
    if not frames:
        raise InputError("sweep", "no cell has finished")
    h, w = frames[0].shape[:2]
    rows = -(-len(cells) // cols)
    out = np.zeros((rows * (h + 2), cols * (w + 2), 3), np.uint8)
    for i, (f, _) in enumerate(cells):
        r, c = divmod(i, cols)
        tile = np.full((h, w, 3), 96, np.uint8) if f is None or f.shape[:2] != (h, w) else f
        out[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = tile
    return out.repeat(scale, 0).repeat(scale, 1) if scale > 1 else out
