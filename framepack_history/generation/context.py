"""The DiT's context for one section: one builder for generation and training alike.

What the next-section DiT sees of the past is a function of the latents
before the section, the history tokens (``encoder`` mode), the frame context
(the toy's camera track) and the history mode. :class:`~.pipeline.Pipeline`
and Stage II's step both call :func:`section_context`, so a training step
feeds exactly what the generator feeds at the same point of a video
(``tests/training/test_context_parity.py`` compares the DiT's inputs bit
for bit). The start latent is not part of it: it travels in the image
conditioning (:meth:`Backbone.encode_image`), in generation the start
image's latent, in training the clip's first latent.

By backbone:

* with a context of its own (``Backbone.context_frames > 0``, FramePack-F1):
  ``window`` and ``encoder`` give the last ``context_frames`` latents
  (``Context.recent_latents``; the backbone lays them out at F1's 4x/2x/1x
  indices and puts zeros where a short history lacks them); ``window_frames``
  is not read;
* otherwise a sliding window of raw latents (``Context.window_latents``):
  ``window_frames`` of them in ``encoder`` mode (0 = none), ``window_frames``
  or else one section's worth in ``window`` mode (the baseline);
* ``encoder`` adds the history tokens of the whole past; ``none`` keeps nothing
  (F1 still reads its start anchor from the conditioning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framepack_history.backbones.base import Backbone, Context
from framepack_history.errors import InputError

HISTORY_MODES = ("encoder", "window", "none")


@dataclass
class Keyframes:
    """Images a section must lead to (keyframe-reading backbones, :attr:`Backbone.keyframes`).

    ``latents`` ``[B, C, K, h, w]`` clean; ``t`` ``[K]`` or ``[B, K]``: latent-frame times relative to the
    section's first frame (beyond it for a keyframe still to come); ``w``: their frame context, or None.
    """

    latents: torch.Tensor
    t: torch.Tensor
    w: torch.Tensor | None = None


def window_size(backbone: Backbone, mode: str, window_frames: int, section_latents: int) -> int:
    """How many of the latents before the section the context reads (the newest ones); 0 = none.

    Callers that hold a long history pass only these (:func:`section_context` reads no others).
    """
    if mode not in HISTORY_MODES:
        raise ValueError(f"history mode must be one of {', '.join(HISTORY_MODES)} (got {mode!r})")
    if mode == "none":
        return 0
    if backbone.context_frames > 0:
        return backbone.context_frames
    if mode == "window":
        return int(window_frames) or int(section_latents)  # the baseline: one section of raw latents
    return int(window_frames)


def section_context(
    backbone: Backbone,
    mode: str,
    past: torch.Tensor | None,
    *,
    history: tuple[torch.Tensor, torch.Tensor] | None = None,
    window_frames: int = 0,
    section_latents: int,
    past_w: torch.Tensor | None = None,
    target_w: torch.Tensor | None = None,
    keyframes: Keyframes | None = None,
) -> Context:
    """The :class:`Context` of the section that follows ``past``.

    ``past`` ``[B, C, T, h, w]``: raw latents before the section (at least their last
    :func:`window_size`; ``T`` may be 0 at the start of a video, None when nothing is read).
    ``history``: ``(tokens, positions)`` of the whole past (``encoder`` mode; ignored otherwise).
    ``past_w`` ``[T]`` or ``[B, T]``: the frame context of ``past`` (aligned with its end);
    ``target_w``: that of the section (:meth:`Backbone.frame_context`), passed through.
    ``keyframes``: the images the video must reach, in every history mode (a backbone without
    :attr:`Backbone.keyframes` refuses them).
    """
    n = window_size(backbone, mode, window_frames, section_latents)
    ctx = Context(target_w=target_w)
    if keyframes is not None:
        if not backbone.keyframes:
            raise InputError("keyframes", f"the {backbone.name} backbone cannot be given keyframes")
        ctx.keyframe_latents = keyframes.latents.to(backbone.device, backbone.dtype)
        ctx.keyframe_t, ctx.keyframe_w = keyframes.t, keyframes.w
    if mode == "encoder" and history is not None:
        ctx.history_tokens, ctx.history_positions = history
    if n == 0:
        return ctx
    if past is None:
        raise ValueError(f"history mode {mode!r} reads the last {n} latents before the section: give them")
    recent = past[:, :, max(0, past.shape[2] - n):].to(backbone.device, backbone.dtype)
    if backbone.context_frames > 0:
        # All of them, even none: the backbone pads a short history with zeros in front, as F1 starts.
        ctx.recent_latents = recent
        return ctx
    if recent.shape[2] == 0:
        return ctx
    ctx.window_latents = recent
    ctx.window_t0 = -float(recent.shape[2])
    if past_w is not None:
        w = past_w[..., past_w.shape[-1] - recent.shape[2]:]
        if bool(w.any()):  # all zeros = no frame context: leave it out, as the DiT reads None as 0
            ctx.window_w = w
    return ctx


def query_context(history: tuple[torch.Tensor, torch.Tensor], target_t: torch.Tensor,
                  target_w: torch.Tensor | None = None) -> Context:
    """A frame query's context (Stage I, recall): the history tokens alone, the targets at ``target_t`` inside the past.

    ``target_t`` is relative to the end of the history (the past is negative).
    """
    tokens, positions = history
    return Context(history_tokens=tokens, history_positions=positions, target_t=target_t, target_w=target_w)
