"""``prepare-data``: a folder of videos turned into what training reads, once.

Every video (mp4, webm, mov, mkv) with its caption (``name.txt``: plain text
or a timestamped storyboard) becomes clips of the preset's geometry, each
stored as its VAE latents plus, for image-to-video backbones, the start-image
conditioning of its first frame (SigLIP embedding and start latent). The text
embeddings of every distinct prompt (each storyboard entry, and the empty
prompt that caption dropout uses) go into one table. Training on the result
(``[data] kind = "prepared"``) then needs no VAE, text or image encoder.

The output folder::

    manifest.json              settings fingerprint; per source file: its fingerprint, clips, seconds, shard, error
    clips/NAME-HASH.safetensors   latents.J, cond.J.KEY per clip J; metadata: captions, starts, size
    texts.safetensors          I.KEY per prompt I; metadata: prompts

Clips are ``--clip-seconds`` long, rounded to whole sections (a start frame
plus N sections, the layout generation uses), cut one after another from the
video resampled to the preset's frame rate; a video shorter than one clip
gives one clip of as many whole sections as it holds. Frames are streamed from
ffmpeg, so a long video never sits in memory whole, and the VAE runs with
tiling. Each finished file is recorded in the manifest, so an interrupted run
resumes where it stopped; a file that cannot be read is named, counted and
skipped.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framepack_history.backbones.base import Backbone
from framepack_history.config.presets import Preset, load_preset
from framepack_history.config.storyboard import parse_storyboard
from framepack_history.device import torch_dtype
from framepack_history.errors import InputError
from framepack_history.fsio import atomic_save_tensors, atomic_write_json
from framepack_history.generation.buckets import choose_size
from framepack_history.generation.loading import load_backbone
from framepack_history.generation.video import fit_frame, probe_video
from framepack_history.training.data import first_latent_key

#: what counts as a video in the folder
PREPARE_EXTS = (".mp4", ".webm", ".mov", ".mkv")
MANIFEST = "manifest.json"
TEXTS = "texts.safetensors"
FORMAT = 1


@dataclass
class PrepareResult:
    """What a run did: counts for the summary, and the files it could not read."""

    out: Path
    files: int = 0  # videos found
    prepared: int = 0  # prepared in this run
    resumed: int = 0  # already prepared (skipped)
    clips: int = 0  # clips in the folder, all files
    seconds: float = 0.0
    bytes: int = 0
    prompts: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # file -> why

    def summary(self) -> str:
        length = f"{self.seconds / 3600:.2f} h" if self.seconds >= 360 else f"{self.seconds:.1f} s"
        lines = [(f"prepared {self.out}: {self.clips} clips, {length} of video, "
                  f"{self.prompts} prompts, {self.bytes / 1e6:.1f} MB "
                  f"({self.prepared} files prepared now, {self.resumed} already done, {len(self.skipped)} skipped)")]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


# ------------------------------------------------------------------ helpers
def clip_frames(backbone: Backbone, preset: Preset, clip_seconds: float) -> tuple[int, int]:
    """``(pixel frames per clip, sections per clip)``: a start frame plus whole sections, as generation lays them out."""
    v, geo = preset.video, backbone.geometry
    sections = max(1, round(clip_seconds * v.fps / v.section_frames))
    per_section = geo.latent_frames(v.section_frames)
    return geo.pixel_frames(1 + sections * per_section), sections


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size and modification time of the video, and the caption's digest: a change of either prepares the file again."""
    st = path.stat()
    side = path.with_suffix(".txt")
    caption = side.read_bytes() if side.is_file() else b""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "caption_sha1": hashlib.sha1(caption).hexdigest()}


def read_caption(path: Path) -> str:
    side = path.with_suffix(".txt")
    return side.read_text(encoding="utf-8").strip() if side.is_file() else ""


def storyboard_entries(caption: str) -> list[tuple[float, str]]:
    """The caption's entries ``(start s, text)``; a caption that is not a valid storyboard is one plain entry.

    Training reads captions with ``caption_at``, which treats a malformed
    storyboard as plain text too, so the prompts prepared are the ones it asks for.
    """
    try:
        return [(float(e[0]), str(e[1])) for e in parse_storyboard(caption)]
    except InputError:
        return [(0.0, caption)]


