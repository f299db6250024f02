"""What a training config needs per GPU: device and host bytes, FLOPs per step, and which cards it fits.

The same bookkeeping as the inference planner (:mod:`framepack_history.memory.planner`): weights are parameter
counts of the preset's modules on the ``meta`` device, activations are traced on ``meta`` with
:class:`~framepack_history.memory.measure.LiveBytes` through the model's own code path (``Backbone.predict``
with LoRA injected, gradient checkpointing as configured), with attention counted as a fused kernel.

Backward is traced, not estimated: meta tensors carry autograd, so ``loss.backward()`` runs the real backward
graph (the recomputed forward of checkpointed blocks included) under the same byte counter. Only attention is
replaced, by an autograd function with a flash kernel's footprint (it saves q, k, v, the output and a float32
log-sum-exp row; its backward makes dq, dk, dv and a float32 dq accumulator).

A whole 60-block DiT traced at 30k tokens would be slow, so three shallow copies are traced (1 double + 1
single block, 2 + 1, 1 + 2) and the full model is their linear extrapolation: each extra block adds what it
keeps between forward and backward (its checkpointed inputs, or all its saved activations without
checkpointing), and the same for FLOPs (counted on the same meta run with ``torch.utils.flop_counter``'s
formulas; attention FLOPs, which the fused stand-in does not perform, are added analytically).

What the trainer holds per GPU (``training/stages.py``): the whole backbone on the device (DiT, both text
encoders, the image encoder, the VAE: they encode captions and the clip's first frame each step; with
``data.kind = "prepared"`` they are loaded and dropped before the first step, so they count only in the load
peak, when the whole backbone sits on every GPU before anything is sharded or dropped), the LoRA and
the encoder in fp32 with their gradients and AdamW states, and the step's activations. FSDP (``--gpus N`` with
``fsdp``) shards what accelerate wraps (the DiT and the encoder: the ``FlowModule``) N ways and all-gathers one
block at a time (two in flight with prefetch); the other frozen components stay whole on every GPU.

With ``stream_blocks = true`` (``training/streaming.py``) the frozen DiT blocks live in pinned host memory
and two are on the device at a time (the running block and the prefetched one; in the backward the
recomputed block and the one before it), copied in twice per micro-batch (forward and recompute). They load
straight to the host, and with prepared data the text and image encoders and the VAE are never loaded at
all: the load peak is the DiT's stem. The plan reads the option from the config; for a config without it,
the card table still says where it would help (``needs streaming``), and ``fits`` means the trainer as
configured runs there. *float8* storage of the frozen blocks (``weights_storage``) is planned as a lever the
trainer does not have.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import flop_registry

from framepack_history.backbones.base import Conditioning, Context
from framepack_history.config.presets import Preset
from framepack_history.errors import InputError
from framepack_history.memory.budget import CUDA_ALLOWANCE, HOST_OVERHEAD, GiB
from framepack_history.memory.components import MetaComponents, cached_trace, meta_components
from framepack_history.memory.measure import LiveBytes, module_bytes
from framepack_history.training.modeling import LORA_TARGETS, rebind_transformer, training_preset
from framepack_history.training.settings import TrainConfig

#: fp32 master weights + fp32 gradients + AdamW's two fp32 moments, per trainable parameter
TRAINABLE_BYTES = 4 + 4 + 8
LOADER_PREFETCH = 2  # torch DataLoader's default prefetch_factor: batches each worker holds ready
#: F1's clean context through its 1x / 2x / 4x embedders: (latent frames, patch kernel (t, h, w))
F1_CONTEXT = ((1, (1, 2, 2)), (2, (2, 4, 4)), (16, (4, 8, 8)))


@dataclass(frozen=True)
class Card:
    """A GPU class the cost is quoted for: memory, dense bf16 peak, host link."""

    gib: int
    name: str
    tflops: float  # dense bf16 tensor-core peak (no sparsity), TFLOP/s
    link_gbs: float  # host-to-device copy rate from pinned memory, GB/s (measured-typical, not the spec sheet's)


CARDS = (Card(24, "RTX 4090 24 GB", 165.0, 25.0), Card(48, "L40S 48 GB", 362.0, 25.0),
         Card(80, "H100 80 GB (SXM)", 989.0, 50.0))
MFU = 0.38  # share of the peak a checkpointed LoRA step sustains (large matmuls, flash attention); 35-40 % is typical


@dataclass
class Row:
    """One component's bytes on each GPU and on the host."""

    name: str
    device: int
    host: int = 0
    note: str = ""
    streamable: int = 0  # device bytes that streaming frozen blocks would move to the host


