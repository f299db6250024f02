"""Run a pipeline to files: one segment per section, a final mp4, a JSON sidecar.

Shared by the CLI and the worker, so a job looks the same on disk however it
was started. Given a job folder (:class:`~.checkpoint.JobDir`), it checkpoints
every finished section there, continues a job from its last checkpoint, and
survives one out-of-memory error per job by retrying from that checkpoint.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from framepack_history import __version__
from framepack_history.config.fields import resolve
from framepack_history.config.presets import Preset
from framepack_history.config.request import GenerationRequest
from framepack_history.device import free_device_memory
from framepack_history.errors import Cancelled, OutOfMemoryFailure
from framepack_history.generation.overlap import HeldSegment
from framepack_history.generation.pipeline import (
    ContextFrames,
    Event,
    Finished,
    Generation,
    Pipeline,
    SectionDone,
    SectionStarted,
    to_uint8,
)
from framepack_history.generation.video import concat_segments, write_json, write_segment
from framepack_history.jobs.borrow import borrow_entry, borrowed_history
from framepack_history.jobs.steering import Steering
from framepack_history.lora.files import sidecar_entries
from framepack_history.memory.oom import budget_text, is_out_of_memory, measured_peak, more_conservative, reset_peak

if TYPE_CHECKING:
    from framepack_history.jobs.checkpoint import JobDir

logger = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    """Package versions for sidecars (what produced this video)."""
    out = {"framepack_history": __version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "gradio", "accelerate", "peft"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class SegmentLog:
    """Segments on disk and what the sidecar says about them."""

    folder: Path
    fps: int
    segments: list[Path] = field(default_factory=list)
    sections: list[dict] = field(default_factory=list)
    frames: int = 0
    scale: int = 1  # nearest-neighbour upscale for display
    context_frames: int = 0  # frames of the start image / continued video at the front

    def add(self, frames, name: str) -> Path:
        if self.scale > 1:
            frames = frames.repeat(self.scale, axis=1).repeat(self.scale, axis=2)
        path = write_segment(frames, self.folder / f"{name}.mp4", self.fps)
        self.segments.append(path)
        self.frames += len(frames)
        return path


def sidecar(request: GenerationRequest, preset: Preset, log: SegmentLog, extra: dict | None = None) -> dict:
    """What a video's ``.json`` says: the request, the preset, the settings they resolve to, how it went."""
    return {
        "request": request.to_dict(),
        "preset": preset.to_dict(),
        "settings": resolve(request, preset).to_dict(),  # each the request's, else the preset's
        "seed": request.seed,
        "versions": versions(),
        "frames": log.frames,
        "fps": log.fps,
        "seconds": log.frames / log.fps,
        "sections": log.sections,
        "loras": sidecar_entries(request.loras),  # name, sha256, weight of each LoRA on the DiT
        "keyframes": keyframe_entries(request.keyframes),  # time, file name, sha256 of each keyframe image
        **(extra or {}),
    }


def keyframe_entries(keyframes: list[dict] | None) -> list[dict]:
    """The sidecar's record of the keyframes: each one's time, file name (as given) and SHA-256 (of the job folder's copy)."""
    return [{"time": kf["time"], "file": kf.get("name") or Path(kf["image"]).name, "sha256": kf.get("sha256")}
            for kf in keyframes or ()]


