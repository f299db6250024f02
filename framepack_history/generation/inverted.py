"""FramePack's original model's loop: inverted anti-drifting (``model.loop = "inverted"``).

``lllyasviel/FramePackI2V_HY`` has FramePack-F1's transformer and another loop.
It generates the video from its end toward its start: each section sees the
start latent (index 0), a blank gap, then itself, then the latents that follow
it in time (already generated), 1 through the 1x clean path, 2 through the 2x,
16 through the 4x (:meth:`HunyuanFramepackBackbone.inverted_context`). The
gap is FramePack's padding schedule: ``K-1, ..., 1, 0`` sections for ``K <= 4``
sections, else ``3, 2, ..., 2, 1, 0``; the last section generated (the first
in time) touches the start latent.

An end image (``GenerationRequest.end_image``) is the first-generated
section's 1x post latent (scaled by ``end_frame_strength``, FramePack-Studio's
knob; 1 is diffusers' ``last_image``), and its SigLIP embedding is averaged
with the start image's (FramePack's pull request 167).

The decode is FramePack's: the first-generated section alone, then each next
section decoded with the one after it (the last with the start latent in front)
and cross-faded in front of the video so far over ``(n - 1) * 4 + 1`` frames.
Only the end of the video is final while the loop runs, and it reaches the
stream last, so this loop holds every frame back and sends the whole video
(after the start image) with its last section; the earlier sections send
none. The held pixels are a pure function of the history's raw latents, so a
resumed job replays the decode and sends the same frames.

The history holds the start latent, then the sections in the order they were
generated (the last in time first), so checkpoints are the forward loop's.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np
import torch

from framepack_history.backbones.base import Backbone, Conditioning, Context
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.overlap import soft_append
from framepack_history.generation.pixels import to_pixels, to_uint8
from framepack_history.generation.video import read_image
from framepack_history.history.state import HistoryState


class Sections(Protocol):
    """What this loop reads and advances of a generation (:class:`~.pipeline.Generation`)."""

    request: GenerationRequest
    history: HistoryState
    next_section: int
    total_sections: int
    image_cond: Conditioning
    held: torch.Tensor | None


def paddings(total: int) -> list[int]:
    """Blank sections between each section (in the order generated) and the start latent (FramePack's demo)."""
    if total > 4:  # FramePack repeats 2 rather than counting down from K-1 for long videos (it looked better)
        return [3] + [2] * (total - 3) + [1, 0]
    return list(reversed(range(total)))


class InvertedLoop:
    """The section context, end image and decode of FramePack's original model."""

    def __init__(self, backbone: Backbone, section_latents: int) -> None:
        if not hasattr(backbone, "inverted_context"):
            raise InputError("model.loop", f"'inverted' is FramePack's original model's loop; the {backbone.name} "
                                           "backbone has no such context (use hunyuan_framepack)")
        self.backbone = backbone
        self.n = section_latents
        self.post = sum(backbone.POST_HISTORY)
        self.overlap = backbone.geometry.pixel_frames(section_latents)

    # ------------------------------------------------------------- start
    def check(self, request: GenerationRequest, mode: str, storyboard: list[tuple[float, str]]) -> None:
        """Refuse what this loop cannot do: it conditions on the future, not on a past."""
        if len(storyboard) > 1:  # the pipeline places a prompt by the section's index, which runs backward here
            raise InputError("--prompt", "a storyboard needs a forward loop (an F1 preset); the original model's "
                                         "loop generates from the end, give it one prompt")
        if mode == "encoder":
            raise InputError("--history", "the original model's loop generates the video from its end and conditions "
                                          "on the sections after each one; the history encoder codes the past "
                                          "(use 'window' or 'none', or an F1 preset)")
        if request.continue_video:
            raise InputError("--continue-video", "the original model's loop generates toward a start image; "
                                                 "continue a video with an F1 preset")

    def encode_end(self, gen: Sections, size: tuple[int, int], phase: AbstractContextManager) -> None:
        """The end image's latent (scaled by ``end_frame_strength``) and its SigLIP embedding averaged in.

        ``size``: ``(width, height)`` generated at; ``phase``: the memory phase the encoders run in.
        """
        req = gen.request
        if not req.end_image:
            return
        frame = read_image(req.end_image, size[0], size[1], field="--end-image")[None]
        with torch.no_grad(), phase:
            end = self.backbone.encode_image(to_pixels(frame)[0, :, 0].to(self.backbone.device))
        tensors = gen.image_cond.tensors
        strength = 1.0 if req.end_frame_strength is None else float(req.end_frame_strength)
        tensors["end_latents"] = end.tensors["start_latents"] * strength
        if "image_embeds" in tensors and "image_embeds" in end.tensors:
            tensors["image_embeds"] = (tensors["image_embeds"] + end.tensors["image_embeds"]) / 2

    # ----------------------------------------------------------- section
    def generated(self, history: HistoryState, done: int, start: int) -> torch.Tensor | None:
        """The first ``done`` generated sections' latents in time order (the last generated first), host.

        ``start``: the latents before section 0 in the history (the start latent).
        """
        if done == 0:
            return None
        lat = history.latents[:, :, start : start + done * self.n]
        return torch.cat(list(reversed(lat.split(self.n, dim=2))), dim=2)

    def context(self, gen: Sections, mode: str, shape: tuple[int, ...]) -> Context:
        """The next section's context: its padding and the 19 latents after it (zeros past the video's end)."""
        idx = gen.next_section
        _, c, _, h, w = shape
        post = torch.zeros(1, c, self.post, h, w)
        start = gen.history.num_frames - self.n * idx
        after = self.generated(gen.history, idx, start) if mode != "none" else None
        if after is not None:
            k = min(self.post, after.shape[2])
            post[:, :, :k] = after[:, :, :k]
        end = gen.image_cond.tensors.get("end_latents")
        if idx == 0 and end is not None:  # the end image is the first-generated section's 1x post latent
            post[:, :, :1] = end.to(post)
        gap = paddings(gen.total_sections)[idx] * self.n
        return Context(post_latents=post.to(self.backbone.device, self.backbone.dtype), post_gap=gap)

    def decode(self, history: HistoryState, section: int, total: int, held: torch.Tensor | None,
               start: int) -> torch.Tensor:
        """The video so far (float pixels, host) after ``section`` was generated: FramePack's decode and blend."""
        bb, n = self.backbone, self.n
        timed = self.generated(history, section + 1, start)
        last = section == total - 1
        if last:  # the first section in time goes after the start latent (FramePack prepends it)
            timed = torch.cat([history.latents[:, :, start - 1 : start], timed], dim=2)
        span = timed.shape[2] if section == 0 else 2 * n + int(last)
        video = bb.vae_decode(timed[:, :, :span].to(bb.device, bb.dtype), clamp=False).float().cpu()
        if section == 0:
            return video
        if held is None:
            raise ValueError(f"section {section}: the video decoded after section {section - 1} is missing")
        return soft_append(video, held, self.overlap)

    def replay(self, history: HistoryState, done: int, total: int, start: int) -> torch.Tensor | None:
        """The video held after ``done`` sections, decoded again from the history (after a resume)."""
        held = None
        for k in range(done):
            held = self.decode(history, k, total, held, start)
        return held

    def finish(self, gen: Sections, latents: torch.Tensor, ctx: Context) -> tuple[np.ndarray, float, int]:
        """Append and decode the section; send the whole video (after the start image) with the last one.

        Returns the frames to send, when decoding ended and the history's token count.
        """
        idx, total = gen.next_section, gen.total_sections
        start = gen.history.num_frames - self.n * idx
        if gen.held is None and idx > 0:  # resumed: decode the sections before again from the raw latents
            gen.held = self.replay(gen.history, idx, total, start)
        tokens = gen.history.append(latents)
        gen.held = self.decode(gen.history, idx, total, gen.held, start)
        t_decoded = time.perf_counter()
        if idx < total - 1:
            _, _, _, h, w = gen.held.shape
            return np.zeros((0, h, w, 3), np.uint8), t_decoded, tokens
        video, gen.held = gen.held, None
        # FramePack keeps the decode's first (4k + 1) frames; frame 0 is the start image, already sent
        keep = (video.shape[2] - 1) // 4 * 4 + 1
        return to_uint8(video[0, :, 1:keep]), t_decoded, tokens
