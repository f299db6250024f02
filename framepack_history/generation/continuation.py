"""A video to continue, encoded into the history chunk by chunk.

Up to ``MAX_CONTINUE_SECONDS`` of the uploaded clip become history. Encoding it
in one VAE call would put the whole clip on the device at once (30 s at 480x832
is 2 GiB of bfloat16 pixels, 4 GiB of float32 on the host first) next to the
VAE's activations; here each call holds one chunk (:mod:`~framepack_history.memory.encode_chunks`:
aligned with the VAE's own temporal tiles, so the latents are those of the one
call, bit for bit, for diffusers' HunyuanVideo VAE and for frame-by-frame VAEs).
The host converts to float only the chunk it is about to encode, and each chunk's
latents leave the device before the next call.

Only what the history mode reads is encoded (:func:`latents_read`): ``encoder``
codes the whole past into tokens, so all of it; ``window`` reads the last
``context_frames`` latents (FramePack-F1: 19) or its window; ``none`` reads only
the last latent, which F1's decode blends the first section from. The history
then starts with fewer latents than the clip has. Nothing counts from the
clip's start: the overlap decode needs one latent before section 0
(``OverlapDecoder``'s ``start_frames`` is only compared with 1), the frame
context continues from the last value, and the memory inspector, which maps
video time into the history, only accepts ``encoder`` jobs. The player still
shows the whole clip (:class:`~.pipeline.ContextFrames`), as cut to ``1 + 4k``
frames for a causal VAE (:func:`~framepack_history.memory.encode_chunks.first_frame`).
"""

from __future__ import annotations

import numpy as np
import torch

from framepack_history.backbones.base import Backbone
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.video import MAX_CONTINUE_SECONDS, video_frames
from framepack_history.memory.encode_chunks import Chunk, chunks, first_frame, vae_tiles


def planned_frames(request: GenerationRequest, fps: int) -> int:
    """Frames of the video ``request`` continues, for its plan (0 = none), from the file's duration.

    Estimated before the frames are read, and the same again when the job resumes.
    """
    if not request.continue_video:
        return 0
    most = int(MAX_CONTINUE_SECONDS * fps)
    try:
        return video_frames(request.continue_video, fps, most)
    except InputError:  # gone since the job began (a resume no longer reads it): plan the most a start reads
        return most


def latents_read(backbone: Backbone, mode: str, window_frames: int, section_latents: int) -> int | None:
    """How many of the clip's last latents the history mode reads (None: all of them)."""
    if mode == "encoder":
        return None
    # the context's window (Pipeline.context): the backbone's own (F1: 19), else the window or one section
    n = (backbone.context_frames or int(window_frames) or int(section_latents)) if mode == "window" else 0
    # at least the last one: the first section is decoded (and F1 blends it) from the latent before it
    return max(1, n)


def cut(backbone: Backbone, frames: np.ndarray) -> np.ndarray:
    """The clip's frames that are encoded (and shown): a causal VAE's ``1 + 4k``, the newest ones."""
    geo = backbone.geometry
    return frames[first_frame(len(frames), geo.temporal_scale, geo.causal_first_frame):]


def clip_chunks(backbone: Backbone, frames: int, keep: int | None) -> list[Chunk]:
    """The VAE calls that encode the last ``keep`` latents of a (cut) clip of ``frames`` frames on ``backbone``."""
    geo = backbone.geometry
    return chunks(frames, geo.temporal_scale, geo.causal_first_frame, vae_tiles(getattr(backbone, "vae", None)), keep)


def chunk_pixels(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> ``[1, 3, F, H, W]`` float32 in ``[-1, 1]`` (one chunk: the clip stays uint8)."""
    x = torch.from_numpy(np.array(frames, dtype=np.float32)) / 127.5 - 1  # a copy: a read-only clip stays as it is
    return x.permute(3, 0, 1, 2).unsqueeze(0)


@torch.no_grad()
def encode_clip(backbone: Backbone, frames: np.ndarray, keep: int | None = None) -> torch.Tensor:
    """Latents ``[1, C, T, h, w]`` (float32, host) of the last ``keep`` latents (None: all) of the cut ``frames``.

    ``frames`` is ``uint8 [F, H, W, 3]`` as :func:`cut` returns it; one ``vae_encode`` call per chunk.
    """
    parts = []
    for c in clip_chunks(backbone, len(frames), keep):
        latents = backbone.vae_encode(chunk_pixels(frames[c.start:c.stop]))
        parts.append(latents[:, :, c.keep_from:c.keep_to].float().cpu())
        del latents  # the call's latents leave the device before the next call
    return torch.cat(parts, dim=2)
