"""FramePack-F1's decode, streamed append-only.

F1 never decodes a section alone: after every section it decodes the newest
two sections together (the first one with the latent before it) and
cross-fades the frames they share with the video so far, linearly over
``(n - 1) * 4 + 1`` frames for ``n``-latent sections (33 for F1's 9). Each
section then adds ``4 n`` frames (36) with no restart at the boundary.

A stream cannot take back frames it has sent, so the overlap tail of every
section is *held back* until the next section has blended it, and sent after
the last one. The held tail is a pure function of the history's raw latents
(the last decode's span, decoded again), so a resumed job re-creates it and
its frames equal those of a job never interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from framepack_history.backbones.base import Backbone
from framepack_history.generation.pixels import to_uint8
from framepack_history.history.state import HistoryState


def soft_append(history: torch.Tensor, current: torch.Tensor, overlap: int) -> torch.Tensor:
    """``history`` then ``current`` along time, their shared ``overlap`` frames cross-faded linearly."""
    if overlap <= 0:
        return torch.cat([history, current], dim=2)
    if history.shape[2] < overlap or current.shape[2] < overlap:
        raise ValueError(f"both clips need at least {overlap} frames (got {history.shape[2]} and {current.shape[2]})")
    w = torch.linspace(1, 0, overlap, dtype=history.dtype, device=history.device).view(1, 1, -1, 1, 1)
    blended = w * history[:, :, -overlap:] + (1 - w) * current[:, :, :overlap]
    return torch.cat([history[:, :, :-overlap], blended, current[:, :, overlap:]], dim=2)


@dataclass
class HeldSegment:
    """A segment's video so far, held back until its last section: the first frames, which the next section's
    decode still cross-fades (float pixels, host), and after them the frames no decode changes again (final,
    8-bit, in time order). Converting a final frame early gives the bytes converting it at the end would."""

    head: torch.Tensor  # [1, 3, F, H, W] in [-1, 1]: at most the loop's overlap frames
    final: list[np.ndarray] = field(default_factory=list)  # uint8 [F, H, W, 3] chunks, in time order

    @classmethod
    def split(cls, video: torch.Tensor, blend: int, final: list[np.ndarray] | None = None) -> "HeldSegment":
        """``video`` (float, in front of ``final``): its first ``blend`` frames stay float, the rest are final."""
        head, done = video[:, :, :blend], video[:, :, blend:]
        return cls(head, ([to_uint8(done[0])] if done.shape[2] else []) + list(final or []))

    def frames(self) -> np.ndarray:
        """The whole held video, ``uint8 [F, H, W, 3]`` (a copy: the held chunks stay)."""
        return np.concatenate([to_uint8(self.head[0]), *self.final])

    def take(self) -> np.ndarray:
        """:meth:`frames`, letting go of each held chunk once it is copied: the host holds one video, not two."""
        head = to_uint8(self.head[0])
        out = np.empty((self.shape[2], *head.shape[1:]), np.uint8)
        out[: len(head)], i = head, len(head)
        while self.final:
            chunk = self.final.pop(0)
            out[i : i + len(chunk)], i = chunk, i + len(chunk)
        return out

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """As the float ``[1, 3, F, H, W]`` video it stands for."""
        b, c, f, h, w = self.head.shape
        return b, c, f + sum(len(x) for x in self.final), h, w


class OverlapDecoder:
    """Decode section after section as F1 does, holding back each overlap tail (float pixels, host)."""

    def __init__(self, backbone: Backbone, section_latents: int) -> None:
        self.backbone = backbone
        self.n = section_latents
        self.overlap = backbone.geometry.pixel_frames(section_latents)  # frames of one section decoded alone

    def span(self, section: int, start_frames: int) -> int:
        """Latent frames decoded after ``section``: the first section with the latent before it, later the newest two."""
        return min(start_frames, 1) + self.n if section == 0 else 2 * self.n

    def decode(self, history: HistoryState, section: int, start_frames: int) -> torch.Tensor:
        """Pixels ``[1, 3, F, H, W]`` (float32, unclamped, host) of the span decoded after ``section``."""
        bb = self.backbone
        latents = history.window(self.span(section, start_frames))
        return bb.vae_decode(latents.to(bb.device, bb.dtype), clamp=False).float().cpu()

    def step(self, history: HistoryState, section: int, start_frames: int,
             held: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """After ``section`` was appended to ``history``: the frames to send now and the tail to hold back.

        ``start_frames`` is how many latents the history had before section 0;
        the frame of the latent before section 0 is not sent again (the start
        image or the continued video is already at the front of the video).
        """
        video = self.decode(history, section, start_frames)
        if section == 0:
            video = video[:, :, min(start_frames, 1):]
        else:
            if held is None:
                raise ValueError(f"section {section}: the held-back tail of section {section - 1} is missing")
            video = soft_append(held, video, self.overlap)
        return video[:, :, : -self.overlap], video[:, :, -self.overlap:]

    def held_after(self, history: HistoryState, sections_done: int, start_frames: int) -> torch.Tensor | None:
        """Re-create the tail held back after ``sections_done`` sections (after a resume)."""
        if sections_done == 0:
            return None
        return self.decode(history, sections_done - 1, start_frames)[:, :, -self.overlap:]
