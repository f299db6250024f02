"""Storyboards: ``TIME: text`` entries (``TIME~SPAN:`` blends from the entry before), parsed and read at a time.

An entry may start with a keyframe image, ``8s: [door_open.png] the door opens``: :func:`split_keyframes`
takes the images out (the request keeps them as keyframes) and leaves the storyboard text without them.

Validated here (every error names the entry), so a typo never reaches a generation. No torch here.
"""

from __future__ import annotations

import itertools
import re

from framepack_history.errors import InputError

_STAMP = re.compile(r"(?:^|;|\n)\s*(\d+(?:\.\d+)?)\s*s\s*(?:~\s*(\d+(?:\.\d+)?)\s*s\s*)?:", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LOOKS_TIMED = re.compile(r"^\s*[-+]?\d[\d.]*\s*[a-z]{0,3}\s*:", re.IGNORECASE)
_LOOKS_BLEND = re.compile(r"^\s*[-+]?\d[\d.]*\s*s?\s*~", re.IGNORECASE)
MAX_PROMPT_CHARS = 2000
#: a keyframe image at the start of an entry's text: ``[NAME.png]`` (only image names, so ``[cinematic]`` stays text)
_KEYFRAME = re.compile(r"^\[([^\[\]\n;]+?\.(?:png|jpe?g|webp|bmp|tiff?|gif))\]\s*", re.IGNORECASE)


class Entry(tuple):
    """One storyboard entry: the pair ``(start, text)``, plus ``blend``.

    ``blend`` is how many seconds the entry takes to fade in from the one before it (0 = a cut).
    It rides along as an attribute so that everything that reads entries as pairs keeps working.
    """

    def __new__(cls, start: float, text: str, blend: float = 0.0) -> Entry:
        self = super().__new__(cls, (float(start), text))
        self.blend = float(blend)
        return self

    def __getnewargs__(self) -> tuple:  # copy and pickle rebuild it with its blend
        return (self[0], self[1], self.blend)

    def __repr__(self) -> str:
        return f"Entry({self[0]!r}, {self[1]!r}, blend={self.blend!r})" if self.blend else tuple.__repr__(self)


def parse_storyboard(text: str) -> list[tuple[float, str]]:
    """``"0s: a; 12s~2s: b"`` -> ``[(0.0, "a"), (12.0, "b")]`` (:class:`Entry` pairs); plain text -> ``[(0.0, text)]``.

    ``12s~2s:`` asks for a prompt transition: from 12 s to 14 s the text conditioning moves linearly
    from the entry before to this one (:func:`prompt_weights`). Raises :class:`InputError` for
    storyboards that are malformed: text before the first stamp, empty entries, times that do not
    increase, or blends that are malformed, have nothing to blend from or run into the next entry.
    """
    text = _CONTROL.sub(" ", text).strip()
    stamps = list(_STAMP.finditer(text))
    if not stamps:
        if re.match(r"^\s*[-+]?[\d.]+\s*[a-z]*\s*[:~]", text, re.IGNORECASE):
            raise InputError("--prompt", f"malformed storyboard time at {text[:20]!r}: write times like '0s:' or '12.5s:'")
        return [Entry(0.0, text)]
    if text[: stamps[0].start()].strip(" ;\n"):
        raise InputError("--prompt", "storyboard text must start with a time such as '0s:'")
    for part in re.split(r"[;\n]", text):  # '10: b' or '1m: b' between good stamps is a typo, not prompt text
        if _LOOKS_BLEND.match(part) and not _STAMP.match(part):
            raise InputError("--prompt", f"storyboard entry {part.strip()[:30]!r}: malformed blend; write a start and "
                                         "a blend time like '12s~2s: text' (the prompt fades in over 2 s from 12 s)")
        if _LOOKS_TIMED.match(part) and not _STAMP.match(part):
            raise InputError("--prompt", f"malformed storyboard time at {part.strip()[:20]!r}: write times like '0s:' or '12.5s:'")
    entries: list[Entry] = []
    for i, m in enumerate(stamps):
        end = stamps[i + 1].start() if i + 1 < len(stamps) else len(text)
        body = text[m.end() : end].strip(" ;\n")
        t, blend = float(m.group(1)), float(m.group(2) or 0)
        if not body:
            raise InputError("--prompt", f"storyboard entry at {m.group(1)}s has no text")
        if entries and t <= entries[-1][0]:
            raise InputError("--prompt", f"storyboard times must increase ({entries[-1][0]:g}s then {t:g}s)")
        if blend and not entries:
            raise InputError("--prompt", f"storyboard entry '{t:g}s~{blend:g}s: {body[:30]}' is the first: a blend needs "
                                         "an entry before it to blend from")
        entries.append(Entry(t, body, blend))
    for e, nxt in itertools.pairwise(entries):
        if e[0] + e.blend > nxt[0] + 1e-9:
            raise InputError("--prompt", f"storyboard entry '{e[0]:g}s~{e.blend:g}s: {e[1][:30]}' blends until "
                                         f"{e[0] + e.blend:g}s, past the next entry at {nxt[0]:g}s")
    return entries


def prompt_at(storyboard: list[tuple[float, str]], t: float) -> str:
    """The prompt in force at time ``t``: the last entry that started at or before it."""
    current = storyboard[0][1]
    for start, text in storyboard:
        if start <= t + 1e-9:
            current = text
    return current


def prompt_weights(storyboard: list[tuple[float, str]], t: float) -> list[tuple[str, float]]:
    """The prompts that condition time ``t`` and their weights: one at weight 1, or two inside a blend.

    Inside ``start~blend`` of an entry the weight of its text grows linearly from 0 at ``start``
    to 1 at ``start + blend``; the entry before it has the rest.
    """
    i = 0
    for k, entry in enumerate(storyboard):
        if entry[0] <= t + 1e-9:
            i = k
    entry = storyboard[i]
    blend = getattr(entry, "blend", 0.0)
    weight = (t - entry[0]) / blend if i and blend else 1.0
    if weight >= 1.0:
        return [(entry[1], 1.0)]
    if weight <= 0.0:
        return [(storyboard[i - 1][1], 1.0)]
    return [(storyboard[i - 1][1], 1.0 - weight), (entry[1], weight)]


def caption_at(caption: str, seconds: float) -> str:
    """The storyboard entry in force at ``seconds`` (plain captions are returned as they are)."""
    try:
        return prompt_at(parse_storyboard(caption), seconds)
    except InputError:
        return caption


def split_keyframes(text: str) -> tuple[str, list[tuple[float, str, str]]]:
    """The storyboard without its keyframe images, and the images: ``(time, name, entry)`` each.

    ``"0s: [a.png] she waits; 8s: [b.png] the door opens; 9s: [c.png]"`` ->
    ``("0s: she waits; 8s: the door opens", [(0.0, "a.png", ...), (8.0, "b.png", ...), (9.0, "c.png", ...)])``.
    ``entry`` names the entry for messages (``keyframe at 8s ([b.png])``). An entry that only names an
    image is dropped from the text, so the prompt before it goes on; a plain prompt that starts with an
    image is an entry at 0 s. Text without images is returned unchanged. Raises :class:`InputError`
    (``--prompt``) for a malformed storyboard, as :func:`parse_storyboard` does.
    """
    entries = parse_storyboard(text)
    if not any(_KEYFRAME.match(e[1]) for e in entries):
        return text, []
    timed = bool(_STAMP.search(_CONTROL.sub(" ", text).strip()))
    images: list[tuple[float, str, str]] = []
    kept: list[str] = []
    for e in entries:
        m = _KEYFRAME.match(e[1])
        body = e[1]
        if m:
            name, body = m.group(1).strip(), e[1][m.end():].strip()
            short = name.replace("\\", "/").rsplit("/", 1)[-1]  # as every keyframe message names it
            images.append((e[0], name, f"keyframe at {e[0]:g}s ([{short}])"))
            if _KEYFRAME.match(body):
                raise InputError("--prompt", f"{images[-1][2]}: one image per storyboard entry (then {body[:30]!r})")
        if not body:
            continue  # an image alone: the prompt before it goes on
        if not timed:
            kept.append(body)
            continue
        kept.append(join_entries([Entry(e[0], body, getattr(e, "blend", 0.0))]))
    return "; ".join(kept), images


#: a cut at the start of an entry's text, before any keyframe image: ``12s: [cut] the street at night``
_CUT = re.compile(r"^\[cut\]\s*", re.IGNORECASE)


def split_cuts(text: str) -> tuple[str, list[float]]:
    """The storyboard without its ``[cut]`` marks, and their times (new shots: ``config.memory``'s cut entries).

    ``"0s: a; 12s: [cut] b"`` -> ``("0s: a; 12s: b", [12.0])``. The mark starts an entry's text (a keyframe
    image may follow it: ``12s: [cut] [door.png] b``); an entry that is only ``[cut]`` is dropped from the
    text, so the prompt before it goes on. Text without cuts is returned unchanged; other brackets
    (``[cinematic]``) stay prompt text.
    """
    entries = parse_storyboard(text)
    if not any(_CUT.match(e[1]) for e in entries):
        return text, []
    timed = bool(_STAMP.search(_CONTROL.sub(" ", text).strip()))
    cuts: list[float] = []
    kept: list[str] = []
    for e in entries:
        body = e[1]
        m = _CUT.match(body)
        if m:
            cuts.append(float(e[0]))
            body = body[m.end():].strip()
        if not body:
            continue
        kept.append(join_entries([Entry(e[0], body, getattr(e, "blend", 0.0))]) if timed else body)
    return "; ".join(kept), cuts


def _stamp(t: float) -> str:
    """A storyboard time as ``_STAMP`` reads it back (no exponent, no trailing zeros)."""
    return f"{t:.6f}".rstrip("0").rstrip(".")


def join_entries(entries: list[tuple[float, str]]) -> str:
    """Entries back to storyboard text: ``[(0, "a"), Entry(8, "b", blend=2)]`` -> ``"0s: a; 8s~2s: b"``."""
    return "; ".join(f"{_stamp(e[0])}s{f'~{_stamp(b)}s' if (b := getattr(e, 'blend', 0.0)) else ''}: {e[1]}"
                     for e in entries)


def with_entries(text: str, entries: list[tuple[float, str]], field: str = "--keyframe") -> str:
    """``text`` with more entries (``(time, text)``; the page's keyframe rows), in time order.

    A plain prompt becomes the entry at 0 s. An entry at a time the storyboard already has is refused
    (``field``), naming it.
    """
    if not entries:
        return text
    board = list(parse_storyboard(text)) if text.strip() else []
    have = {round(e[0], 6) for e in board}
    for t, body in entries:
        if round(t, 6) in have:
            raise InputError(field, f"keyframe at {t:g}s: the storyboard has an entry at {t:g}s already; "
                                    "give the prompt in one place")
        have.add(round(t, 6))
        board.append(Entry(t, " ".join(body.replace(";", ",").split())))  # one entry: no separator inside it
    board.sort(key=lambda e: e[0])
    return join_entries(board)


def parse_keyframe_arg(text: str, field: str = "--keyframe") -> dict[str, float | str]:
    """``TIME:IMAGE`` (``8:door.png``, ``8.5s:door.png``) -> ``{"time": 8.0, "image": "door.png"}``.

    The time is what comes before the first colon, so ``8:C:\\door.png`` keeps its drive.
    """
    head, sep, image = str(text).strip().partition(":")
    m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*s?\s*", head, re.IGNORECASE)  # a sign: refused as outside the video
    if not sep or m is None or not image.strip():
        raise InputError(field, f"{text!r}: write TIME:IMAGE, e.g. 8:door_open.png (the image at 8 s)")
    return {"time": float(m.group(1)), "image": image.strip()}