@dataclass
class Sequence:
    """DiT tokens of one prediction (the largest a step makes)."""

    noisy: int
    context: int  # F1's clean context (and the start anchor)
    history: int
    text: int
    image: int

    @property
    def total(self) -> int:
        return self.noisy + self.context + self.history + self.text + self.image


@dataclass
class TrainPlan:
    """Predicted per-GPU memory and work of one training config on ``gpus`` GPUs."""

    config: str
    stage: str
    gpus: int
    fsdp: bool
    rows: list[Row]
    seq: Sequence
    batch: int  # samples per micro-batch per GPU
    grad_accum: int
    flops_per_sample: float  # forward + backward (+ recompute) of one sample
    block_bytes: int  # frozen DiT block bytes (what streaming copies per pass)
    passes: int  # times each block's weights are needed per micro-batch (forward, and recompute with checkpointing)
    host_overhead: int
    max_steps: int = 0
    notes: list[str] = field(default_factory=list)
    load_peak: int = 0  # device bytes while the backbone loads (every frozen part at once, before any sharding)
    streaming: bool = False  # the config streams the frozen blocks (stream_blocks): the rows already say so

    @property
    def device_total(self) -> int:
        return sum(r.device for r in self.rows)

    @property
    def streamed_total(self) -> int:
        """Device bytes with the frozen blocks streamed (only where the plan is for one GPU)."""
        return self.device_total - sum(r.streamable for r in self.rows)

    @property
    def host_total(self) -> int:
        return self.host_overhead + sum(r.host for r in self.rows)

    @property
    def flops_per_step(self) -> float:
        """FLOPs of one optimiser step on one GPU (its micro-batches); the global step is ``gpus`` times it."""
        return self.flops_per_sample * self.batch * self.grad_accum

    @property
    def streamed_bytes_per_step(self) -> int:
        """Bytes a streamed optimiser step copies to the device (each block, each pass, each micro-batch)."""
        return self.block_bytes * self.passes * self.grad_accum

    def verdict(self, card: Card) -> str:
        """``fits`` (the trainer as it is), ``needs streaming`` (only with frozen blocks streamed), ``does not fit``."""
        usable = usable_bytes(card.gib)
        if max(self.device_total, self.load_peak) <= usable:
            return "fits"
        if not self.streaming and self.gpus == 1 and self.passes > 1 and self.streamed_total <= usable:
            return "needs streaming"
        return "does not fit"

    def gpu_hours(self, card: Card, steps: int | None = None) -> float:
        """GPU-hours of ``steps`` optimiser steps (default: the config's ``max_steps``) on ``gpus`` such cards."""
        streamed = self.streaming or self.verdict(card) == "needs streaming"
        return self.step_seconds(card, streamed) * (self.max_steps if steps is None else steps) * self.gpus / 3600

    def step_seconds(self, card: Card, streamed: bool = False, mfu: float = MFU) -> float:
        """Seconds per optimiser step: compute at ``mfu`` of the card's peak, or the copies if those take longer."""
        compute = self.flops_per_step / (card.tflops * 1e12 * mfu)
        return max(compute, self.streamed_bytes_per_step / (card.link_gbs * 1e9)) if streamed else compute


