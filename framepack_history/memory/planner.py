"""How many bytes go where: predicted device and host peaks per phase, and the strategy that fits.

Pure bookkeeping from configs: weights are parameter counts of the preset's
modules on the ``meta`` device (see :mod:`.components`), activations are
traced on ``meta`` with :class:`~.measure.LiveBytes` (the model's own code
path, fused attention, no data). Nothing here moves a tensor; the mechanism
in :mod:`.streaming` carries the strategy out.

What a device peak counts: bytes the framework allocates (weights on the
device + streamed blocks in flight + history tokens + activations), i.e.
what ``torch.cuda.max_memory_allocated`` reports. What no trace sees (the
CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation) is the
``CUDA_ALLOWANCE`` (:mod:`.budget`): a CUDA budget's usable bytes are the budget less it, so
every row stays comparable with ``max_memory_allocated`` and every choice
(blocks resident, text encoder form, tiling, the manager's evictions) is made
against what is left. A CPU budget keeps ``RESERVE_FRACTION`` instead.
Host peaks count process memory the run holds (pinned weights, host copies,
decoded frames) plus a fixed interpreter/library overhead; memory-mapped
safetensors pages are file cache the kernel can drop, so they are not counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from framepack_history.config.presets import Preset, load_preset
from framepack_history.memory.budget import HOST_OVERHEAD, Budget, GiB, MiB
from framepack_history.memory.components import (
    cached_trace,
    denoise_activation,
    meta_components,
    text_activation,
    vae_decode_activation,
    vae_encode_activation,
)
from framepack_history.memory.encode_chunks import chunks, first_frame, largest_call, vae_tiles
from framepack_history.memory.measure import module_bytes, trace_peak
from framepack_history.sampling import guidance_branches

#: step caching (First Block Cache) keeps, per guidance branch, the first block's output and residual and the
#: skipped blocks' residual, whole-sequence hidden states each, and makes the next residual beside the last
CACHE_COPIES = 4
SAMPLER_COPIES = 6  # latent-sized float32 tensors the sampler keeps (x, noise, velocity, multistep history)
PHASES = ("text_encode", "image_encode", "vae_encode", "denoise", "vae_decode")


@dataclass
class Strategy:
    """What stays on the device and what moves."""

    resident: tuple[int, ...]  # DiT block indices kept on the device
    streamed: tuple[int, ...]  # the rest: pinned host memory, prefetched one block ahead
    buffer_bytes: int  # device room for streamed blocks in flight (current + prefetched)
    text_encoder: str  # "resident" | "nf4" | "int8" | "streamed"
    vae_tiling: bool
    vae_resident: bool  # stays on the device while denoising
    streamed_bytes: int = 0  # block bytes copied to the device per DiT pass (each guidance branch shares it)

    def describe(self) -> str:
        n = len(self.resident) + len(self.streamed)
        blocks = f"{len(self.resident)}/{n} blocks resident" + (
            f", {len(self.streamed)} streamed ({self.buffer_bytes / MiB:.0f} MiB in flight, "
            f"{self.streamed_bytes / GiB:.2f} GiB copied per step)" if self.streamed else "")
        return blocks


@dataclass
class PhasePlan:
    """Predicted peaks of one phase (``section`` is None for the conditioning phases)."""

    phase: str
    device_peak_bytes: int
    host_peak_bytes: int
    history_tokens: int
    strategy: str
    section: int | None = None
    weights_bytes: int = 0  # weights on the device at the peak (resident + in flight)
    activation_bytes: int = 0
    tokens: int = 0  # DiT sequence length (denoise)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Plan(list):
    """``list[PhasePlan]`` plus the request it was made for."""

    def __init__(self, rows: list[PhasePlan], *, preset: str, seconds: float, budget: Budget, strategy: Strategy,
                 tokens_per_20s: int, fps: float, section_seconds: float, history_cap: int = 0) -> None:
        super().__init__(rows)
        self.preset, self.seconds, self.budget, self.strategy = preset, seconds, budget, strategy
        self.tokens_per_20s, self.fps, self.section_seconds = tokens_per_20s, fps, section_seconds
        self.history_cap = history_cap  # the most history tokens a capped request holds (0 = no cap)

    @property
    def device_peak(self) -> int:
        return max(p.device_peak_bytes for p in self)

    @property
    def host_peak(self) -> int:
        return max(p.host_peak_bytes for p in self)

    @property
    def fits(self) -> bool:
        return self.device_peak <= self.budget.usable and self.host_peak <= self.budget.host_bytes

    def summary(self) -> str:
        b = self.budget
        of = (f"{b.usable / GiB:.2f} GiB usable ({b.device_bytes / GiB:.2f} GiB less the {b.allowance / GiB:.2f} GiB "
              f"CUDA allowance)" if b.allowance else f"{b.device_bytes / GiB:.2f} GiB")
        return (f"plan {self.preset}, {self.seconds:g} s: device peak {self.device_peak / GiB:.2f} of "
                f"{of}, host peak {self.host_peak / GiB:.2f} of {b.host_bytes / GiB:.2f} GiB "
                f"({'fits' if self.fits else 'DOES NOT FIT'}); {self.strategy.describe()}; "
                f"{self.tokens_per_20s} history tokens per 20 s"
                + (f", never more than {self.history_cap} (the cap)" if self.history_cap else ""))

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self]


# ---------------------------------------------------------------- arithmetic
def quantized_bytes(module: nn.Module, kind: str) -> int:
    """Bytes of a text encoder after transformers' bitsandbytes quantisation of its ``nn.Linear`` layers.

    nf4 (double quantisation): 4-bit weights, one uint8 absmax per 64 weights, one float32 absmax per 256
    of those, plus small codebooks; int8: 1 byte per weight and a float32 scale per output row.
    Everything else (embeddings, norms, biases) keeps the compute dtype.
    """
    total = module_bytes(module)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            n = m.weight.numel()
            total -= n * m.weight.element_size()
            if kind == "nf4":
                blocks = -(-n // 64)
                total += -(-n // 2) + blocks + 4 * -(-blocks // 256) + 4 * (16 + 1 + 256)
            else:
                total += n + 4 * m.out_features
    return total


def _largest_linear(module: nn.Module) -> int:
    return max((m.weight.numel() * m.weight.element_size() for m in module.modules() if isinstance(m, nn.Linear)), default=0)


def spread_order(n: int) -> list[int]:
    """Indices ``0..n-1`` ordered so that every prefix is spread evenly (van der Corput).

    Resident blocks between streamed ones give each prefetch more compute to hide behind.
    """
    order, seen, k = [], set(), 0
    while len(order) < n:
        x, f, i = 0.0, 0.5, k
        while i:
            x, i, f = x + f * (i & 1), i >> 1, f / 2
        j = min(n - 1, int(x * n))
        if j not in seen:
            seen.add(j)
            order.append(j)
        k += 1
        if k > 64 * n:  # rounding left holes: fill them in order
            order += [j for j in range(n) if j not in seen]
    return order


# ---------------------------------------------------------------------- plan
@dataclass
class _Request:
    """A request in the numbers every phase reads: its latent grid, sections, history tokens and module bytes."""

    preset: Preset
    comps: Any  # MetaComponents
    budget: Budget
    mode: str  # history mode
    window: int  # raw latent frames of recent context the DiT reads
    t: int  # latent frames per section
    h: int  # latent grid
    w: int
    sections: int
    image: bool  # an image encoder runs (a start image on a backbone that has one)
    start: int  # latent frames before section 0 (the start image, or what is kept of a video continued)
    frames: list[int]  # history latent frames before section s
    most: int | None  # the cap's whole token groups, in tokens (None: no cap)
    latent_bytes: int  # one section's latents, float32
    host_latents: list[int]  # host bytes of the raw history (and the similar rule's sums) after section s - 1
    tok_bytes: int  # one token's hidden state
    vae_b: int
    enc_b: int
    nonblock: int  # DiT weights outside the blocks, and LoRA adapters: always resident
    sizes: list[int]  # DiT block bytes, in execution order
    cond_b: int  # conditioning tensors
    encode_frames: int = 0  # pixel frames of the largest vae_encode call (0 = none: text-to-video)
    clip_bytes: int = 0  # the video continued, uint8 on the host while it is encoded

    @property
    def geo(self) -> Any:
        return self.comps.backbone.geometry

    def hist(self, f: int) -> int:
        """History tokens after ``f`` latent frames (never more than the cap)."""
        n = self.comps.encoder.tokens_for(f, self.h, self.w) if self.mode == "encoder" and f else 0
        return n if self.most is None else min(n, self.most)

    def span(self, s: int) -> int:
        """Latents decoded after section ``s``: FramePack-F1 decodes the newest two sections together."""
        if not self.comps.backbone.overlap_decode:
            return self.t
        return min(self.start, 1) + self.t if s == 0 else 2 * self.t

    def pixels(self, s: int) -> int:
        v = self.preset.video
        frames = self.geo.pixel_frames(self.span(s)) if self.comps.backbone.overlap_decode else v.section_frames
        return 3 * frames * v.height * v.width

    def held(self, s: int) -> int:
        """Host bytes FramePack's original model's loop holds back after ``s`` sections: the segment so far as final
        8-bit frames and the float frames the next blend reads (no keyframes: one segment, the most it holds)."""
        if self.preset.model.loop != "inverted" or s <= 0:
            return 0
        v = self.preset.video
        frame = 3 * v.height * v.width
        return (s * v.section_frames + 1) * frame + self.geo.pixel_frames(self.t) * frame * 4

    def decode_activation(self, s: int, tiled: bool) -> int:
        # The decode's float output stays while to_uint8 makes two more float copies of it.
        shape = (1, self.geo.latent_channels, self.span(s), self.h, self.w)
        return max(vae_decode_activation(self.comps, shape, tiled=tiled), 12 * self.pixels(s))


@dataclass
class _Activations:
    """Activation peaks: denoising per section, and the history encoder's append (traced once)."""

    denoise: dict[int, int]
    history_encode: int