def clip_caption(entries: list[tuple[float, str]], start: float, end: float) -> str:
    """The storyboard of ``[start, end)`` re-timed to the clip (the entry in force at ``start`` at 0 s)."""
    live = [(max(0.0, t - start), text) for t, text in entries if t < end]
    first = max((i for i, (t, _) in enumerate(entries) if t <= start), default=0)
    live = live[first:] if live else [(0.0, "")]
    if len(live) == 1:
        return live[0][1]
    return "; ".join(f"{t:g}s: {text}" for t, text in live)


def clip_prompts(caption: str) -> list[str]:
    """Every prompt ``caption_at`` can give for this clip's caption."""
    return [text for _, text in storyboard_entries(caption)]


class FrameStream:
    """The decoded frames of a video resampled to ``fps``, one ``uint8 [H, W, 3]`` at a time.

    A stream that breaks part-way ends there (the frames before the break are
    kept, as continuing a video does); ``broken`` then says why.
    """

    def __init__(self, path: Path, fps: int) -> None:
        import imageio_ffmpeg  # imageio_ffmpeg: only to find ffmpeg when media is read

        self.gen = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", f"fps={fps}"])
        meta = next(self.gen)
        self.size: tuple[int, int] = (int(meta["size"][0]), int(meta["size"][1]))
        self.broken = ""

    def __iter__(self) -> Iterator[np.ndarray]:
        w, h = self.size
        try:
            for raw in self.gen:
                yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
        except (OSError, RuntimeError, ValueError) as e:
            self.broken = (str(e).splitlines() or [type(e).__name__])[0][:120]
        finally:
            self.gen.close()


def clips_of(frames: Iterator[np.ndarray], size: tuple[int, int], length: int, section: int,
             first: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start frame, uint8 [F, H, W, 3])`` clips of ``length`` frames, fitted to ``size``; at most one clip in memory.

    A video shorter than one clip gives one clip of ``first`` + whole ``section`` frames, if it holds any.
    """
    from PIL import Image  # PIL: only when an image is read or written

    buf: list[np.ndarray] = []
    start = 0
    for f in frames:
        buf.append(np.asarray(fit_frame(Image.fromarray(f), *size)))
        if len(buf) == length:
            yield start, np.stack(buf)
            start, buf = start + length, []
    if start == 0 and len(buf) >= first + section:
        keep = first + (len(buf) - first) // section * section
        yield 0, np.stack(buf[:keep])


def to_pixels(clip: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> ``[1, 3, F, H, W]`` in ``[-1, 1]``."""
    return torch.from_numpy(clip).permute(3, 0, 1, 2)[None].to(dtype).div(127.5).sub(1)


def shard_name(rel: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(rel).stem)[:48] or "video"
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}.safetensors"


# ------------------------------------------------------------------ models
def load_for_preparing(preset: Preset, device: str, dtype: str) -> Backbone:
    """The preset's backbone with its encoders usable and, for real weights, no DiT loaded.

    Real weights load with ``offload``: the DiT stays on ``meta`` (preparing
    never denoises), the text and image encoders stay unloaded until
    :func:`materialize` asks for them, and the VAE moves to ``device``.
    """
    spec = preset.model
    if spec.backbone == "hunyuan_framepack" and spec.weights:
        bb = load_backbone(spec, device, dtype, offload=True)
        bb.vae.to(bb.device)
        return bb
    return load_backbone(spec, device, dtype)


def materialize(bb: Backbone, name: str) -> None:
    """Load a component an offloaded backbone left as a loader (no-op when it is already there)."""
    loaders = getattr(bb, "loaders", {})
    if getattr(bb, name, None) is None and name in loaders:
        setattr(bb, name, loaders.pop(name)())


def release(bb: Backbone, names: tuple[str, ...]) -> None:
    """Drop components no longer needed and give their memory back."""
    for name in names:
        if getattr(bb, name, None) is not None:
            setattr(bb, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def uses_image(bb: Backbone) -> bool:
    """Image-to-video backbones condition every section on the start image (FramePack-F1: SigLIP + start latent)."""
    return type(bb).encode_image is not Backbone.encode_image and (
        getattr(bb, "image_encoder", None) is not None or "image_encoder" in getattr(bb, "loaders", {}))


# ------------------------------------------------------------------ the run
def settings_fingerprint(preset: Preset, bb: Backbone, frames: int, dtype: str) -> dict[str, Any]:
    """What the clips depend on besides the source files; a folder made with other settings is refused."""
    vae = getattr(bb, "vae", None)
    return {"format": FORMAT, "backbone": bb.name, "weights": preset.model.weights,
            "vae": {k: v for k, v in dict(getattr(vae, "config", {}) or {}).items() if not str(k).startswith("_")},
            "width": preset.video.width, "height": preset.video.height, "buckets": bool(preset.video.buckets),
            "fps": preset.video.fps, "section_frames": preset.video.section_frames, "clip_frames": frames,
            "latent_dtype": dtype, "image_condition": uses_image(bb)}


def find_videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in PREPARE_EXTS)