def usable_bytes(card_gib: float) -> int:
    """What the allocator may hand out on a card: less the inference planner's ``CUDA_ALLOWANCE`` (the CUDA
    context, library workspaces and allocator fragmentation, none of which a trace sees)."""
    return int(card_gib * GiB) - CUDA_ALLOWANCE.total


# ------------------------------------------------------------------ tracing
class _FlashAttention(torch.autograd.Function):
    """Memory of a fused attention kernel, forward and backward; values left empty (meta tensors)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v, _, _ = ctx.saved_tensors
        acc = q.new_empty(q.shape, dtype=torch.float32)  # flash's float32 dq accumulator
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del acc
        return dq, dk, dv


class _TrainingAttention(TorchFunctionMode):
    """SDPA with a fused kernel's footprint that autograd can go back through (this thread only)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.nn.functional.scaled_dot_product_attention:
            kw = kwargs or {}
            q, k, v = (*args, *(kw[n] for n in ("query", "key", "value")[len(args):]))[:3]
            return _FlashAttention.apply(q, k, v)
        return func(*args, **(kwargs or {}))


@dataclass
class _Trace:
    peak: int  # bytes
    flops: int


class _Counting(LiveBytes):
    """Live bytes, and the FLOPs of every operator torch's FLOP counter has a formula for (matmuls, convolutions).

    One pass counts both: ``FlopCounterMode`` itself tracks modules with hooks that keep tensors alive.
    """

    def __init__(self, scalar: int) -> None:
        super().__init__(scalar=scalar)
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = super().__torch_dispatch__(func, types, args, kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **(kwargs or {}), out_val=out)
        return out


def _trace(fn: Any, scalar: int) -> _Trace:
    """Peak live bytes and FLOPs of ``fn`` (forward and backward) on ``meta``, grad enabled.

    ``scalar`` answers data-dependent scalars (the text length the DiT crops its prompt to).
    """
    with torch.enable_grad(), _TrainingAttention(), _Counting(scalar) as c:
        fn()
    return _Trace(c.peak, c.flops)


def _shallow_dit(comps: MetaComponents, doubles: int, singles: int, cfg: TrainConfig) -> nn.Module:
    """A meta copy of the DiT with ``doubles`` + ``singles`` blocks, LoRA injected as the trainer does."""
    from peft import LoraConfig, inject_adapter_in_model  # peft: only when LoRA layers are built

    t = comps.backbone.transformer
    conf = {k: v for k, v in dict(t.config).items() if not k.startswith("_")}
    conf.update(num_layers=doubles, num_single_layers=singles)
    with torch.device("meta"):
        dit = nn.Module.to(type(t).from_config(conf), comps.dtype)  # plain cast: no float32-module warning on meta
        dit.requires_grad_(False)
        if cfg.lora_rank > 0:
            targets = cfg.lora_targets or LORA_TARGETS[comps.backbone.name]
            inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, target_modules=targets), dit)
    for n, p in dit.named_parameters():
        if "lora_" in n:  # under autocast the adapters' matmuls run in the compute dtype
            p.data = p.data.to(comps.dtype)
            p.requires_grad_(True)
            p.register_post_accumulate_grad_hook(_drop_grad)  # their gradients are the optimizer row's
    if cfg.lora_rank == 0:
        dit.requires_grad_(True)
        for p in dit.parameters():
            p.register_post_accumulate_grad_hook(_drop_grad)
    if cfg.gradient_checkpointing:  # the trainer's checkpointing; the recompute sees the fused attention too
        dit.enable_gradient_checkpointing(_checkpoint)
    return dit


