"""Memory controls: what the artist tells the history to keep, leave out, cut or borrow.

A request's ``memory`` is a list of entries, in the order given:

* ``{"op": "pin", "start": S, "end": E}``: the history groups of ``[S, E)`` s are never merged by the
  history-token cap (they stay at full detail however old they are);
* ``{"op": "forget", "start": S, "end": E}``: the history tokens of ``[S, E)`` s leave what the DiT
  reads (the raw latents and tokens stay in the job, so removing the entry brings them back);
* ``{"op": "cut", "time": T}``: a new shot in the same job: the section starting nearest ``T`` s reads
  no add-on window (the toy) or recent context (F1) from before it, but keeps the history tokens.

``borrow`` (a finished job) is a field of its own: the new job's history starts with that job's.
Times count from the start of the video, as the storyboard's. Checked here, with no file read and no
torch: every refusal names the entry and the flag it came from (``--pin``, ``--forget``, ``--cut``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from framepack_history.config.presets import Preset
from framepack_history.errors import InputError

MEMORY_OPS = ("pin", "forget", "cut")
MAX_MEMORY_ENTRIES = 64  # a storyboard's worth; more is a mistake or abuse
_KEYS = {"pin": {"op", "start", "end"}, "forget": {"op", "start", "end"}, "cut": {"op", "time"}}


def flag_of(op: str) -> str:
    """The command-line flag an entry of ``op`` is given with (and an error about it names)."""
    return f"--{op}" if op in MEMORY_OPS else "--memory"


def entry_name(entry: dict[str, Any]) -> str:
    """An entry as messages name it: ``pin 10s-20s``, ``cut at 12s``."""
    if entry.get("op") == "cut":
        return f"cut at {_fmt(entry.get('time'))}"
    return f"{entry.get('op')} {_fmt(entry.get('start'))}-{_fmt(entry.get('end'))}"


def _fmt(value: Any) -> str:
    return f"{value:g}s" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def parse_memory_arg(op: str, text: str) -> dict[str, Any]:
    """One command-line value: ``--pin 10:20`` / ``--forget 30-40`` (seconds, ``s`` allowed), ``--cut 12``."""
    flag = flag_of(op)
    raw = str(text).strip()
    try:
        if op == "cut":
            return {"op": op, "time": float(raw.removesuffix("s"))}
        sep = ":" if ":" in raw else "-" if "-" in raw.lstrip("-") else None
        if sep is None:
            raise ValueError
        a, b = raw.split(sep, 1) if sep == ":" else raw.rsplit("-", 1)
        return {"op": op, "start": float(a.strip().removesuffix("s")), "end": float(b.strip().removesuffix("s"))}
    except ValueError:
        want = "TIME (seconds), e.g. 12" if op == "cut" else "START:END (seconds), e.g. 10:20"
        raise InputError(flag, f"{raw!r} is not {want}") from None


def parse_memory_text(text: str) -> list[dict[str, Any]]:
    """The page's and the API's text form: ``pin 10:20; forget 30:40; cut 12`` (``;``, ``,`` or new lines)."""
    out = []
    for part in str(text).replace("\n", ";").replace(",", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        op, _, value = part.partition(" ")
        op = op.strip().lower()
        if op not in MEMORY_OPS:
            raise InputError("--memory", f"{part!r}: each entry is pin START:END, forget START:END or cut TIME")
        out.append(parse_memory_arg(op, value))
    return out


def memory_text(entries: list[dict[str, Any]] | None) -> str:
    """The page's text form of a request's entries (:func:`parse_memory_text` reads it back): ``pin 10:20; cut 12``."""
    parts = []
    for e in entries or ():
        if e.get("op") == "cut":
            parts.append(f"cut {float(e['time']):g}")
        else:
            parts.append(f"{e.get('op')} {float(e['start']):g}:{float(e['end']):g}")
    return "; ".join(parts)


@dataclass(frozen=True)
class MemoryPlan:
    """A checked request's memory controls: ranges in seconds, cuts as the sections they start."""

    pins: tuple[tuple[float, float], ...] = ()
    forgets: tuple[tuple[float, float], ...] = ()
    #: sections (in order generated) that start a new shot
    cuts: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.pins or self.forgets or self.cuts)


