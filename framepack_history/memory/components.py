"""A preset's models on the ``meta`` device: shapes and sizes from configs, no weights.

The planner reads parameter counts from these modules and traces their
forward passes (see :mod:`.measure`). Configs come from the preset's tiny
settings (tests) or, for real weights, from the JSON files shipped in
``backbones/configs`` (FramePack-F1 transformer, llava-llama-3-8b, CLIP-L,
SigLIP so400m, HunyuanVideo VAE), so planning works offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from framepack_history.backbones.base import Backbone, Conditioning, Context, transformer_blocks
from framepack_history.backbones.framepack_transformer import HistoryFramepackTransformer3DModel
from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.backbones.precision import store_weights
from framepack_history.backbones.toy import DEFAULT_VOCAB, ToyBackbone, ToyDiT, ToyVAE, WordTokenizer
from framepack_history.config.paths import resolve_path
from framepack_history.config.presets import ModelSpec, Preset
from framepack_history.device import torch_dtype
from framepack_history.history.encoder import HistoryEncoder
from framepack_history.memory.measure import LiveBytes, trace_peak

CONFIGS = Path(__file__).resolve().parent.parent / "backbones" / "configs"
HUNYUAN_TEXT_TOKENS = 256  # max_sequence_length of encode_text: what the DiT reads at most
HUNYUAN_TEMPLATE_TOKENS = 95  # LLaMA-3 tokens of the prompt template (cropped after encoding)


def read_config(name: str) -> dict[str, Any]:
    """A shipped config without its ``_`` keys (class name, notes)."""
    data = json.loads((CONFIGS / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


@dataclass
class MetaComponents:
    """Every module a preset loads, on ``meta``; ``shallow`` keeps one DiT block of each kind.

    A DiT block returns memory to where it started, so the activation peak of
    a one-block-per-kind model equals the full model's and traces 30x faster.
    """

    backbone: Backbone
    shallow: Backbone
    encoder: HistoryEncoder
    blocks: list[nn.Module]  # DiT blocks in execution order (full model)
    text: dict[str, nn.Module] = field(default_factory=dict)  # attribute name -> text encoder
    image: nn.Module | None = None
    text_len: int = 0  # tokens the first text encoder reads (template included)
    clip_len: int = 0
    cond_len: int = 0  # text tokens the DiT reads
    image_size: int = 0
    image_tokens: int = 0
    traces: dict = field(default_factory=dict)  # planner's memoised activation traces

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    def block_bytes(self) -> list[int]:
        return [sum(p.numel() * p.element_size() for p in b.parameters()) for b in self.blocks]

    def nonblock_bytes(self) -> int:
        """Transformer weights outside its blocks (embedders, refiner, output head): always resident."""
        total = sum(p.numel() * p.element_size() for p in self.backbone.transformer.parameters())
        return total - sum(self.block_bytes())

    def conditioning(self, image: bool) -> Conditioning:
        """Meta prompt (and image) conditioning of the sizes ``predict`` receives."""
        bb = self.backbone
        if bb.name == "toy":
            n = bb.transformer.config.max_text_length
            return Conditioning({"text_ids": torch.zeros(1, n, dtype=torch.long, device="meta"),
                                 "text_mask": torch.ones(1, n, dtype=torch.bool, device="meta")})
        t = bb.transformer.config
        c = {
            "prompt_embeds": torch.empty(1, self.cond_len, t.text_embed_dim, device="meta", dtype=bb.dtype),
            "prompt_attention_mask": torch.ones(1, self.cond_len, dtype=torch.long, device="meta"),
            "pooled_prompt_embeds": torch.empty(1, t.pooled_projection_dim, device="meta", dtype=bb.dtype),
        }
        if image and self.image is not None:
            c["image_embeds"] = torch.empty(1, self.image_tokens, t.image_proj_dim, device="meta", dtype=bb.dtype)
        return Conditioning(c)


def _toy(spec: ModelSpec, dtype: torch.dtype, shallow: bool) -> Backbone:

    if spec.weights:  # trained weights: their saved configs are the truth
        folder = Path(resolve_path(spec.weights))
        dit_cfg = dict(ToyDiT.load_config(folder / "transformer"))
        vae_cfg = dict(ToyVAE.load_config(folder / "vae"))
    else:
        vae_cfg = dict(spec.config.get("vae", {}))
        dit_cfg = {"in_channels": ToyVAE(**vae_cfg).config.latent_channels, **spec.config.get("dit", {})}
    dit_cfg = {k: v for k, v in dit_cfg.items() if not k.startswith("_")}
    vae_cfg = {k: v for k, v in vae_cfg.items() if not k.startswith("_")}
    if shallow:
        dit_cfg["depth"] = min(1, dit_cfg.get("depth", 4))
    dit, vae = ToyDiT(**dit_cfg), ToyVAE(**vae_cfg)
    tok = WordTokenizer(DEFAULT_VOCAB[: dit.config.vocab_size], dit.config.max_text_length)
    return ToyBackbone(dit, vae, tok, device="meta", dtype=dtype)


def _hunyuan(spec: ModelSpec, dtype: torch.dtype, shallow: bool) -> tuple[Backbone, dict[str, Any]]:
    from diffusers import AutoencoderKLHunyuanVideo  # diffusers: only on the path that uses it (slow to import)
    from transformers import (  # transformers: only for the real model (the toy needs none)
        CLIPTextConfig,
        CLIPTextModel,
        LlamaConfig,
        LlamaModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    few = {"num_layers": 1, "num_single_layers": 1}
    if not spec.weights:  # the tiny test model: the same code path that builds it, on meta
        over = {**spec.config, **({k: min(v, spec.config.get(k, v)) for k, v in few.items()} if shallow else {})}
        bb = HunyuanFramepackBackbone.tiny(seed=spec.seed, device="meta", dtype=dtype, **over)
        crop = int(bb.prompt_template["crop_start"])
        img = bb.feature_extractor.size["height"] if bb.feature_extractor is not None else 0
        return bb, {"text_len": HUNYUAN_TEXT_TOKENS + crop, "image_size": img}
    cfg = read_config("framepack_f1_transformer.json")
    if shallow:
        cfg.update(few)
    transformer = HistoryFramepackTransformer3DModel.from_config(cfg)
    vae = AutoencoderKLHunyuanVideo.from_config(read_config("hunyuan_video_vae.json"))
    llama = LlamaModel(LlamaConfig(**read_config("llava_llama3_8b_text_encoder.json")))
    clip = CLIPTextModel(CLIPTextConfig(**read_config("clip_l_text_encoder.json")))
    siglip_cfg = read_config("siglip_so400m_image_encoder.json")
    siglip = SiglipVisionModel(SiglipVisionConfig(**siglip_cfg))
    template = {"template": "{}", "crop_start": HUNYUAN_TEMPLATE_TOKENS}
    bb = HunyuanFramepackBackbone(transformer, vae, llama, None, clip, None, siglip, None,
                                  prompt_template=template, device="meta", dtype=dtype)
    return bb, {"text_len": HUNYUAN_TEXT_TOKENS + HUNYUAN_TEMPLATE_TOKENS, "image_size": siglip_cfg["image_size"]}


def _encoder(spec: ModelSpec, bb: Backbone, rate: str | None) -> HistoryEncoder:
    geo = bb.geometry
    if spec.encoder:
        enc = HistoryEncoder.from_config(HistoryEncoder.load_config(Path(resolve_path(spec.encoder))))
    else:
        enc = HistoryEncoder(latent_channels=geo.latent_channels, hidden_size=geo.hidden_size,
                             patch_size=tuple(geo.patch_size), rate=rate or spec.encoder_rate,
                             channels=tuple(spec.encoder_channels))
    enc = enc.to(bb.dtype)
    enc.set_patch_embedding(bb.patch_embedding())
    return enc


def _key(preset: Preset) -> str:
    hw = preset.hardware
    return json.dumps([preset.model.__dict__, hw.dtype, hw.weights_dtype], sort_keys=True, default=str)


@lru_cache(maxsize=8)
def _build(key: str, rate: str | None) -> MetaComponents:

    model, dtype_name, weights_dtype = json.loads(key)
    spec = ModelSpec(**model)
    dtype = torch_dtype(dtype_name)
    with torch.device("meta"):
        if spec.backbone == "toy":
            bb, shallow, info = _toy(spec, dtype, False), _toy(spec, dtype, True), {}
        else:
            (bb, info), (shallow, _) = _hunyuan(spec, dtype, False), _hunyuan(spec, dtype, True)
        enc = _encoder(spec, bb, rate)
        for b in (bb, shallow):  # float8 storage: blocks count half the bytes, traces see the cast copies
            store_weights(b.transformer, weights_dtype, dtype)
    comps = MetaComponents(bb, shallow, enc, transformer_blocks(bb.transformer))
    if spec.backbone != "toy":
        comps.text = {"text_encoder": bb.text_encoder, "text_encoder_2": bb.text_encoder_2}
        comps.image = bb.image_encoder
        comps.text_len, comps.clip_len, comps.cond_len = info["text_len"], 77, HUNYUAN_TEXT_TOKENS
        comps.image_size = info["image_size"]
        if comps.image is not None:
            c = comps.image.config
            comps.image_tokens = (c.image_size // c.patch_size) ** 2
    else:
        comps.cond_len = bb.transformer.config.max_text_length
    return comps


def meta_components(preset: Preset, rate: str | None = None) -> MetaComponents:
    """The preset's modules on ``meta`` (cached per model spec, dtype and encoder rate)."""
    return _build(_key(preset), rate)


