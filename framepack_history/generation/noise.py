"""The noise each section is denoised from, drawn so that a resumed video gets the same noise.

Two ways, by backbone: one generator per video, seeded once with the request's seed and advanced
section by section (FramePack-F1, as FramePack's demo; the generator is checkpointed with the
:class:`~.state.Generation`), or a generator of its own per section, seeded by ``(seed, index)``.
"""

from __future__ import annotations

import torch

from framepack_history.backbones.base import Backbone
from framepack_history.generation.state import Generation


def section_noise(shape: tuple[int, ...], seed: int, index: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise for one section: float32 ``randn`` from ``generator`` (the video's, advanced by this draw),
    else from a generator of its own, independent of every other section (resume-safe as it is)."""
    if generator is not None:  # FramePack's sample_hunyuan: torch.randn(shape, generator=g, device=g.device)
        return torch.randn(shape, generator=generator, device=generator.device)
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))
    return torch.randn(shape, generator=g)


def video_noise_generator(gen: Generation, backbone: Backbone) -> torch.Generator | None:
    """The generation's one noise generator where ``backbone`` draws noise per video (FramePack's seed), else None.

    Seeded with the request's seed before the first section, as FramePack's demo does
    (``torch.Generator("cpu").manual_seed(seed)``); nothing else draws from it, so section
    ``k`` gets the ``k``-th draw. A resumed generation brings it back from its checkpoint;
    one checkpointed without it (a job begun before videos drew their noise this way) goes
    on with per-section noise, the noise it began with.
    """
    if gen.noise_generator is None and gen.next_section == 0 and backbone.noise_per_video:
        gen.noise_generator = torch.Generator("cpu").manual_seed(int(gen.request.seed))
    return gen.noise_generator