def _checkpoint(module: nn.Module, *args: Any) -> Any:
    """diffusers' default checkpoint function, with the attention stand-in during the recompute as well
    (torch's recompute keeps no function mode of the forward but ``context_fn``'s)."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False,
                                             context_fn=lambda: (_TrainingAttention(), _TrainingAttention()))


def _drop_grad(p: torch.Tensor) -> None:
    p.grad = None


def _dit_step(comps: MetaComponents, dit: nn.Module, seq_shape: dict[str, Any]) -> None:
    """One prediction and its backward through ``dit`` (the backbone's own ``predict``)."""
    bb = copy.copy(comps.shallow)
    rebind_transformer(bb, dit)
    geo, dt = bb.geometry, bb.dtype
    c, h, w = geo.latent_channels, seq_shape["h"], seq_shape["w"]
    cond = Conditioning(dict(comps.conditioning(seq_shape["image"]).tensors))
    if seq_shape["start"]:
        cond.tensors["start_latents"] = torch.empty(1, c, 1, h, w, device="meta", dtype=dt)
    ctx = Context()
    if seq_shape["history"]:
        ctx.history_tokens = torch.empty(1, seq_shape["history"], geo.hidden_size, device="meta", dtype=dt,
                                         requires_grad=True)  # the encoder's output: its gradient is made too
        ctx.history_positions = torch.zeros(seq_shape["history"], 3, device="meta")
    if seq_shape["recent"]:
        ctx.recent_latents = torch.empty(1, c, seq_shape["recent"], h, w, device="meta", dtype=dt)
    noisy = torch.empty(1, c, seq_shape["noisy"], h, w, device="meta", dtype=torch.float32)
    pred = bb.predict(noisy, torch.full((1,), 0.5, device="meta"), cond, ctx)
    pred.float().square().mean().backward()


def _grid_tokens(t: int, h: int, w: int, kernel: tuple[int, int, int]) -> int:
    return math.ceil(t / kernel[0]) * math.ceil(h / kernel[1]) * math.ceil(w / kernel[2])


# -------------------------------------------------------------------- plan
def _sequence(cfg: TrainConfig, comps: MetaComponents, preset: Preset) -> tuple[Sequence, dict[str, Any], int]:
    """The step's largest prediction: its token counts, the shapes to trace it with, and the clip's latents."""
    geo, enc, v = comps.backbone.geometry, comps.encoder, preset.video
    h, w = v.height // geo.spatial_scale, v.width // geo.spatial_scale
    t_clip = geo.latent_frames(cfg.data.frames)
    section = geo.latent_frames(v.section_frames)
    image = cfg.image_condition and comps.image is not None
    start = image and comps.backbone.context_frames > 0  # F1's start anchor through the 1x path
    per_frame = _grid_tokens(1, h, w, tuple(geo.patch_size))
    text, img = comps.cond_len, comps.image_tokens if image else 0
    # Stage I: Omega's frames (at most omega_max) from the embedding of the whole clip, one sample per call
    q = min(cfg.stage1.omega_max, t_clip)
    query = Sequence(q * per_frame, per_frame if start else 0, enc.tokens_for(t_clip, h, w), text, img)
    if cfg.stage == "stage1":
        return query, {"h": h, "w": w, "noisy": q, "history": query.history, "recent": 0, "start": start, "image": image}, t_clip
    if t_clip < section + 1:
        raise InputError("data.frames", f"clips of {cfg.data.frames} frames hold no history before a {section}-latent section")
    # Stage II: the last section of the clip after the longest history, with F1's clean context
    hist = t_clip - section
    recent = comps.backbone.context_frames
    context = sum(_grid_tokens(n, h, w, k) for n, k in F1_CONTEXT) if recent else cfg.stage2.window_frames * per_frame
    context += per_frame if start else 0
    nxt = Sequence(section * per_frame, context, enc.tokens_for(hist, h, w), text, img)
    shape = {"h": h, "w": w, "noisy": section, "history": nxt.history, "recent": recent, "start": start, "image": image}
    if cfg.stage2.p_frame_query > 0 and query.total > nxt.total:
        return query, {"h": h, "w": w, "noisy": q, "history": query.history, "recent": 0, "start": start, "image": image}, t_clip
    return nxt, shape, t_clip


def _lora_params(comps: MetaComponents, cfg: TrainConfig) -> int:
    """Adapter parameters the trainer's LoRA adds: ``rank * (in + out)`` per targeted linear layer."""
    if cfg.lora_rank == 0:
        return 0
    pattern = re.compile(cfg.lora_targets or LORA_TARGETS[comps.backbone.name])
    return sum(cfg.lora_rank * (m.in_features + m.out_features)
               for n, m in comps.backbone.transformer.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n))


