"""HistoryState: everything the generator remembers about the video so far.

* raw latents live on the **host** (they are only needed for the sliding
  window, for checkpoints and for resuming);
* the encoder's tokens live on the **device** and only grow: a new section
  is encoded alone and its tokens appended.

Groups of ``encoder.frames_per_group`` latent frames map to one token frame.
When a section does not end on a group boundary the last, partial group is
encoded from replicate-padded frames and *replaced* once the group fills up;
the few raw frames this needs are the only context ever re-read.

**Bounded history** (``max_tokens > 0``): tokens grow linearly with the
video, so a cap keeps them bounded. When the complete groups would pass the
cap, two neighbouring groups are replaced by one: the same encoder run on
their raw latents averaged over time by the number of groups they cover, so
one token frame stands for all of them. Which two is the merge rule's choice
(``merge``):

* ``similar`` (the default): the neighbours whose raw latents differ least,
  by Ward's cost ``n_a n_b / (n_a + n_b) * |mean_a - mean_b|^2`` on the
  latents' means over time ``[C, H, W]`` (``n``: fine groups covered), the
  squared error that replacing both by one mean adds. A held or repeated view
  costs almost nothing to merge, so it merges first; a view seen once, unlike
  its neighbours, keeps full detail however old it is (while cheaper merges
  remain), so a return to it later still finds it in detail.
* ``oldest``: the two oldest groups of the finest level that has to give way
  become one of the next level (``2**level`` groups), so detail falls with age.

Either way recent history keeps full detail: ``similar`` never merges the
newest ``budget // 2`` groups, ``oldest`` keeps at least half the budget at
level 0 while older levels can still merge. Coarse groups keep their true
place in time: each token sits at the centre of the frames it covers.

Groups are added one at a time and merged by the rule, so the layout depends
on the raw latents (with ``oldest``, on the group count alone), never on how
the appends were split, and a coarse group's tokens depend only on its frames.
A resume replays the same merges from the saved latents (the sums are taken
in float64, independent of how the frames lie in memory), so the state after a
resume is the same as without one. Checkpoint chunks name the group of each
full-detail token frame they hold: under ``similar`` merged groups can lie
between them. The layout itself is :class:`~.layout.CappedLayout`, which
training replays too.

**Frame context**: one value per latent frame that the backbone may ask the
history to keep (:meth:`Backbone.frame_context`; zeros where it gave none).
The history only stores it and places each token frame by the mean of its
frames' values (:func:`~framepack_history.backbones.base.move_by_frame_context`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from framepack_history.backbones.base import move_by_frame_context
from framepack_history.fsio import atomic_save_tensors
from framepack_history.history.encoder import HistoryEncoder
from framepack_history.history.layout import CappedLayout, group_means, pool, span_means
from framepack_history.history.merge import MERGE_RULES, MIN_CAP_GROUPS, cap_groups

__all__ = ["HistoryState", "MERGE_RULES", "MIN_CAP_GROUPS", "group_means"]

#: the chunk key the frame context is saved under (job folders have always named it after the toy's camera track)
CONTEXT_KEY = "track"


class HistoryState:
    """Raw latents (host) + compressed tokens (device) + their positions."""

    def __init__(self, encoder: HistoryEncoder | None, device: torch.device | str = "cpu", max_tokens: int = 0,
                 merge: str = "similar") -> None:
        self.encoder = encoder
        self.device = torch.device(device)
        #: the token cap (0 = none: the history grows with the video)
        self.max_tokens = int(max_tokens)
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 (got {max_tokens})")
        if merge not in MERGE_RULES:
            raise ValueError(f"merge must be one of {', '.join(MERGE_RULES)} (got {merge!r})")
        if self.max_tokens and getattr(encoder, "context_frames", 0):
            # a merged group has no one group before it to be coded against
            raise ValueError("a history-token cap needs an encoder without context_groups")
        #: which groups the cap merges: ``oldest`` (by age) or ``similar`` (the neighbours that differ least)
        self.merge = merge
        #: the artist's memory controls, as latent frame ranges ``[a, b)``: pinned groups never merge under the
        #: cap; forgotten token frames are left out of :meth:`tokens` (kept here, so clearing brings them back)
        self.pins: list[tuple[int, int]] = []
        self.forgets: list[tuple[int, int]] = []
        # Capped: the complete groups as the cap lays them out, tokens [1, 1, h, w, D] per segment.
        # (Uncapped, ``_done`` holds them.)
        self._cap = self._new_layout()
        # Raw latents on the host, one chunk per append (no copy of the past per section).
        self._chunks: list[torch.Tensor] = []
        self._frames = 0
        # Tokens of complete groups, one chunk per append (device): appending never copies the past.
        self._done: list[torch.Tensor] = []
        self._tail: torch.Tensor | None = None  # tokens of the partial last group, or None
        # The backbone's per-frame context, one value per latent frame (zeros where it gave none).
        self._frame_context: list[float] = []

    def _new_layout(self) -> CappedLayout | None:
        if not self.capped:
            return None
        layout = CappedLayout(self.merge, self.encoder.frames_per_group, self._frames_between)
        layout.pins = self.pins
        return layout

    def steer(self, pins: list[tuple[int, int]] = (), forgets: list[tuple[int, int]] = ()) -> None:
        """Set the memory controls (latent frame ranges ``[a, b)``), before the frames they pin are added.

        Pins change which groups the cap merges from here on (a resume sets them before its chunks load, so
        it replays the same merges); forgets change only what :meth:`tokens` gives, and may change any time.
        """
        self.pins[:] = [(int(a), int(b)) for a, b in pins]  # the layout holds this same list
        self.forgets = [(int(a), int(b)) for a, b in forgets]

    # ---------------------------------------------------------------- queries
    @property
    def num_frames(self) -> int:
        return self._frames

    @property
    def latents(self) -> torch.Tensor | None:
        """All raw latents ``[1, C, T, H, W]`` (host), joined on demand."""
        if not self._chunks:
            return None
        if len(self._chunks) > 1:
            self._chunks = [torch.cat(self._chunks, dim=2)]
        return self._chunks[0]

    def _last_frames(self, n: int) -> torch.Tensor | None:
        """The last ``n`` raw latent frames, reading only the chunks that hold them."""
        if n <= 0 or not self._chunks:
            return None
        picked, have = [], 0
        for chunk in reversed(self._chunks):
            picked.append(chunk)
            have += chunk.shape[2]
            if have >= n:
                break
        return torch.cat(picked[::-1], dim=2)[:, :, -n:]

    @property
    def capped(self) -> bool:
        return self.max_tokens > 0 and self.encoder is not None

    @property
    def _segs(self) -> list[list]:
        """The cap's segments ``[first fine group, fine groups covered, tokens, sum]`` (uncapped: none)."""
        return self._cap.segs if self._cap is not None else []

    def _parts(self) -> list[torch.Tensor]:
        done = [seg[2] for seg in self._segs] if self.capped else self._done
        return done + ([self._tail] if self._tail is not None else [])

    @property
    def grid(self) -> torch.Tensor | None:
        """All tokens as a grid ``[1, T', h, w, D]`` (device)."""
        parts = self._parts()
        if not parts:
            return None
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @property
    def num_tokens(self) -> int:
        # Counted per chunk: joining the grid here would copy the whole history on every append.
        parts = self._parts()
        return sum(int(p.shape[1] * p.shape[2] * p.shape[3]) for p in parts)

    def tokens(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(tokens [1, N, D], positions [N, 3])`` with time relative to the next frame.

        Positions are in DiT token-grid units; the section that comes next
        starts at ``t = 0``, so the history sits at negative ``t``.
        """
        g = self.grid
        if g is None or self.encoder is None:
            return None
        _, t, h, w, d = g.shape
        pos = self._capped_positions(h, w) if self.capped else self.encoder.positions(t, h, w)
        pos[..., 0] -= self.num_frames / self.encoder.config.patch_size[0]
        if any(self._frame_context):
            context = self.frame_context
            means = span_means(context, self._spans()) if self.capped else group_means(context, self.encoder.frames_per_group)
            move_by_frame_context(pos, means)
        if self.forgets:  # the forgotten token frames leave what the DiT reads (and only that)
            keep = [i for i, (a, n) in enumerate(self._token_spans(t)) if not any(p < a + n and a < q for p, q in self.forgets)]
            if not keep:
                return None
            if len(keep) < t:
                index = torch.tensor(keep)
                g, pos, t = g.index_select(1, index.to(g.device)), pos.index_select(0, index), len(keep)
        return g.reshape(1, t * h * w, d), pos.reshape(-1, 3).to(self.device)

    def _token_spans(self, t: int) -> list[tuple[int, int]]:
        """``(first latent frame, frames)`` of each of the ``t`` token frames, capped or not."""
        if self.capped:
            return self._spans()
        g = self.encoder.frames_per_group
        return [(i * g, min(g, self.num_frames - i * g)) for i in range(t)]

    def window(self, frames: int) -> torch.Tensor | None:
        """The last ``frames`` raw latent frames ``[1, C, n, H, W]`` (host)."""
        return self._last_frames(frames)

    @property
    def frame_context(self) -> torch.Tensor:
        """The backbone's per-frame context ``[T]``, one value per latent frame (zeros where it gave none)."""
        return torch.tensor(self._frame_context, dtype=torch.float32)

    # ---------------------------------------------------------------- updates
    @torch.no_grad()
    def append(self, new_latents: torch.Tensor, frame_context: torch.Tensor | None = None) -> int:
        """Add latent frames ``[1, C, n, H, W]`` (and their frame context ``[n]``); encode only what is new.

        Returns the number of history tokens after the append.
        """
        new_latents = new_latents.detach().to("cpu", torch.float32)
        n = int(new_latents.shape[2])
        if frame_context is not None and len(frame_context) != n:
            raise ValueError(f"frame context has {len(frame_context)} values for {n} latent frames")
        self._frame_context += [0.0] * n if frame_context is None else [float(v) for v in frame_context]
        start = self.num_frames
        self._chunks.append(new_latents)
        self._frames += int(new_latents.shape[2])
        if self.encoder is None:
            return 0
        g = self.encoder.frames_per_group
        first_group = start // g  # the partial group (if any) is re-encoded with its new frames
        before = min(getattr(self.encoder, "context_frames", 0), first_group * g)  # frames the new groups are coded against
        frames = self._last_frames(self.num_frames - first_group * g + before)
        enc_dtype = self.encoder.dtype
        if before:
            ctx, frames = frames[:, :, :before].to(self.device, enc_dtype), frames[:, :, before:]
            tokens = self.encoder(frames.to(self.device, enc_dtype), context=ctx)
        else:
            tokens = self.encoder(frames.to(self.device, enc_dtype))  # [1, t', h, w, D]
        complete = (self.num_frames - first_group * g) // g
        full, tail = tokens[:, :complete], tokens[:, complete:]
        self._tail = tail if tail.shape[1] else None
        if self.capped:
            self._add_groups([full[:, i : i + 1] for i in range(complete)])
        elif complete:
            self._done.append(full)
        return self.num_tokens

    # ------------------------------------------------------------- persistence
    @property
    def num_groups(self) -> int:
        """Complete token groups at the encoder's rate (the partial last group, if any, is not counted).

        Capped, merged groups count as the fine groups they replaced.
        """
        if self.capped:
            return self._cap.groups
        return sum(int(p.shape[1]) for p in self._done)

    def chunk(self, since_frames: int = 0, since_groups: int = 0) -> dict[str, torch.Tensor]:
        """What was added after ``since_frames`` latent frames and ``since_groups`` complete token groups.

        Host tensors: ``latents`` and frame context (``track``) of the new frames, ``tokens_done`` of the new
        complete groups, and ``tokens_tail``, the partial last group as it is now (it is
        replaced whenever the group grows, so only the newest chunk's tail counts).
        ``chunk(0, 0)`` is the whole state; chunks in order rebuild it (:meth:`load_chunks`).
        """
        if not (0 <= since_frames <= self.num_frames and 0 <= since_groups <= self.num_groups):
            raise ValueError(f"no chunk since ({since_frames} frames, {since_groups} groups): "
                             f"the history holds {self.num_frames} frames, {self.num_groups} complete groups")
        tensors: dict[str, torch.Tensor] = {}
        new = self.num_frames - since_frames
        if new:
            tensors["latents"] = self._last_frames(new).contiguous()
            tensors[CONTEXT_KEY] = torch.tensor(self._frame_context[since_frames:], dtype=torch.float32)
        if self.capped:  # the new groups still at full detail (merged ones are re-encoded on load)
            fine = self._cap.full_detail(since_groups)
            done = torch.cat([seg[2] for seg in fine], dim=1) if fine else None
            if fine:  # by index: ``similar`` may have merged groups between them
                tensors["tokens_done_groups"] = torch.tensor([seg[0] for seg in fine], dtype=torch.int64)
        else:
            done = self._last_groups(self.num_groups - since_groups)
        for name, t in (("tokens_done", done), ("tokens_tail", self._tail)):
            if t is not None:
                tensors[name] = t.detach().to("cpu").contiguous()
        return tensors

    def _last_groups(self, n: int) -> torch.Tensor | None:
        """Tokens of the last ``n`` complete groups, reading only the chunks that hold them."""
        if n <= 0:
            return None
        picked, have = [], 0
        for part in reversed(self._done):
            picked.append(part)
            have += part.shape[1]
            if have >= n:
                break
        return torch.cat(picked[::-1], dim=1)[:, -n:]

    def load_chunks(self, chunks: list[dict[str, torch.Tensor]]) -> None:
        """Rebuild the state from :meth:`chunk` outputs, oldest first; tokens go back to the device."""
        dtype = self.encoder.dtype if self.encoder is not None else torch.float32
        self._chunks, self._frame_context, self._done, self._tail = [], [], [], None
        self._cap = self._new_layout()
        if self.capped:
            return self._load_capped(chunks, dtype)
        for c in chunks:
            self._load_frames(c)
            if "tokens_done" in c:
                self._done.append(c["tokens_done"].to(self.device, dtype))
        self._loaded(chunks, dtype)

    def _load_frames(self, chunk: dict[str, torch.Tensor]) -> None:
        """A chunk's raw latents (host) and their frame context (zeros when the chunk holds none)."""
        lat = chunk.get("latents")
        if lat is not None:
            self._chunks.append(lat.to("cpu", torch.float32))
            n = int(lat.shape[2])
            self._frame_context += chunk[CONTEXT_KEY].tolist() if CONTEXT_KEY in chunk else [0.0] * n

    def _loaded(self, chunks: list[dict[str, torch.Tensor]], dtype: torch.dtype) -> None:
        """After every chunk's frames: count and check them, and take the newest chunk's partial group."""
        self._frames = sum(int(c.shape[2]) for c in self._chunks)
        if len(self._frame_context) != self._frames:
            raise ValueError(f"history chunks hold {self._frames} latent frames "
                             f"but {len(self._frame_context)} frame context values")
        tail = chunks[-1].get("tokens_tail") if chunks else None
        self._tail = None if tail is None else tail.to(self.device, dtype)

    def save(self, path: str | Path) -> None:
        """Write the whole state as one safetensors file (atomic: temp file, fsync, rename)."""
        atomic_save_tensors(path, self.chunk(0, 0))

    def load(self, path: str | Path) -> None:
        """Restore what :meth:`save` wrote."""
        self.load_chunks([load_file(str(path))])

    # ------------------------------------------------------------- the cap
    def layout(self) -> list[tuple[int, int, int]]:
        """``(first latent frame, frames, time reduction)`` of the history's runs, oldest first.

        Consecutive full-detail token frames form one run (reduction 1); each merged group of a capped
        history is a run of its own (reduction = the fine groups it covers). Uncapped: one run.
        """
        if not self.num_frames:
            return []
        if not self.capped:
            return [(0, self.num_frames, 1)]
        return self._cap.runs(self._partial())

    def time_reduction_at(self, frame: int) -> int:
        """How many of the encoder's groups the token frame holding latent ``frame`` covers (1: full detail)."""
        return self._cap.reduction_at(frame) if self.capped else 1

    def _budget(self, tokens_per_group: int) -> int:
        """Complete groups allowed: the cap less one group kept free for the partial last group."""
        return cap_groups(self.max_tokens, tokens_per_group)

    def _add_groups(self, fine: list[torch.Tensor]) -> None:
        """Add complete fine groups ``[1, 1, h, w, D]`` one at a time, merging as the cap says; encode new merges."""
        for tok in fine:
            self._cap.add(tok, self._budget(int(tok.shape[2] * tok.shape[3])))
        self._encode_merged()

    def _encode_merged(self) -> None:
        """Encode the coarse groups that merges left without tokens (only those still in the layout)."""
        for seg in self._segs:
            if seg[2] is None:
                seg[2] = self._encode_coarse(seg[0], seg[1])

    @torch.no_grad()
    def _encode_coarse(self, first_group: int, k: int) -> torch.Tensor:
        """One token frame for ``k`` groups: their raw latents averaged over time by ``k``, encoded."""
        g = self.encoder.frames_per_group
        pooled = pool(self._frames_between(first_group * g, (first_group + k) * g), g, k)
        return self.encoder(pooled.to(self.device, self.encoder.dtype))

    def _frames_between(self, a: int, b: int) -> torch.Tensor:
        """Raw latent frames ``a .. b-1`` (host), reading only the chunks that hold them."""
        picked, start = [], 0
        for chunk in self._chunks:
            n = int(chunk.shape[2])
            if start + n > a and start < b:
                picked.append(chunk[:, :, max(0, a - start) : min(n, b - start)])
            start += n
        return torch.cat(picked, dim=2)

    def _partial(self) -> int | None:
        """Latent frames of the partial last group (None: the history ends on a group boundary)."""
        return None if self._tail is None else self.num_frames - self._cap.groups * self.encoder.frames_per_group

    def _spans(self) -> list[tuple[int, int]]:
        """``(first latent frame, frames)`` of every token frame (segments, then the partial group)."""
        return self._cap.spans(self._partial())

    def _capped_positions(self, h: int, w: int) -> torch.Tensor:
        """Box centres as :meth:`HistoryEncoder.positions` gives them, a coarse group at the centre of its frames."""
        g, pt = self.encoder.frames_per_group, self.encoder.config.patch_size[0]
        pos = self.encoder.positions(1, h, w)[0]
        out = []
        for first, n in self._spans():
            p = pos.clone()
            # the centre of the token frames covered; a partial group is padded to a whole one, as uncapped
            p[..., 0] = first / pt + (max(n, g) / pt - 1) / 2
            out.append(p)
        return torch.stack(out)

    def _load_capped(self, chunks: list[dict[str, torch.Tensor]], dtype: torch.dtype) -> None:
        """Raw latents from every chunk, full-detail tokens where the layout keeps them, merges re-encoded."""
        fine: dict[int, torch.Tensor] = {}  # full-detail tokens by group index
        groups = 0
        for c in chunks:
            self._load_frames(c)
            if "tokens_done" in c:
                done = c["tokens_done"]
                index = _done_groups(c, groups)
                if len(index) != done.shape[1]:
                    raise ValueError(f"a history chunk holds {done.shape[1]} token groups but {len(index)} indices")
                for i, group in enumerate(index):
                    fine[group] = done[:, i : i + 1]
                groups = index[-1] + 1 if index else groups
        self._loaded(chunks, dtype)
        complete = self._frames // self.encoder.frames_per_group
        some = next(iter(fine.values()), None)
        if some is None and complete:
            raise ValueError("the history chunks hold no token groups")
        for _ in range(complete):  # the same layout as appending, group by group
            self._cap.add(None, self._budget(int(some.shape[2] * some.shape[3])))
        for seg in self._cap.full_detail():
            if seg[0] not in fine:
                raise ValueError(f"the history chunks lack the tokens of group {seg[0]}")
            seg[2] = fine[seg[0]].to(self.device, dtype)
        self._encode_merged()


def _done_groups(chunk: dict[str, torch.Tensor], after: int) -> list[int]:
    """The group index of each of a capped chunk's ``tokens_done`` (older chunks: a run from ``tokens_done_from``)."""
    if "tokens_done_groups" in chunk:
        return [int(i) for i in chunk["tokens_done_groups"]]
    first = int(chunk["tokens_done_from"]) if "tokens_done_from" in chunk else after
    return list(range(first, first + int(chunk["tokens_done"].shape[1])))
