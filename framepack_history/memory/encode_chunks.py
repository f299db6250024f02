"""How a video to continue is split into VAE calls: one call holds one chunk, never the whole clip.

Pure arithmetic, shared by the encode (:mod:`framepack_history.generation.continuation`)
and the planner, whose ``vae_encode`` row traces the largest call this layout makes.
It lives with the planner because the split exists to bound device memory, and the
planner may not import generation.

Three kinds of VAE, by how a whole clip would be encoded in one call:

* **frame by frame** (temporal scale 1 and no causal first frame, the toy's
  space-to-depth): every frame is its own latent, so any split is exact;
* **causal, in temporal tiles of its own** (diffusers' ``AutoencoderKLHunyuanVideo``
  with ``use_framewise_encoding``, its default): a clip longer than
  ``tile_sample_min_num_frames`` is encoded as independent tiles of ``min + 1``
  frames every ``tile_sample_stride_num_frames`` frames (each tile its own clip,
  first frame alone), every tile but the first loses its first latent, and a
  tile's first ``blend = (min - stride) / 4`` latents are cross-faded with the
  tile before (``blend`` is 1 by default, a plain copy of the earlier tile's
  last latent). A chunk that starts on a tile boundary contains exactly the
  clip's own tiles, so its latents from ``blend + 1`` on are the whole clip's,
  bit for bit; a chunk ends one latent into the tile it cuts short (the only
  one it gives is the cross-fade's copy from the tile before), and the next
  chunk starts on that tile. The encoder is not causal in the strict sense
  (its GroupNorm statistics span a tile), which is why chunks follow the
  tiles instead of cutting anywhere;
* **causal, a whole clip at once** (framewise encoding turned off): GroupNorm
  spans the whole clip, so no split is exact; the same tile-aligned chunks
  are used (each chunk its own clip, as FramePack-Studio encodes a video in
  batches) and ``tests/generation/test_continuation.py`` measures the difference.

Only the latents a history mode reads are encoded (``keep``: the last ones, or
None for all): a chunk whose latents are all older is never made.

A causal VAE gives ``1 + (F - 1) // 4`` latents for ``F`` frames and the frames
past the last whole group of 4 only shift its statistics, so a clip is cut to
``1 + 4k`` frames *at its front* (:func:`first_frame`): its last latent then
ends on its last frame, where the continuation begins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the VAE's own temporal tiles one call encodes (about 1.8 s at 30 fps, 53 frames with diffusers' defaults)
CHUNK_TILES = 4
#: frames per call for a VAE without temporal tiles (frame by frame, or a whole clip at once)
CHUNK_FRAMES = 48
#: diffusers' AutoencoderKLHunyuanVideo defaults: tiles of 16 + 1 frames every 12
DEFAULT_TILES = (17, 12)


@dataclass(frozen=True)
class Chunk:
    """One VAE call: pixel frames ``[start, stop)`` of the (cut) clip, and which of its latents to keep."""

    start: int
    stop: int
    keep_from: int  # of the call's own latents, the first kept
    keep_to: int  # past the last kept

    @property
    def frames(self) -> int:
        return self.stop - self.start

    @property
    def latents(self) -> int:
        return self.keep_to - self.keep_from


def vae_tiles(vae: Any) -> tuple[int, int] | None:
    """``(frames, stride)`` of the temporal tiles ``vae`` encodes a long clip in, or None when it encodes it whole."""
    if not getattr(vae, "use_framewise_encoding", False):
        return None
    return int(vae.tile_sample_min_num_frames) + 1, int(vae.tile_sample_stride_num_frames)


def first_frame(frames: int, temporal_scale: int, causal: bool) -> int:
    """The first frame of a ``frames``-long clip that is encoded: a causal VAE's clip is cut to ``1 + k * scale``."""
    if frames <= 0:
        return 0
    return (frames - 1) % temporal_scale if causal else frames % temporal_scale


def latent_count(frames: int, temporal_scale: int, causal: bool) -> int:
    """Latents of a (cut) clip of ``frames`` frames."""
    if frames <= 0:
        return 0
    return 1 + (frames - 1) // temporal_scale if causal else frames // temporal_scale


def exact(temporal_scale: int, causal: bool, tiles: tuple[int, int] | None) -> bool:
    """Whether the chunks give the one-call latents bit for bit (see the module docstring)."""
    if not causal:
        return True
    return tiles is not None and _tile_layout(temporal_scale, tiles) is not None


def _tile_layout(scale: int, tiles: tuple[int, int]) -> tuple[int, int, int] | None:
    """``(tile frames, stride frames, blend latents)`` when the tiles follow the layout the chunks assume."""
    size, stride = tiles
    if stride <= 0 or stride % scale or (size - 1) % scale:
        return None
    blend = (size - 1) // scale - stride // scale
    return (size, stride, blend) if 0 <= blend <= stride // scale else None


def chunks(frames: int, temporal_scale: int, causal: bool, tiles: tuple[int, int] | None,
           keep: int | None = None, per_call: int = CHUNK_TILES) -> list[Chunk]:
    """The calls that encode the last ``keep`` latents (None: all) of a clip of ``frames`` frames.

    ``frames`` counts the clip after :func:`first_frame` has cut it; chunk frames index that cut clip.
    ``tiles`` is :func:`vae_tiles` of the VAE (None: it encodes a clip whole). The kept latents of the
    chunks, joined, are the clip's last ``keep`` latents in order.
    """
    total = latent_count(frames, temporal_scale, causal)
    if total == 0:
        return []
    first = 0 if keep is None else max(0, total - keep)  # the first latent wanted, of the whole clip
    if not causal:
        step = max(1, CHUNK_FRAMES // temporal_scale)  # latents per call
        return [Chunk(k * temporal_scale, min(total, k + step) * temporal_scale, 0, min(total, k + step) - k)
                for k in range(first, total, step)]
    layout = _tile_layout(temporal_scale, tiles or DEFAULT_TILES) or _tile_layout(temporal_scale, DEFAULT_TILES)
    size, stride, blend = layout
    per_stride = stride // temporal_scale
    drop = blend + 1  # a chunk that starts past frame 0: its first latents are cross-faded with a tile it lacks
    back = 1 if blend > 1 else 0  # tiles the next chunk re-encodes, so its first kept latent is exact
    tile = 0 if first < drop else (first - drop) // per_stride  # the tile the first chunk starts on
    keep_from = first - per_stride * tile
    out: list[Chunk] = []
    while True:
        start = stride * tile
        stop = start + stride * (per_call - 1) + size
        if stop >= frames:  # the rest of the clip: tiles cut short by its end are the clip's own
            if keep_from < total - per_stride * tile:
                out.append(Chunk(start, frames, keep_from, total - per_stride * tile))
            return out
        keep_to = per_stride * per_call + 1 + min(blend, 1)  # up to the first latent of the tile it cuts short
        out.append(Chunk(start, stop, keep_from, keep_to))
        nxt = tile + per_call - back
        keep_from = per_stride * (tile - nxt) + keep_to
        tile = nxt


def largest_call(chunk_list: list[Chunk]) -> int:
    """Pixel frames of the longest call (0 for none)."""
    return max((c.frames for c in chunk_list), default=0)
