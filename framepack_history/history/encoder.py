"""The history encoder: the whole video history -> a short token sequence.

Two branches land on the same compressed token grid and are summed in the
DiT's hidden space (arXiv 2512.23851):

* LR branch: a low-resolution, low-frame-rate copy of the history (average
  pooled by the rate) goes through the backbone's *own* patch embedding.
  Its weights are shared with the DiT and frozen, so from the first step the
  history tokens speak the DiT's language.
* HR branch: full-resolution latents through strided 3D convolutions with
  SiLU (time first, then space), 64->128->256->512 channels, spatial
  self-attention at 512, and a 1x1 projection to the hidden width, scaled by
  a zero-initialised gate so training starts from the LR branch alone.
* Box branch (optional, ``use_box_branch``): one learned linear map of each
  whole token box (a conv whose kernel and stride are the box), zero at
  initialisation. Why: the FramePack-style large patchifier is exactly such
  a map, and the LR branch is a fixed linear map of the same box (pool, then
  patchify), so LR + box can represent the large patchifier and starts where
  it starts (pool + patchify); the HR branch then only has to add to it.

A rate ``HxWxT`` (e.g. ``4x4x2``) is relative to the DiT token grid: one
history token summarises an ``H x W`` block of DiT tokens over ``T`` token
frames, i.e. keeps ``1 / (H*W*T)`` of them.

Why the HR branch never mixes time groups: every layer after the temporal
reduction is per frame (kernel 1 in time, attention within a frame,
LayerNorm over channels). One group of ``T`` token frames therefore maps to
its tokens independently of every other group, and a new section can be
encoded alone and *appended*: the history is never re-encoded. With
``context_groups`` the temporal conv also reads that many groups *before*
each group (never after), so a group is coded against what it follows; a new
section is still appended, given those earlier frames as ``context``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from framepack_history.config.rates import parse_rate


def _log2_exact(n: int, what: str) -> int:
    k = int(round(math.log2(n)))
    if 2**k != n:
        raise ValueError(f"{what} must be a power of two, got {n}")
    return k


class _FrameAttention(nn.Module):
    """Self-attention among the tokens of one (compressed) frame."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W]
        b, c, t, h, w = x.shape
        seq = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
        y = self.norm(seq)
        y, _ = self.attn(y, y, y, need_weights=False)
        seq = seq + y
        return seq.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