def _dit_activations(comps: MetaComponents, cfg: TrainConfig, shape: dict[str, Any]) -> tuple[int, int]:
    """Activation peak and FLOPs of one sample through the full DiT, extrapolated from three shallow traces."""
    t = comps.backbone.transformer
    nd, ns = t.config.num_layers, t.config.num_single_layers
    key = ("train", cfg.lora_rank, cfg.lora_targets, cfg.gradient_checkpointing, tuple(sorted(shape.items())))

    def run() -> tuple[int, int]:
        traces = {}
        for d, s in ((1, 1), (2, 1), (1, 2)):
            dit = _shallow_dit(comps, d, s, cfg)
            traces[d, s] = _trace(lambda dit=dit: _dit_step(comps, dit, shape), comps.cond_len)
        base = traces[1, 1]
        dd = [traces[2, 1].peak - base.peak, traces[2, 1].flops - base.flops]
        ds = [traces[1, 2].peak - base.peak, traces[1, 2].flops - base.flops]
        peak = base.peak + (nd - 1) * max(0, dd[0]) + (ns - 1) * max(0, ds[0])
        flops = base.flops + (nd - 1) * dd[1] + (ns - 1) * ds[1]
        return peak, flops

    return cached_trace(comps, key, run)


def _encoder_activations(comps: MetaComponents, t_hist: int, h: int, w: int, trainable: bool) -> tuple[int, int, int]:
    """The encoder on the whole history with its backward: (bytes kept for backward, peak, FLOPs)."""
    enc = comps.encoder

    def run() -> tuple[int, int, int]:
        e = copy.deepcopy(enc)  # in the compute dtype, as autocast runs its convolutions
        e.set_patch_embedding(comps.backbone.patch_embedding())
        for p in e.parameters():
            p.requires_grad_(trainable)
            p.register_post_accumulate_grad_hook(_drop_grad)
        x = torch.empty(1, comps.backbone.geometry.latent_channels, t_hist, h, w, device="meta", dtype=comps.dtype)
        with torch.enable_grad(), _TrainingAttention(), _Counting(1) as c:
            out = e(x)
            kept = c.live
            if out.requires_grad:
                out.float().sum().backward()
        return kept, c.peak, c.flops

    return cached_trace(comps, ("train-encoder", t_hist, h, w, trainable), run)


def _attention_flops(seq: Sequence, blocks: int, hidden: int, checkpointing: bool) -> float:
    """Joint attention over the whole sequence: ``4 S^2 D`` forward per block, backward 2.5x (flash), recompute 1x."""
    return 4.0 * seq.total ** 2 * hidden * blocks * (1 + 2.5 + (1 if checkpointing else 0))


