"""HistoryState: everything the generator remembers about the video so far.

* raw latents live on the **host** (they are only needed for the sliding
  window, for checkpoints and for resuming);
* the encoder's tokens live on the **device** and only grow: a new section
  is encoded alone and its tokens appended.

Groups of ``encoder.frames_per_group`` latent frames map to one token frame.
When a section does not end on a group boundary the last, partial group is
encoded from replicate-padded frames and *replaced* once the group fills up;
the few raw frames this needs are the only context ever re-read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .encoder import HistoryEncoder
from .fsio import atomic_save_tensors


def group_means(track: torch.Tensor, group: int) -> torch.Tensor:
    """Mean of each run of ``group`` values along the last axis (a shorter last run: its own mean)."""
    t = track.shape[-1]
    groups = -(-t // group)
    pad = groups * group - t
    x = torch.nn.functional.pad(track.float(), (0, pad))
    counts = torch.full((groups,), float(group))
    counts[-1] -= pad
    return x.unflatten(-1, (groups, group)).sum(-1) / counts


class HistoryState:
    """Raw latents (host) + compressed tokens (device) + their positions."""

    def __init__(self, encoder: HistoryEncoder | None, device: torch.device | str = "cpu") -> None:
        self.encoder = encoder
        self.device = torch.device(device)
        # Raw latents on the host, one chunk per append (no copy of the past per section).
        self._chunks: list[torch.Tensor] = []
        self._frames = 0
        # Tokens of complete groups, one chunk per append (device): appending never copies the past.
        self._done: list[torch.Tensor] = []
        self._tail: torch.Tensor | None = None  # tokens of the partial last group, or None
        # Camera track: the view's horizontal offset per latent frame (DiT token units); zeros
        # unless the backbone places tokens on a canvas.
        self._track: list[float] = []

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
    def grid(self) -> torch.Tensor | None:
        """All tokens as a grid ``[1, T', h, w, D]`` (device)."""
        parts = self._done + ([self._tail] if self._tail is not None else [])
        if not parts:
            return None
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @property
    def num_tokens(self) -> int:
        # Counted per chunk: joining the grid here would copy the whole history on every append.
        parts = self._done + ([self._tail] if self._tail is not None else [])
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
        pos = self.encoder.positions(t, h, w)
        pos[..., 0] -= self.num_frames / self.encoder.config.patch_size[0]
        if any(self._track):
            pos[..., 2] += group_means(torch.tensor(self._track), self.encoder.frames_per_group)[:, None, None]
        return g.reshape(1, t * h * w, d), pos.reshape(-1, 3).to(self.device)

    def window(self, frames: int) -> torch.Tensor | None:
        """The last ``frames`` raw latent frames ``[1, C, n, H, W]`` (host)."""
        return self._last_frames(frames)

    @property
    def track(self) -> torch.Tensor:
        """The camera track ``[T]``: the view's w offset of every latent frame (token units)."""
        return torch.tensor(self._track, dtype=torch.float32)

    # ---------------------------------------------------------------- updates
    @torch.no_grad()
    def append(self, new_latents: torch.Tensor, track: torch.Tensor | None = None) -> int:
        """Add latent frames ``[1, C, n, H, W]`` (and their camera offsets ``[n]``); encode only what is new.

        Returns the number of history tokens after the append.
        """
        new_latents = new_latents.detach().to("cpu", torch.float32)
        n = int(new_latents.shape[2])
        if track is not None and len(track) != n:
            raise ValueError(f"track has {len(track)} offsets for {n} latent frames")
        self._track += [0.0] * n if track is None else [float(v) for v in track]
        start = self.num_frames
        self._chunks.append(new_latents)
        self._frames += int(new_latents.shape[2])
        if self.encoder is None:
            return 0
        g = self.encoder.frames_per_group
        first_group = start // g  # the partial group (if any) is re-encoded with its new frames
        frames = self._last_frames(self.num_frames - first_group * g)
        enc_dtype = self.encoder.dtype
        tokens = self.encoder(frames.to(self.device, enc_dtype))  # [1, t', h, w, D]
        complete = (self.num_frames - first_group * g) // g
        full, tail = tokens[:, :complete], tokens[:, complete:]
        if complete:
            self._done.append(full)
        self._tail = tail if tail.shape[1] else None
        return self.num_tokens

    # ------------------------------------------------------------- persistence
    @property
    def num_groups(self) -> int:
        """Complete token groups (the partial last group, if any, is not counted)."""
        return sum(int(p.shape[1]) for p in self._done)

    def chunk(self, since_frames: int = 0, since_groups: int = 0) -> dict[str, torch.Tensor]:
        """What was added after ``since_frames`` latent frames and ``since_groups`` complete token groups.

        Host tensors: ``latents`` and ``track`` of the new frames, ``tokens_done`` of the new
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
            tensors["track"] = torch.tensor(self._track[since_frames:], dtype=torch.float32)
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
        self._chunks, self._track, self._done, self._tail = [], [], [], None
        for c in chunks:
            lat = c.get("latents")
            if lat is not None:
                self._chunks.append(lat.to("cpu", torch.float32))
                n = int(lat.shape[2])
                self._track += c["track"].tolist() if "track" in c else [0.0] * n
            if "tokens_done" in c:
                self._done.append(c["tokens_done"].to(self.device, dtype))
        self._frames = sum(int(c.shape[2]) for c in self._chunks)
        if len(self._track) != self._frames:
            raise ValueError(f"history chunks hold {self._frames} latent frames but {len(self._track)} track offsets")
        tail = chunks[-1].get("tokens_tail") if chunks else None
        self._tail = None if tail is None else tail.to(self.device, dtype)

    def save(self, path: str | Path) -> None:
        """Write the whole state as one safetensors file (atomic: temp file, fsync, rename)."""
        atomic_save_tensors(path, self.chunk(0, 0))

    def load(self, path: str | Path) -> None:
        """Restore what :meth:`save` wrote."""
        self.load_chunks([load_file(str(path))])