class HistoryEncoder(ModelMixin, ConfigMixin):
    """Compresses history latents ``[B, C, T, H, W]`` into DiT-space tokens.

    The LR branch needs the backbone's patch embedding, which is *not* a
    submodule (it belongs to the DiT and is saved with it): bind it with
    :meth:`set_patch_embedding` before encoding.
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 16,
        hidden_size: int = 3072,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        rate: str = "4x4x2",
        channels: tuple[int, ...] = (64, 128, 256, 512),
        attention_heads: int = 8,
        use_lr_branch: bool = True,
        use_hr_branch: bool = True,
        use_box_branch: bool = False,
        context_groups: int = 0,
    ) -> None:
        super().__init__()
        if not (use_lr_branch or use_hr_branch or use_box_branch):
            raise ValueError("the history encoder needs at least one branch")
        rh, rw, rt = parse_rate(rate)
        pt, ph, pw = patch_size
        # Total reduction in latent units along (t, h, w).
        self.factor = (pt * rt, ph * rh, pw * rw)
        self.rate = (rh, rw, rt)
        self._lr_embed: tuple[nn.Module | Callable, ...] = ()
        # An LR-only encoder owns no parameters; this buffer gives it a dtype and
        # a device that follow .to() like any module's.
        self.register_buffer("_dtype_anchor", torch.zeros(()), persistent=False)

        if use_hr_branch:
            ft, fh, fw = self.factor
            c = list(channels)
            layers: list[nn.Module] = [nn.Conv3d(latent_channels, c[0], (1, 3, 3), padding=(0, 1, 1)), nn.SiLU()]
            # Time first: one temporal conv with stride = one group. Its kernel also covers the
            # ``context_groups`` groups before (causal: never later ones), so a group can be
            # coded against the frames it follows; 0 = the paper's non-overlapping kernel.
            kt = ft * (1 + context_groups)
            layers += [nn.Conv3d(c[0], c[1], (kt, 3, 3), stride=(ft, 1, 1), padding=(0, 1, 1)), nn.SiLU()]
            # Then space: stride-2 stages until the grid is reached; channels
            # follow the list and stay at its last entry.
            nh, nw = _log2_exact(fh, "spatial reduction (patch*rate, height)"), _log2_exact(fw, "spatial reduction (patch*rate, width)")
            ch = c[1]
            for i in range(max(nh, nw)):
                out = c[min(i + 2, len(c) - 1)]
                stride = (1, 2 if i < nh else 1, 2 if i < nw else 1)
                layers += [nn.Conv3d(ch, out, (1, 3, 3), stride=stride, padding=(0, 1, 1)), nn.SiLU()]
                ch = out
            if ch != c[-1]:
                layers += [nn.Conv3d(ch, c[-1], 1), nn.SiLU()]
                ch = c[-1]
            self.hr_convs = nn.Sequential(*layers)
            self.hr_attn = _FrameAttention(ch, attention_heads)
            self.hr_proj = nn.Conv3d(ch, hidden_size, 1)
            # Zero gate: at initialisation the embedding is the LR branch alone.
            self.hr_gate = nn.Parameter(torch.zeros(hidden_size))
        if use_box_branch:
            # Built after the HR branch, so its initial weights match an encoder without it.
            self.box_proj = nn.Conv3d(latent_channels, hidden_size, self.factor, stride=self.factor)
            nn.init.zeros_(self.box_proj.weight)
            nn.init.zeros_(self.box_proj.bias)

    # ------------------------------------------------------------------ setup
    @classmethod
    def load(cls, folder: str | os.PathLike) -> "HistoryEncoder":
        """``from_pretrained`` that also accepts an LR-only encoder (a config and no weights)."""
        folder = Path(folder)
        if not any(folder.glob("*.safetensors")):
            return cls.from_config(cls.load_config(folder))
        return cls.from_pretrained(folder, use_safetensors=True)

    def set_patch_embedding(self, module: nn.Module | Callable) -> None:
        """Bind the backbone's patchifier (``[B,C,T,H,W] -> [B,D,T',H',W']``) for the LR branch.

        Kept outside the module tree so it is neither saved nor trained here.
        """
        self._lr_embed = (module,)

    @property
    def frames_per_group(self) -> int:
        """Latent frames summarised by one token frame."""
        return self.factor[0]

    def grid(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """Token grid for latents of shape ``(t, h, w)`` (partial groups count)."""
        ft, fh, fw = self.factor
        return -(-t // ft), -(-h // fh), -(-w // fw)

    def tokens_for(self, t: int, h: int, w: int) -> int:
        gt, gh, gw = self.grid(t, h, w)
        return gt * gh * gw

    # ---------------------------------------------------------------- encoding
    def _pad_space(self, latents: torch.Tensor) -> torch.Tensor:
        """Replicate-pad height and width to whole token boxes (time as it is)."""
        _, fh, fw = self.factor
        h, w = latents.shape[3:]
        pad = (0, (-w) % fw, 0, (-h) % fh, 0, 0)  # replicate pads 5D tensors on all three axes or none
        return F.pad(latents, pad, mode="replicate") if any(pad) else latents

    def _pad(self, latents: torch.Tensor) -> torch.Tensor:
        """Replicate-pad to whole groups, so partial groups are well defined."""
        ft, fh, fw = self.factor
        _, _, t, h, w = latents.shape
        pad = (0, (-w) % fw, 0, (-h) % fh, 0, (-t) % ft)
        if any(pad):
            latents = F.pad(latents, pad, mode="replicate")
        return latents

    @property
    def context_frames(self) -> int:
        """Latent frames before a group that its tokens depend on (the HR branch's causal context)."""
        return self.factor[0] * self.config.get("context_groups", 0) if self.config.use_hr_branch else 0

    def _hr_input(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """``x`` with exactly :attr:`context_frames` frames before it: the given ones, the first frame repeated before them."""
        k = self.context_frames
        if not k:
            return x
        ctx = x[:, :, :0] if context is None else self._pad_space(context[:, :, -k:].to(x.dtype))
        full = torch.cat([ctx, x], dim=2)
        missing = k - ctx.shape[2]  # the start of the video: nothing came before
        return F.pad(full, (0, 0, 0, 0, missing, 0), mode="replicate") if missing else full

    def forward(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """History latents ``[B, C, T, H, W]`` -> token grid ``[B, T', H', W', D]``.

        ``context``: the latent frames just before ``latents`` (at least :attr:`context_frames` of
        them where there are that many), so a group encoded alone gets the same tokens as inside
        the whole history. Only an encoder with ``context_groups`` reads it.
        """
        if latents.shape[2] == 0:
            b = latents.shape[0]
            _, gh, gw = self.grid(0, latents.shape[3], latents.shape[4])
            return latents.new_zeros(b, 0, gh, gw, self.config.hidden_size)
        x = self._pad(latents)
        out = 0
        if self.config.use_lr_branch:
            if not self._lr_embed:
                raise RuntimeError("HistoryEncoder: call set_patch_embedding(backbone.patch_embedding()) first")
            rh, rw, rt = self.rate
            low = F.avg_pool3d(x, kernel_size=(rt, rh, rw)) if (rt, rh, rw) != (1, 1, 1) else x
            out = out + self._lr_embed[0](low.to(self.dtype))
        if self.config.use_hr_branch:
            y = self.hr_convs(self._hr_input(x, context).to(self.dtype))
            y = self.hr_attn(y)
            y = self.hr_proj(y) * self.hr_gate.view(1, -1, 1, 1, 1)
            out = out + y
        if self.config.get("use_box_branch", False):
            out = out + self.box_proj(x.to(self.dtype))
        return out.permute(0, 2, 3, 4, 1)  # [B, T', H', W', D]

    def positions(self, t_groups: int, h: int, w: int, t_start: int = 0) -> torch.Tensor:
        """Rotary positions ``[t_groups, h, w, 3]`` (token-grid units) of the box centres.

        Token ``i`` along an axis with rate ``r`` covers DiT tokens
        ``i*r .. i*r + r - 1``: its centre is ``i*r + (r - 1) / 2``.
        ``t_start`` is the index of the first token frame (groups already encoded).
        """
        rh, rw, rt = self.rate
        ti = (torch.arange(t_groups, dtype=torch.float32) + t_start) * rt + (rt - 1) / 2
        hi = torch.arange(h, dtype=torch.float32) * rh + (rh - 1) / 2
        wi = torch.arange(w, dtype=torch.float32) * rw + (rw - 1) / 2
        return torch.stack(torch.meshgrid(ti, hi, wi, indexing="ij"), dim=-1)
