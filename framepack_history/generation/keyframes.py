"""A request's keyframes at work: read and VAE-encoded once per run, and the next one a section reads.

Time 0 is the frame the video goes on from (the start image, or a continued video's last frame), so a
keyframe at ``T`` s is the frame the video shows ``round(T * fps)`` frames after it: on the toy, the
true world's frame at ``T`` s. A forward loop reads the first keyframe at or after a section's first
frame as a clean latent (:class:`~.context.Keyframes`); FramePack's original model's loop takes them
its own way (:mod:`.inverted`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

import torch

from framepack_history.backbones.base import Backbone
from framepack_history.config.presets import VideoSpec
from framepack_history.errors import InputError
from framepack_history.generation.context import Keyframes
from framepack_history.generation.pixels import to_pixels
from framepack_history.generation.state import Generation
from framepack_history.generation.video import read_image


def keyframe_latents(gen: Generation, backbone: Backbone, video: VideoSpec, section_latents: int,
                     size: tuple[int, int], phase: Callable[[str], AbstractContextManager]) -> list[tuple[int, torch.Tensor]]:
    """``gen``'s keyframes as ``(latent frame index, clean latent)``, read and VAE-encoded once per run.

    Kept in ``gen.keyframes``; ``size``: the ``(width, height)`` ``gen`` is generated at; ``phase(name)``:
    the memory phase the VAE encode runs in. A backbone that cannot read keyframes
    (:attr:`Backbone.keyframes`) refuses them, naming ``--keyframe``.
    """
    if gen.keyframes is not None:
        return gen.keyframes
    given = gen.request.keyframes or []
    if not given:
        gen.keyframes = []
        return gen.keyframes
    if not backbone.keyframes:
        raise InputError("--keyframe", f"the {backbone.name} backbone cannot lead a video to keyframes (it generates "
                                       "forward and cannot anchor a frame to come); use a preset that can")
    w, h = size
    # latents before the first section (a resume holds more: its sections' latents come off)
    before = gen.history.num_frames - gen.next_section * section_latents
    out = []
    for kf in given:
        frame = read_image(kf["image"], w, h, field="--keyframe")
        with torch.no_grad(), phase("vae_encode"):
            latent = backbone.vae_encode(to_pixels(frame[None])).to("cpu")
        after = round(float(kf["time"]) * video.fps) // backbone.geometry.temporal_scale  # latent frames after time 0
        out.append((max(0, before - 1 + after), latent))
    gen.keyframes = out
    return out


def next_keyframe(gen: Generation, latents: list[tuple[int, torch.Tensor]], backbone: Backbone, video: VideoSpec,
                  width: int) -> Keyframes | None:
    """The first of ``latents`` at or after the next section's first frame, at its time relative to it; None once all have passed.

    Its frame context continues the camera track the storyboard gives the frames up to it, as the
    section's own (:meth:`Backbone.frame_context`; ``width``: the width ``gen`` is generated at).
    """
    first = gen.history.num_frames
    ahead = [(i, lat) for i, lat in latents if i >= first]
    if not ahead:
        return None
    index, latent = ahead[0]
    offset = index - first
    track = backbone.frame_context(gen.storyboard, gen.next_section * video.section_frames, offset + 1, video.fps,
                                   width, gen.history.frame_context)
    return Keyframes(latent, torch.tensor([float(offset)]), None if track is None else track[-1:])
