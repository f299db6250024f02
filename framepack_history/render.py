"""Run a pipeline to files: one segment per section, a final mp4, a JSON sidecar.

Shared by the CLI and the worker, so a job looks the same on disk however it
was started.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from . import __version__
from .config import GenerationRequest, Preset
from .pipeline import ContextFrames, Event, Finished, Pipeline, SectionDone
from .video import concat_segments, write_json, write_segment


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

    def add(self, frames, name: str) -> Path:
        if self.scale > 1:
            frames = frames.repeat(self.scale, axis=1).repeat(self.scale, axis=2)
        path = write_segment(frames, self.folder / f"{name}.mp4", self.fps)
        self.segments.append(path)
        self.frames += len(frames)
        return path


def sidecar(request: GenerationRequest, preset: Preset, log: SegmentLog, extra: dict | None = None) -> dict:
    return {
        "request": request.to_dict(),
        "preset": preset.to_dict(),
        "seed": request.seed,
        "versions": versions(),
        "frames": log.frames,
        "fps": log.fps,
        "seconds": log.frames / log.fps,
        "sections": log.sections,
        **(extra or {}),
    }


def render(
    pipeline: Pipeline,
    request: GenerationRequest,
    out: str | Path,
    segments_dir: str | Path,
    on_event: Callable[[Event], None] | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    on_segment: Callable[[Path], None] | None = None,
) -> dict:
    """Generate ``request`` into ``out`` (mp4) and ``out.json``; return the sidecar.

    ``on_segment(path)`` runs as soon as each segment file is complete on disk
    (before ``on_event`` sees the event), so a player can append it at once.
    """
    out = Path(out)
    folder = Path(segments_dir)
    folder.mkdir(parents=True, exist_ok=True)
    log = SegmentLog(folder, pipeline.preset.video.fps, scale=pipeline.preset.video.display_scale)
    t0 = time.perf_counter()
    first_section_s = None
    for ev in pipeline.run(request, on_step=on_step):
        if isinstance(ev, ContextFrames):
            log.add(ev.frames, "context")
            if on_segment is not None:
                on_segment(log.segments[-1])
        elif isinstance(ev, SectionDone):
            log.add(ev.frames, f"section_{ev.index:05d}")
            if on_segment is not None:
                on_segment(log.segments[-1])
            log.sections.append({"index": ev.index, "history_tokens": ev.history_tokens, **{k: round(v, 4) for k, v in ev.timings.items()}})
            first_section_s = first_section_s or time.perf_counter() - t0
        elif isinstance(ev, Finished):
            concat_segments(log.segments, out)
        if on_event is not None:
            on_event(ev)
    data = sidecar(request, pipeline.preset, log, {"wall_s": round(time.perf_counter() - t0, 3), "first_section_s": round(first_section_s or 0, 3), "video": str(out)})
    write_json(data, out.with_suffix(".json"))
    return data