def plan_training(cfg: TrainConfig, gpus: int = 1, fsdp: bool | None = None, *, weights_storage: str = "",
                  config_name: str = "") -> TrainPlan:
    """Per-GPU device and host memory, and FLOPs per step, of Stage I or II of ``cfg`` on ``gpus`` GPUs.

    ``fsdp`` (default: ``gpus > 1``) shards the DiT and the encoder over the GPUs; without it several GPUs
    run DDP (every GPU holds everything, plus gradient buckets). ``weights_storage`` plans the frozen DiT
    blocks in float8 (``"float8_e4m3fn"``), a lever the trainer does not offer yet.
    """
    if cfg.stage not in ("stage1", "stage2"):
        raise InputError("stage", f"the training plan covers stage1 and stage2 (got {cfg.stage!r})")
    if gpus < 1:
        raise InputError("--gpus", f"must be >= 1 (got {gpus})")
    stream = cfg.stream_blocks
    if stream and fsdp:
        raise InputError("stream_blocks", "FSDP shards the frozen blocks itself: streaming is planned for one GPU or DDP")
    fsdp = gpus > 1 and not stream if fsdp is None else fsdp
    preset = training_preset(cfg)
    if preset.model.backbone != "hunyuan_framepack":
        raise InputError("preset", f"the training plan is for the hunyuan_framepack backbone (got {preset.model.backbone!r})")
    notes = []
    spec = preset.model
    if spec.encoder and not (Path(spec.encoder) / "config.json").is_file():
        # Stage II before Stage I has run: the encoder Stage I will write has the preset's rate and channels
        notes.append(f"model.encoder {spec.encoder} is not there yet: planned with a fresh encoder of the preset's rate")
        spec = replace(spec, encoder="")
    preset = replace(preset, model=spec,
                     hardware=replace(preset.hardware, dtype=cfg.weights_dtype, weights_dtype=weights_storage))
    comps = meta_components(preset)
    seq, shape, t_clip = _sequence(cfg, comps, preset)
    b, shard = cfg.batch_size, (gpus if fsdp else 1)
    blocks = comps.block_bytes()
    block_sum, largest = sum(blocks), max(blocks)
    stem = comps.nonblock_bytes()
    rows: list[Row] = []

    frozen_note = f"{len(blocks)} blocks in {weights_storage or cfg.weights_dtype}"
    if stream:
        rows.append(Row("DiT streamed blocks", min(block_sum, 2 * largest), host=block_sum, note=(
            f"{frozen_note} pinned on the host; on the device the running block and the prefetched one "
            "(in backward: the recomputed block and the one before it)")))
        rows.append(Row("DiT stem", stem, note="embedders, refiner, output head: always resident"))
    elif fsdp and gpus > 1:
        rows.append(Row("DiT frozen blocks (shard)", block_sum // shard, note=f"{frozen_note}, 1/{gpus} each"))
        rows.append(Row("DiT all-gathered blocks", 2 * largest, note="the running block and the prefetched one"))
        rows.append(Row("DiT stem (shard)", stem // shard, note="embedders, refiner, output head"))
    else:
        rows.append(Row("DiT frozen blocks", block_sum, note=frozen_note, streamable=max(0, block_sum - 2 * largest)))
        rows.append(Row("DiT stem", stem, note="embedders, refiner, output head: always resident"))

    lora = _lora_params(comps, cfg)
    trainable_dit = lora if cfg.lora_rank > 0 else sum(p.numel() for p in comps.backbone.transformer.parameters())
    enc_params = sum(p.numel() for p in comps.encoder.parameters())
    enc_trains = not (cfg.stage == "stage2" and cfg.stage2.freeze_encoder)
    per_param = TRAINABLE_BYTES + (4 if cfg.ema_decay > 0 else 0) + (4 if gpus > 1 and not fsdp else 0)
    what = "fp32 weights, grads, AdamW m and v" + (", EMA" if cfg.ema_decay > 0 else "") + (
        ", DDP grad buckets" if gpus > 1 and not fsdp else "")
    if cfg.lora_rank > 0:
        rows.append(Row(f"LoRA rank {cfg.lora_rank}", lora * per_param // shard,
                        note=f"{lora / 1e6:.0f} M params: {what}" + (f", 1/{gpus}" if shard > 1 else "")))
    else:
        rows.append(Row("DiT (full finetuning)", trainable_dit * per_param // shard, note=what))
    enc_bytes = enc_params * (per_param if enc_trains else 4)
    rows.append(Row("history encoder", enc_bytes // shard,
                    note=f"{enc_params / 1e6:.1f} M params" + (f": {what}" if enc_trains else ", frozen (fp32)")))

    frozen = {"text encoder (LLaMA)": comps.text.get("text_encoder"), "text encoder 2 (CLIP)": comps.text.get("text_encoder_2"),
              "image encoder (SigLIP)": comps.image if cfg.image_condition else None, "VAE": comps.backbone.vae}
    prepared = cfg.data.kind == "prepared"  # captions and start images read as embeddings: the encoders leave
    loaded = 0
    for name, m in frozen.items():
        if m is None:
            continue
        if stream and prepared:  # streamed loading builds them lazily, and prepared data never asks
            rows.append(Row(name, 0, note=f"never loaded ({module_bytes(m) / GiB:.2f}G): prepared data, streamed loading"))
            continue
        loaded += module_bytes(m)
        rows.append(Row(name, 0 if prepared else module_bytes(m), note=(
            f"loaded with the backbone ({module_bytes(m) / GiB:.2f}G), dropped before the first step (prepared data)"
            if prepared else f"{cfg.weights_dtype}, frozen, loaded with the backbone")))
    # The backbone loads whole on every GPU before accelerate shards or anything is dropped; streamed, its
    # blocks load straight into host memory
    load_peak = loaded + stem + (0 if stream else block_sum)

    # float8 storage is traced as the compute dtype (the meta trace of diffusers' casting hooks keeps every
    # cast copy alive, which a GPU run frees per layer), plus the running block's weights cast up
    dit_act, dit_flops = _dit_activations(comps, cfg, shape)
    if weights_storage:
        dit_act += largest * comps.dtype.itemsize  # float8 is one byte a weight
    h, w = shape["h"], shape["w"]
    t_hist = t_clip if shape["recent"] == 0 else t_clip - geo_section(comps, preset)
    enc_kept, enc_peak, enc_flops = _encoder_activations(comps, t_hist, h, w, enc_trains)
    act = b * max(enc_kept + dit_act, enc_peak)
    ck = "with" if cfg.gradient_checkpointing else "without"
    rows.append(Row("activations", act, note=f"batch {b}, {seq.total} tokens, {ck} gradient checkpointing "
                                             "(traced, the recompute's peak included)"))
    c = comps.backbone.geometry.latent_channels
    clip_b = c * t_clip * h * w * 4
    rows.append(Row("batch tensors", b * clip_b * 3, note="clip latents, noise, masked copy (fp32)"))

    # host: the loader's prefetched clips (latent cache, cache dtype), and the frozen blocks if streamed
    cache_b = c * t_clip * h * w * torch.tensor([], dtype=getattr(torch, cfg.data.cache_dtype)).element_size()
    rows.append(Row("data loader", 0, host=max(1, cfg.num_workers) * LOADER_PREFETCH * b * cache_b,
                    note=f"{cfg.num_workers} workers x {LOADER_PREFETCH} batches of cached latents"))

    hidden = comps.backbone.geometry.hidden_size
    n_blocks = len(blocks)
    att = _attention_flops(seq, n_blocks, hidden, cfg.gradient_checkpointing)
    flops = dit_flops + att + enc_flops
    width = getattr(getattr(comps.text.get("text_encoder"), "config", None), "hidden_size", 0)
    each = f" (up to {comps.cond_len * width * comps.dtype.itemsize / 2**20:.1f} MiB each)" if width else ""
    if not prepared:
        notes.append(f"not counted: caption embeddings the trainer caches on the device, one per distinct caption{each}")
    if cfg.stage == "stage1" and b > 1:
        notes.append("Stage I predicts each sample's Omega in its own call: activations add up over the batch")
    return TrainPlan(config_name or cfg.out, cfg.stage, gpus, fsdp and gpus > 1, rows, seq, b, cfg.grad_accum,
                     float(flops), block_sum, 2 if cfg.gradient_checkpointing else 1,
                     HOST_OVERHEAD["cuda"], cfg.max_steps, notes, load_peak, stream)


def geo_section(comps: MetaComponents, preset: Preset) -> int:
    """Latent frames of one section."""
    return comps.backbone.geometry.latent_frames(preset.video.section_frames)


def streaming_host_bytes(p: TrainPlan) -> int:
    """Pinned host memory the frozen blocks would take if streamed."""
    return p.block_bytes


# ----------------------------------------------------------------- output
def format_plan(p: TrainPlan) -> str:
    """Rows per component, the per-GPU total, the host, FLOPs per step and the card table."""
    head = f"{'component':<28}{'device':>10}{'host':>10}  note"
    par = f"{p.gpus} GPU" + ("s, FSDP" if p.fsdp else "s, DDP" if p.gpus > 1 else "")
    s = p.seq
    lines = [f"training plan {p.config}: {p.stage} on {par}; batch {p.batch} x grad_accum {p.grad_accum} per GPU",
             (f"sequence: {s.total} tokens = {s.noisy} noisy + {s.context} context + {s.history} history + "
              f"{s.text} text + {s.image} image"), head, "-" * len(head)]
    for r in p.rows:
        lines.append(f"{r.name:<28}{r.device / GiB:>9.2f}G{r.host / GiB:>9.2f}G  {r.note}")
    lines.append(f"{'host overhead':<28}{0:>9.2f}G{p.host_overhead / GiB:>9.2f}G  interpreter, torch and CUDA libraries")
    lines.append("-" * len(head))
    lines.append(f"{'total per GPU':<28}{p.device_total / GiB:>9.2f}G{p.host_total / GiB:>9.2f}G")
    loading = ("the stem and every frozen part not left on the host (the blocks load straight there)" if p.streaming
               else "every frozen part on the device at once, before sharding or dropping")
    lines.append(f"{'  while loading':<28}{p.load_peak / GiB:>9.2f}G{'':>10}  {loading}")
    if p.streaming:
        lines.append(f"{'  streamed copies':<28}{'':>10}{'':>10}  stream_blocks: "
                     f"{p.streamed_bytes_per_step / GiB:.0f} GiB copied to the device per step")
    elif p.gpus == 1 and p.passes > 1:
        lines.append(f"{'  frozen blocks streamed':<28}{p.streamed_total / GiB:>9.2f}G"
                     f"{(p.host_total + streaming_host_bytes(p)) / GiB:>9.2f}G  "
                     f"blocks pinned on the host, {p.streamed_bytes_per_step / GiB:.0f} GiB copied per step "
                     "(stream_blocks = true)")
    recompute = p.passes > 1
    lines.append(f"FLOPs: {p.flops_per_sample / 1e15:.2f} PFLOP per sample, {p.flops_per_step / 1e15:.2f} PFLOP per step per GPU "
                 f"(traced matmuls and convolutions: 2N per token forward, 2N backward through frozen weights, 4N more "
                 f"for trained ones{', 2N recompute' if recompute else ''}; + attention 4 S^2 D per block "
                 f"x {'4.5' if recompute else '3.5'})")
    lines.append("")
    lines.append(f"{'card':<22}{'usable':>8}  {'verdict':<16}{'s/step':>8}{'GPU-h':>9}  "
                 f"({p.max_steps} steps on {p.gpus}; at {MFU:.0%} of the bf16 dense peak, streamed copies at the link rate)")
    for card in CARDS:
        v = p.verdict(card)
        runs = v != "does not fit"
        t = f"{p.step_seconds(card, streamed=p.streaming or v == 'needs streaming'):.1f}" if runs else "-"
        hours = f"{p.gpu_hours(card):.0f}" if runs else "-"
        lines.append(f"{card.name:<22}{usable_bytes(card.gib) / GiB:>7.1f}G  {v:<16}{t:>8}{hours:>9}")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)
