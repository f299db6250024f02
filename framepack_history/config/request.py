"""A request: what to make (prompt or storyboard, length, seed, inputs) and the settings it overrides.

Every field left ``None`` means "the preset's"; :meth:`GenerationRequest.validate` checks what needs
no file read and returns the parsed storyboard.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

from framepack_history.config.loras import check_entries
from framepack_history.config.memory import check_memory
from framepack_history.config.presets import (
    HISTORY_MERGES,
    HISTORY_MODES,
    MAX_HISTORY_GUIDANCE,
    MAX_HISTORY_TOKENS,
    START_FRAMES,
    Preset,
    check_cache,
)
from framepack_history.config.storyboard import MAX_PROMPT_CHARS, parse_storyboard, split_cuts, split_keyframes
from framepack_history.errors import InputError

MAX_KEYFRAMES = 64  # a storyboard's worth; more is a mistake or abuse, and each is read and copied at admission


@dataclass
class GenerationRequest:
    """One generation: what to make, from what, and how long."""

    prompt: str = ""
    seconds: float = 5.0
    seed: int = 0
    image: str | None = None
    continue_video: str | None = None
    history_mode: str | None = None  # None = the preset's
    window_frames: int | None = None
    history_guidance: float | None = None
    steps: int | None = None
    guidance: float | None = None
    cfg: float | None = None
    shift: float | None = None
    sampler: str | None = None
    #: text-to-video start frame (see ``START_FRAMES``); None = the backbone's default, filled in by ``validate``
    start_frame: str | None = None
    #: the size generated at: the preset's, or a start image's / continued video's bucket (filled in
    #: when the inputs are read; see :mod:`.buckets`)
    width: int | None = None
    height: int | None = None
    #: bounded history: the most history tokens (0 = no cap); None = the preset's ``history.max_tokens``
    max_history_tokens: int | None = None
    #: which groups the history-token cap merges (``HISTORY_MERGES``); None = the preset's ``history.merge``
    history_merge: str | None = None
    #: LoRAs on the DiT: ``[{"name": FILE, "weight": W}]``; resolving adds ``path`` and ``sha256`` (kept for
    #: the sidecar and for resume); None = the preset's ``loras``, [] = none
    loras: list[dict[str, Any]] | None = None
    #: step caching (``off``, ``fast``, ``faster``); None = the preset's ``sampling.cache``
    cache: str | None = None
    #: an end image (path): FramePack's original model generates toward it (``model.loop = "inverted"``)
    end_image: str | None = None
    #: how strongly the end image anchors the video's end: its latent's scale (FramePack-Studio), in [0, 1]
    end_frame_strength: float | None = None
    #: keyframes: ``[{"time": SECONDS, "image": PATH}]`` in time order, each time in (0, seconds]; admission adds
    #: ``sha256`` (the sidecar's and resume's) and, with the copy in the job folder, ``name`` (the file as given). A storyboard's ``[image]`` entries are moved here by ``validate``,
    #: and a keyframe at 0 s becomes the start image. Only where the model can reach an image: the toy, or
    #: FramePack's original model's loop
    keyframes: list[dict[str, Any]] | None = None
    #: memory controls: ``[{"op": "pin"|"forget", "start": S, "end": E}, {"op": "cut", "time": T}]`` (:mod:`.memory`)
    memory: list[dict[str, Any]] | None = None
    #: a finished job (its id, or its job folder) whose history the new job starts with; admission records its
    #: folder here (the worker resolves an id), so a resume finds the same
    borrow: str | None = None

    def validate(self, preset: Preset) -> list[tuple[float, str]]:
        """Check everything that doesn't need a file read; return the storyboard."""
        if not isinstance(self.seconds, (int, float)) or isinstance(self.seconds, bool) or not math.isfinite(self.seconds):
            raise InputError("--seconds", f"must be a finite number (got {self.seconds!r})")
        if self.seconds <= 0:
            raise InputError("--seconds", f"must be > 0 (got {self.seconds:g})")
        if self.seconds > preset.video.max_seconds:
            raise InputError("--seconds", f"{self.seconds:g} s is over the preset's limit of {preset.video.max_seconds:g} s")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise InputError("--seed", f"must be an integer in [0, 2^63) (got {self.seed!r})")
        if not isinstance(self.prompt, str):
            raise InputError("--prompt", f"must be text (got {type(self.prompt).__name__})")
        try:
            self.prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: bytes that were not UTF-8 (argv, a broken client)
            raise InputError("--prompt", f"is not valid UTF-8 text (character {e.start + 1} cannot be encoded)") from None
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise InputError("--prompt", f"is {len(self.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if self.history_mode is not None and self.history_mode not in HISTORY_MODES:
            raise InputError("--history", f"must be one of {', '.join(HISTORY_MODES)} (got {self.history_mode!r})")
        for name, val, lo in (("--steps", self.steps, 1), ("--window-frames", self.window_frames, 0)):
            if val is not None and (not isinstance(val, int) or val < lo or val > 1000):
                raise InputError(name, f"must be an integer in [{lo}, 1000] (got {val!r})")
        for name, val in (("--guidance", self.guidance), ("--cfg", self.cfg), ("--shift", self.shift)):
            if val is not None and (not math.isfinite(val) or val < 0 or val > 100):
                raise InputError(name, f"must be a number in [0, 100] (got {val!r})")
        hg = self.history_guidance
        if hg is not None and (isinstance(hg, bool) or not isinstance(hg, (int, float)) or not math.isfinite(hg)
                               or not 0 <= hg <= MAX_HISTORY_GUIDANCE):
            raise InputError("--history-guidance", f"must be a number in [0, {MAX_HISTORY_GUIDANCE:g}] (got {hg!r})")
        cap = self.max_history_tokens
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= MAX_HISTORY_TOKENS):
            raise InputError("--max-history-tokens", f"must be an integer in [0, {MAX_HISTORY_TOKENS}] (0 = no cap; got {cap!r})")
        if self.history_merge is not None and self.history_merge not in HISTORY_MERGES:
            raise InputError("--history-merge", f"must be one of {', '.join(HISTORY_MERGES)} (got {self.history_merge!r})")
        if self.cfg is not None and self.cfg < 1:
            raise InputError("--cfg", f"must be >= 1 (got {self.cfg:g})")
        if self.shift is not None and self.shift <= 0:
            raise InputError("--shift", f"must be > 0 (got {self.shift:g})")
        if self.sampler is not None and self.sampler not in ("euler", "unipc"):
            raise InputError("--sampler", f"must be 'euler' or 'unipc' (got {self.sampler!r})")
        if self.cache is not None:
            check_cache(self.cache, "--cache")
        self._take_cuts()
        self._take_keyframes(preset)
        if self.image and self.continue_video:
            raise InputError("--image", "give either a start image or a video to continue, not both")
        self._check_end_image(preset)
        check_entries(self.loras)
        board = parse_storyboard(self.prompt)
        if not board[0][1] and not (self.image or self.continue_video):
            raise InputError("--prompt", "is empty; give a prompt, a start image or a video to continue")
        self._check_start_frame(preset)
        self._check_size(preset)
        self._check_memory(preset)
        return board

    def _check_memory(self, preset: Preset) -> None:
        """The memory controls and the borrowed job's name (no file read: admission reads the job)."""
        mode = self.history_mode or preset.history.mode
        try:
            check_memory(self.memory, self.seconds, preset, mode)
        except InputError as e:  # a cut the storyboard gave (``12s: [cut] ...``) is refused naming the storyboard
            boarded = getattr(self, "_boarded_cuts", ())
            if e.field == "--cut" and any(e.message.startswith(f"cut at {t:g}s:") for t in boarded):
                raise InputError("--prompt", f"storyboard entry at {e.message}") from None
            raise
        if self.borrow is None:
            return
        if not isinstance(self.borrow, str) or not self.borrow.strip():
            raise InputError("--borrow", f"must name a finished job (its id or job folder; got {self.borrow!r})")
        if preset.model.loop == "inverted":
            raise InputError("--borrow", "FramePack's original model generates its sections from the end backward; "
                                         "borrowing a history needs a forward preset")
        if mode != "encoder":
            raise InputError("--borrow", f"needs history mode 'encoder' (this request's is {mode!r}): a borrowed history "
                                         "is read as history tokens")

    def _check_end_image(self, preset: Preset) -> None:
        """An end image only on the original model's loop, toward a start image or a continued video;
        a strength in [0, 1] (the end image's, and on that loop the keyframes')."""
        fs = self.end_frame_strength
        if fs is not None and (isinstance(fs, bool) or not isinstance(fs, (int, float)) or not math.isfinite(fs)
                               or not 0 <= fs <= 1):
            raise InputError("--end-frame-strength", f"must be a number in [0, 1] (got {fs!r})")
        if not self.end_image:
            if fs is not None and not (self.keyframes and preset.model.loop == "inverted"):  # the keyframes' too there
                raise InputError("--end-frame-strength", "is the end image's strength; give --end-image")
            return
        if not isinstance(self.end_image, str):
            raise InputError("--end-image", f"must be a file path (got {type(self.end_image).__name__})")
        if preset.model.loop != "inverted":
            raise InputError("--end-image", "needs the original model: presets framepack-original-12gb, "
                                            "framepack-original-24gb or framepack-original-80gb "
                                            f"(this preset's {preset.model.backbone} loop generates forward)")
        if not (self.image or self.continue_video):
            raise InputError("--end-image", "goes with a start image (--image) or a video to continue (--continue-video): "
                                            "the video runs from one to the other")

    def _take_cuts(self) -> None:
        """Move the storyboard's ``[cut]`` marks (``12s: [cut] ...``) into ``memory`` as cut entries.

        Run twice, it finds the storyboard already without them. Which cuts came from the storyboard is kept
        for messages only (:meth:`_check_memory`), never stored.
        """
        prompt, cuts = split_cuts(self.prompt)
        if not cuts:
            return
        if self.memory is not None and not isinstance(self.memory, list):
            return  # refused by name in _check_memory
        self.prompt = prompt
        self.memory = [*(self.memory or []), *({"op": "cut", "time": t} for t in cuts)]
        self._boarded_cuts = {*getattr(self, "_boarded_cuts", ()), *cuts}

    def _take_keyframes(self, preset: Preset) -> None:
        """Move the storyboard's ``[image]`` entries into ``keyframes`` and check them all (no file read).

        Each refusal names the keyframe (``keyframe at 8s ([door.png])``) and where it was given: ``--prompt``
        for a storyboard entry, ``--keyframe`` for the list. Which was which is kept for admission's file reads
        (:func:`keyframe_field`). Run twice, it finds the storyboard already without images.
        """
        given = self.keyframes
        if given is not None and not isinstance(given, list):
            raise InputError("--keyframe", f"must be a list of {{time, image}} (got {type(given).__name__})")
        prompt, boarded = split_keyframes(self.prompt)
        fields: dict[float, str] = dict(getattr(self, "_keyframe_fields", {}))
        found: list[tuple[dict[str, Any], str, str]] = []  # (keyframe, field, its name in messages)
        for i, kf in enumerate(given or []):
            if not isinstance(kf, dict) or set(kf) - {"time", "image", "sha256", "name"} or "time" not in kf or "image" not in kf:
                raise InputError("--keyframe", f"keyframe {i + 1} must be {{time, image}} (got {kf!r:.60})")
            t = kf["time"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise InputError("--keyframe", f"keyframe {i + 1}: its time must be a number of seconds (got {t!r})")
            image = kf["image"]
            if not isinstance(image, str) or not image:
                raise InputError("--keyframe", f"keyframe at {t:g}s: its image must be a file path (got {image!r})")
            kf = dict(kf, time=float(t))
            found.append((kf, fields.get(kf["time"], "--keyframe"), keyframe_name(kf)))
        found += [({"time": t, "image": name}, "--prompt", entry) for t, name, entry in boarded]
        if not found:
            self.keyframes = None if given is None else []
            return
        if preset.model.backbone != "toy" and preset.model.loop != "inverted":
            kf, field, entry = found[0]
            raise InputError(field, f"{entry}: keyframes need the original model: presets framepack-original-12gb, "
                                    "framepack-original-24gb or framepack-original-80gb (this preset's "
                                    f"{preset.model.backbone} loop generates forward and cannot anchor the future)")
        if len(found) > MAX_KEYFRAMES:
            raise InputError(found[MAX_KEYFRAMES][1], f"{found[MAX_KEYFRAMES][2]}: at most {MAX_KEYFRAMES} keyframes")
        found.sort(key=lambda f: f[0]["time"])
        for (a, _, first), (b, field, entry) in itertools.pairwise(found):
            if abs(a["time"] - b["time"]) < 1e-6:
                raise InputError(field, f"{entry}: {first} is at the same time; one image per time")
        kept: list[dict[str, Any]] = []
        start = None  # a keyframe at 0 s: taken as the start image once every keyframe has passed
        for kf, field, entry in found:
            t = kf["time"]
            if t < -1e-9 or t > self.seconds + 1e-9:
                raise InputError(field, f"{entry} is outside the video (0 to {self.seconds:g}s)")
            if t <= 1e-9:  # the video's first frame: the start image
                if self.image:
                    raise InputError(field, f"{entry} is the start image; this request has a start image (--image) "
                                            "already: give one or the other")
                if self.continue_video:
                    raise InputError(field, f"{entry} would be a start image; a continued video starts from its own frames")
                start = kf["image"]
                continue
            if self.end_image and abs(t - self.seconds) < 1e-6:
                raise InputError(field, f"{entry} is the video's last frame, as the end image (--end-image) is; "
                                        "give one or the other")
            fields[t] = field
            kept.append(kf)
        self.image = start or self.image
        self.prompt = prompt
        self.keyframes = kept
        self._keyframe_fields = fields  # not a field: admission's messages only, never stored

    def _check_start_frame(self, preset: Preset) -> None:
        """A known start frame, for text-to-video only; unset becomes the backbone's default (recorded)."""
        offered = START_FRAMES.get(preset.model.backbone, ())
        if self.image or self.continue_video:
            if self.start_frame is not None:
                given = "a start image" if self.image else "a video to continue"
                raise InputError("--start-frame", f"is for text-to-video; this request has {given}")
            return
        if self.start_frame is None:
            self.start_frame = offered[0] if offered else None
        elif self.start_frame not in offered:
            raise InputError("--start-frame", f"{self.start_frame!r} is not offered by the {preset.model.backbone} "
                                              f"backbone (choices: {', '.join(offered)})")

    def _check_size(self, preset: Preset) -> None:
        """Width and height both set or both unset; text-to-video is generated at the preset's size."""
        v = preset.video
        if (self.width is None) != (self.height is None):
            raise InputError("--width" if self.width is None else "--height", "width and height go together")
        if self.width is None:
            if not (self.image or self.continue_video):
                self.width, self.height = v.width, v.height
            return
        for name, val in (("--width", self.width), ("--height", self.height)):
            if isinstance(val, bool) or not isinstance(val, int) or val <= 0 or val % 2:
                raise InputError(name, f"must be a positive even integer (got {val!r})")
        if self.width * self.height > v.width * v.height:
            raise InputError("--width", f"{self.width}x{self.height} is over the preset's budget of "
                                        f"{v.width}x{v.height} pixels")
        if not v.buckets and (self.width, self.height) != (v.width, v.height):
            raise InputError("--width", f"{self.width}x{self.height}: this preset generates at {v.width}x{v.height} only")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def keyframe_field(request: GenerationRequest, keyframe: dict[str, Any]) -> str:
    """Where a checked keyframe was given: ``--prompt`` (a storyboard entry) or ``--keyframe`` (the list)."""
    return getattr(request, "_keyframe_fields", {}).get(float(keyframe["time"]), "--keyframe")


def keyframe_name(keyframe: dict[str, Any]) -> str:
    """A keyframe as messages name it: ``keyframe at 8s ([door.png])``."""
    name = keyframe.get("name") or str(keyframe["image"]).replace("\\", "/").rsplit("/", 1)[-1]
    return f"keyframe at {float(keyframe['time']):g}s ([{name}])"
