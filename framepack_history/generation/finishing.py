"""Finishing a video: loop, join, export, upscale and interpolate (CPU-cheap, no torch).

Each tool is a pure function on ``uint8 [F, H, W, 3]`` frames (:func:`loop`, :func:`upscale`,
:func:`interpolate`) or on files (:func:`join`, :func:`export`), plus :func:`finish`, which runs
one tool from input files to an output file with progress and cancel (the worker's tool jobs
and the CLI both call it). :func:`check` refuses bad settings and inputs before anything runs,
with an :class:`InputError` naming the field.

Upscaling is nearest or bicubic and interpolation a linear blend of neighbours by default: cheap
enough for the toy on a CPU. The learned methods, ``esrgan`` (an ESRGAN-family upscaler) and
``rife``, take a ``model`` (a known name or a ``.safetensors`` file): :func:`check_model` reads its
header here without torch (:mod:`framepack_history.hub.finishing_weights`), and :func:`finish` runs
it through :mod:`.learned`, imported only then, on the device it is given.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from framepack_history.errors import InputError
from framepack_history.fsio import atomic_path, file_sha256
from framepack_history.generation.video import MAX_IMAGE_PIXELS, _ffmpeg, _ffmpeg_streams, probe_video
from framepack_history.hub.finishing_weights import DEFAULT_MODEL, PICKLES, ModelInfo, describe, resolve

TOOLS = ("loop", "join", "export", "upscale", "interpolate")
#: each tool's settings (the CLI's flags and the API's keys)
SETTINGS = {"loop": ("mode", "fade_frames"), "join": (), "export": ("format", "quality"),
            "upscale": ("scale", "method", "model"), "interpolate": ("factor", "method", "model")}
LOOP_MODES = ("pingpong", "crossfade")
UPSCALE_METHODS = ("nearest", "bicubic", "esrgan")
INTERPOLATE_METHODS = ("blend", "rife")
#: the learned methods and the task their model must do
LEARNED = {"esrgan": "upscale", "rife": "interpolate"}
SCALES = (2, 4)
FACTORS = (2, 4)
#: what a loop holds in memory at once (it plays the frames backwards or blends the end with the start)
MAX_LOOP_BYTES = 2 * 1024**3
#: the H.264 quality of tool outputs (as each section's segment: visually lossless)
TOOL_CRF = 18

#: a progress callback: ``(frames done, frames in all)``; it raises :class:`~framepack_history.errors.Cancelled` to stop
OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Format:
    """One export format: the ffmpeg encoder, the file suffix, and its quality scale."""

    encoder: str
    suffix: str
    default: int  # quality when none is asked for
    lo: int
    hi: int
    meaning: str  # what the quality number is


FORMATS = {
    "h264": Format("libx264", ".mp4", 18, 0, 51, "CRF, lower is better"),
    "h265": Format("libx265", ".mp4", 23, 0, 51, "CRF, lower is better"),
    "webm": Format("libvpx-vp9", ".webm", 32, 0, 63, "CRF, lower is better"),
    "gif": Format("gif", ".gif", 256, 2, 256, "palette colours"),
}


@dataclass
class Clip:
    """A video in memory: frames and their rate."""

    frames: np.ndarray  # uint8 [F, H, W, 3]
    fps: float


# ------------------------------------------------------------------ checks
def check_upscale(scale: Any, method: Any) -> tuple[int, str]:
    """``(scale, method)`` if offered; otherwise an :class:`InputError` naming ``--scale`` or ``--method``."""
    method = str(method or "nearest")
    if method not in UPSCALE_METHODS:
        suffix = Path(method).suffix.lower()
        offered = f"the methods are {', '.join(UPSCALE_METHODS)}"
        if suffix in PICKLES:
            raise InputError("--method", f"{Path(method).name} is a pickle-based checkpoint, which is never loaded "
                                         f"(safetensors only); {offered}")
        if suffix == ".safetensors":
            raise InputError("--method", f"{Path(method).name} is a weight file: give it as --model, with --method esrgan")
        raise InputError("--method", f"{method!r} is not a method; {offered}")
    try:
        s = int(scale)
    except (TypeError, ValueError):
        raise InputError("--scale", f"must be {' or '.join(map(str, SCALES))} (got {scale!r})") from None
    if s != scale and str(s) != str(scale).strip() or s not in SCALES:
        raise InputError("--scale", f"must be {' or '.join(map(str, SCALES))} (got {scale!r})")
    return s, method


def check_interpolate_method(method: Any) -> str:
    """``blend`` or ``rife``; otherwise an :class:`InputError` naming ``--method``."""
    method = str(method or "blend")
    if method not in INTERPOLATE_METHODS:
        raise InputError("--method", f"{method!r} is not an interpolation method; the methods are "
                                     f"{', '.join(INTERPOLATE_METHODS)}")
    return method


def check_model(method: str, model: Any, scale: int | None = None) -> ModelInfo | None:
    """The weight file a learned ``method`` runs (``model``: a known name or a ``.safetensors`` path; empty: the
    default), read and told apart without torch; ``None`` for a cheap method, which takes no model.

    Refused naming ``--model``: a pickle, a file that is not safetensors, unknown keys, a model for the other
    task; naming ``--scale``: a scale the upscaler does not make.
    """
    given = "" if model is None else str(model).strip()
    if method not in LEARNED:
        if given:
            raise InputError("--model", f"{method} takes no model (a model is for {' or '.join(LEARNED)})")
        return None
    task = LEARNED[method]
    info = describe(resolve(given or DEFAULT_MODEL[task], task), "--model")
    if info.task != task:
        raise InputError("--model", f"{info.path.name} holds a {info.summary()}, a model for {info.task}, not {task}")
    if scale is not None and info.scale != scale:
        raise InputError("--scale", f"{info.path.name} upscales {info.scale}x only (got --scale {scale}); ask for "
                                    f"{info.scale}, or pick a {scale}x model")
    return info


def check_factor(factor: Any) -> int:
    """The interpolation factor if offered (2 or 4); else an :class:`InputError` naming ``--factor``."""
    try:
        f = int(factor)
    except (TypeError, ValueError):
        f = None
    if f is None or f not in FACTORS or f != factor and str(f) != str(factor).strip():
        raise InputError("--factor", f"must be {' or '.join(map(str, FACTORS))} (got {factor!r})")
    return f


def check_loop(mode: Any, fade_frames: Any, frames: int | None = None) -> tuple[str, int]:
    """``(mode, fade_frames)`` if usable (for a clip of ``frames`` frames when known)."""
    if mode not in LOOP_MODES:
        raise InputError("--mode", f"must be {' or '.join(LOOP_MODES)} (got {mode!r})")
    try:
        fade = int(fade_frames)
    except (TypeError, ValueError):
        raise InputError("--fade-frames", f"must be a whole number of frames (got {fade_frames!r})") from None
    if mode == "crossfade" and fade < 1:
        raise InputError("--fade-frames", f"must be at least 1 for a cross-faded loop (got {fade})")
    if frames is not None:
        if frames < 2:
            raise InputError("input", f"a loop needs at least 2 frames (the video has {frames})")
        if mode == "crossfade" and 2 * fade >= frames:
            raise InputError("--fade-frames", f"{fade} is too long for {frames} frames: the fade takes frames from the "
                                              f"start and the end, so it must be under half ({(frames - 1) // 2} at most)")
    return mode, fade


@functools.lru_cache(maxsize=1)
def encoders() -> frozenset[str]:
    """The video encoders of the installed ffmpeg (``ffmpeg -encoders``)."""
    out = subprocess.run([_ffmpeg().get_ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, timeout=60,
                         check=False).stdout.decode("utf-8", "replace")
    return frozenset(m.group(1) for m in re.finditer(r"^ V\S* (\S+)", out, re.M))


def check_export(fmt: Any, quality: Any) -> tuple[str, int]:
    """``(format, quality)`` if this ffmpeg can write it; else an :class:`InputError` naming ``--format`` or ``--quality``."""
    if fmt not in FORMATS:
        raise InputError("--format", f"must be one of {', '.join(FORMATS)} (got {fmt!r})")
    f = FORMATS[fmt]
    if f.encoder not in encoders():
        raise InputError("--format", f"{fmt} needs ffmpeg's {f.encoder} encoder, which the installed ffmpeg "
                                     f"({_ffmpeg().get_ffmpeg_exe()}) lacks")
    if quality is None or quality == "":
        return fmt, f.default
    try:
        q = int(quality)
    except (TypeError, ValueError):
        q = None
    if q is None or q != quality and str(q) != str(quality).strip() or not f.lo <= q <= f.hi:
        raise InputError("--quality", f"for {fmt} must be a whole number in [{f.lo}, {f.hi}] ({f.meaning}; got {quality!r})")
    return fmt, q


# ------------------------------------------------------- tools on frames
def upscale_frame(frame: np.ndarray, scale: int, method: str = "nearest") -> np.ndarray:
    """One ``uint8 [H, W, 3]`` frame ``scale`` times larger each way."""
    if method == "nearest":
        return np.ascontiguousarray(frame.repeat(scale, axis=0).repeat(scale, axis=1))
    h, w = frame.shape[:2]
    return np.asarray(Image.fromarray(frame).resize((w * scale, h * scale), Image.Resampling.BICUBIC))


def upscale(frames: np.ndarray, scale: int = 2, method: str = "nearest") -> np.ndarray:
    """``uint8 [F, H, W, 3]`` frames ``scale`` (2 or 4) times larger each way, nearest or bicubic."""
    scale, method = check_upscale(scale, method)
    if method in LEARNED:
        raise InputError("--method", f"{method} runs a model: use finish() (the worker's job or the CLI)")
    return np.stack([upscale_frame(f, scale, method) for f in frames])


def interpolate_frames(frames: Iterable[np.ndarray], factor: int) -> Iterator[np.ndarray]:
    """Frames with ``factor - 1`` linear blends between neighbours; the last frame is held so the length is kept.

    ``F`` frames at ``fps`` become ``F * factor`` frames at ``factor * fps``: the same duration.
    The blend is rounded to the nearest 8-bit value, so a midpoint is the mean of its neighbours.
    """
    prev = None
    for frame in frames:
        cur = np.asarray(frame, dtype=np.uint8)
        if prev is not None:
            yield prev
            a, b = prev.astype(np.uint32), cur.astype(np.uint32)
            for k in range(1, factor):
                yield ((a * (factor - k) + b * k + factor // 2) // factor).astype(np.uint8)
        prev = cur
    if prev is not None:
        for _ in range(factor):
            yield prev


def interpolate(frames: np.ndarray, factor: int = 2) -> np.ndarray:
    """``F`` frames as ``F * factor``, blends between neighbours (:func:`interpolate_frames`); the fps is ``factor * fps``."""
    return np.stack(list(interpolate_frames(frames, check_factor(factor))))


def loop(frames: np.ndarray, mode: str = "pingpong", fade_frames: int = 8) -> np.ndarray:
    """Frames that play in a seamless loop.

    ``pingpong``: forward then backward, without repeating the last or the first frame at the turns
    (``2F - 2`` frames). ``crossfade``: the last ``fade_frames`` frames fade into the first ones, which
    then open the loop's end (``F - fade_frames`` frames); frame ``i`` of the fade is
    ``(1 - a) * end[i] + a * start[i]`` with ``a = (i + 1) / (fade_frames + 1)``.
    """
    mode, fade = check_loop(mode, fade_frames, len(frames))
    if mode == "pingpong":
        return np.concatenate([frames, frames[-2:0:-1]])
    a = (np.arange(1, fade + 1, dtype=np.float32) / (fade + 1))[:, None, None, None]
    end, start = frames[len(frames) - fade:].astype(np.float32), frames[:fade].astype(np.float32)
    blend = np.clip(np.rint((1 - a) * end + a * start), 0, 255).astype(np.uint8)
    return np.concatenate([frames[fade:len(frames) - fade], blend])


# --------------------------------------------------------------- files
@dataclass
class VideoInfo:
    """What a tool needs to know of an input before it runs."""

    path: Path
    size: tuple[int, int]  # (width, height)
    fps: float
    frames: int  # from the container (an estimate where it states none)
    stream: str  # ffmpeg's description of the video stream, bitrate left out (equal ones concatenate with -c copy)


def inspect_video(path: str | Path, field: str = "input") -> VideoInfo:
    """Size, rate, frame count and stream description of a readable video (:class:`InputError` otherwise)."""
    meta = probe_video(path, field)
    w, h = meta.get("size") or (0, 0)
    fps = float(meta.get("fps") or 0)
    if not fps or not math.isfinite(fps):
        raise InputError(field, f"{Path(path).name}: ffmpeg reports no frame rate")
    n = meta.get("nframes")
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
        n = max(1, round(float(meta.get("duration") or 0) * fps))
    line = re.search(r"Stream #\d+:\d+.*?: Video: (.*)", _ffmpeg_streams(Path(path)))
    stream = re.sub(r",?\s*\d+ kb/s", "", line.group(1)).strip() if line else ""
    return VideoInfo(Path(path), (int(w), int(h)), fps, int(n), stream)


def iter_frames(path: str | Path, field: str = "input") -> Iterator[np.ndarray]:
    """The decoded frames of a video, one ``uint8 [H, W, 3]`` at a time, at its own size and rate."""
    try:
        gen = _ffmpeg().read_frames(str(path))
        w, h = next(gen)["size"]
        for raw in gen:
            yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
    except (OSError, RuntimeError, ValueError):
        raise InputError(field, f"{Path(path).name} could not be decoded (the video stream is corrupt)") from None


def read_clip(path: str | Path, field: str = "input") -> Clip:
    """A whole video in memory (loops need it); refused beyond :data:`MAX_LOOP_BYTES` of frames."""
    info = inspect_video(path, field)
    w, h = info.size
    if info.frames * w * h * 3 > MAX_LOOP_BYTES:
        raise InputError(field, f"{info.path.name} is too long to loop here ({info.frames} frames of {w}x{h}; "
                                f"at most {MAX_LOOP_BYTES // 1024**3} GiB of frames)")
    frames = list(iter_frames(path, field))
    if not frames:
        raise InputError(field, f"{info.path.name} has no decodable video frames")
    return Clip(np.stack(frames), info.fps)


def write_video(frames: Iterable[np.ndarray], path: str | Path, fps: float, total: int = 0,
                on_progress: OnProgress | None = None, quality: int = TOOL_CRF) -> Path:
    """Encode frames as one H.264 mp4 (atomically: a cancel or an error leaves no file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise InputError("input", "no frames to write")
    h, w = first.shape[:2]
    with atomic_path(path, keep_suffix=True) as tmp:
        writer = _ffmpeg().write_frames(
            str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
            output_params=["-crf", str(quality), "-movflags", "+faststart"],
        )
        writer.send(None)
        try:
            done = 0
            for f in _chain(first, it):
                writer.send(np.ascontiguousarray(f))
                done += 1
                if on_progress is not None:
                    on_progress(done, max(total, done))
        finally:
            writer.close()
    return path


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _run_ffmpeg(args: list[str], total: int, on_progress: OnProgress | None) -> None:
    """Run ffmpeg with ``args``, reporting its frame count; a callback's exception stops it and is raised."""
    cmd = [_ffmpeg().get_ffmpeg_exe(), "-y", "-hide_banner", "-nostdin", "-loglevel", "error", "-progress", "pipe:1", *args]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                m = re.match(rb"frame=(\d+)", line)
                if m and on_progress is not None:
                    on_progress(int(m.group(1)), max(total, int(m.group(1))))
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {err.read().decode('utf-8', 'replace').strip()[-500:]}")


def check_join(paths: list[str | Path], field: str = "input") -> list[VideoInfo]:
    """The inputs of a join, each readable and of one size and one frame rate (naming the file that differs)."""
    if len(paths) < 2:
        raise InputError(field, f"join needs at least two videos (got {len(paths)})")
    infos = [inspect_video(p, field) for p in paths]
    first = infos[0]
    for info in infos[1:]:
        if info.size != first.size:
            raise InputError(field, f"{info.path.name} is {info.size[0]}x{info.size[1]}, but {first.path.name} is "
                                    f"{first.size[0]}x{first.size[1]}: joined videos must have one size (upscale or "
                                    f"export them to one first)")
        if abs(info.fps - first.fps) > 1e-3:
            raise InputError(field, f"{info.path.name} plays at {info.fps:g} fps, but {first.path.name} at "
                                    f"{first.fps:g} fps: joined videos must have one frame rate (interpolate one first)")
    return infos


def join(paths: list[str | Path], out: str | Path, on_progress: OnProgress | None = None, field: str = "input") -> Path:
    """Videos one after another (video only). Streams described alike are joined with ``-c copy`` (nothing is
    encoded again); otherwise they are decoded and encoded once as H.264."""
    infos = check_join(paths, field)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    total = sum(i.frames for i in infos)
    with atomic_path(out, keep_suffix=True) as tmp:
        if same_streams(infos) and out.suffix.lower() in (".mp4", ".mov", ".mkv"):
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as lst:
                for i in infos:
                    lst.write(f"file '{i.path.resolve().as_posix()}'\n")
            try:
                _run_ffmpeg(["-f", "concat", "-safe", "0", "-i", lst.name, "-map", "0:v", "-c", "copy",
                             "-movflags", "+faststart", str(tmp)], total, on_progress)
            finally:
                Path(lst.name).unlink(missing_ok=True)
        else:
            inputs = [a for i in infos for a in ("-i", str(i.path))]
            chain = "".join(f"[{k}:v]" for k in range(len(infos))) + f"concat=n={len(infos)}:v=1:a=0[v]"
            _run_ffmpeg([*inputs, "-filter_complex", chain, "-map", "[v]", "-c:v", "libx264", "-crf", str(TOOL_CRF),
                         "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(tmp)], total, on_progress)
    return out


def same_streams(infos: list[VideoInfo]) -> bool:
    """Whether every input's video stream is described alike (codec, profile, pixel format, size, rate, time base)."""
    return all(i.stream and i.stream == infos[0].stream for i in infos)


def export(path: str | Path, out: str | Path, fmt: str = "h264", quality: Any = None,
           on_progress: OnProgress | None = None, field: str = "input") -> Path:
    """Encode a video again as ``fmt`` (h264, h265, webm, gif) at ``quality`` (see :data:`FORMATS`)."""
    fmt, q = check_export(fmt, quality)
    info = inspect_video(path, field)
    out = Path(out)
    if out.suffix.lower() != FORMATS[fmt].suffix:
        raise InputError("--out", f"{out.name}: a {fmt} export is a {FORMATS[fmt].suffix} file")
    out.parent.mkdir(parents=True, exist_ok=True)
    enc = FORMATS[fmt].encoder
    even = "scale=trunc(iw/2)*2:trunc(ih/2)*2"  # 4:2:0 needs even sides
    codec = {
        "h264": ["-vf", even, "-c:v", enc, "-crf", str(q), "-pix_fmt", "yuv420p", "-movflags", "+faststart"],
        "h265": ["-vf", even, "-c:v", enc, "-crf", str(q), "-pix_fmt", "yuv420p", "-tag:v", "hvc1",
                 "-x265-params", "log-level=error", "-movflags", "+faststart"],
        "webm": ["-vf", even, "-c:v", enc, "-crf", str(q), "-b:v", "0", "-pix_fmt", "yuv420p"],
        "gif": ["-filter_complex", f"[0:v]split[a][b];[a]palettegen=max_colors={q}[p];[b][p]paletteuse", "-c:v", enc],
    }[fmt]
    with atomic_path(out, keep_suffix=True) as tmp:
        _run_ffmpeg(["-i", str(info.path), "-an", *codec, str(tmp)], info.frames, on_progress)
    return out


# ------------------------------------------------------------ one tool
def check(tool: str, inputs: list[str | Path], settings: dict[str, Any], field: str = "input") -> dict[str, Any]:
    """The settings of ``tool`` on ``inputs``, normalised and complete, or an :class:`InputError` naming the field.

    Reads the inputs' headers (and one frame each); decodes nothing else. What :func:`finish` runs with.
    """
    if tool not in TOOLS:
        raise InputError("tool", f"must be one of {', '.join(TOOLS)} (got {tool!r})")
    settings = {k: v for k, v in settings.items() if v is not None}  # None: the default
    if unknown := sorted(set(settings) - set(SETTINGS[tool])):
        raise InputError("settings", f"{tool} has no setting {', '.join(map(repr, unknown))} "
                                     f"(it takes {', '.join(SETTINGS[tool]) or 'none'})")
    if tool == "join":
        check_join(list(inputs), field)
        return {}
    if len(inputs) != 1:
        raise InputError(field, f"{tool} takes one video (got {len(inputs)})")
    info = inspect_video(inputs[0], field)
    if tool == "loop":
        mode, fade = check_loop(settings.get("mode", "pingpong"), settings.get("fade_frames", 8), info.frames)
        return {"mode": mode, "fade_frames": fade} if mode == "crossfade" else {"mode": mode}
    if tool == "export":
        fmt, q = check_export(settings.get("format", "h264"), settings.get("quality"))
        return {"format": fmt, "quality": q}
    if tool == "upscale":
        given = settings.get("scale")  # left out: 2, or a model's own scale
        scale, method = check_upscale(2 if given is None else given, settings.get("method", "nearest"))
        if given is None and method in LEARNED:
            model = check_model(method, settings.get("model"))
            scale = model.scale
            if scale not in SCALES:
                raise InputError("--model", f"{model.path.name} upscales {scale}x; only {' and '.join(map(str, SCALES))}x "
                                            "are offered")
        else:
            model = check_model(method, settings.get("model"), scale)
        w, h = info.size
        if w * h * scale * scale > MAX_IMAGE_PIXELS:
            raise InputError("--scale", f"{info.path.name} is {w}x{h}; {scale}x would be {w * scale}x{h * scale}, over the "
                                        f"{MAX_IMAGE_PIXELS // 1_000_000} megapixel limit")
        return {"scale": scale, "method": method, **_model_setting(settings, model)}
    factor = check_factor(settings.get("factor", 2))
    method = check_interpolate_method(settings.get("method", "blend"))
    model = check_model(method, settings.get("model"))
    return {"factor": factor, "method": method, **_model_setting(settings, model)}


def _model_setting(settings: dict[str, Any], info: ModelInfo | None) -> dict[str, str]:
    """The ``model`` a learned method runs, as asked (a name or a path; the default's name when none was)."""
    if info is None:
        return {}
    given = str(settings.get("model") or "").strip()
    return {"model": given or DEFAULT_MODEL[info.task]}



def output_suffix(tool: str, settings: dict[str, Any]) -> str:
    """The file suffix a tool writes (an export's format's; otherwise ``.mp4``)."""
    return FORMATS[settings["format"]].suffix if tool == "export" else ".mp4"


def finish(tool: str, inputs: list[str | Path], out: str | Path, settings: dict[str, Any],
           on_progress: OnProgress | None = None, field: str = "input", device: str | None = None,
           budget_gib: float = 0.0) -> dict[str, Any]:
    """Run ``tool`` on ``inputs`` into ``out``; returns what the sidecar records (settings, sizes, fps, frames,
    and for a learned method the model: its file, SHA-256 and architecture).

    ``settings`` are checked first (:func:`check`); the inputs are never written to. A learned method runs on
    ``device`` (None: CUDA when there is one) in tiles sized to ``budget_gib`` (0: from the free memory).
    """
    settings = check(tool, inputs, settings, field)
    out = Path(out)
    model = check_model(settings.get("method", ""), settings.get("model"), settings.get("scale"))
    if tool == "join":
        join(inputs, out, on_progress, field)
    elif tool == "export":
        export(inputs[0], out, settings["format"], settings["quality"], on_progress, field)
    else:
        info = inspect_video(inputs[0], field)
        if tool == "loop":
            clip = read_clip(inputs[0], field)
            frames = loop(clip.frames, settings["mode"], settings.get("fade_frames", 0))
            write_video(frames, out, clip.fps, len(frames), on_progress)
        elif tool == "upscale":
            s, m = settings["scale"], settings["method"]
            if model is not None:
                from framepack_history.generation import learned  # torch: only when a model runs

                frames = learned.upscale_frames(iter_frames(inputs[0], field), model, device, budget_gib)
            else:
                frames = (upscale_frame(f, s, m) for f in iter_frames(inputs[0], field))
            write_video(frames, out, info.fps, info.frames, on_progress)
        else:
            k = settings["factor"]
            if model is not None:
                from framepack_history.generation import learned  # torch: only when a model runs

                frames = learned.interpolate_frames(iter_frames(inputs[0], field), model, k, device)
            else:
                frames = interpolate_frames(iter_frames(inputs[0], field), k)
            write_video(frames, out, info.fps * k, info.frames * k, on_progress)
    result = {"tool": tool, "settings": settings, "inputs": [str(Path(p)) for p in inputs], "output": str(out)}
    if model is not None:
        result["model"] = {"name": settings["model"], "file": str(model.path), "sha256": file_sha256(model.path),
                           "architecture": model.summary()}
    if out.suffix.lower() != ".gif":
        made = inspect_video(out, "--out")
        result.update(size=list(made.size), fps=made.fps, frames=made.frames)
    return result
