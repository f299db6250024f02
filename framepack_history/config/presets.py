"""Presets: the model, video, sampling, history and hardware settings a job starts from.

Presets are TOML files in ``presets/``. Loading validates every field and
names the bad one (``video.fps must be a positive integer (got 'abc')``), so
a typo never turns into a stack trace halfway through a generation.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import tomllib

from framepack_history.config.loras import parse_arg
from framepack_history.config.paths import PRESET_DIR
from framepack_history.config.rates import parse_rate
from framepack_history.device import DTYPE_NAMES, WEIGHT_STORAGE
from framepack_history.errors import InputError

HISTORY_MODES = ("encoder", "window", "none")
#: the rules a history-token cap merges by (``history.MERGE_RULES``); the first is the default
HISTORY_MERGES = ("similar", "oldest")
#: section loops (``model.loop``): forward from the start, or FramePack's original inverted anti-drifting
LOOPS = ("forward", "inverted")
#: text-to-video start frames each backbone offers, its default first. An image-to-video checkpoint
#: (FramePack-F1) always wants a start image: black, white, green screen (chroma-key 0,177,64) or
#: seeded noise, as FramePack-Studio offers; the toy draws its world's first view.
START_FRAMES = {"toy": ("world",), "hunyuan_framepack": ("noise", "black", "white", "green")}
MAX_HISTORY_GUIDANCE = 20.0  # history guidance beyond this only amplifies noise
MAX_HISTORY_TOKENS = 10_000_000  # a history-token cap beyond this bounds nothing a preset can generate
#: step caching (diffusers' First Block Cache, see ``step_cache``): ``off`` runs every block of every step
CACHE_SETTINGS = ("off", "fast", "faster")


def check_cache(value: object, field_name: str = "--cache") -> str:
    """``value`` if it is one of :data:`CACHE_SETTINGS`, else an :class:`InputError` naming ``field_name``."""
    if not isinstance(value, str) or value not in CACHE_SETTINGS:
        raise InputError(field_name, f"must be one of {', '.join(CACHE_SETTINGS)} (got {value!r})")
    return value


# --------------------------------------------------------------------- preset
@dataclass
class ModelSpec:
    backbone: str = "toy"
    #: the section loop (``LOOPS``): ``forward`` (each section after the past: FramePack-F1, the toy) or
    #: ``inverted`` (FramePack's original model, from the video's end toward its start; hunyuan_framepack only)
    loop: str = "forward"
    #: backbone weights: a local folder or hub id(s); empty = random weights from ``config``
    weights: str = ""
    #: extra hub ids/folders by component (hunyuan: base, image_encoder)
    components: dict[str, str] = field(default_factory=dict)
    #: history encoder weights folder; empty = a freshly initialised encoder
    encoder: str = ""
    encoder_rate: str = "4x4x2"
    encoder_rates: list[str] = field(default_factory=lambda: ["4x4x2", "2x2x2"])
    encoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    #: configs for random initialisation (tests, training from scratch)
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class VideoSpec:
    width: int = 64
    height: int = 64
    fps: int = 8
    section_frames: int = 8  # pixel frames per generated section
    display_scale: int = 1  # nearest-neighbour upscale of written videos (tiny toy frames)
    #: start images and continued videos pick the resolution bucket nearest their aspect ratio within
    #: width x height pixels (FramePack's 640 list at 832x480). Unset: on for hunyuan_framepack, off for the toy
    buckets: bool | None = None
    max_seconds: float = 600.0

    def sections(self, seconds: float) -> int:
        """How many sections make ``seconds``: FramePack's count, the nearest whole number, at least one.

        FramePack's demo computes ``int(max(round(seconds * 30 / (latent_window_size * 4)), 1))``
        (Python's ``round``: halves go to the even number), so 5 s at 30 fps, 36 frames per section,
        are 4 sections (4.8 s), not 5 (6 s).
        """
        return int(max(round(seconds * self.fps / self.section_frames), 1))


@dataclass
class SamplingSpec:
    sampler: str = "euler"
    steps: int = 8
    #: timestep shift; left out = the backbone's own schedule (FramePack-F1: its dynamic shift from
    #: the section's token count, 7 at 480x832; the toy: 1)
    shift: float | None = None
    guidance: float = 1.0  # distilled guidance (embedded in the model)
    cfg: float = 1.0  # real classifier-free guidance (two passes when > 1)
    negative_prompt: str = ""
    #: step caching (diffusers' First Block Cache): off, fast or faster; thresholds per backbone in ``step_cache``
    cache: str = "off"


@dataclass
class HistorySpec:
    mode: str = "encoder"
    # Raw latents of a sliding window (add-on) for backbones without a context of their own (the toy);
    # FramePack-F1 reads its own multi-scale context (the last 19 latents) and ignores this.
    window_frames: int = 0
    # History guidance (mode "encoder"): every DiT call also runs without the history embedding (the
    # add-on window alone, which Stage II trains with the same weights) and the prediction moves
    # ``guidance`` times as far from that one: 1 = off, > 1 leans harder on memory. Costs a second pass.
    guidance: float = 1.0
    # Bounded history (mode "encoder"): at most this many history tokens; when they would pass it, two
    # neighbouring token groups are re-encoded as one from their time-averaged latents while recent
    # history keeps full detail. 0 = no cap: the tokens grow with the video.
    max_tokens: int = 0
    # Which groups the cap merges: "similar" (the neighbours whose latents differ least: held views merge,
    # a view seen once keeps full detail however old) or "oldest" (detail falls with age).
    merge: str = "similar"


@dataclass
class HardwareProfile:
    device: str = "cpu"
    dtype: str = "float32"
    device_budget_gib: float = 0.0  # 0 = whatever is free
    host_budget_gib: float = 0.0
    attention: str = "auto"  # DiT attention kernel: auto = sage > flash > xformers > native (SDPA), or a name
    weights_dtype: str = ""  # DiT weight storage: "" = dtype, or float8_e4m3fn / float8_e5m2 (compute stays dtype)
    compile: bool = False  # torch.compile each DiT block (regional compilation)


@dataclass
class Preset:
    name: str
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    video: VideoSpec = field(default_factory=VideoSpec)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    history: HistorySpec = field(default_factory=HistorySpec)
    hardware: HardwareProfile = field(default_factory=HardwareProfile)
    path: str = ""
    #: LoRAs every request of this preset gets unless it names its own: ``"FILE[:WEIGHT]"`` (see ``lora/``)
    loras: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(where: str, value: Any, typ: Any) -> Any:
    """Check one TOML value against a dataclass field type."""
    origin = getattr(typ, "__origin__", None)
    options = [t for t in getattr(typ, "__args__", ()) if t is not type(None)]
    if origin is None and type(None) in getattr(typ, "__args__", ()) and len(options) == 1:  # ``X | None``
        return None if value is None else _coerce(where, value, options[0])
    if typ is bool:
        if not isinstance(value, bool):
            raise InputError(where, f"must be true or false (got {value!r})")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(where, f"must be an integer (got {value!r})")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(where, f"must be a finite number (got {value!r})")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise InputError(where, f"must be text (got {value!r})")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise InputError(where, f"must be a list (got {value!r})")
        return [_coerce(f"{where}[{i}]", v, typ.__args__[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(where, f"must be a table (got {value!r})")
        return value
    return value


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(where, f"must be a table (got {data!r})")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}" if where else unknown[0], f"unknown field (known: {', '.join(sorted(names))})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        typ = hints[name]
        key = f"{where}.{name}" if where else name
        if not dataclasses.is_dataclass(typ):
            kwargs[name] = _coerce(key, value, typ)
            continue
        built = build_dataclass(typ, value, key)
        factory = fields[name].default_factory
        default = factory() if factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            # a table given in part keeps the field's own default for the rest (an eval config's data is
            # split = "eval" by default: a --data.num_videos override must not bring the class's "train" back)
            built = dataclasses.replace(default, **{k: getattr(built, k) for k in value})
        kwargs[name] = built
    return cls(**kwargs)


def _check(preset: Preset) -> None:
    """Semantic checks that types alone can't express."""
    v, s, h, m = preset.video, preset.sampling, preset.history, preset.model
    positive = {"video.width": v.width, "video.height": v.height, "video.fps": v.fps,
                "video.section_frames": v.section_frames, "video.max_seconds": v.max_seconds,
                "video.display_scale": v.display_scale, "sampling.steps": s.steps}
    for key, val in positive.items():
        if val <= 0:
            raise InputError(key, f"must be positive (got {val!r})")
    if v.width % 2 or v.height % 2:
        raise InputError("video.width" if v.width % 2 else "video.height", "must be even (H.264 needs it)")
    if s.sampler not in ("euler", "unipc"):
        raise InputError("sampling.sampler", f"must be 'euler' or 'unipc' (got {s.sampler!r})")
    if (s.shift is not None and s.shift <= 0) or s.cfg < 1 or s.guidance < 0:
        raise InputError("sampling", "shift must be > 0, cfg >= 1 and guidance >= 0")
    check_cache(s.cache, "sampling.cache")
    if h.mode not in HISTORY_MODES:
        raise InputError("history.mode", f"must be one of {', '.join(HISTORY_MODES)} (got {h.mode!r})")
    if h.window_frames < 0:
        raise InputError("history.window_frames", f"must be >= 0 (got {h.window_frames})")
    if not (math.isfinite(h.guidance) and 0 <= h.guidance <= MAX_HISTORY_GUIDANCE):
        raise InputError("history.guidance", f"must be a number in [0, {MAX_HISTORY_GUIDANCE:g}] (got {h.guidance!r})")
    if h.max_tokens < 0:
        raise InputError("history.max_tokens", f"must be >= 0 (0 = no cap; got {h.max_tokens})")
    if h.merge not in HISTORY_MERGES:
        raise InputError("history.merge", f"must be one of {', '.join(HISTORY_MERGES)} (got {h.merge!r})")
    if m.backbone not in ("toy", "hunyuan_framepack"):
        raise InputError("model.backbone", f"must be 'toy' or 'hunyuan_framepack' (got {m.backbone!r})")
    if m.loop not in LOOPS:
        raise InputError("model.loop", f"must be one of {', '.join(LOOPS)} (got {m.loop!r})")
    if m.loop == "inverted" and m.backbone != "hunyuan_framepack":
        raise InputError("model.loop", f"'inverted' is FramePack's original model's loop (hunyuan_framepack); "
                                       f"the {m.backbone} backbone generates forward")
    if v.buckets is None:
        v.buckets = m.backbone == "hunyuan_framepack"
    if v.buckets and m.backbone == "toy":
        raise InputError("video.buckets", "the toy backbone draws a fixed square view of its world; set it to false")
    if v.buckets and (v.width % 16 or v.height % 16):
        raise InputError("video.width" if v.width % 16 else "video.height",
                         "must be a multiple of 16 with resolution buckets (the VAE's 8 pixels x the DiT's 2x2 patch)")
    for key, rate in [("model.encoder_rate", m.encoder_rate)] + [("model.encoder_rates", r) for r in m.encoder_rates]:
        try:
            parse_rate(rate)
        except ValueError as e:
            raise InputError(key, str(e)) from None
    for i, text in enumerate(preset.loras):
        parse_arg(text, f"loras[{i}]")
    if preset.hardware.dtype not in DTYPE_NAMES:
        raise InputError("hardware.dtype", f"must be float32, bfloat16 or float16 (got {preset.hardware.dtype!r})")
    if preset.hardware.weights_dtype not in WEIGHT_STORAGE:
        raise InputError("hardware.weights_dtype", f"must be \"\", float8_e4m3fn or float8_e5m2 "
                                                   f"(got {preset.hardware.weights_dtype!r})")
    if not re.fullmatch(r"[a-z0-9_]+", preset.hardware.attention):
        raise InputError("hardware.attention", f"must be auto or a kernel name (got {preset.hardware.attention!r})")


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """Load and validate a preset by name (``presets/NAME.toml``) or path."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        p = PRESET_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        if str(name_or_path).endswith(".toml"):
            raise InputError("--preset", f"no such preset file: {str(name_or_path)!r}")
        raise InputError("--preset", f"unknown preset {str(name_or_path)!r} (available: {', '.join(available_presets())})")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError("--preset", f"{p.name} is not valid TOML: {e}") from None
    except OSError as e:  # unreadable (permissions, a FIFO, ...)
        raise InputError("--preset", f"{p.name} could not be read: {e.strerror or e}") from None
    data.setdefault("name", p.stem)
    try:
        preset = build_dataclass(Preset, data, "")
        _check(preset)
    except InputError as e:
        raise InputError("--preset", f"{p.name}: {e.field} {e.message}") from None
    preset.path = str(p)
    return preset


def preset_from_dict(data: dict[str, Any], where: str = "preset") -> Preset:
    """A preset saved with :meth:`Preset.to_dict` (job folders keep the one a job started with)."""
    try:
        preset = build_dataclass(Preset, dict(data), "")
        _check(preset)
    except InputError as e:
        raise InputError(where, f"{e.field} {e.message}") from None
    except TypeError as e:  # a required field (the name) is missing
        raise InputError(where, str(e)) from None
    return preset
