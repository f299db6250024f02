"""Extend a finished job from its memory: its saved history, not a re-encoded mp4.

A finished job keeps its job folder's history chunks (raw latents, frame context,
history tokens) and start conditioning. An extension is a new job folder that
starts where the old one ended: it links those chunks and the old segments,
asks for the old length plus the new seconds and carries a new storyboard
(times count from the start of the whole video, as in steering). The worker
then runs it as it resumes any job, so the first new section sees exactly the
history an uninterrupted longer job would have had, and draws the same noise
(section index ``n`` continues from the old job's last), and the new video
starts with the old one's segments.

FramePack-F1 holds back each section's overlap tail until the next section has
blended it; the old video already ends with that tail, so the extension's
first section does not send its blend again (``Generation.tail_sent``).

No torch here.
"""

from __future__ import annotations

"""A safetensors file's metadata, read from its JSON header (no tensors, no torch: the page calls this)."""
import dataclasses
import json
import math
import os
import shutil
import struct
import time
from pathlib import Path

from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.fsio import atomic_write_json, fsync_dir
from framepack_history.jobs.admission import refuse_new_cuts, refuse_new_keyframes
from framepack_history.jobs.checkpoint import CHECKPOINT, CHECKPOINT_FORMAT, JobDir, section_records, tensor_files, chunk_file


def _link(src: Path, dst: Path) -> None:
    """A hard link when the file system allows it (history chunks are never rewritten in place), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def check_source(src: JobDir) -> dict:
    """The checkpoint of a job that can be extended; :class:`InputError` saying why not otherwise."""
    where = "job"
    if not src.exists():
        raise InputError(where, f"{src.root} is not a job folder")
    ck = src.checkpoint()
    status = ck.get("status")
    if status != "done":
        hint = "; resume it first" if status in ("queued", "running", "interrupted", "cancelled") else ""
        raise InputError(where, f"{src.id} is {status}, not finished{hint}")
    if ck.get("format") != CHECKPOINT_FORMAT or not ck.get("chunks"):
        raise InputError(where, f"{src.id} has no saved history (it finished before finished jobs kept theirs); "
                                "continue its video with --continue-video instead")
    return ck


def extension_request(old: GenerationRequest, sections_done: int, section_seconds: float, prompt: str,
                      seconds: float) -> GenerationRequest:
    """The old request, ``seconds`` longer than what the old job made, with the new storyboard."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise InputError("--seconds", f"how much to add must be a number > 0 (got {seconds!r})")
    return dataclasses.replace(old, prompt=prompt, seconds=round(sections_done * section_seconds + float(seconds), 6))


def extend_job(src: JobDir, dst: JobDir, prompt: str, seconds: float, *, out: str | Path,
               segments_dir: str | Path, **extra) -> GenerationRequest:
    """Write ``dst``: a job that continues ``src`` (finished) for ``seconds`` more with ``prompt``.

    Raises :class:`InputError` for a job that cannot be extended or a bad prompt or length,
    before anything is written.
    """
    ck = check_source(src)
    info = src.info()
    if info.preset.model.loop == "inverted":  # its sections ran from the end: the video's end is already made
        raise InputError("job", f"{src.id} was made by FramePack's original model, from its end toward its start; "
                                "it cannot be extended (continue its video with an F1 preset: --continue-video)")
    v = info.preset.video
    done = int(ck["next_section"])
    refuse_new_keyframes(prompt, "an extension")
    refuse_new_cuts(prompt, "an extension")
    request = extension_request(info.request, done, v.section_frames / v.fps, prompt, seconds)
    request.validate(info.preset)  # the old job's keyframes (all in its part) go on with it
    kept = [Path(kf["image"]) for kf in request.keyframes or ()]
    if kept:  # linked into the new job folder below
        request.keyframes = [dict(kf, image=str(dst.root / "inputs" / p.name)) for kf, p in zip(request.keyframes, kept)]
    if dst.root.exists() and any(dst.root.iterdir()):
        raise InputError("--job-dir", f"{dst.root} is not empty; give a new folder")
    files, cond = tensor_files(ck, str(src.root))
    names, _ = section_records(ck, [_chunk_meta(src.root / f) for f in files])
    missing = [n for n in names if not (info.segments_dir / n).is_file()]
    if missing:
        raise InputError("job", f"{src.id}: segment {missing[0]} is missing, so its video cannot start the new one")
    total = max(done + 1, v.sections(request.seconds))  # the pipeline's count; an extension adds at least one
    try:
        dst.create(request, info.preset, out=out, segments_dir=segments_dir, preset_ref=info.preset_ref,
                   encoder_rate=info.encoder_rate, extended_from=str(src.root), extended_at=done, **extra)
        for name in [*files, cond]:
            _link(src.root / name, dst.root / name)
        for name in names:
            _link(info.segments_dir / name, Path(segments_dir) / name)
        for path in kept:  # the job folder keeps its own keyframes, as a queued job's does
            _link(path, dst.root / "inputs" / path.name)
        fsync_dir(dst.root / chunk_file(0).split("/")[0])
        mine = {k: v for k, v in ck.items() if k not in ("owner", "message", "status")}
        atomic_write_json(dst.root / CHECKPOINT, {**mine, "status": "queued", "message": f"extends {src.id}",
                                                  "total_sections": total, "storyboard": [], "updated": time.time()})
    except OSError as e:  # no half-made job folder is left to be offered for resume
        shutil.rmtree(dst.root, ignore_errors=True)
        raise InputError("job", f"could not write the new job folder ({e.strerror or e})") from None
    return request


def _chunk_meta(path: Path) -> dict[str, str]:

    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise InputError("job", f"{path} is unreadable ({type(e).__name__}); the job folder is damaged") from None
    return dict(header.get("__metadata__") or {})
