"""The typed events a :class:`~.pipeline.Pipeline` run yields, in the order it yields them.

Whoever runs a pipeline (the CLI, the worker) reads these: frames to show, sections started and
done, step previews, the end. No torch here beyond what the frames are (uint8 arrays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ContextFrames:
    """Frames the video starts with (start image or the video being continued)."""

    frames: np.ndarray  # uint8 [F, H, W, 3]


@dataclass
class SectionStarted:
    index: int
    total: int
    prompt: str
    #: inside a prompt transition: ``(the prompt it blends from, the weight of ``prompt``)``
    blend: tuple[str, float] | None = None


@dataclass
class StepPreview:
    index: int
    step: int
    steps: int
    image: np.ndarray  # uint8 [H, W, 3]


@dataclass
class SectionDone:
    index: int
    total: int
    frames: np.ndarray  # uint8 [F, H, W, 3]
    timings: dict[str, float]
    history_tokens: int
    shift: float | None = None  # the timestep shift this section was sampled with
    #: DiT calls of the section and how many ran every block (step caching skips the others), by branch
    dit_passes: dict | None = None


@dataclass
class Finished:
    sections: int
    frames: int
    history_tokens: int


Event = ContextFrames | SectionStarted | StepPreview | SectionDone | Finished
