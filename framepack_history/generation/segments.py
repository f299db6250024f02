"""The segments keyframes cut a video into on FramePack's original model's loop (``model.loop = "inverted"``).

Pure arithmetic on the request and the preset's video settings, no torch: admission refuses a keyframe
that would leave a segment empty before a job is queued, and :mod:`.inverted` runs the segments.
"""

from __future__ import annotations

from dataclasses import dataclass

from framepack_history.config.presets import VideoSpec
from framepack_history.config.request import GenerationRequest, keyframe_field, keyframe_name
from framepack_history.errors import InputError

#: :attr:`Segment.anchor` of a segment that ends on the end image
END = "end"


@dataclass(frozen=True)
class Segment:
    """One inverted run: the video's sections ``[first, first + sections)`` (time order and generation order
    agree between segments: segment after segment, each drawn from its end)."""

    first: int
    sections: int
    #: what it ends on: a keyframe (its index in ``request.keyframes``), the end image (:data:`END`), or nothing
    anchor: int | str | None


def segments(request: GenerationRequest, total: int, video: VideoSpec) -> list[Segment]:
    """The segments of a ``total``-section video: cut at its keyframes, each rounded to a section boundary.

    A keyframe at time ``t`` ends the segment at section boundary ``round(t * fps / section_frames)``
    (halves to even, as :meth:`VideoSpec.sections` counts the video's sections). One that leaves a
    segment empty (rounds to 0, to the boundary of the keyframe before it, or to the video's end where
    the end image is) is refused naming it; one that rounds to the video's end is its end anchor.
    """
    step = video.section_frames / video.fps
    out: list[Segment] = []
    first = 0
    for k, key in enumerate(getattr(request, "keyframes", None) or []):
        b = round(float(key["time"]) * video.fps / video.section_frames)
        where = None
        if b <= 0:
            where = "the video's start"
        elif b <= first:
            where = f"{b * step:g}s, as the keyframe before it does"
        elif b > total or (b == total and request.end_image):
            where = f"the video's end ({total * step:g}s)" + (", where the end image is" if request.end_image else "")
        if where is not None:
            raise InputError(keyframe_field(request, key),
                             f"{keyframe_name(key)}: the original model makes the video in whole sections of {step:g}s "
                             f"between keyframes; this one rounds to {where}, which leaves a segment with no section "
                             f"(keep keyframes at least {step:g}s apart, and from the video's start and end image)")
        out.append(Segment(first, b - first, k))
        first = b
    if first < total:
        out.append(Segment(first, total - first, END if request.end_image else None))
    return out