# ---------------------------------------------------------------- traces
def cached_trace(comps: MetaComponents, key: tuple, fn: Any) -> int:
    """Traces are memoised on the components object (shared by every plan of the same model)."""
    if key not in comps.traces:
        comps.traces[key] = fn()
    return comps.traces[key]


def denoise_activation(comps: MetaComponents, video: Any, hist: int, window: int, image: bool,
                       branches: list[tuple[bool, bool]] = ((True, True),)) -> int:
    """Traced activation peak of one step's ``predict_branches`` call (shallow DiT: same peak, 30x faster).

    ``branches`` are the step's guidance passes ``(conditional, with_history)``:
    they run block by block together, so their token sequences are alive at once.
    """
    bb, geo = comps.shallow, comps.backbone.geometry
    h, w = video.height // geo.spatial_scale, video.width // geo.spatial_scale
    t = geo.latent_frames(video.section_frames)

    def run() -> None:
        ctx = Context()
        if hist:
            ctx.history_tokens = torch.empty(1, hist, geo.hidden_size, device="meta", dtype=bb.dtype)
            ctx.history_positions = torch.empty(hist, 3, device="meta")
        if window:
            ctx.window_latents = torch.empty(1, geo.latent_channels, window, h, w, device="meta", dtype=bb.dtype)
            ctx.window_t0 = -float(window)
        noisy = torch.empty(1, geo.latent_channels, t, h, w, device="meta")
        bare = replace(ctx, history_tokens=None, history_positions=None)
        pairs = [(comps.conditioning(image), ctx if with_h else bare) for _, with_h in branches]
        for v in bb.predict_branches(noisy, torch.empty(1, device="meta"), pairs, 1.0):
            v.float()

    key = ("denoise", h, w, t, hist, window, image, tuple(branches))
    return cached_trace(comps, key, lambda: trace_peak(run, scalar=comps.cond_len))


