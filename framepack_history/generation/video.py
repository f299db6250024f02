"""Reading user media, writing per-section segments, assembling the final mp4.

Every finished section is written once, as its own H.264 segment; the final
video is the concatenation of the segments with ``-c copy``: nothing that
was encoded is ever encoded again.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from framepack_history.errors import InputError
from framepack_history.fsio import atomic_path, atomic_write_json


def _ffmpeg():
    """imageio-ffmpeg, imported on first use: reading images and running the model need no ffmpeg."""
    import imageio_ffmpeg  # imageio_ffmpeg: only to find ffmpeg when media is read

    return imageio_ffmpeg


MAX_IMAGE_PIXELS = 50_000_000  # refuse decompression bombs before decoding
MIN_SIDE = 8


def fit_frame(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover ``width x height`` and centre-crop (no distortion), as FramePack does.

    FramePack's ``resize_and_center_crop`` (diffusers_helper/utils.py): the scale that covers
    the target, each side rounded, a LANCZOS resize, then a crop box centred at half-pixel
    coordinates (Pillow rounds them). Same calls in the same order, so the same pixels.
    """
    if img.size == (width, height):
        return img
    scale = max(width / img.width, height / img.height)
    resized = img.resize((int(round(img.width * scale)), int(round(img.height * scale))), Image.Resampling.LANCZOS)
    rw, rh = resized.size
    return resized.crop(((rw - width) / 2, (rh - height) / 2, (rw + width) / 2, (rh + height) / 2))


