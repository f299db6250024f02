"""Capped histories in training: the layout :class:`~framepack_history.history.state.HistoryState` holds under
``history.max_tokens``, built from a clip's latents and encoded with gradients.

A generator with a cap reads coarse token groups (many groups' raw latents averaged over time, then
encoded) at the true time positions of the frames they cover, often minutes back. A DiT trained only on
short, full-detail histories reads neither well, so Stage II can train on the same layouts: the merges are
replayed group by group by the generator's own :class:`~framepack_history.history.layout.CappedLayout` (so
train and generate agree), then every group of every
sample is encoded in one encoder call (the encoder is group-local in time, so this equals encoding them
one by one, as the generator does).
"""

from __future__ import annotations

import torch

from framepack_history.backbones.base import move_by_frame_context
from framepack_history.history.encoder import HistoryEncoder
from framepack_history.history.layout import CappedLayout, Span, pool, span_means


def cap_layout(latents: torch.Tensor, frames_per_group: int, budget: int, rule: str) -> list[Span]:
    """``(first fine group, fine groups covered)`` of history ``latents [C, T, H, W]`` capped at ``budget`` groups.

    Groups are added one at a time and merged while the layout is over budget, exactly as
    :meth:`HistoryState.append` does, so the result is the layout a job holds after ``T`` frames.
    """
    return [(int(s[0]), int(s[1])) for s in CappedLayout.replay(latents, frames_per_group, budget, rule).segs]


def capped_history(encoder: HistoryEncoder, latents: torch.Tensor, track: torch.Tensor | None, budget: int,
                   rule: str, layout_from: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[B, N, D]`` and positions ``[B, N, 3]`` of capped histories ``latents [B, C, T, H, W]``.

    ``layout_from`` (default ``latents``) decides the merges: Stage I's frame queries encode a noised
    history but a job lays out its clean one. ``track [B, T]``: camera offsets (canvas positions) or None.
    Positions follow :meth:`HistoryState.tokens`: each token frame at the centre of the frames it covers
    (a partial last group padded to a whole one), time relative to the end of the history.
    """
    b, _, t = latents.shape[:3]
    g, pt = encoder.frames_per_group, encoder.config.patch_size[0]
    source = latents if layout_from is None else layout_from
    layouts = [CappedLayout.replay(source[i], g, budget, rule) for i in range(b)]
    if layouts[0].segs:  # every sample has as many complete groups (t // g, capped alike)
        # pooled from ``latents`` (what is encoded), laid out by ``source``
        groups = torch.stack([pool(latents[i, :, f * g : (f + n) * g], g, n) for i in range(b) for f, n, *_ in layouts[i].segs])
        grid = encoder(groups).unflatten(0, (b, -1)).squeeze(2)  # [B, S, h, w, D]
    else:  # shorter than one group: the partial group alone, as a job holds it
        grid = encoder(latents[:, :, :0])
    done = t // g * g
    if done < t:  # the partial last group, replicate-padded by the encoder
        grid = torch.cat([grid, encoder(latents[:, :, done:])], dim=1)
    spans = [lay.spans(t - done if done < t else None) for lay in layouts]
    _, s_len, h, w, d = grid.shape
    base = encoder.positions(1, h, w)[0].to(latents.device)
    pos = base.expand(b, s_len, h, w, 3).clone()
    starts = torch.tensor([[a for a, _ in sp] for sp in spans], dtype=torch.float32, device=latents.device)
    sizes = torch.tensor([[max(n, g) for _, n in sp] for sp in spans], dtype=torch.float32, device=latents.device)
    pos[..., 0] = (starts / pt + (sizes / pt - 1) / 2 - t / pt)[:, :, None, None]
    if track is not None:
        move_by_frame_context(pos, torch.stack([span_means(track[i], spans[i]) for i in range(b)]))
    return grid.reshape(b, s_len * h * w, d), pos.reshape(b, -1, 3)
