"""The contract every video backbone fulfils.

A backbone bundles a next-section video DiT with the parts it needs around it
(VAE, text encoder, optional image encoder). The pipeline and the history
encoder only ever talk to this interface, so the real HunyuanVideo-FramePack
model and the small toy model are interchangeable.

Units used throughout:
  * latents are ``[B, C, T, H, W]`` in the backbone's own VAE space;
  * *token-grid units* are latent units divided by the DiT patch size
    ``(pt, ph, pw)``; rotary positions are given in these units as float
    ``(t, h, w)`` triples, so a history token can sit at the centre of the
    box of tokens it summarises;
  * time positions are relative to the first frame of the section being
    generated: the past has negative ``t``;
  * *frame context* is one value per latent frame that a backbone may read
    beside the latents (:meth:`Backbone.frame_context`): the pipeline and the
    history keep it and pass it back without reading it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


def place(module: nn.Module, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """Move a module to ``device``, casting only when its dtype really differs.

    diffusers warns on every dtype ``to()``, and bitsandbytes-quantised weights
    were placed when they were quantised, so both are left alone.
    """
    if getattr(module, "is_quantized", False):
        return module
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module = module.to(dtype)
    return module.to(device)


@dataclass
class Context:
    """Clean context tokens the DiT attends to next to the noisy section.

    ``history_tokens`` are already in the DiT's hidden space (the history
    encoder's output); ``window_latents`` are raw recent latents that the
    backbone patchifies itself (FramePack's 1x clean-latent path);
    ``recent_latents`` are the last :attr:`Backbone.context_frames` raw latents
    for a backbone that builds its own clean context from them (FramePack-F1:
    16 latents at 4x, 2 at 2x, 1 at 1x).
    """

    history_tokens: torch.Tensor | None = None  # [B, N, D]
    history_positions: torch.Tensor | None = None  # [N, 3] float, token-grid units
    window_latents: torch.Tensor | None = None  # [B, C, Tw, H, W]
    window_t0: float = 0.0  # t position (latent frames, negative = past) of the window's first frame
    #: t position (latent frames) of each noisy latent frame; None = 0, 1, ..., T-1.
    #: Frame-query training (Stage I) asks for frames *inside* the history,
    #: each sample at its own places: ``[T]`` or per sample ``[B, T]``.
    target_t: torch.Tensor | None = None
    #: Frame context (:meth:`Backbone.frame_context`; the toy's camera track, the view's horizontal
    #: offset in DiT token-grid units) of each noisy frame (``[T]`` or ``[B, T]``) and each window
    #: frame (``[Tw]`` or ``[B, Tw]``); history positions already include theirs
    #: (:func:`move_by_frame_context`). None = 0.
    target_w: torch.Tensor | None = None
    window_w: torch.Tensor | None = None
    #: the history's last raw latents ``[B, C, Tr, H, W]`` (``Tr <= Backbone.context_frames``; fewer at the start)
    recent_latents: torch.Tensor | None = None
    #: FramePack's original (inverted) loop: the latents that follow the section in time ``[B, C, Tp, H, W]``
    #: (already generated, oldest first, zeros where the video ends), and the latent frames left blank between
    #: the section and them (its padding); the backbone lays them out at its 1x/2x/4x indices
    post_latents: torch.Tensor | None = None
    post_gap: int = 0
    #: Keyframes (backbones with :attr:`Backbone.keyframes`): clean latents of images the video must reach
    #: ``[B, C, K, H, W]``, their latent-frame time positions relative to the section's first frame
    #: (``[K]`` or ``[B, K]``; may lie beyond the section) and their frame context (``[K]`` or ``[B, K]``; the
    #: toy's camera offset, as :attr:`target_w`; None = 0)
    keyframe_latents: torch.Tensor | None = None
    keyframe_t: torch.Tensor | None = None
    keyframe_w: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return 0 if self.history_tokens is None else int(self.history_tokens.shape[1])


@dataclass
class Conditioning:
    """Per-prompt (and per-start-image) conditioning, opaque to the pipeline.

    Each backbone stores what its DiT needs in ``tensors``; the pipeline only
    caches and passes it back.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Conditioning":
        return Conditioning({k: v.to(device) for k, v in self.tensors.items()})


@dataclass
class StartFrame:
    """What a text-to-video request starts from (``Backbone.default_start``).

    ``image`` is what the image encoder sees; ``latents``, when given, replace
    its VAE encoding as the start latent (FramePack-Studio's "noise" start is
    noise in latent space, which no image encodes to); ``content`` says whether
    the frame belongs to the video (the toy world's first view) or only
    conditions it (a black, white, green or noise start).
    """

    image: np.ndarray  # uint8 [H, W, 3]
    latents: torch.Tensor | None = None  # [1, C, 1, h, w] in the backbone's scaled VAE space
    content: bool = True


@dataclass(frozen=True)
class LatentRGB:
    """A linear latent-to-RGB map for previews: no VAE, one small matmul.

    Each latent pixel becomes a ``block x block`` patch of RGB (``weight`` is
    ``[3 * block**2, C]``, rows in ``pixel_shuffle`` order); the patch grid is
    then enlarged nearest-neighbour to the frame. ``unit`` is the range the map
    writes: ``(0, 1)`` or ``(-1, 1)``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    block: int = 1
    unit: tuple[float, float] = (-1.0, 1.0)

    def __call__(self, latents: torch.Tensor, spatial_scale: int) -> torch.Tensor:
        """``[C, h, w]`` latents -> ``[3, h * spatial_scale, w * spatial_scale]`` in ``[-1, 1]``."""
        x = latents.float()
        y = torch.einsum("oc,chw->ohw", self.weight.to(x.device, x.dtype), x) + self.bias.to(x.device, x.dtype)[:, None, None]
        if self.block > 1:
            y = torch.nn.functional.pixel_shuffle(y[None], self.block)[0]
        lo, hi = self.unit
        y = ((y - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)
        up = spatial_scale // self.block
        return y.repeat_interleave(up, 1).repeat_interleave(up, 2) if up > 1 else y


@dataclass(frozen=True)
class LatentGeometry:
    """How pixels map to latents and latents to DiT tokens."""

    latent_channels: int
    spatial_scale: int  # pixels per latent, each spatial axis
    temporal_scale: int  # pixel frames per latent frame (after the first, for causal VAEs)
    causal_first_frame: bool  # True when latent frame 0 covers exactly one pixel frame
    patch_size: tuple[int, int, int]  # DiT patch (t, h, w) in latent units
    hidden_size: int

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames that encode ``pixel_frames`` frames."""
        if self.causal_first_frame:
            return 1 + (pixel_frames - 1) // self.temporal_scale
        return pixel_frames // self.temporal_scale

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames that ``latent_frames`` latent frames decode to."""
        if self.causal_first_frame:
            return 1 + (latent_frames - 1) * self.temporal_scale
        return latent_frames * self.temporal_scale

    def tokens_per_latent_frame(self, height: int, width: int) -> int:
        """Raw DiT tokens of one latent frame at a pixel resolution."""
        h = height // self.spatial_scale // self.patch_size[1]
        w = width // self.spatial_scale // self.patch_size[2]
        return h * w


class Backbone(ABC):
    """A next-section video generator that accepts history tokens as context."""

    #: registry name, e.g. ``"toy"`` or ``"hunyuan_framepack"``
    name: str = ""
    geometry: LatentGeometry
    device: torch.device
    dtype: torch.dtype
    #: Raw history latents the backbone's own clean context reads (``Context.recent_latents``);
    #: 0 = none, the pipeline's generic sliding window (``history.window_frames``) is used instead.
    context_frames: int = 0
    #: Decode each section together with the one before and cross-fade the overlap (FramePack-F1);
    #: False = every section is decoded alone.
    overlap_decode: bool = False
    #: Draw every section's noise from one generator seeded once per video, in section order
    #: (FramePack's demo); False = each section from its own ``(seed, section index)`` generator.
    noise_per_video: bool = False
    #: Reads :attr:`Context.keyframe_latents` (future images the video must reach); False = refuses keyframes.
    keyframes: bool = False

    def schedule_mu(self, noisy_shape: tuple[int, ...]) -> float | None:
        """The model's own timestep-shift exponent for a section of this latent shape (shift ``e^mu``).

        Used when the preset leaves ``sampling.shift`` out; None = no shift (1).
        """
        return None

    # --- modules -----------------------------------------------------------
    @property
    @abstractmethod
    def transformer(self) -> nn.Module:
        """The DiT (a diffusers ``ModelMixin``)."""

    @abstractmethod
    def patch_embedding(self) -> nn.Module:
        """The DiT's own patchifier: ``[B, C, T, H, W] -> [B, D, T', H', W']``.

        The history encoder's LR branch reuses it (frozen, shared weights).
        """

    # --- conditioning ------------------------------------------------------
    @abstractmethod
    def encode_text(self, prompt: str) -> Conditioning:
        """Embed one prompt. The pipeline caches the result per distinct prompt."""

    def blend_text(self, a: Conditioning, b: Conditioning, weight: float) -> Conditioning:
        """Text conditioning ``weight`` of the way from ``a`` to ``b``: linear in the embedding (prompt transitions).

        Floating tensors (embeddings, pooled vectors) are interpolated; attention masks are
        joined, so every token either prompt attends to stays visible. Backbones whose
        conditioning holds token ids embed them first (the toy).
        """
        out = {}
        for key, x in a.tensors.items():
            y = b.tensors[key]
            if x.is_floating_point():
                out[key] = torch.lerp(x, y.to(x.dtype), float(weight))
            elif "mask" in key:
                out[key] = torch.maximum(x, y.to(x.dtype))
            else:
                raise ValueError(f"{self.name}: cannot blend the non-embedding conditioning {key!r}")
        return Conditioning(out)

    def encode_image(self, image: torch.Tensor, start_latents: torch.Tensor | None = None) -> Conditioning:
        """Embed a start image ``[3, H, W]`` in ``[-1, 1]`` (image-to-video).

        ``start_latents`` replace the image's own VAE latent where the backbone
        keeps one (a noise start). Backbones without an image encoder return
        empty conditioning.
        """
        return Conditioning()

    def default_start(self, kind: str, seed: int, prompt: str, seconds: float, width: int,
                      height: int) -> StartFrame | None:
        """The text-to-video start of ``kind`` (one of ``config.START_FRAMES[name]``), or None to start from nothing.

        The toy backbone draws the first view of the world given by the seed.
        """
        return None

    def frame_context(self, storyboard: list[tuple[float, str]], first_frame: int, n: int, fps: int, width: int,
                      past: torch.Tensor) -> torch.Tensor | None:
        """The frame context ``[n]`` of the section starting at pixel frame ``first_frame``, continuing ``past``.

        ``past [T]`` is the history's frame context so far (zeros where none was given). The pipeline
        passes the result on as :attr:`Context.target_w` and keeps it in the history, which places history
        tokens by it (:func:`move_by_frame_context`). The toy DiT with ``canvas_positions`` returns its
        camera track from the storyboard; the others return None and keep view-relative positions.
        """
        return None

    # --- VAE -----------------------------------------------------------------
    @abstractmethod
    def vae_encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W]`` in ``[-1, 1]`` -> latents ``[B, C, T, h, w]``."""

    @abstractmethod
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, T, h, w]`` -> pixels ``[B, 3, F, H, W]`` in ``[-1, 1]``."""

    # --- denoiser ------------------------------------------------------------
    @abstractmethod
    def predict(
        self,
        noisy: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        context: Context,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """Flow-matching velocity (``noise - x0``) for the noisy section.

        ``noisy`` is ``[B, C, T, H, W]``; ``sigma`` is ``[B]`` in ``[0, 1]``;
        ``guidance`` is the distilled-guidance strength for backbones that
        embed it (ignored by the others).
        """

    def predict_branches(self, noisy: torch.Tensor, sigma: torch.Tensor, branches: list[tuple[Conditioning, Context]],
                         guidance: float = 1.0) -> list[torch.Tensor]:
        """One :meth:`predict` per ``(cond, context)`` branch (guidance's passes of one step).

        Backbones whose blocks may be streamed override it to run every branch
        through each block while that block is on the device.
        """
        return [self.predict(noisy, sigma, cond, ctx, guidance) for cond, ctx in branches]

    @abstractmethod
    def latent_rgb(self) -> LatentRGB:
        """The backbone's linear latent-to-RGB preview map."""

    def preview(self, latents: torch.Tensor) -> torch.Tensor:
        """A cheap RGB preview ``[3, H, W]`` in ``[-1, 1]`` of the last latent frame of ``[B, C, T, h, w]``.

        A linear map per latent pixel (:meth:`latent_rgb`), never the VAE:
        previews run between denoising steps, where the VAE may not be on the device.
        """
        return self.latent_rgb()(latents[0, :, -1], self.geometry.spatial_scale)

    # --- bookkeeping -----------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Facts for sidecars and the UI."""
        return {"backbone": self.name, "geometry": self.geometry.__dict__}


def move_by_frame_context(positions: torch.Tensor, means: torch.Tensor) -> None:
    """Move history positions ``[..., T', h, w, 3]`` by their token frames' mean frame context ``[..., T']`` (in place).

    Frame context moves tokens along the w axis (the toy's canvas: a token sits where its frames' view
    was), the contract :attr:`Context.target_w` and :attr:`Context.window_w` follow for the other frames.
    """
    positions[..., 2] += means.to(positions.device)[..., None, None]


def transformer_blocks(transformer: nn.Module) -> list[nn.Module]:
    """Blocks in execution order: the items of the DiT's top-level ``ModuleList``s (as diffusers' block offloading)."""
    return [b for child in transformer.children() if isinstance(child, nn.ModuleList) for b in child]
