"""The request's fields in one table, and the settings a job runs with.

:data:`FIELDS` says, for every :class:`~.request.GenerationRequest` field, how the command line,
the page and the HTTP API name it and where the preset keeps its default. The CLI's flags, the
page's labels in its error messages, the API's parameters and Reuse settings are read from it, so
a new request option is one more row here (appended: the API's positional order is the table's).

:func:`resolve` is the one "the request's value, else the preset's": the pipeline, the sidecar,
the job folder and Reuse settings all read a job's settings through it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from framepack_history.config.loras import check_entry, parse_arg
from framepack_history.config.presets import CACHE_SETTINGS, HISTORY_MERGES, HISTORY_MODES, Preset
from framepack_history.config.request import GenerationRequest

#: how a page or API value is read: text (the prompt), a file (image, video), a whole number, a number, a name, LoRAs,
#: keyframes (images and times), memory controls (pin, forget, cut entries)
Kind = Literal["text", "image", "video", "int", "float", "name", "loras", "keyframes", "memory"]
SAMPLERS = ("euler", "unipc")


@dataclass(frozen=True)
class RequestField:
    """One request field as each front end names it."""

    #: the :class:`GenerationRequest` attribute
    name: str
    #: the command-line flag; also the field an :class:`InputError` about it names
    flag: str
    #: the page's label for it (its error messages use it); None: not on the page
    label: str | None = None
    #: the HTTP API's parameter; None: not an API parameter
    api: str | None = None
    #: the preset key holding its default (``"history.max_tokens"``); None: the request alone decides
    preset: str | None = None
    kind: Kind = "name"
    #: the values it may take (the page's and the API's choices)
    choices: tuple[str, ...] = ()
    #: whether the command line refuses other values itself (else the request's check names the field)
    cli_choices: bool = True
    #: whether the command line offers the flag
    cli: bool = True
    #: the key of Reuse settings' form values; None: Reuse settings leaves it alone
    form: str | None = None
    default: Any = None  # the request's default (also the flag's)
    help: str | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """The argparse destination of :attr:`flag`."""
        return self.flag.lstrip("-").replace("-", "_")

    def preset_value(self, preset: Preset) -> Any:
        """The preset's value of this field (``preset`` must be set)."""
        value: Any = preset
        for part in str(self.preset).split("."):
            value = getattr(value, part)
        return value


def _row(name: str, flag: str, label: str | None = None, **kw: Any) -> RequestField:
    """A row whose API parameter and form key are the field's name unless given (a page field is on the form)."""
    kw.setdefault("api", name)
    kw.setdefault("form", name if label is not None else None)
    return RequestField(name, flag, label, **kw)


