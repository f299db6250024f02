"""A request's memory controls at work on its history: pins and forgets, cuts, a borrowed history.

The entries are checked in :mod:`framepack_history.config.memory` (times in seconds); here they
become latent frames: pins and forgets are set on the :class:`~framepack_history.history.state.HistoryState`
as frame ranges (which groups the cap may merge, which tokens the DiT reads), a cut starts a new shot
(the window and recent context never reach back across it), and a borrowed job's history is encoded
first, before the video's own frames, read as history tokens only.
"""

from __future__ import annotations

import math

import torch

from framepack_history.config.memory import MemoryPlan
from framepack_history.config.presets import VideoSpec
from framepack_history.errors import InputError
from framepack_history.generation.state import Generation
from framepack_history.history.state import HistoryState


def frames_at(video: VideoSpec, section_latents: int, seconds: float, origin: int, up: bool = False) -> int:
    """The history's latent frame at ``seconds`` into the video (``origin``: latent frames before section 0).

    ``section_latents``: latent frames per section of ``video.section_frames`` frames; ``up`` rounds up
    (a range's end), else down (its start).
    """
    x = seconds * video.fps * section_latents / video.section_frames
    return origin + (math.ceil(x - 1e-9) if up else math.floor(x + 1e-9))


def steer_history(history: HistoryState, plan: MemoryPlan, video: VideoSpec, section_latents: int, origin: int) -> None:
    """Set ``plan``'s pins and forgets on ``history`` as latent frame ranges (before its sections' groups).

    A resume calls this before loading its chunks (``origin`` from the checkpoint), so the cap replays the
    merges the pins allowed.
    """
    ranges = lambda spans: [(frames_at(video, section_latents, a, origin),  # noqa: E731
                             frames_at(video, section_latents, b, origin, up=True)) for a, b in spans]
    history.steer(ranges(plan.pins), ranges(plan.forgets))


def shot_start(gen: Generation, cuts: list[int], section_latents: int) -> int:
    """The first latent frame of the shot the next section belongs to: the last of ``cuts`` (section
    indices) it has reached, else the video's own (a borrowed history is never read as the window or
    recent context)."""
    reached = [k for k in cuts if k <= gen.next_section]
    if not reached:
        return gen.borrowed_frames
    origin = gen.history.num_frames - gen.next_section * section_latents
    return origin + max(reached) * section_latents


def borrow_history(gen: Generation, mode: str, borrowed: tuple[torch.Tensor, torch.Tensor | None] | None) -> None:
    """Encode the request's borrowed history into ``gen``'s (still empty) history, before the video's own frames.

    ``borrowed``: a finished job's raw latents ``[1, C, T, h, w]`` and frame context ``[T]``; nothing
    happens when the request borrows nothing.
    """
    request = gen.request
    if request.borrow and mode != "encoder":
        raise InputError("--borrow", f"needs history mode 'encoder' (this request's is {mode!r})")
    if request.borrow:
        if borrowed is None:
            raise InputError("--borrow", f"{request.borrow}: the borrowed history was not given")
        with torch.no_grad():  # the history encoder is always resident (watched), as for every section
            gen.history.append(borrowed[0], frame_context=borrowed[1])
        gen.borrowed_frames = gen.history.num_frames
