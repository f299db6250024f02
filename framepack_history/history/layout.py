"""The layout a history-token cap keeps: which fine groups each token frame covers, merged as groups arrive.

One implementation for generation (:class:`~framepack_history.history.state.HistoryState`, groups added as
sections end) and training (:mod:`framepack_history.training.capped`, the same layouts replayed from a
clip), so both make the same merges and place the same token frames. The merge rules themselves
(``similar``, ``oldest``) and the budget are :mod:`.merge`. No encoder here: a caller encodes what
:func:`pool` gives for each coarse segment.
"""

from __future__ import annotations

from typing import Callable

import torch

from framepack_history.history.merge import add_group, group_sum

#: ``(first, count)``: of fine groups in a layout's segments, of latent frames in its spans
Span = tuple[int, int]


def group_means(values: torch.Tensor, group: int) -> torch.Tensor:
    """Mean of each run of ``group`` values along the last axis (a shorter last run: its own mean)."""
    t = values.shape[-1]
    groups = -(-t // group)
    pad = groups * group - t
    x = torch.nn.functional.pad(values.float(), (0, pad))
    counts = torch.full((groups,), float(group))
    counts[-1] -= pad
    return x.unflatten(-1, (groups, group)).sum(-1) / counts


def span_means(values: torch.Tensor, spans: list[Span]) -> torch.Tensor:
    """Mean of per-frame ``values [T]`` over each span ``(first latent frame, frames)``: one per token frame."""
    return torch.stack([values[a : a + n].float().mean() for a, n in spans])


def pool(frames: torch.Tensor, frames_per_group: int, k: int) -> torch.Tensor:
    """``k`` groups' raw latents ``[..., C, k * g, H, W]`` averaged over time by ``k`` into one ``[..., C, g, H, W]``.

    What a merged segment's one token frame is encoded from (the encoder then sees a single group).
    """
    return frames.unflatten(-3, (frames_per_group, k)).mean(-3) if k > 1 else frames


class CappedLayout:
    """The complete groups of a capped history, oldest first, merged by ``rule`` as they are added.

    ``segs`` are :mod:`.merge`'s segments ``[first fine group, fine groups covered, tokens or None, sum of
    their raw latents over time or None]``: one fine group is full detail, more is a merge (its tokens None
    until the caller encodes them). ``frames(a, b)`` gives raw latent frames ``a .. b-1`` as
    ``[..., C, b - a, H, W]``; only ``similar`` reads them (for its sums).

    Groups are added one at a time, so the layout depends on the raw latents (with ``oldest``, on the
    group count alone), never on how they arrived; the sums are float64, independent of memory layout.
    """

    def __init__(self, rule: str, frames_per_group: int, frames: Callable[[int, int], torch.Tensor]) -> None:
        self.rule = rule
        self.frames_per_group = frames_per_group
        self.frames = frames
        self.segs: list[list] = []
        #: fine groups added, merged or not
        self.groups = 0
        # ``similar``'s costs of the neighbour pairs it has weighed, by ``(first group, n_a, n_b)``: one merge
        # changes two pairs, so each merge weighs two (a resume replays hundreds of merges)
        self.costs: dict[tuple[int, int, int], float] = {}
        #: latent frame ranges ``[a, b)`` whose groups never merge (the artist's pins; training gives none)
        self.pins: list[tuple[int, int]] = []

    @classmethod
    @torch.no_grad()
    def replay(cls, latents: torch.Tensor, frames_per_group: int, budget: int, rule: str) -> CappedLayout:
        """The layout of history ``latents [C, T, H, W]``: its complete groups added one by one under ``budget``."""
        layout = cls(rule, frames_per_group, lambda a, b: latents[:, a:b])
        for _ in range(int(latents.shape[1]) // frames_per_group):
            layout.add(None, budget)
        return layout

    def add(self, tokens: torch.Tensor | None, budget: int) -> None:
        """One more complete group at full detail (``tokens`` None: filled in later); merge until ``budget`` holds."""
        first, g = self.groups, self.frames_per_group
        total = group_sum(self.frames(first * g, (first + 1) * g)) if self.rule == "similar" else None
        add_group(self.segs, self.costs, first, tokens, total, budget, self.rule, self._pinned if self.pins else None)
        self.groups += 1

    def _pinned(self, seg: list) -> bool:
        """Whether segment ``seg``'s latent frames overlap a pinned range."""
        g = self.frames_per_group
        a, b = seg[0] * g, (seg[0] + seg[1]) * g
        return any(p < b and a < q for p, q in self.pins)

    def full_detail(self, since: int = 0) -> list[list]:
        """The segments still at full detail from fine group ``since`` on (merged groups may lie between them)."""
        return [seg for seg in self.segs if seg[1] == 1 and seg[0] >= since]

    def spans(self, partial: int | None = None) -> list[Span]:
        """``(first latent frame, frames)`` of every token frame: the segments, then a partial last group.

        ``partial``: latent frames of the partial group after the complete ones (None: there is none).
        """
        g = self.frames_per_group
        spans = [(seg[0] * g, seg[1] * g) for seg in self.segs]
        if partial is not None:
            spans.append((self.groups * g, partial))
        return spans

    def runs(self, partial: int | None = None) -> list[tuple[int, int, int]]:
        """``(first latent frame, frames, time reduction)`` of the layout's runs, oldest first.

        Consecutive full-detail token frames (the partial group among them) form one run of reduction 1;
        each merged segment is a run of its own (reduction = the fine groups it covers).
        """
        runs: list[tuple[int, int, int]] = []
        for i, (a, n) in enumerate(self.spans(partial)):
            k = int(self.segs[i][1]) if i < len(self.segs) else 1
            if runs and k == 1 and runs[-1][2] == 1:
                runs[-1] = (runs[-1][0], runs[-1][1] + n, 1)
            else:
                runs.append((a, n, k))
        return runs

    def reduction_at(self, frame: int) -> int:
        """How many fine groups the token frame holding latent ``frame`` covers (1: full detail)."""
        g = self.frames_per_group
        for first, n, *_ in self.segs:
            if first * g <= frame < (first + n) * g:
                return n
        return 1
