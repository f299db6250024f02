"""The state of one request between sections: what a checkpoint holds and a resume starts from.

Kept apart from the section loop so the rooms that read it (memory controls, keyframes, the
jobs' checkpoints) need not import the loop itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from framepack_history.backbones.base import Conditioning
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.overlap import HeldSegment
from framepack_history.history.state import HistoryState


@dataclass
class Generation:
    """The state of one request between sections (what a checkpoint holds)."""

    request: GenerationRequest
    storyboard: list[tuple[float, str]]
    total_sections: int
    history: HistoryState
    next_section: int = 0
    image_cond: Conditioning = field(default_factory=Conditioning)
    #: overlap-decoding backbones: the last section's tail, not yet sent (float pixels, host); FramePack's original
    #: model's loop: its segment so far (:class:`.overlap.HeldSegment`); never checkpointed, a resume decodes it again
    held: torch.Tensor | HeldSegment | None = None
    #: an extension's first section: the video it extends already ends with the held tail (see .extend)
    tail_sent: bool = False
    #: backbones that draw noise per video: the video's generator, advanced by each section's draw
    #: (checkpointed with every section: its state is the noise of the sections still to come)
    noise_generator: torch.Generator | None = None
    #: the request's keyframes as ``(latent frame index, clean latent [1, C, 1, h, w])`` on the host, in time order;
    #: never checkpointed: encoded on first need (:func:`.keyframes.keyframe_latents`), a resume again from the images
    keyframes: list[tuple[int, torch.Tensor]] | None = None
    #: latent frames at the history's start that a borrowed job's history holds (before this video's own):
    #: read as history tokens, never as the window or recent context, never shown (checkpointed)
    borrowed_frames: int = 0