def read_image(path: str | Path, width: int | None, height: int | None, field: str = "--image") -> np.ndarray:
    """A start image as ``uint8 [H, W, 3]`` at ``width x height`` (None: its own size, upright); clear errors otherwise."""
    p = Path(path)
    if not p.is_file():
        raise InputError(field, f"no such file: {str(path)!r}")
    if p.stat().st_size == 0:
        raise InputError(field, f"{p.name} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # Pillow warns about large images; the size check below is the answer
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
    except Image.DecompressionBombError:
        raise InputError(field, f"{p.name} is far too large (over {Image.MAX_IMAGE_PIXELS * 2 // 1_000_000} megapixels); "
                                f"the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(field, f"{p.name} is not a readable image (not PNG, JPEG, WebP, BMP, TIFF, GIF or another format Pillow knows)") from None
    try:
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise InputError(field, f"{p.name} is {img.width}x{img.height}; the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
            if min(img.width, img.height) < MIN_SIDE:
                raise InputError(field, f"{p.name} is {img.width}x{img.height}; each side needs at least {MIN_SIDE} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit, 32-bit and float grey: down to 8 bits
                img = Image.fromarray(_grey_to_uint8(np.asarray(img), img.mode))
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(bg, img)
            img = img.convert("RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        why = "truncated" if "truncated" in str(e) else "corrupt"
        raise InputError(field, f"{p.name} is not a readable image: the file is {why} ({type(e).__name__})") from None
    return np.asarray(img if width is None or height is None else fit_frame(img, width, height), dtype=np.uint8)


def _grey_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Full-range 8 bits from wide grey modes (a dark 16-bit image stays dark)."""
    arr = arr.astype(np.float64)
    if mode == "F":  # float images are [0, 1] by convention, else 8-bit-like values
        top = 1.0 if np.nanmax(arr, initial=0) <= 1.0 else 255.0
    elif mode.startswith("I;16") or arr.max(initial=0) > 255:
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
    else:
        top = 255.0
    return (np.nan_to_num(np.clip(arr / top, 0, 1)) * 255).round().astype(np.uint8)


def _ffmpeg_streams(path: Path) -> str:
    """What ffmpeg says about a file's container and streams (its stderr for ``-i path``)."""
    cmd = [_ffmpeg().get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    try:
        # ffmpeg exits 1 here by design ("no output file"): what it printed about the input is the answer
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return "timed out"


def probe_video(path: str | Path, field: str = "--continue-video") -> dict:
    """Container facts from ffmpeg and one decoded frame; a clear :class:`InputError` otherwise.

    Tells apart: not a video at all (or truncated), no video stream (audio
    only), a codec ffmpeg cannot decode, and a stream without decodable frames.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(field, f"no such file: {str(path)!r}")
    if p.stat().st_size == 0:
        raise InputError(field, f"{p.name} is empty (0 bytes)")
    info = _ffmpeg_streams(p)
    streams = re.findall(r"Stream #\d+:\d+.*?: (Video|Audio|Subtitle|Data|Attachment): ?(\S*)", info)
    videos = [codec.rstrip(",") for kind, codec in streams if kind == "Video"]
    if "Error opening input" in info or info == "timed out" or "Input #0" not in info:
        raise InputError(field, f"{p.name} is not a video file ffmpeg can read (wrong format, truncated or corrupt)")
    if re.search(r"Input #0, (\w+_pipe|image2)", info):
        raise InputError(field, f"{p.name} is a still image, not a video; give it as the start image instead")
    if not streams:
        raise InputError(field, f"{p.name} has no video stream (the container is empty)")
    if not videos:
        kinds = sorted({kind.lower() for kind, _ in streams})
        raise InputError(field, f"{p.name} has no video stream (only {' and '.join(kinds)})")
    if all(codec in ("none", "") for codec in videos) or "no decoder found" in info or "unknown codec" in info:
        fourcc = re.search(r"Video: \S+ \((\w+) /", info)
        raise InputError(field, f"{p.name} uses a video codec ffmpeg cannot decode{f' ({fourcc.group(1)})' if fourcc else ''}")
    try:
        reader = _ffmpeg().read_frames(str(p))
        meta = reader.__next__()
        next(reader)  # one decoded frame: a stream of zero (or only corrupt) frames fails here
        reader.close()
    except (OSError, RuntimeError, StopIteration, ValueError):
        raise InputError(field, f"{p.name} has no decodable video frames (the video stream is empty or corrupt)") from None
    w, h = meta.get("size", (0, 0))
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(field, f"{p.name} is {w}x{h}; the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels per frame")
    return meta


def video_size(path: str | Path, field: str = "--continue-video") -> tuple[int, int]:
    """``(width, height)`` of a video's frames as decoded (rotation applied); a clear error if unknown."""
    size = probe_video(path, field).get("size")
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size)):
        raise InputError(field, f"{Path(path).name}: ffmpeg reports no usable frame size (got {size!r})")
    return int(size[0]), int(size[1])


#: how much of an uploaded video is read: its last seconds become the history a continuation starts from
MAX_CONTINUE_SECONDS = 30.0


def read_video(path: str | Path, width: int, height: int, fps: int, max_frames: int, field: str = "--continue-video") -> np.ndarray:
    """Frames of an uploaded video as ``uint8 [F, H, W, 3]``, resampled to ``fps``.

    Keeps the *last* ``max_frames`` frames: continuing a video needs its end.
    """
    probe_video(path, field)
    frames: list[np.ndarray] = []
    try:
        gen = _ffmpeg().read_frames(str(path), output_params=["-vf", f"fps={fps}"])
        meta = next(gen)
        w, h = meta["size"]
        for raw in gen:
            frames.append(np.frombuffer(raw, np.uint8).reshape(h, w, 3))
            if len(frames) > 4 * max_frames:
                frames = frames[-max_frames:]
    except (OSError, RuntimeError, ValueError):
        if not frames:  # a stream that breaks part-way still gives the frames before the break
            raise InputError(field, f"{Path(path).name} could not be decoded (the video stream is corrupt)") from None
    if not frames:
        raise InputError(field, f"{Path(path).name} has no decodable video frames")
    frames = frames[-max_frames:]
    return np.stack([np.asarray(fit_frame(Image.fromarray(f), width, height)) for f in frames])


def video_frames(path: str | Path, fps: int, max_frames: int, field: str = "--continue-video") -> int:
    """About how many frames :func:`read_video` gives, from the container's duration (no decoding).

    For planning before the frames are read, and again on a resume (the same file, the same answer);
    ``max_frames`` when the container states no duration.
    """
    duration = probe_video(path, field).get("duration") or 0
    if not duration or not math.isfinite(duration):
        return max_frames
    return max(1, min(max_frames, math.ceil(duration * fps - 1e-6)))


def write_segment(frames: np.ndarray, path: str | Path, fps: int, quality: int = 18) -> Path:
    """Encode ``uint8 [F, H, W, 3]`` frames as one H.264 mp4 (atomically)."""
    path = Path(path)
    h, w = frames.shape[1:3]
    with atomic_path(path, keep_suffix=True) as tmp:  # fsynced: checkpoints name finished segments
        writer = _ffmpeg().write_frames(
            str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
            output_params=["-crf", str(quality), "-g", str(max(1, len(frames))), "-movflags", "+faststart"],
        )
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()
    return path


def concat_segments(segments: list[Path], out: str | Path) -> Path:
    """Join segments without re-encoding (ffmpeg concat demuxer, ``-c copy``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as lst:
        for s in segments:
            lst.write(f"file '{Path(s).resolve().as_posix()}'\n")
    try:
        with atomic_path(out, keep_suffix=True) as tmp:
            cmd = [_ffmpeg().get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
                   "-i", lst.name, "-c", "copy", "-movflags", "+faststart", str(tmp)]
            subprocess.run(cmd, check=True, capture_output=True)
    finally:
        Path(lst.name).unlink(missing_ok=True)
    return out


def count_frames(path: str | Path) -> int:
    """Decoded frame count of a video file (used by tests and checks)."""
    return _ffmpeg().count_frames_and_secs(str(path))[0]


def write_json(data: dict, path: str | Path) -> Path:
    """Write JSON atomically (temp file, fsync, rename)."""
    return atomic_write_json(path, data)