def cut_section(time: float, preset: Preset) -> int:
    """The section a cut at ``time`` s starts: the one whose start is nearest."""
    v = preset.video
    return int(round(time * v.fps / v.section_frames))


def check_memory(entries: Any, seconds: float, preset: Preset, history_mode: str) -> MemoryPlan:
    """Check ``entries`` (a request's ``memory``) for a ``seconds`` long video; the plan they make.

    Refused, naming the entry: an unknown op or key, a time that is not a number, a range that is
    reversed or outside the video, a pin overlapping a forget, a cut at 0 s or at or past the last
    section's start, two cuts on one section; pins and forgets outside ``encoder`` mode (no history
    tokens to keep or leave out); any on FramePack's original model's loop (its sections run backward).
    """
    if entries is None:
        return MemoryPlan()
    if not isinstance(entries, list):
        raise InputError("--memory", f"must be a list of {{op, ...}} entries (got {type(entries).__name__})")
    if len(entries) > MAX_MEMORY_ENTRIES:
        raise InputError("--memory", f"{len(entries)} entries; at most {MAX_MEMORY_ENTRIES}")
    if entries and preset.model.loop == "inverted":
        e = entries[0] if isinstance(entries[0], dict) else {}
        raise InputError(flag_of(str(e.get("op"))), f"{entry_name(e)}: FramePack's original model generates its sections "
                                                    "from the end backward; memory controls need a forward preset")
    pins: list[tuple[float, float, str]] = []
    forgets: list[tuple[float, float, str]] = []
    cuts: dict[int, str] = {}
    total = preset.video.sections(seconds)
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or e.get("op") not in MEMORY_OPS:
            raise InputError("--memory", f"entry {i + 1} must be {{op: pin|forget|cut, ...}} (got {e!r:.60})")
        op, flag, name = e["op"], flag_of(e["op"]), entry_name(e)
        if set(e) != _KEYS[op]:
            raise InputError(flag, f"{name}: a {op} entry has exactly the keys {', '.join(sorted(_KEYS[op]))}")
        for key in _KEYS[op] - {"op"}:
            v = e[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(flag, f"{name}: {key} must be a number of seconds (got {v!r})")
        if op == "cut":
            t = float(e["time"])
            k = cut_section(t, preset)
            if t <= 0 or k <= 0:
                raise InputError(flag, f"{name}: a cut at the start is the video's first shot already; cut later")
            if t >= seconds or k >= total:
                raise InputError(flag, f"{name}: past the last section's start (the video is {seconds:g} s, "
                                       f"{total} sections); cut earlier")
            if k in cuts:
                raise InputError(flag, f"{name}: falls on the same section ({k}) as {cuts[k]}; one cut per section")
            cuts[k] = name
            continue
        a, b = float(e["start"]), float(e["end"])
        if b <= a:
            raise InputError(flag, f"{name}: the range is reversed or empty (start must be before end)")
        if a < 0 or b > seconds + 1e-9:
            raise InputError(flag, f"{name}: outside the video (0 to {seconds:g}s)")
        if history_mode != "encoder":
            raise InputError(flag, f"{name}: needs history mode 'encoder' (this request's is {history_mode!r}: "
                                   "no history tokens to keep or leave out)")
        (pins if op == "pin" else forgets).append((a, b, name))
        other = forgets if op == "pin" else pins
        clash = next((o for o in other if o[0] < b and a < o[1]), None)
        if clash is not None:
            raise InputError(flag, f"{name}: overlaps {clash[2]}; a time is either pinned or forgotten")
    return MemoryPlan(tuple((a, b) for a, b, _ in pins), tuple((a, b) for a, b, _ in forgets), frozenset(cuts))
