"""HunyuanVideo-FramePack (F1) as a history-aware backbone.

``HistoryFramepackTransformer3DModel`` is diffusers' FramePack transformer with
one extra input: history-encoder tokens that are already in the DiT's hidden
space. They are prepended to the token sequence exactly like FramePack's
clean-latent context, with rotary tables computed from their float
``(t, h, w)`` positions, so they are attended to but never reach the output.

Time convention: the noisy section occupies ``t = 0 .. T-1`` (or
``Context.target_t``) and every context (window latents, history tokens) uses
the same axis, in latent frames, the past being negative. ``predict`` adds one
constant, ``rope_time_offset`` (20), to every time index before it reaches the
DiT. diffusers accepts any float index, negative included, but the absolute
position is *not* free: RoPE rotates video tokens only, so attention between
video and the unrotated text/image tokens depends on absolute positions, not
just on differences. FramePack-F1 was trained with the noisy section at frame
index 20 (start image 0, 4x history 1-16, 2x 17-18, 1x 19), so section
``t = 0`` goes there and every context keeps its relative offset.

Given ``Context.recent_latents`` (the pipeline's ``window`` and ``encoder``
modes), :meth:`HunyuanFramepackBackbone.predict` builds exactly that
multi-scale context from the history's last 19 latents (:meth:`f1_context`);
history tokens, when present, come on top of it. ``window_latents`` instead
put a raw window through the 1x path alone (training's window-mode steps).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLHunyuanVideo
from torch import nn

# WeightsNotFoundError (a FileNotFoundError) is the contract's, so callers catch one class for every backbone.
from framepack_history.backbones.base import Backbone, Conditioning, Context, LatentGeometry, LatentRGB, StartFrame, place
from framepack_history.backbones.framepack_transformer import HistoryFramepackTransformer3DModel
from framepack_history.errors import WeightsNotFoundError
from framepack_history.hub.hunyuan_weights import (
    is_offline,
    load,
    load_frozen,
    locate,
    snapshot,
    text_encoder_quantization_config,
)
from framepack_history.sampling import f1_mu

__all__ = ["HistoryFramepackTransformer3DModel", "HunyuanFramepackBackbone", "WeightsNotFoundError"]

# Preview map of HunyuanVideo's 16 scaled latent channels to RGB in [0, 1], one RGB per latent pixel:
# FramePack's ``vae_decode_fake`` (lllyasviel/FramePack, diffusers_helper/hunyuan.py), whose factors
# come from ComfyUI's HunyuanVideo latent format. ComfyUI reads the same map's output as [-1, 1];
# we follow FramePack, the reference this backbone matches.
LATENT_RGB_FACTORS = (
    (-0.0395, -0.0331, 0.0445), (0.0696, 0.0795, 0.0518), (0.0135, -0.0945, -0.0282), (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224), (-0.0804, -0.0254, -0.0639), (-0.0991, 0.0271, -0.0669), (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894), (-0.0799, -0.0208, -0.0375), (0.1166, 0.1627, 0.0962), (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355), (-0.0270, 0.0401, -0.0821), (-0.0616, -0.0997, -0.0727), (0.0249, -0.0469, -0.1703),
)  # [channel][r, g, b]
LATENT_RGB_BIAS = (0.0259, -0.0192, -0.0761)
#: text-to-video start colours (FramePack-Studio's; green is its chroma-key green)
START_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "green": (0, 177, 64)}


def _default_template() -> dict[str, Any]:
    # Imported lazily: the pipeline module pulls in (and warns about) image-processor backends.
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import (
        DEFAULT_PROMPT_TEMPLATE,  # diffusers: only on the path that uses it (slow to import)
    )

    return dict(DEFAULT_PROMPT_TEMPLATE)


# --- backbone ------------------------------------------------------------------------------------


def _component_specs(transformer: str, base: str, image_encoder: str) -> dict[str, tuple]:
    """Where each component loads from, by name: ``(source, subfolder, marker file, loader, dtype keyword)``.

    The dtype keyword is diffusers' ``torch_dtype`` or transformers' ``dtype``; None = no weights (tokenizers, processors).
    """
    from transformers import (  # transformers: only for the real model (the toy needs none)
        AutoImageProcessor,
        AutoTokenizer,
        CLIPTextModel,
        LlamaModel,
        SiglipVisionModel,
    )

    cfg, tok, proc = "config.json", "tokenizer_config.json", "preprocessor_config.json"
    return {
        "transformer": (transformer, "", cfg, HistoryFramepackTransformer3DModel, "torch_dtype"),
        "text_encoder": (base, "text_encoder", cfg, LlamaModel, "dtype"),
        "tokenizer": (base, "tokenizer", tok, AutoTokenizer, None),
        "text_encoder_2": (base, "text_encoder_2", cfg, CLIPTextModel, "dtype"),
        "tokenizer_2": (base, "tokenizer_2", tok, AutoTokenizer, None),
        "vae": (base, "vae", cfg, AutoencoderKLHunyuanVideo, "torch_dtype"),
        "image_encoder": (image_encoder, "image_encoder", cfg, SiglipVisionModel, "dtype"),
        "feature_extractor": (image_encoder, "feature_extractor", proc, AutoImageProcessor, None),
    }


def _row(x: torch.Tensor, i: int, b: int) -> torch.Tensor:
    """Sample ``i`` of a tensor that is either batched (``b`` rows) or shared (1 row)."""
    x = torch.as_tensor(x)
    return x[i : i + 1] if x.dim() and x.shape[0] == b and b > 1 else x


def _context_row(ctx: Context, i: int, b: int) -> Context:
    return dataclasses.replace(
        ctx,
        history_tokens=None if ctx.history_tokens is None else _row(ctx.history_tokens, i, b),
        window_latents=None if ctx.window_latents is None else _row(ctx.window_latents, i, b),
        recent_latents=None if ctx.recent_latents is None else _row(ctx.recent_latents, i, b),
        target_t=ctx.target_t[i],
    )


class HunyuanFramepackBackbone(Backbone):
    """HunyuanVideo VAE + LLaMA/CLIP text encoders + SigLIP image encoder + FramePack-F1 DiT.

    Conditioning keys: ``prompt_embeds`` [1, L, text_dim], ``prompt_attention_mask`` [1, L],
    ``pooled_prompt_embeds`` [1, clip_dim] (from ``encode_text``) and ``image_embeds``
    [1, M, siglip_dim] (from ``encode_image``); ``predict`` reads the union.
    """

    name = "hunyuan_framepack"
    #: FramePack-F1's clean context: the history's last 19 latents, oldest first, 16 through the 4x
    #: clean embedder, 2 through the 2x, 1 through the 1x (DiT frame indices 1-16, 17-18, 19)
    F1_HISTORY = (16, 2, 1)
    context_frames = sum(F1_HISTORY)
    overlap_decode = True  # F1 decodes the newest two sections together and cross-fades the overlap
    noise_per_video = True  # FramePack's demo: one CPU generator for the whole video, drawn section by section
    #: ``framepack``: FramePack's demo's arithmetic (timestep rounded to the DiT dtype, output projection
    #: in float32, SigLIP fed the 8-bit frame); ``diffusers``: ``HunyuanVideoFramepackPipeline``'s (float32
    #: timestep, head in the DiT dtype, SigLIP fed the float frame)
    NUMERICS = ("framepack", "diffusers")

    def __init__(
        self,
        transformer: HistoryFramepackTransformer3DModel,
        vae: AutoencoderKLHunyuanVideo,
        text_encoder: nn.Module,
        tokenizer: Any,
        text_encoder_2: nn.Module,
        tokenizer_2: Any,
        image_encoder: nn.Module | None = None,
        feature_extractor: Any = None,
        prompt_template: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        rope_time_offset: float = 20.0,
        offload: bool = False,
        component_dtype: torch.dtype | None = None,
        numerics: str = "framepack",
    ) -> None:
        self.device, self.dtype = torch.device(device), dtype
        #: the dtype of the VAE and the text and image encoders (FramePack: float16 beside a bfloat16 DiT)
        self.component_dtype = component_dtype or dtype
        self.rope_time_offset = rope_time_offset  # DiT frame index of section t=0 (see module docstring)
        # offload: weights stay where they are (host, or meta for the DiT); a memory manager places them per phase.
        put = (lambda m, d, t: m) if offload else place
        self._transformer = put(transformer, self.device, dtype).eval()
        self.numerics = numerics
        self.vae, self.text_encoder, self.text_encoder_2 = vae, text_encoder, text_encoder_2
        self.image_encoder = image_encoder
        for module in (vae, text_encoder, text_encoder_2, image_encoder):
            if module is not None:  # frozen helpers; the DiT's trainability is left to the caller
                put(module, self.device, self.component_dtype).eval().requires_grad_(False)
        #: offload mode: builders of components left unloaded, and the DiT's weight folder (read lazily)
        self.loaders: dict[str, Any] = {}
        self.weight_folders: dict[str, str] = {}
        self.tokenizer, self.tokenizer_2, self.feature_extractor = tokenizer, tokenizer_2, feature_extractor
        self.prompt_template = prompt_template or _default_template()
        cfg = transformer.config
        self.geometry = LatentGeometry(
            latent_channels=vae.config.latent_channels,
            spatial_scale=vae.config.spatial_compression_ratio,
            temporal_scale=vae.config.temporal_compression_ratio,
            causal_first_frame=True,
            patch_size=(cfg.patch_size_t, cfg.patch_size, cfg.patch_size),
            hidden_size=cfg.num_attention_heads * cfg.attention_head_dim,
        )

    # --- modules -----------------------------------------------------------
    @property
    def transformer(self) -> HistoryFramepackTransformer3DModel:
        return self._transformer

    @property
    def numerics(self) -> str:
        """Whose arithmetic the DiT call follows: ``"framepack"`` (the default) or ``"diffusers"`` (``NUMERICS``)."""
        return self._numerics

    @numerics.setter
    def numerics(self, value: str) -> None:
        if value not in self.NUMERICS:
            raise ValueError(f"numerics must be one of {', '.join(self.NUMERICS)} (got {value!r})")
        self._numerics = value
        self._transformer.fp32_output = value == "framepack"

    def patch_embedding(self) -> nn.Module:
        return self._transformer.x_embedder.proj

    def enable_vae_tiling(self) -> None:
        self.vae.enable_tiling()

    # --- conditioning ------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompt: str, max_sequence_length: int = 256) -> Conditioning:
        """LLaMA hidden states (3rd from last layer, template cropped) + CLIP pooled output, as diffusers does."""
        template, crop = self.prompt_template["template"], int(self.prompt_template["crop_start"])
        ids = self.tokenizer(
            [template.format(prompt)], max_length=max_sequence_length + crop, padding="max_length",
            truncation=True, return_tensors="pt", return_attention_mask=True,
        )
        mask = ids.attention_mask.to(self.device)
        out = self.text_encoder(input_ids=ids.input_ids.to(self.device), attention_mask=mask, output_hidden_states=True)
        embeds = out.hidden_states[-3][:, crop:]  # diffusers skips the last 2 layers
        clip = self.tokenizer_2([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        pooled = self.text_encoder_2(clip.input_ids.to(self.device), output_hidden_states=False).pooler_output
        return Conditioning({
            "prompt_embeds": embeds.to(self.dtype),
            "prompt_attention_mask": mask[:, crop:],
            "pooled_prompt_embeds": pooled.to(self.dtype),
        })

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, start_latents: torch.Tensor | None = None) -> Conditioning:
        """SigLIP last hidden state of a ``[3, H, W]`` image in ``[-1, 1]``, plus its latent.

        FramePack-F1 always saw the start image as a clean latent at frame
        index 0 (``-rope_time_offset`` from the section start); ``start_latents``
        keeps that anchor in every section (see :meth:`predict`). Given, it
        replaces the image's own latent (a noise start).
        """
        if start_latents is None:
            start_latents = self.vae_encode(image[None, :, None])
        out = {"start_latents": start_latents.to(self.device, torch.float32)}
        if self.image_encoder is None or self.feature_extractor is None:
            return Conditioning(out)
        if self._numerics == "framepack":
            # The 8-bit frame itself, as FramePack's hf_clip_vision_encode hands it to the processor (which
            # resizes uint8 pixels, then rescales). Every image here came from uint8 (to_pixels), exactly.
            frame = ((image.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            inputs = self.feature_extractor(images=frame.permute(1, 2, 0).numpy(), return_tensors="pt")
        else:  # diffusers' pipeline: the [0, 1] float frame, resized as floats
            pixels = ((image.detach().float().cpu()[None] + 1) / 2).clamp(0, 1)
            inputs = self.feature_extractor(images=pixels, return_tensors="pt", do_rescale=False)
        values = inputs["pixel_values"].to(self.device, self.component_dtype)
        out["image_embeds"] = self.image_encoder(pixel_values=values).last_hidden_state.to(self.dtype)
        return Conditioning(out)

    def default_start(self, kind: str, seed: int, prompt: str, seconds: float, width: int,
                      height: int) -> StartFrame:
        """Text-to-video on an image-to-video checkpoint starts from a made-up first frame (FramePack-Studio's choices).

        ``black``/``white``/``green``: a flat frame, VAE-encoded like any start
        image. ``noise``: as FramePack-Studio, the start latent is unit
        Gaussian noise in the scaled latent space (seeded by ``seed``) and
        SigLIP sees a black frame (it has no meaningful embedding of noise).
        None of them is shown: they condition the video, they are not part of it.
        """
        if kind == "noise":
            g = torch.Generator().manual_seed((seed * 1_000_003 - 1) % (2**63 - 1))  # not any section's stream
            s = self.geometry.spatial_scale
            latents = torch.randn((1, self.geometry.latent_channels, 1, height // s, width // s), generator=g)
            return StartFrame(np.zeros((height, width, 3), np.uint8), latents, content=False)
        if kind not in START_COLOURS:
            raise ValueError(f"unknown start frame {kind!r} (choices: noise, {', '.join(START_COLOURS)})")
        return StartFrame(np.full((height, width, 3), START_COLOURS[kind], np.uint8), content=False)

    def latent_rgb(self) -> LatentRGB:
        """FramePack's fixed preview map (see ``LATENT_RGB_FACTORS``)."""
        return LatentRGB(torch.tensor(LATENT_RGB_FACTORS).T.contiguous(), torch.tensor(LATENT_RGB_BIAS), 1, (0.0, 1.0))

    # --- VAE -----------------------------------------------------------------
    @torch.no_grad()
    def vae_encode(
        self, pixels: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled float32 latents; the posterior mode by default, so context is deterministic."""
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        latents = dist.sample(generator=generator) if sample else dist.mode()
        return (latents * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Pixels in ``[-1, 1]``; ``clamp=False`` keeps the raw output (F1 cross-fades before clamping)."""
        z = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        pixels = self.vae.decode(z, return_dict=False)[0].float()
        return pixels.clamp(-1, 1) if clamp else pixels

    # --- denoiser ------------------------------------------------------------
    def schedule_mu(self, noisy_shape: tuple[int, ...]) -> float:
        """F1's dynamic shift: flux's ``mu`` from the noisy section's token count (capped at shift 7)."""
        t, h, w = noisy_shape[2:]
        _, ph, pw = self.geometry.patch_size
        return f1_mu(t * h * w / (ph * pw))

    def f1_context(self, recent: torch.Tensor, start: torch.Tensor | None, offset: float) -> dict[str, torch.Tensor]:
        """FramePack-F1's clean-latent inputs, laid out as it was trained.

        ``recent`` are the history's last latents (at most 19); zeros stand in for
        the ones a short history lacks, in front. The start latent (if any) goes
        through the 1x path at frame index 0 next to the newest latent at 19; the
        2 before it through the 2x path at 17-18; the 16 before those through the
        4x path at 1-16 (``offset``, the noisy section's first index, is 20).
        """
        dev, dt, n = self.device, self.dtype, self.context_frames
        recent = recent[:, :, -n:].to(dev, dt)
        if recent.shape[2] < n:
            pad = recent.new_zeros(*recent.shape[:2], n - recent.shape[2], *recent.shape[3:])
            recent = torch.cat([pad, recent], dim=2)
        x4, x2, x1 = recent.split(self.F1_HISTORY, dim=2)
        i4, i2, i1 = (offset + torch.arange(-n, 0, device=dev, dtype=torch.float32)).split(self.F1_HISTORY)
        if start is not None:
            x1, i1 = torch.cat([start.to(dev, dt).expand(x1.shape[0], -1, -1, -1, -1), x1], dim=2), torch.cat([torch.zeros(1, device=dev), i1])
        return {"latents_clean": x1, "indices_latents_clean": i1, "latents_history_2x": x2,
                "indices_latents_history_2x": i2, "latents_history_4x": x4, "indices_latents_history_4x": i4}

    #: FramePack's original model's clean context after the section: 1 latent through the 1x clean embedder,
    #: 2 through the 2x, 16 through the 4x (the section's 1x/2x/4x "post" latents, nearest first)
    POST_HISTORY = (1, 2, 16)

    def inverted_context(self, post: torch.Tensor, start: torch.Tensor | None, gap: int,
                         section: int) -> dict[str, torch.Tensor]:
        """FramePack's original (inverted anti-drifting) clean-latent inputs, laid out as it was trained.

        Index 0 holds the start latent (1x path), ``gap`` blank indices follow, then the
        ``section`` noisy latents, then ``post`` (the 19 latents after the section,
        zeros past the video's end): 1 at 1x next to the section, 2 at 2x, 16 at 4x.
        """
        dev, dt, n = self.device, self.dtype, sum(self.POST_HISTORY)
        if post.shape[2] != n:
            raise ValueError(f"the inverted context reads {n} post latents (got {post.shape[2]})")
        x1, x2, x4 = post.to(dev, dt).split(self.POST_HISTORY, dim=2)
        first = 1 + gap + section  # the post latents' first index: after the start, the gap and the section
        i1, i2, i4 = torch.arange(first, first + n, device=dev, dtype=torch.float32).split(self.POST_HISTORY)
        if start is not None:
            x1 = torch.cat([start.to(dev, dt).expand(x1.shape[0], -1, -1, -1, -1), x1], dim=2)
            i1 = torch.cat([torch.zeros(1, device=dev), i1])
        return {"latents_clean": x1, "indices_latents_clean": i1, "latents_history_2x": x2,
                "indices_latents_history_2x": i2, "latents_history_4x": x4, "indices_latents_history_4x": i4,
                "indices_latents": 1 + gap + torch.arange(section, device=dev, dtype=torch.float32)}

    def predict(
        self, noisy: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, context: Context, guidance: float = 1.0
    ) -> torch.Tensor:
        """Velocity ``noise - x0`` for ``x_t = (1 - sigma) x0 + sigma noise``.

        That is already what FramePack outputs: diffusers' FlowMatchEuler step is
        ``x + (sigma_next - sigma) * v`` (and ``x0 = x - sigma * v``), so no conversion.
        """
        b = noisy.shape[0]
        if context.target_t is not None and context.target_t.dim() == 2:
            # Per-sample query positions: diffusers' rope takes one index list, so one call per sample.
            return torch.cat([self.predict(noisy[i : i + 1], _row(sigma, i, b), Conditioning({k: _row(v, i, b) for k, v in cond.tensors.items()}),
                                           _context_row(context, i, b), guidance) for i in range(b)])

        out = self._transformer(**self._dit_inputs(noisy, sigma, cond, context, guidance))[0]
        return out.to(noisy.device, noisy.dtype)

    def predict_branches(self, noisy: torch.Tensor, sigma: torch.Tensor, branches: list[tuple[Conditioning, Context]],
                         guidance: float = 1.0) -> list[torch.Tensor]:
        """One prediction per ``(cond, context)`` branch from one DiT call that runs the branches block by block.

        Each block runs every branch while it is on the device, so a streamed
        block is copied once per step however many guidance branches there are.
        Every branch performs exactly the operations of its own :meth:`predict`.
        """
        if len(branches) == 1 or any(c.target_t is not None and c.target_t.dim() == 2 for _, c in branches):
            return [self.predict(noisy, sigma, c, ctx, guidance) for c, ctx in branches]
        inputs = [self._dit_inputs(noisy, sigma, c, ctx, guidance) for c, ctx in branches]
        outs = self._transformer(**inputs[0], more_branches=inputs[1:])
        return [o.to(noisy.device, noisy.dtype) for o in outs]

    def _dit_inputs(self, noisy: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, context: Context,
                    guidance: float) -> dict[str, Any]:
        """The DiT's keyword arguments for one prediction (one sample row of positions)."""
        b, t = noisy.shape[0], noisy.shape[2]
        dev, dt = self.device, self.dtype

        def batched(x: torch.Tensor, dtype: torch.dtype | None = dt) -> torch.Tensor:
            x = x.to(dev, dtype) if dtype is not None else x.to(dev)
            return x.expand(b, *x.shape[1:]) if x.shape[0] == 1 else x

        c = cond.tensors
        sigma = torch.as_tensor(sigma, device=dev, dtype=torch.float32).reshape(-1).expand(b)
        shift = float(self.rope_time_offset)  # same constant on every time index: relative timing is kept
        frames = torch.arange(t) if context.target_t is None else context.target_t  # patch_size_t is 1
        kwargs: dict[str, Any] = {}
        if "image_embeds" in c:
            kwargs["image_embeds"] = batched(c["image_embeds"])
        start = c.get("start_latents")
        if start is not None and start.shape[-2:] != noisy.shape[-2:]:
            raise ValueError(f"start image latents {tuple(start.shape[-2:])} do not match the section's {tuple(noisy.shape[-2:])}")
        if context.post_latents is not None:  # the original model's loop: the future, not the past
            inv = self.inverted_context(context.post_latents, start, context.post_gap, t)
            frames = inv.pop("indices_latents") - shift  # the section's own indices (shift is added below)
            kwargs.update({k: batched(v) if k.startswith("latents") else v for k, v in inv.items()})
        elif context.recent_latents is not None:
            if context.window_latents is not None:
                raise ValueError("give either recent_latents (F1's own context) or window_latents, not both")
            f1 = self.f1_context(context.recent_latents, start, shift)
            kwargs.update({k: batched(v) if k.startswith("latents") else v for k, v in f1.items()})
        else:
            # FramePack's 1x clean-latent path only: the start-image anchor at index 0, then a raw window
            # (what training's window-mode steps use).
            clean, indices = [], []
            if start is not None:
                clean.append(start)
                indices.append(torch.zeros(1, device=dev))
            if context.window_latents is not None:
                window = context.window_latents
                clean.append(window)
                indices.append(shift + context.window_t0 + torch.arange(window.shape[2], device=dev))
            if clean:
                kwargs["latents_clean"] = batched(torch.cat([x.to(dev, dt) for x in clean], dim=2))
                kwargs["indices_latents_clean"] = torch.cat(indices)
        if context.history_tokens is not None:
            kwargs["history_tokens"] = batched(context.history_tokens)
            positions = context.history_positions.to(dev, torch.float32)
            kwargs["history_positions"] = positions + torch.tensor([shift, 0.0, 0.0], device=dev)
        timestep = sigma * 1000.0
        if self._numerics == "framepack":  # FramePack's fm_wrapper: ``(sigma * 1000).to(dtype)``, the DiT's dtype
            timestep = timestep.to(dt)
        return dict(
            hidden_states=noisy.to(dev, dt),
            timestep=timestep,
            encoder_hidden_states=batched(c["prompt_embeds"]),
            encoder_attention_mask=batched(c["prompt_attention_mask"], None),
            pooled_projections=batched(c["pooled_prompt_embeds"]),
            indices_latents=shift + frames.to(dev, torch.float32),
            guidance=torch.full((b,), guidance * 1000.0, device=dev, dtype=dt),  # distilled guidance, as FramePack
            return_dict=False,
            **kwargs,
        )

    # --- constructors ----------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        transformer: str = "lllyasviel/FramePack_F1_I2V_HY_20250503",
        base: str = "hunyuanvideo-community/HunyuanVideo",
        image_encoder: str = "lllyasviel/flux_redux_bfl",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        local_files_only: bool | None = None,
        cache_dir: str | None = None,
        text_encoder_quantization: str | None = None,
        offload: bool = False,
        component_dtype: torch.dtype | None = None,
    ) -> "HunyuanFramepackBackbone":
        """Load from hub ids or local folders laid out like the hub repos (safetensors only).

        ``local_files_only=None`` follows ``HF_HUB_OFFLINE``. Every component is
        located before anything is loaded; a missing one raises ``WeightsNotFoundError``.
        ``text_encoder_quantization`` (``"nf4"``/``"int8"``) quantises the LLaMA text
        encoder with bitsandbytes through transformers while it loads, on ``device``.
        ``offload=True`` loads nothing big: the DiT is built on ``meta`` (its safetensors
        are read later, per block, by :class:`~framepack_history.memory.MemoryManager`),
        the text and image encoders become ``loaders`` run on first use, the VAE stays on the host.
        ``component_dtype`` (default ``dtype``) is the VAE's and the text and image encoders' dtype.
        """
        offline = is_offline(local_files_only)
        specs = _component_specs(transformer, base, image_encoder)
        where = {k: locate(src, sub, marker, k, offline, cache_dir) for k, (src, sub, marker, *_) in specs.items()}
        parts: dict[str, Any] = {}
        lazy: dict[str, Any] = {}
        parts_dtype = component_dtype or dtype
        for k, (src, sub, _, loader, dtype_key) in specs.items():
            kw: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": offline}
            if dtype_key is not None:
                kw.update({dtype_key: dtype if k == "transformer" else parts_dtype, "use_safetensors": True})
            if k == "text_encoder" and text_encoder_quantization is not None:
                kw["quantization_config"] = text_encoder_quantization_config(text_encoder_quantization, parts_dtype)
                kw["device_map"] = {"": str(torch.device(device))}
            if offload and k in ("text_encoder", "text_encoder_2", "image_encoder"):
                kw["device_map"] = {"": str(torch.device(device))}  # straight from the files to the device
                lazy[k], parts[k] = functools.partial(load_frozen, k, loader, where[k], src, sub, **kw), None
            elif offload and k == "transformer":
                folder = where[k] or snapshot(src, cache_dir)
                with torch.device("meta"):
                    parts[k] = loader.from_config(loader.load_config(folder)).to(dtype)
                lazy["transformer_folder"] = folder
            else:
                parts[k] = load(k, loader, where[k], src, sub, **kw)
        bb = cls(**parts, device=device, dtype=dtype, offload=offload, component_dtype=parts_dtype)
        if offload:
            bb.weight_folders["transformer"] = lazy.pop("transformer_folder")
            bb.loaders.update(lazy)
        return bb

    @classmethod
    def tiny(
        cls, seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
        component_dtype: torch.dtype | None = None, **overrides: Any
    ) -> "HunyuanFramepackBackbone":
        """Every component from tiny configs with random weights (tests, CI); ``overrides`` update the DiT config."""
        from transformers import (
            CLIPTextConfig,
            CLIPTextModel,
            LlamaConfig,
            LlamaModel,
            SiglipImageProcessor,
            SiglipVisionConfig,
            SiglipVisionModel,
        )  # transformers: only for the real model (the toy needs none)

        torch.manual_seed(seed)
        tokenizer = _byte_tokenizer(
            ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            add_eos=False,
        )
        tokenizer_2 = _byte_tokenizer(("<|startoftext|>", "<|endoftext|>"), add_eos=True)
        text_dim, clip_dim, siglip_dim = 32, 32, 24
        small = dict(intermediate_size=64, num_attention_heads=2)

        def ids(tok: Any) -> dict[str, int]:
            return dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

        text_encoder = LlamaModel(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=text_dim, num_hidden_layers=3, num_key_value_heads=1,
            max_position_embeddings=2048, **small, **ids(tokenizer),
        ))
        text_encoder_2 = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer_2), hidden_size=clip_dim, num_hidden_layers=2, max_position_embeddings=77,
            **small, **ids(tokenizer_2),
        ))
        image_encoder = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=siglip_dim, num_hidden_layers=1, image_size=32, patch_size=8, **small,
        ))
        feature_extractor = SiglipImageProcessor(
            size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        vae = AutoencoderKLHunyuanVideo(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)
        config = dict(
            in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
            text_embed_dim=text_dim, pooled_projection_dim=clip_dim, rope_axes_dim=(4, 6, 6), has_image_proj=True,
            image_proj_dim=siglip_dim, has_clean_x_embedder=True,
        )
        transformer = HistoryFramepackTransformer3DModel(**{**config, **overrides})
        # The real crop (95) counts LLaMA-3 tokens; recount the template's prefix for the byte tokenizer.
        template = _default_template()
        template["crop_start"] = len(tokenizer(template["template"].split("{}")[0]).input_ids)
        return cls(
            transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, image_encoder, feature_extractor,
            prompt_template=template, device=device, dtype=dtype, component_dtype=component_dtype,
        )


def _byte_tokenizer(specials: tuple[str, ...], add_eos: bool) -> Any:
    """Offline byte-level tokenizer: 256 byte tokens + ``specials`` (BOS, EOS/pad, then markers kept whole)."""
    from tokenizers import (  # tokenizers: only for the real model (the toy needs none)
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast  # transformers: only for the real model (the toy needs none)

    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # sorted: the alphabet comes from a hash set
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    bos, eos = specials[:2]
    single = f"{bos} $A {eos}" if add_eos else f"{bos} $A"  # LLaMA-3 adds BOS only, CLIP adds both
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[(bos, 0), (eos, 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
    if len(specials) > 2:
        wrapped.add_special_tokens({"additional_special_tokens": list(specials[2:])})
    return wrapped