def _start_latents(preset: Preset, bb: Any, mode: str, t: int, continue_frames: int, start_image: bool) -> tuple[int, int]:
    """``(latent frames the history starts with, pixel frames of the largest vae_encode call)``.

    A start image (or text-to-video's start frame) is one frame; a video continued is encoded in
    chunks (:mod:`.encode_chunks`), only the latents its history mode reads: all in ``encoder`` mode,
    the backbone's context (F1: 19) or the window in ``window`` mode, the last one in ``none``
    (as ``generation.continuation.latents_read``); FramePack's original model's loop reads only the last one, its
    start latent (``generation.inverted``).
    """
    geo = bb.geometry
    if not continue_frames:
        return (geo.latent_frames(1), 1) if start_image else (0, 0)
    keep = None
    if mode != "encoder":
        keep = max(1, (bb.context_frames or preset.history.window_frames or t) if mode == "window" else 0)
    if preset.model.loop == "inverted":
        keep = 1
    frames = continue_frames - first_frame(continue_frames, geo.temporal_scale, geo.causal_first_frame)
    calls = chunks(frames, geo.temporal_scale, geo.causal_first_frame, vae_tiles(getattr(bb, "vae", None)), keep)
    return sum(c.latents for c in calls), largest_call(calls)


def _request(preset: Preset, seconds: float, history_mode: str | None, rate: str | None, start_image: bool,
             budget: Budget, adapter_bytes: int, continue_frames: int = 0) -> _Request:
    """The request's shape from the preset's configs (components on ``meta``), before any phase is sized."""
    comps = meta_components(preset, rate)
    bb, geo, v, enc = comps.backbone, comps.backbone.geometry, preset.video, comps.encoder
    dsize = torch.tensor([], dtype=bb.dtype).element_size()
    mode = history_mode or preset.history.mode
    window = preset.history.window_frames if mode != "none" else 0
    t = geo.latent_frames(v.section_frames)
    if mode == "window" and window == 0:
        window = t
    if bb.context_frames and mode != "none":
        # FramePack-F1's own context is 2.5 frames of tokens (1x: 2, 2x: 1/4, 4x: 1/4): traced as a 3-frame window
        window = 3
    h, w = v.height // geo.spatial_scale, v.width // geo.spatial_scale
    sections = v.sections(seconds)  # the pipeline's count (Pipeline.sections_for)
    start, encode_frames = _start_latents(preset, bb, mode, t, continue_frames, start_image)
    frames = [start + s * t for s in range(sections + 1)]  # history latent frames before section s

    # bounded history: never more than the cap's whole token groups (see history.HistoryState)
    per_group = enc.tokens_for(1, h, w)
    most = preset.history.max_tokens // per_group * per_group if preset.history.max_tokens else None

    # the similar rule keeps a float64 sum of each capped segment's raw latents on the host (history.HistoryState)
    sum_bytes = geo.latent_channels * h * w * 8 if mode == "encoder" and most and preset.history.merge == "similar" else 0

    def merge_sums(f: int) -> int:
        return sum_bytes * min(f // enc.frames_per_group, most // per_group) if sum_bytes else 0

    image = start_image and bb.name != "toy"
    return _Request(
        preset, comps, budget, mode, window, t, h, w, sections, image, start, frames, most,
        latent_bytes=geo.latent_channels * t * h * w * 4,
        host_latents=[geo.latent_channels * f * h * w * 4 + merge_sums(f) for f in frames],
        tok_bytes=geo.hidden_size * dsize, vae_b=module_bytes(bb.vae), enc_b=module_bytes(enc),
        nonblock=comps.nonblock_bytes() + adapter_bytes, sizes=comps.block_bytes(),
        cond_b=sum(x.numel() * x.element_size() for x in comps.conditioning(image).tensors.values()),
        encode_frames=encode_frames, clip_bytes=3 * continue_frames * v.height * v.width)


def _cache_state(r: _Request, s: int) -> int:
    """Bytes step caching holds through section ``s``'s steps (0 when it is off)."""
    preset, geo, comps = r.preset, r.geo, r.comps
    if preset.sampling.cache == "off":
        return 0
    per_frame = r.h * r.w // (geo.patch_size[1] * geo.patch_size[2])
    seq = r.hist(r.frames[s]) + (min(r.window, r.frames[s]) + r.t) * per_frame + comps.cond_len + comps.image_tokens * r.image
    branches = (2 if preset.sampling.cfg != 1 else 1) * (2 if r.mode == "encoder" and preset.history.guidance != 1 else 1)
    return CACHE_COPIES * branches * seq * r.tok_bytes


def _activations(r: _Request) -> _Activations:
    """Activations per section: exact traces at the ends, linear in history tokens between; then the encoder's."""
    preset, hist, frames, sections = r.preset, r.hist, r.frames, r.sections
    # guidance's passes run together block by block (history guidance only where there is an embedding)
    branches = guidance_branches(preset.sampling.cfg, preset.history.guidance if r.mode == "encoder" else 1.0)

    def act(s: int) -> int:
        win = min(r.window, frames[s])
        steps = branches if hist(frames[s]) else guidance_branches(preset.sampling.cfg, 1.0)
        return (denoise_activation(r.comps, preset.video, hist(frames[s]), win, r.image, steps)
                + SAMPLER_COPIES * r.latent_bytes + _cache_state(r, s))

    ends = sorted({0, min(1, sections - 1), sections - 1})
    acts = {s: act(s) for s in ends}
    lo, hi = ends[1] if len(ends) > 1 else 0, sections - 1
    for s in range(sections):
        if s not in acts:
            f = (hist(frames[s]) - hist(frames[lo])) / max(1, hist(frames[hi]) - hist(frames[lo]))
            acts[s] = int(acts[lo] + f * (acts[hi] - acts[lo]))
    comps, enc, geo = r.comps, r.comps.encoder, r.geo
    enc_act = cached_trace(comps, ("history", r.t, r.h, r.w), lambda: trace_peak(lambda: enc(torch.empty(
        1, geo.latent_channels, r.t + enc.frames_per_group, r.h, r.w, device="meta", dtype=enc.dtype))))
    return _Activations(acts, enc_act)


def _needs(r: _Request, acts: _Activations, s: int, decode_act: int, vae_res: bool) -> tuple[int, int]:
    """Device bytes besides DiT blocks: (denoise, decode) of section ``s``."""
    before, after = r.hist(r.frames[s]) * r.tok_bytes, r.hist(r.frames[s + 1]) * r.tok_bytes
    den = r.nonblock + r.enc_b + before + (r.vae_b if vae_res else 0) + r.cond_b + acts.denoise[s]
    # append: old + new tokens
    dec = r.nonblock + r.enc_b + before + after + r.vae_b + max(decode_act, acts.history_encode) + r.latent_bytes
    return den, dec


def _strategy(r: _Request, acts: _Activations) -> tuple[Strategy, int]:
    """The strategy that fits the budget, and the last section's decode activation under it."""
    last = r.sections - 1
    # Tiling trades decode memory for nothing but seams and time: only when everything else would not fit.
    untiled = r.decode_activation(last, tiled=False)
    tileable = hasattr(r.comps.backbone.vae, "enable_tiling")
    den, dec = _needs(r, acts, last, untiled, True)
    # a long encode call (a video continued) may need tiling where nothing else does
    tiling = tileable and (max(den, dec) + sum(r.sizes) > r.budget.usable
                           or r.vae_b + _encode_activation(r, tiled=False) > r.budget.usable)
    decode_act = r.decode_activation(last, tiled=True) if tiling else untiled

    strategy = _choose(r.sizes, r.budget.usable, lambda vr: _needs(r, acts, last, decode_act, vr))
    strategy.vae_tiling = tiling
    strategy.streamed_bytes = sum(r.sizes[i] for i in strategy.streamed)
    return strategy, decode_act


def _host_overhead(r: _Request) -> int:
    return HOST_OVERHEAD["cpu" if r.budget.device == "cpu" else "cuda"]


def _text_encode(r: _Request, strategy: Strategy, quantization: str | None) -> list[PhasePlan]:
    """Text encoders: full precision if they fit, else quantised, else streamed layer by layer (sets the strategy's)."""
    comps, on_cpu, overhead = r.comps, r.budget.device == "cpu", _host_overhead(r)
    if not comps.text:
        return []
    llama, clip = comps.text["text_encoder"], comps.text["text_encoder_2"]
    tact = cached_trace(comps, ("text",), lambda: text_activation(comps))
    options = {"resident": module_bytes(llama), "nf4": quantized_bytes(llama, "nf4"),
               "int8": quantized_bytes(llama, "int8")}
    layer = max((module_bytes(m) for m in getattr(llama, "layers", [])), default=0)
    options["streamed"] = module_bytes(llama) - layer * len(getattr(llama, "layers", [])) + 2 * layer
    kind = quantization or "resident"
    if kind == "auto":
        kind = next((k for k in ("resident", "nf4", "streamed")
                     if options[k] + module_bytes(clip) + tact + _largest_linear(llama) <= r.budget.usable), "streamed")
    strategy.text_encoder = kind
    wt = options[kind] + module_bytes(clip)
    a = tact + (_largest_linear(llama) if kind in ("nf4", "int8") else 0)  # dequantised weight in flight
    staged = module_bytes(llama) if kind == "streamed" else max(p.numel() * p.element_size() for p in llama.parameters())
    return [PhasePlan("text_encode", wt + a, overhead + staged + (wt + a if on_cpu else 0), 0,
                      f"llama {kind}, clip; evicted when the room is needed (embeddings cached on the host)", None, wt, a)]


def _image_encode(r: _Request) -> list[PhasePlan]:
    """The image encoder (SigLIP) on the start image, where the backbone has one."""
    if not r.image:
        return []
    comps, on_cpu = r.comps, r.budget.device == "cpu"
    wt = module_bytes(comps.image)
    px = torch.empty(1, 3, comps.image_size, comps.image_size, device="meta", dtype=comps.backbone.dtype)
    a = cached_trace(comps, ("image",), lambda: trace_peak(lambda: comps.image(pixel_values=px)))
    return [PhasePlan("image_encode", wt + a, _host_overhead(r) + wt + (a if on_cpu else 0), 0,
                      "siglip loaded on call, evicted when the room is needed", None, wt, a)]


def _encode_activation(r: _Request, tiled: bool) -> int:
    """Traced peak of the request's largest ``vae_encode`` call (its pixels included; 0 when there is none)."""
    if not r.encode_frames:
        return 0
    v, on_cpu = r.preset.video, r.budget.device == "cpu"
    shape = (1, 3, r.encode_frames, v.height, v.width)
    return cached_trace(r.comps, ("vae_encode", shape, tiled, on_cpu),
                        lambda: vae_encode_activation(r.comps, shape, tiled, host_pixels=on_cpu))


def _vae_encode(r: _Request, tiling: bool) -> list[PhasePlan]:
    """The VAE on the start image, or on a video continued chunk by chunk (tiled as the decode is).

    The row is the largest call: one chunk's pixels and activations beside the VAE. The host holds
    the clip (uint8), the chunk in float32 and the latents kept so far.
    """
    if not r.encode_frames:
        return []
    v, on_cpu = r.preset.video, r.budget.device == "cpu"
    kept = r.geo.latent_channels * r.start * r.h * r.w * 4  # float32 latents kept, on the host
    # a CPU is the device too: the latents kept so far and their join sit beside the last call
    a = _encode_activation(r, tiling) + (2 * kept if on_cpu else 0)
    chunk_f32 = 4 * 3 * r.encode_frames * v.height * v.width
    host = _host_overhead(r) + r.vae_b + r.clip_bytes + (a if on_cpu else chunk_f32 + 2 * kept)
    what = f"vae loaded on call, {r.encode_frames} frames a call" if r.clip_bytes else "vae loaded on call"
    return [PhasePlan("vae_encode", r.vae_b + a, host, r.hist(r.frames[0]), what, None, r.vae_b, a)]


def _sections(r: _Request, strategy: Strategy, acts: _Activations, decode_act: int) -> list[PhasePlan]:
    """Denoise, then decode (and append to the history), for every section."""
    geo, comps, on_cpu, tiling = r.geo, r.comps, r.budget.device == "cpu", strategy.vae_tiling
    weights_dev = r.nonblock + sum(r.sizes[i] for i in strategy.resident)
    stream_host = sum(r.sizes[i] for i in strategy.streamed)
    all_w = weights_dev + stream_host + r.vae_b + r.enc_b
    rows: list[PhasePlan] = []
    for s in range(r.sections):
        act_s = r.decode_activation(s, tiling) if r.span(s) != r.span(r.sections - 1) else decode_act
        den, dec = _needs(r, acts, s, act_s, strategy.vae_resident)
        buf = strategy.buffer_bytes
        n_tok = r.hist(r.frames[s]) + min(r.window, r.frames[s]) * r.h * r.w // (geo.patch_size[1] * geo.patch_size[2])
        n_tok += r.t * r.h * r.w // (geo.patch_size[1] * geo.patch_size[2]) + comps.cond_len + comps.image_tokens * r.image
        host = _host_overhead(r) + r.host_latents[s + 1] + (
            all_w if on_cpu else stream_host + (0 if strategy.vae_resident else r.vae_b))
        wd = weights_dev + buf + r.enc_b + (r.vae_b if strategy.vae_resident else 0)
        rows.append(PhasePlan("denoise", weights_dev + buf + den - r.nonblock,
                              host + r.held(s) + (acts.denoise[s] if on_cpu else 0),
                              r.hist(r.frames[s]), strategy.describe() + ("" if strategy.vae_resident else ", vae on host"),
                              s, wd, acts.denoise[s], n_tok))
        wd = weights_dev + r.enc_b + r.vae_b
        vae = ("tiled vae" if tiling else "vae") + f", {len(strategy.resident)} blocks stay"
        rows.append(PhasePlan("vae_decode", weights_dev + dec - r.nonblock,
                              host + r.held(s + 1) + 5 * r.pixels(s) + (act_s if on_cpu else 0),
                              r.hist(r.frames[s + 1]), vae, s, wd, max(act_s, acts.history_encode)))
    return rows


def plan(preset: Preset | str, seconds: float, *, history_mode: str | None = None, rate: str | None = None,
         start_image: bool = True, text_encoder_quantization: str | None = "auto", budget: Budget | None = None,
         size: tuple[int, int] | None = None, adapter_bytes: int = 0, continue_frames: int = 0) -> Plan:
    """Predicted peaks of every phase of a ``seconds``-long request, and the strategy that fits ``budget``.

    ``size`` is the request's ``(width, height)`` (a start image's resolution bucket); None = the preset's.
    ``adapter_bytes``: LoRA adapters on the DiT, resident beside its stem whatever streams.
    ``continue_frames``: the pixel frames of a video continued (0 = none; ``start_image`` then says
    whether one start frame is encoded): its history and its largest VAE call are planned.
    The phases in order: text encode, image encode, VAE encode (the start frame or chunk), then denoise and
    decode per section; the strategy is chosen first, for the worst (last) section.
    """
    preset = load_preset(preset) if isinstance(preset, str) else preset
    if size is not None:
        preset = replace(preset, video=replace(preset.video, width=size[0], height=size[1]))
    budget = budget or Budget.for_preset(preset)
    r = _request(preset, seconds, history_mode, rate, start_image or continue_frames > 0, budget, adapter_bytes,
                 continue_frames)
    acts = _activations(r)
    strategy, decode_act = _strategy(r, acts)
    rows = [*_text_encode(r, strategy, text_encoder_quantization), *_image_encode(r),
            *_vae_encode(r, strategy.vae_tiling), *_sections(r, strategy, acts, decode_act)]
    v, enc, geo = preset.video, r.comps.encoder, r.geo
    b20 = (enc.tokens_for(r.start + geo.latent_frames(20 * v.fps), r.h, r.w) - enc.tokens_for(r.start, r.h, r.w)
           if r.mode == "encoder" else 0)
    return Plan(rows, preset=preset.name, seconds=seconds, budget=budget, strategy=strategy, tokens_per_20s=b20,
                fps=v.fps, section_seconds=v.section_frames / v.fps,
                history_cap=r.most if r.mode == "encoder" and r.most else 0)


def _choose(sizes: list[int], usable: int, needs: Any) -> Strategy:
    """Most resident block bytes such that the worst denoise and decode phases fit ``usable``."""
    den, dec = needs(True)
    if sum(sizes) + max(den, dec) <= usable:
        return Strategy(tuple(range(len(sizes))), (), 0, "resident", False, True)
    den, dec = needs(False)
    best: tuple[int, tuple[int, ...]] = (-1, ())
    for cap in sorted(set(sizes), reverse=True):  # the largest block that may stream sets the buffer
        must = [i for i, b in enumerate(sizes) if b > cap]
        room = usable - max(den + 2 * cap, dec) - sum(sizes[i] for i in must)
        if room < 0:
            continue
        chosen = set(must)
        for i in spread_order(len(sizes)):
            if i not in chosen and sizes[i] <= room:
                chosen.add(i)
                room -= sizes[i]
        total = sum(sizes[i] for i in chosen)
        if total > best[0]:
            best = (total, tuple(sorted(chosen)))
    resident = best[1]
    streamed = tuple(i for i in range(len(sizes)) if i not in resident)
    buffer = sum(sorted(sizes[i] for i in streamed)[-2:])
    return Strategy(resident, streamed, buffer, "resident", False, False)


def format_table(p: Plan, full: bool = False) -> str:
    """Phases as a text table; without ``full`` only the first section, one per 20 s mark and the last."""
    keep: set[int] = set()
    sections = sorted({r.section for r in p if r.section is not None})
    if sections:
        per20 = max(1, round(20 / p.section_seconds))
        keep = {sections[0], sections[-1], *[s for s in sections if s % per20 == per20 - 1]}
    head = f"{'phase':<13}{'sec':>5}{'t (s)':>7}{'hist tok':>10}{'tokens':>8}{'weights':>10}{'activ.':>9}{'device':>9}{'host':>9}  strategy"
    lines = [p.summary(), head, "-" * len(head)]
    skipped = False
    for r in p:
        if r.section is not None and not full and r.section not in keep:
            if not skipped:
                lines.append(f"{'…':<13}")
            skipped = True
            continue
        skipped = False
        sec = "" if r.section is None else str(r.section)
        t_end = "" if r.section is None else f"{(r.section + 1) * p.section_seconds:.1f}"
        lines.append(f"{r.phase:<13}{sec:>5}{t_end:>7}{r.history_tokens:>10}{r.tokens or '':>8}"
                     f"{r.weights_bytes / GiB:>9.2f}G{r.activation_bytes / GiB:>8.2f}G"
                     f"{r.device_peak_bytes / GiB:>8.2f}G{r.host_peak_bytes / GiB:>8.2f}G  {r.strategy}")
    lines.append(f"budget: device {p.budget.device_bytes / GiB:.2f} GiB ({p.budget.source}), "
                 f"host {p.budget.host_bytes / GiB:.2f} GiB; text encoder: {p.strategy.text_encoder}; "
                 f"vae {'tiled' if p.strategy.vae_tiling else 'untiled'}")
    lines.append(f"assumes: {p.budget.describe_allowance()}")
    return "\n".join(lines)