def prepare_folder(videos: str | Path, preset: str | Path, out: str | Path, clip_seconds: float = 20.0,
                   device: str | None = None, dtype: str | None = None, latent_dtype: str = "bfloat16",
                   log: Callable[[str], None] | None = None) -> PrepareResult:
    """Prepare every video under ``videos`` into ``out`` (see the module docstring); returns the counts."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    root = Path(videos)
    if not root.is_dir():
        raise InputError("VIDEOS_DIR", f"no such folder: {str(videos)!r}")
    if not clip_seconds > 0:
        raise InputError("--clip-seconds", f"must be > 0 (got {clip_seconds})")
    if latent_dtype not in ("float32", "float16", "bfloat16"):
        raise InputError("--latent-dtype", f"must be float32, float16 or bfloat16 (got {latent_dtype!r})")
    p = load_preset(preset)
    files = find_videos(root)
    if not files:
        raise InputError("VIDEOS_DIR", f"no videos ({', '.join(PREPARE_EXTS)}) under {root}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clips").mkdir(exist_ok=True)
    bb = load_for_preparing(p, device or p.hardware.device, dtype or p.hardware.dtype)
    if hasattr(bb, "enable_vae_tiling"):
        bb.enable_vae_tiling()  # long high-resolution clips: tiles keep the VAE's memory bounded
    length, sections = clip_frames(bb, p, clip_seconds)
    first = bb.geometry.pixel_frames(1)
    section = bb.geometry.pixel_frames(1 + bb.geometry.latent_frames(p.video.section_frames)) - first
    image = uses_image(bb)
    if image:
        materialize(bb, "image_encoder")
    settings = json.loads(json.dumps(settings_fingerprint(p, bb, length, latent_dtype), default=str))
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"settings": settings, "files": {}}
    if manifest.get("settings") != settings:
        raise InputError("--out", f"{out} was prepared with other settings (preset, clip length or VAE); "
                                  "choose a new folder")
    result = PrepareResult(out, files=len(files))
    log(f"preparing {len(files)} videos from {root} into {out}: clips of {length} frames "
        f"({sections} sections, {length / p.video.fps:.1f} s at {p.video.fps} fps)")
    began, done_s = time.monotonic(), 0.0
    todo = len(files)
    for n, path in enumerate(files, 1):
        rel = path.relative_to(root).as_posix()
        fp = file_fingerprint(path)
        entry = manifest["files"].get(rel)
        if entry and entry.get("fingerprint") == fp and entry.get("status") == "ok" and (out / "clips" / entry["shard"]).is_file():
            result.resumed += 1
            todo -= 1
            log(f"[{n}/{len(files)}] {rel}: already prepared, skipped")
            continue
        t0 = time.monotonic()
        try:
            entry = prepare_file(bb, p, path, rel, out, length, first, section, image, latent_dtype)
        except InputError as e:
            entry = {"status": "error", "error": e.message}
            result.skipped[rel] = e.message
        entry["fingerprint"] = fp
        manifest["files"][rel] = entry
        atomic_write_json(manifest_path, manifest)  # after each file: an interruption loses at most this one
        done_s += time.monotonic() - t0
        result.prepared += entry["status"] == "ok"
        finished = n - result.resumed
        left = done_s / max(1, finished) * (todo - finished)
        what = (f"{entry['clips']} clips, {entry['seconds']:.1f} s" + (f"; {entry['broken']}" if "broken" in entry else "")
                if entry["status"] == "ok" else f"SKIPPED ({entry['error']})")
        log(f"[{n}/{len(files)}] {rel}: {what}; ETA {_hms(left)} (elapsed {_hms(time.monotonic() - began)})")
    release(bb, ("image_encoder", "vae"))  # what the text encoders may need is theirs alone
    result.prompts = prepare_texts(bb, manifest, out, log)
    for entry in manifest["files"].values():
        if entry.get("status") == "ok":
            result.clips += entry["clips"]
            result.seconds += entry["seconds"]
    result.bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    for rel, entry in manifest["files"].items():  # bad files of earlier runs that are still there
        if entry.get("status") == "error" and rel not in result.skipped and (root / rel).is_file():
            result.skipped[rel] = entry["error"]
    return result


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@torch.no_grad()
def prepare_file(bb: Backbone, preset: Preset, path: Path, rel: str, out: Path, length: int, first: int,
                 section: int, image: bool, latent_dtype: str) -> dict[str, Any]:
    """One video to one shard of clips; an unreadable file raises :class:`InputError` naming it."""
    probe_video(path, rel)  # tells a truncated file, an audio-only file, an unknown codec apart
    fps = preset.video.fps
    try:
        frames = FrameStream(path, fps)
    except (OSError, RuntimeError, StopIteration, ValueError):
        raise InputError(rel, "could not be decoded") from None
    size = choose_size(preset, frames.size, rel)  # the preset's bucket for this aspect ratio
    entries = storyboard_entries(read_caption(path))
    tensors: dict[str, torch.Tensor] = {}
    captions: list[str] = []
    starts: list[float] = []
    firsts: list[str] = []  # each clip's first-latent key: training finds its start image by it
    store = torch_dtype(latent_dtype)
    for start, clip in clips_of(iter(frames), size, length, section, first):
        j = str(len(captions))
        pixels = to_pixels(clip, bb.vae.dtype if getattr(bb, "vae", None) is not None else torch.float32)
        lat = bb.vae_encode(pixels)
        tensors[f"latents.{j}"] = lat[0].to("cpu", store).contiguous()
        firsts.append(first_latent_key(tensors[f"latents.{j}"], store))
        if image:  # the start latent is given: only SigLIP runs
            cond = bb.encode_image(pixels[0, :, 0].to(bb.device), lat[:, :, :1])
            for k, v in cond.tensors.items():
                if k != "start_latents":  # the clip's own first latent is the anchor; training takes it from there
                    tensors[f"cond.{j}.{k}"] = v.detach().to("cpu").contiguous()
        captions.append(clip_caption(entries, start / fps, (start + len(clip)) / fps))
        starts.append(start / fps)
    if not captions and frames.broken:
        raise InputError(rel, f"could not be decoded ({frames.broken})")
    if not captions:
        raise InputError(rel, f"is shorter than one section ({first + section} frames at {fps} fps)")
    seconds = sum(bb.geometry.pixel_frames(tensors[f"latents.{j}"].shape[1]) for j in range(len(captions))) / fps
    shard = shard_name(rel)
    atomic_save_tensors(out / "clips" / shard, tensors, metadata={
        "captions": json.dumps(captions), "starts": json.dumps(starts), "first_latents": json.dumps(firsts), "source": rel,
        "width": str(size[0]), "height": str(size[1]), "fps": str(fps)})
    entry = {"status": "ok", "shard": shard, "clips": len(captions), "seconds": seconds,
             "size": list(size), "prompts": sorted({q for c in captions for q in clip_prompts(c)})}
    if frames.broken:  # the clips before the break are kept; say so
        entry["broken"] = f"the stream broke after {starts[-1] + length / fps:.1f} s ({frames.broken})"
    return entry


@torch.no_grad()
def prepare_texts(bb: Backbone, manifest: dict[str, Any], out: Path, log: Callable[[str], None]) -> int:
    """Embed every prompt of the prepared clips not embedded yet (text encoders loaded once, then freed)."""
    from safetensors import safe_open  # safetensors: only when tensors are read or written

    wanted = {""} | {q for e in manifest["files"].values() if e.get("status") == "ok" for q in e["prompts"]}
    path = out / TEXTS
    have: dict[str, dict[str, torch.Tensor]] = {}
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            prompts = json.loads(f.metadata()["prompts"])
            for i, q in enumerate(prompts):
                have[q] = {k.split(".", 1)[1]: f.get_tensor(k) for k in f.keys() if k.split(".", 1)[0] == str(i)}
    missing = sorted(wanted - set(have))
    if missing:
        log(f"text embeddings: {len(missing)} new prompts ({len(have)} already embedded)")
        for name in ("text_encoder", "text_encoder_2"):
            materialize(bb, name)
        for q in missing:
            have[q] = {k: v.detach().to("cpu").contiguous() for k, v in bb.encode_text(q).tensors.items()}
        release(bb, ("text_encoder", "text_encoder_2"))
        prompts = sorted(have)
        tensors = {f"{i}.{k}": v for i, q in enumerate(prompts) for k, v in have[q].items()}
        atomic_save_tensors(path, tensors, metadata={"prompts": json.dumps(prompts)})
    return len(have)
