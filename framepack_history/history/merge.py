"""How a history-token cap merges groups: the budget, the merge rules, and one step of the layout.

Used by :class:`~framepack_history.history.layout.CappedLayout`, the one layout generation
(:class:`~framepack_history.history.state.HistoryState`) and training (:mod:`framepack_history.training.capped`)
share, so both make the same merges. A layout is a list of segments ``[first fine group, fine groups covered, tokens or
None, sum of their raw latents over time [C, H, W] or None]``, oldest first. No encoder here.
"""

from __future__ import annotations

import torch

from typing import Callable

from framepack_history.errors import InputError

#: whether a segment must never be merged (pinned by the artist); None: any may merge
Pinned = Callable[[list], bool] | None

#: the fewest complete groups a cap may allow (half of them stay at full detail)
MIN_CAP_GROUPS = 8


def require_cap(cap: int, tokens_per_group: int, size: tuple[int, int], field: str) -> None:
    """An :class:`InputError` naming ``field`` when ``cap`` allows fewer groups than a job may use at ``size``."""
    least = (MIN_CAP_GROUPS + 1) * tokens_per_group
    if cap < least:
        raise InputError(field, f"{cap} is below the least cap at {size[0]}x{size[1]}, {least} tokens "
                                f"({MIN_CAP_GROUPS + 1} token groups of {tokens_per_group}); 0 = no cap")


def merge_oldest(segs: list[list], budget: int, costs: dict | None = None, pinned: Pinned = None) -> None:
    """One merge: the two oldest segments of a level become one of the next level (tokens ``None``: to encode).

    A level-``l`` segment covers ``2**l`` fine groups; ``costs`` is unused (the choice reads only levels).

    Level 0 gives way while it would keep at least half the budget (recent history keeps that much
    detail); then the finest older level with two segments; level 0 again only when no other can.
    Levels never increase towards the present, so the two oldest of a level are neighbours.
    ``pinned`` segments never merge (they count against the budget): the two oldest neighbours of the
    level, both unpinned, merge instead, else the next level in that order.
    """
    counts: dict[int, int] = {}
    for seg in segs:
        if pinned is not None and pinned(seg):
            continue
        lv = seg[1].bit_length() - 1
        counts[lv] = counts.get(lv, 0) + 1
    coarse = sorted(lv for lv, n in counts.items() if lv > 0 and n >= 2)
    if counts.get(0, 0) - 2 >= budget // 2:  # merging two still leaves half the budget at level 0
        order = [0, *coarse]
    else:
        order = [*coarse, *([0] if counts.get(0, 0) >= 2 else [])]
    for level in order:
        i = next((j for j in range(len(segs) - 1) if segs[j][1] == segs[j + 1][1] == 2**level
                  and (pinned is None or not (pinned(segs[j]) or pinned(segs[j + 1])))), None)
        if i is not None:
            segs[i : i + 2] = [[segs[i][0], 2 ** (level + 1), None, None]]
            return
    raise ValueError(f"a history of {len(segs)} token groups cannot be merged below {budget}"
                     + (" (pinned groups never merge: pin less)" if pinned is not None else ""))


def ward_cost(a: list, b: list) -> float:
    """Ward's cost of merging segments ``a`` and ``b``: ``n_a n_b / (n_a + n_b) * |mean_a - mean_b|^2``.

    The means are of the raw latents over time (each segment keeps their sum), so the cost is the squared
    error that replacing both by one mean adds: it grows with the difference and with the frames it spans.
    """
    (_, na, _, sa), (_, nb, _, sb) = a[:4], b[:4]
    return float(((sa / na - sb / nb) ** 2).sum()) * na * nb / (na + nb)


def merge_similar(segs: list[list], budget: int, costs: dict[tuple[int, int, int], float] | None = None,
                  pinned: Pinned = None) -> None:
    """One merge: of all but the newest ``budget // 2`` segments, the two neighbours that differ least become one.

    The least :func:`ward_cost` wins, ties to the oldest pair. Held, repeated views cost nothing to merge
    while a view seen once (and unlike its neighbours) keeps full detail however old it is; the newest
    ``budget // 2`` never merge (recent history keeps full detail). ``costs``: a memo of the pairs weighed
    before, by ``(first group, n_a, n_b)`` (a segment's span fixes its frames, so a cost never changes).
    ``pinned`` segments never merge: only pairs of two unpinned neighbours are weighed.
    """
    older = len(segs) - budget // 2
    free = [i for i in range(max(0, older - 1))
            if pinned is None or not (pinned(segs[i]) or pinned(segs[i + 1]))]
    if not free:
        raise ValueError(f"a history of {len(segs)} token groups cannot be merged below {budget}"
                         + (" (pinned groups never merge: pin less)" if pinned is not None else ""))
    memo = {} if costs is None else costs

    def cost(i: int) -> float:
        key = (segs[i][0], segs[i][1], segs[i + 1][1])
        if key not in memo:
            memo[key] = ward_cost(segs[i], segs[i + 1])
        return memo[key]

    i = min(free, key=cost)
    for j in range(max(0, i - 1), min(i + 2, len(segs) - 1)):  # the pairs this merge ends
        memo.pop((segs[j][0], segs[j][1], segs[j + 1][1]), None)
    (first, na, _, sa), (_, nb, _, sb) = segs[i][:4], segs[i + 1][:4]
    segs[i : i + 2] = [[first, na + nb, None, sa + sb]]


#: the merge rules a cap can use, by name (the default first)
MERGE_RULES = {"similar": merge_similar, "oldest": merge_oldest}


def cap_groups(max_tokens: int, tokens_per_group: int) -> int:
    """Complete groups a cap allows: the cap less one group kept free for the partial last group.

    A cap below :data:`MIN_CAP_GROUPS` complete groups is a ``ValueError`` (half of them stay at full detail).
    """
    groups = max_tokens // tokens_per_group - 1
    if groups < MIN_CAP_GROUPS:
        raise ValueError(f"max_tokens {max_tokens} holds {groups + 1} token groups of {tokens_per_group} tokens; "
                         f"at least {(MIN_CAP_GROUPS + 1) * tokens_per_group} are needed")
    return groups


def group_sum(frames: torch.Tensor) -> torch.Tensor:
    """The sum over time of one group's raw latents ``[..., C, g, H, W] -> [C, H, W]`` (batch of one).

    Summed in float64 after the conversion: the result must not depend on how the frames lie in
    memory (one chunk or several), or a resume could replay different merges.
    """
    return frames.double().sum(-3).reshape(frames.shape[-4], *frames.shape[-2:])


def add_group(segs: list[list], costs: dict, first: int, tokens: torch.Tensor | None, total: torch.Tensor | None,
              budget: int, rule: str, pinned: Pinned = None) -> None:
    """One more complete group at full detail; merge by ``rule`` until the layout fits ``budget`` again.

    ``pinned``: segments that never merge (none given: training's replays, and every job without pins).
    """
    segs.append([first, 1, tokens, total])
    while len(segs) > budget:
        MERGE_RULES[rule](segs, budget, costs, pinned)