#: every request field, in the HTTP API's positional order (a new option goes at the end)
FIELDS: tuple[RequestField, ...] = (
    _row("prompt", "--prompt", "Prompt or storyboard", kind="text", default="",
         help="prompt, or a storyboard such as '0s: camera pans right; 10s: camera pans left'"),
    _row("image", "--image", "Start image", api="start_image", kind="image", form=None, help="start image (image-to-video)"),
    _row("continue_video", "--continue-video", "Video to continue", kind="video", form=None, help="a video to continue"),
    _row("seconds", "--seconds", "Length (seconds)", kind="float", default=5.0, help="video length in seconds"),
    _row("seed", "--seed", "Seed", kind="int", default=0, help="noise seed"),
    _row("steps", "--steps", "Steps", preset="sampling.steps", kind="int", help="denoising steps (default: the preset's)"),
    _row("guidance", "--guidance", "Guidance", preset="sampling.guidance", kind="float", help="distilled guidance"),
    _row("shift", "--shift", "Shift", preset="sampling.shift", kind="float", help="timestep shift"),
    _row("history_mode", "--history", "History", preset="history.mode", choices=HISTORY_MODES, form="history",
         help="history mode (default: the preset's)"),
    _row("window_frames", "--window-frames", "Sliding-window frames", preset="history.window_frames", kind="int",
         form="window", help="raw latent frames of the sliding-window add-on"),
    _row("history_guidance", "--history-guidance", "History guidance", preset="history.guidance", kind="float",
         help="history guidance (encoder mode): 1 = off, >1 leans harder on the history embedding"),
    _row("start_frame", "--start-frame", "Start frame", metavar="KIND",
         help="text-to-video start frame: hunyuan_framepack noise (default), black, white or green "
              "(green screen); the toy: world (its first view)"),
    _row("max_history_tokens", "--max-history-tokens", "History-token cap", preset="history.max_tokens", kind="int",
         form="max_tokens", metavar="N",
         help="bounded history: at most N history tokens, merging groups to fit (0 = no cap; default: the preset's)"),
    _row("loras", "--lora", "LoRAs", api=None, preset="loras", kind="loras", form=None, metavar="FILE[:WEIGHT]",
         help="a LoRA on the DiT (a .safetensors path, or a name in loras/), weight 1 unless given; "
              "repeat for several (default: the preset's loras)"),
    _row("cache", "--cache", "Step cache", preset="sampling.cache", choices=CACHE_SETTINGS, cli_choices=False,
         metavar="off|fast|faster",
         help="step caching: skip most of the DiT on steps where it barely changes (default: the preset's "
              "sampling.cache); fast and faster trade some detail for fewer DiT passes"),
    _row("history_merge", "--history-merge", "Cap merges", preset="history.merge", choices=HISTORY_MERGES, form="merge",
         help="which history groups the token cap merges: similar (held views merge, a view seen once keeps "
              "full detail) or oldest (detail falls with age); default: the preset's"),
    # Reuse settings leaves the end image out, as the start image: a sidecar's path is never served back
    _row("end_image", "--end-image", "End image", kind="image", form=None,
         help="end image: the video runs from the start image to it (FramePack's original model presets)"),
    _row("end_frame_strength", "--end-frame-strength", "End frame strength", kind="float", metavar="S",
         help="how strongly the end image anchors the video's end, in [0, 1] (default 1)"),
    # the page's keyframe rows (image, time, prompt) and the API's keyframe_images with keyframe_times; Reuse settings
    # restores the times and prompts, never the images (a sidecar's path is never served back)
    _row("keyframes", "--keyframe", "Keyframes", api="keyframe_images", kind="keyframes", metavar="TIME:IMAGE",
         help="a keyframe: the video shows IMAGE at TIME seconds, e.g. 8:door_open.png; repeat for several (or write "
              "'8s: [door_open.png] the door opens' in the storyboard); the toy and FramePack's original model presets"),
    # memory controls: the command line's --pin, --forget and --cut (repeated) make the list; the page and the API
    # take text ("pin 10:20; forget 30:40; cut 12") or a list of entries (config.memory)
    _row("memory", "--memory", "Memory controls", kind="memory", metavar="ENTRIES",
         help="pin/forget time ranges of the history, cut to a new shot: 'pin 10:20; forget 30:40; cut 12'"),
    # a finished job's history to start from (its id; on the command line its job folder)
    _row("borrow", "--borrow", "Borrow memory from", metavar="JOB",
         help="start with the history of a finished job (its job folder, or the app's job id): the same world or "
              "character in a new video; nothing of that job's video is shown"),
    # not on the page nor in the API: the command line's
    _row("cfg", "--cfg", api=None, preset="sampling.cfg", kind="float",
         help="real classifier-free guidance (>1 doubles the cost)"),
    _row("sampler", "--sampler", api=None, preset="sampling.sampler", choices=SAMPLERS),
    # the size generated at: the preset's, or an input's bucket (chosen when the inputs are read)
    _row("width", "--width", api=None, kind="int", cli=False),
    _row("height", "--height", api=None, kind="int", cli=False),
)

BY_NAME = {f.name: f for f in FIELDS}
BY_FLAG = {f.flag: f for f in FIELDS}
#: the page's label of each field (named by its flag), for the page's error messages
PAGE_LABELS = {f.flag: f.label for f in FIELDS if f.label is not None}
#: the fields with a preset default: what :class:`Settings` holds
SETTING_FIELDS = tuple(f for f in FIELDS if f.preset is not None)


def row_of(name: str) -> RequestField:
    """The row of request field ``name``."""
    return BY_NAME[name]


def page_label(name: str) -> str:
    """A field's name as the page shows it: its label for a request flag, else ``name`` unchanged."""
    return PAGE_LABELS.get(name, name)


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """The settings one job runs with: each the request's, else its preset's (see :func:`resolve`)."""

    steps: int
    guidance: float
    shift: float | None  # None: the backbone's own schedule
    history_mode: str
    window_frames: int
    history_guidance: float
    max_history_tokens: int  # 0 = no cap
    loras: tuple[dict[str, Any], ...]  # {"name", "weight"} (and "path", "sha256" once resolved)
    cache: str
    history_merge: str
    cfg: float
    sampler: str
    #: the settings the request gave itself (the others are the preset's)
    from_request: frozenset[str] = frozenset()

    def field_name(self, name: str) -> str:
        """What an error about setting ``name`` names: the request's flag, or the preset key it came from."""
        row = row_of(name)
        return row.flag if name in self.from_request else str(row.preset)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the values, and which the request set."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "from_request"}
        out["loras"] = [dict(e) for e in self.loras]
        out["from_request"] = sorted(self.from_request)
        return out


_CONVERT = {"int": int, "float": float}


def _setting(row: RequestField, value: Any, from_preset: bool) -> Any:
    """One value in its type: numbers as the pipeline reads them, LoRAs as entries."""
    if row.kind == "loras":
        return tuple(parse_arg(s, "loras") if from_preset else check_entry(s) for s in value)
    convert = _CONVERT.get(row.kind)
    return value if convert is None or value is None else convert(value)


def resolve(request: GenerationRequest, preset: Preset) -> Settings:
    """The settings ``request`` runs with on ``preset``: each field it sets, else the preset's default."""
    values: dict[str, Any] = {}
    mine = set()
    for row in SETTING_FIELDS:
        value = getattr(request, row.name)
        if value is None:
            value = row.preset_value(preset)
        else:
            mine.add(row.name)
        values[row.name] = _setting(row, value, row.name not in mine)
    return Settings(**values, from_request=frozenset(mine))
