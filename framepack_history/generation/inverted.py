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

**Segments.** Keyframes (``GenerationRequest.keyframes``) cut the video into
segments (:func:`~.segments.segments`), each one inverted run of its own, made in time
order: segment ``j`` runs from its start anchor to its end anchor, keyframe
``j``, which is used exactly as an end image (the first-generated section's 1x
post latent times ``end_frame_strength``; the SigLIP embeddings of the images
at the segment's two ends averaged). The last segment ends on the end image,
or on nothing. A keyframe's time is rounded to the nearest section boundary
(halves to even, as the video's length is), so segments are whole sections;
a keyframe that would leave a segment empty is refused, naming it. The padding
schedule is the segment's own (``paddings(its sections)``), and a section's
post latents are its segment's only (zeros past the segment's end, as past
the video's end).

The join: segment ``j + 1``'s start latent is segment ``j``'s last latent in
time (the last latent of its first-generated section), not the keyframe's,
so the next segment goes on from the frame the video reached, as FramePack's
first section goes on from its start image. That frame is the last one sent
of segment ``j``; segment ``j + 1``'s decode starts with it (as the first
segment's starts with the start image) and drops it, so it is not repeated.
Segment ``j + 1``'s SigLIP start image is keyframe ``j``.

**Continuing a video** (``--continue-video``, with or without ``--end-image``):
the clip's last latent is the start latent and the decode's first latent, its
last frame the image condition (as the forward loop's). Only that latent is
encoded: the original model has one slot for the past, index 0; its 1x/2x/4x
context holds the future. (FramePack-Studio's backward video model puts up to
four of the clip's latents in front and its older latents in the 2x/4x slots,
at indices the model reads as after the section; we keep the layout it was
trained with.)

**Decode and streaming.** FramePack's decode per segment: the first-generated
section alone, then each next section decoded with the one after it (the last
with the start latent in front) and cross-faded in front of the segment so far
over ``(n - 1) * 4 + 1`` frames. Only a segment's end is final while it is
drawn, and it reaches the stream last, so the loop holds the segment's frames
back and sends them all (after its start frame) with its last-generated
section; the other sections send none. Only the frames the next decode blends
stay float (:class:`HeldSegment`); the rest are final and held as 8-bit
frames, a quarter of float32's bytes (a 300 s segment at 480x832: 10.8 GB of
host memory instead of 43). The player thus grows segment by
segment, in time order. The held pixels are a pure function of the history's
raw latents, so a job resumed in the middle of a segment replays the
segment's decode and sends the same frames.

Prompts: a storyboard's prompt is taken at each section's own start time
(:meth:`InvertedLoop.time_index`), as on the forward loop, though the sections
of a segment are drawn from its end.

The history holds the start latent, then the sections in the order they were
generated (segment by segment, each one's last in time first), so checkpoints
are the forward loop's.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np
import torch

from framepack_history.backbones.base import Backbone, Conditioning, Context
from framepack_history.config.presets import VideoSpec
from framepack_history.config.request import GenerationRequest, keyframe_field
from framepack_history.errors import InputError
from framepack_history.generation.overlap import HeldSegment, soft_append
from framepack_history.generation.pixels import to_pixels, to_uint8
from framepack_history.generation.segments import END, Segment, segments
from framepack_history.generation.video import read_image
from framepack_history.history.state import HistoryState

#: conditioning tensors of a keyframed job (written with the image condition, once): the keyframes' latents
#: times ``end_frame_strength`` ``[K, C, 1, h, w]``, and each segment's averaged SigLIP embedding ``[J, L, D]``
KEYFRAME_ANCHORS, SEGMENT_EMBEDS = "keyframe_anchors", "segment_embeds"


class Sections(Protocol):
    """What this loop reads and advances of a generation (:class:`~.pipeline.Generation`)."""

    request: GenerationRequest
    history: HistoryState
    next_section: int
    total_sections: int
    image_cond: Conditioning
    held: HeldSegment | None


def paddings(total: int) -> list[int]:
    """Blank sections between each section (in the order generated) and the start latent (FramePack's demo)."""
    if total > 4:  # FramePack repeats 2 rather than counting down from K-1 for long videos (it looked better)
        return [3] + [2] * (total - 3) + [1, 0]
    return list(reversed(range(total)))


class InvertedLoop:
    """The section context, anchors, segments and decode of FramePack's original model."""

    def __init__(self, backbone: Backbone, section_latents: int, video: VideoSpec) -> None:
        if not hasattr(backbone, "inverted_context"):
            raise InputError("model.loop", f"'inverted' is FramePack's original model's loop; the {backbone.name} "
                                           "backbone has no such context (use hunyuan_framepack)")
        self.backbone = backbone
        self.n = section_latents
        self.video = video
        self.post = sum(backbone.POST_HISTORY)
        self.overlap = backbone.geometry.pixel_frames(section_latents)

    # ------------------------------------------------------------- start
    def check(self, request: GenerationRequest, mode: str, storyboard: list[tuple[float, str]]) -> None:
        """Refuse what this loop cannot do: it conditions on the future, not on a past; keyframes leave no empty segment."""
        if mode == "encoder":
            raise InputError("--history", "the original model's loop generates the video from its end and conditions "
                                          "on the sections after each one; the history encoder codes the past "
                                          "(use 'window' or 'none', or an F1 preset)")
        segments(request, self.video.sections(request.seconds), self.video)

    def layout(self, gen: Sections) -> list[Segment]:
        """``gen``'s segments (a pure function of its request: nothing to checkpoint)."""
        return segments(gen.request, gen.total_sections, self.video)

    def locate(self, gen: Sections, index: int) -> tuple[list[Segment], int, int]:
        """``(segments, the segment of section `index` (in the order generated), its place in that segment's order)``."""
        segs = self.layout(gen)
        for j, seg in enumerate(segs):
            if index < seg.first + seg.sections:
                return segs, j, index - seg.first
        raise ValueError(f"section {index} is past the video's {gen.total_sections} sections")

    def time_index(self, gen: Sections, index: int) -> int:
        """Where section ``index`` (in the order generated) lies in the video, in sections from its start."""
        segs, j, i = self.locate(gen, index)
        return segs[j].first + segs[j].sections - 1 - i

    def encode_end(self, gen: Sections, size: tuple[int, int], phase: AbstractContextManager) -> None:
        """The end image's and the keyframes' latents (times ``end_frame_strength``) and SigLIP embeddings.

        Without keyframes the end image's embedding is averaged into ``image_embeds``; with them each
        segment's average is kept (:data:`SEGMENT_EMBEDS`). ``size``: ``(width, height)`` generated at;
        ``phase``: the memory phase the encoders run in (entered once).
        """
        req = gen.request
        keys = list(getattr(req, "keyframes", None) or [])
        if not req.end_image and not keys:
            return
        images = [(k["image"], keyframe_field(req, k)) for k in keys] + ([(req.end_image, "--end-image")] if req.end_image else [])
        frames = [read_image(path, size[0], size[1], field=name)[None] for path, name in images]
        bb = self.backbone
        with torch.no_grad(), phase:
            encoded = [bb.encode_image(to_pixels(f)[0, :, 0].to(bb.device)).tensors for f in frames]
        tensors = gen.image_cond.tensors
        strength = 1.0 if req.end_frame_strength is None else float(req.end_frame_strength)
        start = tensors.get("image_embeds")
        embeds = [e.get("image_embeds") for e in encoded]
        if req.end_image:
            tensors["end_latents"] = encoded[-1]["start_latents"] * strength
            if start is not None and embeds[-1] is not None:
                tensors["image_embeds"] = (start + embeds[-1]) / 2
        if not keys:
            return
        tensors[KEYFRAME_ANCHORS] = torch.cat([e["start_latents"] for e in encoded[:len(keys)]]) * strength
        if start is None or any(e is None for e in embeds):
            return
        per_segment = []
        segs = segments(req, gen.total_sections, self.video)
        for j, seg in enumerate(segs):
            first = start if j == 0 else embeds[segs[j - 1].anchor]  # segment j starts where keyframe j - 1 is
            last = embeds[-1] if seg.anchor == END else None if seg.anchor is None else embeds[seg.anchor]
            per_segment.append(first if last is None else (first + last) / 2)
        tensors[SEGMENT_EMBEDS] = torch.cat(per_segment)

    # ----------------------------------------------------------- section
    def before(self, history: HistoryState, segs: list[Segment], j: int, start: int) -> torch.Tensor:
        """Segment ``j``'s start latent (host): the latent before section 0, else segment ``j - 1``'s last in time.

        ``start``: the latents before section 0 in the history.
        """
        if j == 0:
            return history.latents[:, :, start - 1 : start]
        at = start + segs[j - 1].first * self.n + self.n - 1  # the end of segment j - 1's first-generated section
        return history.latents[:, :, at : at + 1]

    def end_anchor(self, gen: Sections, seg: Segment) -> torch.Tensor | None:
        """The latent ``seg`` ends on (already times the strength), or None."""
        tensors = gen.image_cond.tensors
        if seg.anchor == END:
            return tensors.get("end_latents")
        return None if seg.anchor is None else tensors[KEYFRAME_ANCHORS][seg.anchor : seg.anchor + 1]

    def conditioning(self, gen: Sections) -> Conditioning:
        """The image condition of the next section: its segment's start latent, end anchor and SigLIP embedding."""
        tensors = dict(gen.image_cond.tensors)
        keyed, embeds = tensors.pop(KEYFRAME_ANCHORS, None), tensors.pop(SEGMENT_EMBEDS, None)
        if keyed is None and not gen.request.continue_video:  # one run from the start image: as it was encoded
            return gen.image_cond
        idx = gen.next_section
        segs, j, _ = self.locate(gen, idx)
        if embeds is not None:
            tensors["image_embeds"] = embeds[j : j + 1]
        end = self.end_anchor(gen, segs[j])
        tensors.pop("end_latents", None)
        if end is not None:
            tensors["end_latents"] = end
        if j > 0 or gen.request.continue_video:  # a latent of the history: the clip's last, or the last segment's
            start = gen.history.num_frames - self.n * idx
            tensors["start_latents"] = self.before(gen.history, segs, j, start).to(self.backbone.device, torch.float32)
        return Conditioning(tensors)

    def generated(self, history: HistoryState, done: int, start: int) -> torch.Tensor | None:
        """The first ``done`` generated sections' latents in time order (the last generated first), host.

        ``start``: where the first of them is in the history.
        """
        if done == 0:
            return None
        lat = history.latents[:, :, start : start + done * self.n]
        return torch.cat(list(reversed(lat.split(self.n, dim=2))), dim=2)

    def context(self, gen: Sections, mode: str, shape: tuple[int, ...]) -> Context:
        """The next section's context: its padding in its segment and the 19 latents after it (zeros past the segment)."""
        idx = gen.next_section
        segs, j, i = self.locate(gen, idx)
        seg = segs[j]
        _, c, _, h, w = shape
        post = torch.zeros(1, c, self.post, h, w)
        start = gen.history.num_frames - self.n * idx + seg.first * self.n
        after = self.generated(gen.history, i, start) if mode != "none" else None
        if after is not None:
            k = min(self.post, after.shape[2])
            post[:, :, :k] = after[:, :, :k]
        end = self.end_anchor(gen, seg)
        if i == 0 and end is not None:  # the end anchor is the first-generated section's 1x post latent
            post[:, :, :1] = end.to(post)
        gap = paddings(seg.sections)[i] * self.n
        return Context(post_latents=post.to(self.backbone.device, self.backbone.dtype), post_gap=gap)

    def decode(self, history: HistoryState, section: int, total: int, held: HeldSegment | None,
               start: int, before: torch.Tensor | None = None, all_float: bool = False) -> HeldSegment:
        """A segment so far after its ``section`` was generated: FramePack's decode and blend.

        ``all_float``: hold every frame as float (comparisons with a reference), not just the ones the next
        section's blend reads.

        ``total``: the segment's sections; ``start``: where its first-generated section is in the history;
        ``before``: its start latent (None: the history's latent before ``start``).
        """
        bb, n = self.backbone, self.n
        timed = self.generated(history, section + 1, start)
        last = section == total - 1
        if last:  # the first section in time goes after the start latent (FramePack prepends it)
            first = history.latents[:, :, start - 1 : start] if before is None else before
            timed = torch.cat([first, timed], dim=2)
        span = timed.shape[2] if section == 0 else 2 * n + int(last)
        video = bb.vae_decode(timed[:, :, :span].to(bb.device, bb.dtype), clamp=False).float().cpu()
        keep = video.shape[2] + (held.shape[2] if held else 0) if all_float else self.overlap
        if section == 0:
            return HeldSegment.split(video, keep)
        if held is None:
            raise ValueError(f"section {section}: the video decoded after section {section - 1} is missing")
        # the blend reads only the held video's first `overlap` frames: the float head
        return HeldSegment.split(soft_append(video, held.head, self.overlap), keep, held.final)

    def replay(self, history: HistoryState, done: int, total: int, start: int,
               before: torch.Tensor | None = None, all_float: bool = False) -> HeldSegment | None:
        """A segment's video held after ``done`` of its sections, decoded again from the history (after a resume)."""
        held = None
        for k in range(done):
            held = self.decode(history, k, total, held, start, before, all_float)
        return held

    def finish(self, gen: Sections, latents: torch.Tensor, ctx: Context) -> tuple[np.ndarray, float, int]:
        """Append and decode the section; send its segment's frames (after its start frame) with the segment's last.

        Returns the frames to send, when decoding ended and the history's token count.
        """
        idx = gen.next_section
        segs, j, i = self.locate(gen, idx)
        seg = segs[j]
        begin = gen.history.num_frames - self.n * idx  # latents before section 0
        start = begin + seg.first * self.n
        before = self.before(gen.history, segs, j, begin) if j else None
        if gen.held is None and i > 0:  # resumed: decode the segment's sections before again from the raw latents
            gen.held = self.replay(gen.history, i, seg.sections, start, before)
        tokens = gen.history.append(latents)
        gen.held = self.decode(gen.history, i, seg.sections, gen.held, start, before)
        t_decoded = time.perf_counter()
        if i < seg.sections - 1:
            _, _, _, h, w = gen.held.shape
            return np.zeros((0, h, w, 3), np.uint8), t_decoded, tokens
        frames, gen.held = gen.held.take(), None
        # FramePack keeps the decode's first (4k + 1) frames; frame 0 is the segment's start frame, already sent
        keep = (len(frames) - 1) // 4 * 4 + 1
        return frames[1:keep], t_decoded, tokens