def vae_decode_activation(comps: MetaComponents, latent_shape: tuple[int, ...], tiled: bool) -> int:
    """Traced peak of ``vae_decode``; the decoder is traced once per tile shape and replayed."""
    return cached_trace(comps, ("decode", latent_shape, tiled), lambda: _trace_decode(comps, latent_shape, tiled))


def _trace_decode(comps: MetaComponents, latent_shape: tuple[int, ...], tiled: bool) -> int:
    vae = comps.backbone.vae
    has_tiling = hasattr(vae, "enable_tiling")
    if has_tiling:
        vae.enable_tiling() if tiled else vae.disable_tiling()
    decoder = vae.decoder
    with torch.no_grad(), LiveBytes(fused_attention=True) as lb, lb.memoize(decoder):
        comps.backbone.vae_decode(torch.empty(latent_shape, device="meta"))
    return lb.peak


def vae_encode_activation(comps: MetaComponents, shape: tuple[int, ...], tiled: bool, host_pixels: bool = False) -> int:
    """Traced peak of one ``vae_encode`` call on pixels ``[B, 3, F, H, W]`` of ``shape``, the pixels included.

    On a GPU the call's pixels on the device are its copy of the host's chunk, in the VAE's dtype;
    with ``host_pixels`` (the CPU is the device) the float32 chunk the host made counts as well.
    """
    vae = comps.backbone.vae
    if hasattr(vae, "enable_tiling"):
        vae.enable_tiling() if tiled else vae.disable_tiling()
    dtype = torch.float32 if host_pixels else next(vae.parameters()).dtype

    def run() -> None:
        comps.backbone.vae_encode(torch.empty(shape, device="meta", dtype=dtype))

    return trace_peak(run)


def text_activation(comps: MetaComponents) -> int:
    total = 0
    for name, enc in comps.text.items():
        n = comps.text_len if name == "text_encoder" else comps.clip_len
        ids = torch.zeros(1, n, dtype=torch.long, device="meta")
        mask = torch.ones(1, n, dtype=torch.long, device="meta")
        kw = {"attention_mask": mask, "output_hidden_states": True} if name == "text_encoder" else {}
        total += trace_peak(lambda enc=enc, ids=ids, kw=kw: enc(input_ids=ids, **kw), scalar=1)
    return total