def render(
    pipeline: Pipeline,
    request: GenerationRequest,
    out: str | Path,
    segments_dir: str | Path,
    on_event: Callable[[Event], None] | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    on_segment: Callable[[Path], None] | None = None,
    job: JobDir | None = None,
    pending_steer: Callable[[bool], str | None] | None = None,
    on_steer: Callable[[list[dict]], None] | None = None,
) -> dict:
    """Generate ``request`` into ``out`` (mp4) and ``out.json``; return the sidecar.

    ``pending_steer()`` is asked before each section for a storyboard edit (validated text, or
    None); edits are recorded in the job folder and follow a resume (:mod:`.steering`), and
    ``on_steer(edits)`` hears of them.

    ``on_segment(path)`` runs as soon as each segment file is complete on disk
    (before ``on_event`` sees the event), so a player can append it at once.

    With ``job`` (already :meth:`~.checkpoint.JobDir.create`-d), every finished
    section is checkpointed there and the job's status kept up to date. A job
    that has a checkpoint continues from it: ``on_event`` first sees a
    :class:`~.checkpoint.Resumed` with the segments already on disk. Running out
    of memory frees what the failed attempt held, asks for a more conservative
    plan and retries once from the last checkpoint; a second time raises
    :class:`~.checkpoint.OutOfMemoryFailure` naming the budget and the peak.

    Long by its callbacks and this description only: the body is the retry loop, one
    attempt being :func:`_restore` then :func:`_render`, a failed one :func:`_before_retry`.
    """
    out = Path(out)
    folder = Path(segments_dir)
    folder.mkdir(parents=True, exist_ok=True)

    if job is None:
        steering = Steering(None, pending_steer, on_steer)
        return _render(pipeline, request, out, _log(pipeline, folder), None, None, on_event, on_step, on_segment, {}, steering)

    change, oom, first_peak = "", "", ""
    for attempt in (0, 1):
        gen, seg_log, extra = _restore(pipeline, job, folder, on_event, attempt)
        if attempt:  # what the retry changed, and what the failed attempt measured
            extra["out_of_memory_retry"], extra["out_of_memory_peak"] = change, first_peak
        job.set_status("running")
        steering = Steering(job.root, pending_steer, on_steer)
        try:
            data = _render(pipeline, request, out, seg_log, job, gen, on_event, on_step, on_segment, extra, steering)
        except Cancelled:
            job.set_status("cancelled", "cancelled")
            raise
        except (KeyboardInterrupt, SystemExit):
            job.set_status("interrupted", "stopped; resume it from its last finished section")
            raise
        except BaseException as e:
            if not is_out_of_memory(e):
                job.set_status("failed", f"{type(e).__name__}: {e}")
                raise
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            oom = f"{type(e).__name__}: {first}" if first else type(e).__name__
        else:
            job.set_status("done")
            return data
        # Out of memory. Leaving the except block dropped the traceback and with it the failed
        # attempt's tensors; drop the generation too, then give the memory back (nothing new is allocated).
        gen = seg_log = None
        pipeline.last_generation = None
        change, first_peak = _before_retry(pipeline, job, attempt, oom, change)
    raise AssertionError("unreachable")


def _restore(pipeline: Pipeline, job: JobDir, folder: Path, on_event: Callable[[Event], None] | None,
             attempt: int) -> tuple[Generation | None, SegmentLog, dict]:
    """The job's last checkpoint: the generation to continue (None: start), its segments, the sidecar's resume facts."""
    gen, resumed = job.restore(pipeline)
    if gen is not None:  # an extension's first section: the old video already sent the held tail
        gen.tail_sent = gen.next_section == job.info().extra.get("extended_at", -1)
    seg_log = _log(pipeline, folder)
    seg_log.segments, seg_log.sections = list(resumed.segments), list(resumed.sections)
    seg_log.context_frames = resumed.context_frames
    seg_log.frames = resumed.frames + resumed.context_frames
    if on_event is not None and (attempt or resumed.segments or resumed.sections_done):
        on_event(resumed)  # listeners replace what they had with what is on disk
    extra = {"resumed_from_section": resumed.sections_done} if gen is not None and resumed.sections_done else {}
    extra["encoder_rate"] = job.info().encoder_rate  # with the request and preset: what Reuse settings loads
    return gen, seg_log, extra


def _before_retry(pipeline: Pipeline, job: JobDir, attempt: int, oom: str, change: str) -> tuple[str, str]:
    """After running out of memory: give the memory back, then fail (the retry did too) or plan more conservatively.

    Returns what the new plan changed and the peak the failed attempt measured.
    """
    free_device_memory()
    peak = measured_peak(pipeline)
    if attempt:
        msg = (f"out of memory again after retrying with a more conservative plan ({change}): "
               f"{budget_text(pipeline)}, {peak}. Last error: {oom}")
        job.set_status("failed", msg)
        raise OutOfMemoryFailure(msg)
    change, first_peak = more_conservative(pipeline), peak
    logger.warning("out of memory (%s; %s); retrying from the last checkpoint: %s", oom, peak, change)
    reset_peak(pipeline)
    return change, first_peak


def _flush_held(pipeline: Pipeline, log: SegmentLog, on_segment: Callable[[Path], None] | None) -> None:
    """Write the overlap tail a cancelled generation still holds as one more segment."""
    gen = getattr(pipeline, "last_generation", None)
    if gen is None or gen.held is None or not gen.next_section:
        return
    held = gen.held
    log.add(held.frames() if isinstance(held, HeldSegment) else to_uint8(held[0]), f"section_{gen.next_section - 1:05d}_tail")
    gen.held = None
    if on_segment is not None:
        on_segment(log.segments[-1])


