"""Resolution buckets: the size a start image or a continued video is generated at.

FramePack generates image-to-video at the bucket nearest the image's aspect
ratio, from a fixed list of sizes of about 640x640 pixels (portrait to
landscape). We use the same list and the same nearest-bucket rule, scaled to
the preset's pixel budget (``video.width * video.height``): at 832x480 the
list is FramePack's own, unchanged.
"""

from __future__ import annotations

import math

from framepack_history.config.presets import Preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.video import read_image, video_size

#: FramePack's 640 buckets as ``(height, width)``, landscape first; the order decides ties
#: (lllyasviel/FramePack, ``diffusers_helper/bucket_tools.py``, ``bucket_options[640]``).
REFERENCE_BUCKETS: tuple[tuple[int, int], ...] = (
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
)
#: every side a multiple of this: the HunyuanVideo VAE's 8 pixels per latent times the DiT's 2x2 patch
ALIGN = 16
#: wider or taller than this (long side / short side) is not a video frame: crop it first
MAX_ASPECT = 4.0
#: a start image may be enlarged at most this much per side (beyond it, the bucket is mostly blur)
MAX_UPSCALE = 4.0


def bucket_list(width: int, height: int, align: int = ALIGN) -> list[tuple[int, int]]:
    """FramePack's buckets ``(height, width)`` scaled to a ``width x height`` pixel budget.

    Each bucket keeps its aspect ratio as closely as ``align``-pixel steps allow
    without its area going over the budget; at the reference budget the list is
    FramePack's exactly.
    """
    budget = width * height
    out: list[tuple[int, int]] = []
    for bh, bw in REFERENCE_BUCKETS:
        size = _fit(bw / bh, budget, align)
        if size not in out:
            out.append(size)
    return out


def _fit(ratio: float, budget: int, align: int) -> tuple[int, int]:
    """The ``align``-multiple ``(h, w)`` with ``h * w <= budget`` nearest to ``w / h == ratio`` (ties: larger)."""
    h, w = math.sqrt(budget / ratio), math.sqrt(budget * ratio)
    hs = {max(align, math.floor(h / align) * align), math.ceil(h / align) * align}
    ws = {max(align, math.floor(w / align) * align), math.ceil(w / align) * align}
    fits = [(a, b) for a in hs for b in ws if a * b <= budget] or [(min(hs), min(ws))]
    return min(fits, key=lambda s: (abs(math.log(s[1] / s[0] / ratio)), -s[0] * s[1]))


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """FramePack's rule: the bucket minimising ``|h * bucket_w - w * bucket_h|``, the later one on a tie."""
    best, best_metric = buckets[0], math.inf
    for bh, bw in buckets:
        metric = abs(height * bw - width * bh)
        if metric <= best_metric:
            best, best_metric = (bh, bw), metric
    return best


def choose_size(preset: Preset, source: tuple[int, int] | None, field: str) -> tuple[int, int]:
    """``(width, height)`` to generate at, for a start image or video of ``source = (width, height)``.

    The preset's own size without a source or without buckets; else the
    nearest bucket. Sizes no bucket can serve raise :class:`InputError` on ``field``.
    """
    v = preset.video
    if source is None or not v.buckets:
        return v.width, v.height
    w, h = source
    if not (isinstance(w, int) and isinstance(h, int)) or w <= 0 or h <= 0:
        raise InputError(field, f"has no readable frame size (got {w!r}x{h!r})")
    aspect = max(w, h) / min(w, h)
    if aspect > MAX_ASPECT:
        raise InputError(field, f"is {w}x{h}, an aspect ratio of {aspect:.1f}:1; the limit is {MAX_ASPECT:g}:1 "
                                f"(the widest bucket is {max(b[1] for b in bucket_list(v.width, v.height))}x"
                                f"{min(b[0] for b in bucket_list(v.width, v.height))}): crop it first")
    bh, bw = nearest_bucket(h, w, bucket_list(v.width, v.height))
    if w * MAX_UPSCALE < bw or h * MAX_UPSCALE < bh:
        need_w, need_h = math.ceil(bw / MAX_UPSCALE), math.ceil(bh / MAX_UPSCALE)
        raise InputError(field, f"is {w}x{h}, too small for its {bw}x{bh} bucket: give at least {need_w}x{need_h} "
                                f"pixels (at most {MAX_UPSCALE:g}x enlargement)")
    return bw, bh


def source_size(request: GenerationRequest, fields: tuple[str, str] = ("--image", "--continue-video")) -> tuple[int, int] | None:
    """``(width, height)`` of the request's start image (upright) or video to continue; None for text-to-video.

    Reading it also checks the file: an unreadable one raises :class:`InputError` on its field.
    """

    if request.continue_video:
        return video_size(request.continue_video, fields[1])
    if request.image:
        img = read_image(request.image, None, None, field=fields[0])
        return img.shape[1], img.shape[0]
    return None


def resolve_size(request: GenerationRequest, preset: Preset,
                 fields: tuple[str, str] = ("--image", "--continue-video")) -> tuple[int, int]:
    """The request's ``(width, height)``; when it has none yet, its inputs' bucket, recorded in the request."""
    if request.width is None or request.height is None:
        field = fields[1] if request.continue_video else fields[0]
        request.width, request.height = choose_size(preset, source_size(request, fields), field)
    return request.width, request.height