def _log(pipeline: Pipeline, folder: Path) -> SegmentLog:
    return SegmentLog(folder, pipeline.preset.video.fps, scale=pipeline.preset.video.display_scale)


def _render(pipeline: Pipeline, request: GenerationRequest, out: Path, log: SegmentLog, job: JobDir | None,
            gen: Generation | None, on_event, on_step, on_segment, extra: dict, steering=None) -> dict:
    """One attempt: run (or continue ``gen``), write segments, checkpoint, join, write the sidecar."""
    t0 = time.perf_counter()
    first_section_s = None
    checkpointed = gen is not None  # a restored generation already has its start checkpoint
    said: dict = {}  # what the section being generated is conditioned on (its sidecar record)
    if gen is not None:
        request = gen.request

    def checkpoint() -> None:
        if job is not None:
            job.save_section(pipeline.last_generation, log.segments, log.sections, log.frames, log.context_frames)

    try:
        # a borrowed history is read once, at the start: a resume has it in its own chunks
        borrowed = borrowed_history(request.borrow) if gen is None and request.borrow else None
        for ev in pipeline.run(request, on_step=on_step, resume=gen, before_section=steering, borrowed=borrowed):
            if isinstance(ev, ContextFrames):
                log.add(ev.frames, "context")
                log.context_frames = len(ev.frames)
                if on_segment is not None:
                    on_segment(log.segments[-1])
            elif isinstance(ev, SectionStarted):
                said = {"prompt": ev.prompt, **({"blend_from": ev.blend[0], "blend": ev.blend[1]} if ev.blend else {})}
                if not checkpointed:
                    checkpointed = True
                    checkpoint()  # the start state: start-image conditioning and context latents, before any section
            elif isinstance(ev, SectionDone):
                # An overlap-decoding backbone may hold a whole first section back (text-to-video): no segment then.
                wrote = len(ev.frames) > 0
                if wrote:
                    log.add(ev.frames, f"section_{ev.index:05d}")
                log.sections.append({"index": ev.index, **said, "history_tokens": ev.history_tokens, "frames": len(ev.frames),
                                     **({"shift": round(ev.shift, 6)} if ev.shift is not None else {}),
                                     **({"dit_passes": ev.dit_passes} if ev.dit_passes is not None else {}),
                                     **{k: round(v, 4) for k, v in ev.timings.items()}})
                checkpoint()  # before anyone hears of the segment: what was announced can always be resumed
                if on_segment is not None and wrote:
                    on_segment(log.segments[-1])
                first_section_s = first_section_s or time.perf_counter() - t0
            elif isinstance(ev, Finished):
                concat_segments(log.segments, out)
            if on_event is not None:
                on_event(ev)
    except Cancelled:  # what was held back of the last finished section is kept, unblended
        _flush_held(pipeline, log, on_segment)
        raise
    shifts = sorted({sec["shift"] for sec in log.sections if "shift" in sec})
    if shifts:  # the timestep shift sampled with (F1's dynamic one unless the preset or request set it)
        extra = {**extra, "shift": shifts[0] if len(shifts) == 1 else shifts}
    if steering is not None and steering.steers:  # storyboard edits and the section each took effect at
        extra = {**extra, "steers": steering.steers}
    passes = [sec["dit_passes"] for sec in log.sections if "dit_passes" in sec]
    if passes:  # step caching: the setting in force and the DiT passes that ran every block, over all sections
        extra = {**extra, "cache": pipeline.settings(request).cache,
                 "dit_passes": {"calls": sum(p["calls"] for p in passes), "full": sum(p["full"] for p in passes)}}
    extra = {**extra, **({"speed": pipeline.backbone.speed} if getattr(pipeline.backbone, "speed", None) else {})}
    if pipeline.last_generation is not None and (lent := borrow_entry(pipeline.last_generation)):
        extra = {**extra, "borrow": lent}  # the job whose history this video started with, and its SHA-256
    data = sidecar(request, pipeline.preset, log, {"wall_s": round(time.perf_counter() - t0, 3), "first_section_s": round(first_section_s or 0, 3),
                                                   "video": str(out), **extra})
    write_json(data, out.with_suffix(".json"))
    return data
