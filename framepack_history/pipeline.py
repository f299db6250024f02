"""The section loop: conditioning -> history -> denoise -> decode, as typed events.

The pipeline never touches files or the UI. It yields events; whoever runs it
(the CLI, the worker) writes segments, shows previews and checks for
cancellation. A :class:`Generation` can be snapshotted after any section and
resumed from that snapshot with identical results, because every section's
noise is drawn from its own generator seeded by ``(seed, section index)``.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from .backbones.base import Backbone, Conditioning, Context
from .config import GenerationRequest, InputError, Preset, prompt_at
from .encoder import HistoryEncoder
from .history import HistoryState
from .sampling import guided, history_guided, sample
from .video import read_image, read_video

MAX_CONTINUE_SECONDS = 30.0  # how much of an uploaded video becomes history


# ------------------------------------------------------------------- events
@dataclass
class ContextFrames:
    """Frames the video starts with (start image or the video being continued)."""

    frames: np.ndarray  # uint8 [F, H, W, 3]


@dataclass
class SectionStarted:
    index: int
    total: int
    prompt: str


@dataclass
class StepPreview:
    index: int
    step: int
    steps: int
    image: np.ndarray  # uint8 [H, W, 3]


@dataclass
class SectionDone:
    index: int
    total: int
    frames: np.ndarray  # uint8 [F, H, W, 3]
    timings: dict[str, float]
    history_tokens: int


@dataclass
class Finished:
    sections: int
    frames: int
    history_tokens: int


Event = ContextFrames | SectionStarted | StepPreview | SectionDone | Finished


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``[3, F, H, W]`` in ``[-1, 1]`` -> ``uint8 [F, H, W, 3]``."""
    x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> ``[1, 3, F, H, W]`` in ``[-1, 1]``."""
    x = torch.from_numpy(np.array(frames, dtype=np.float32)) / 127.5 - 1
    return x.permute(3, 0, 1, 2).unsqueeze(0)


def section_noise(shape: tuple[int, ...], seed: int, index: int) -> torch.Tensor:
    """Noise for one section, independent of every other section (resume-safe)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))
    return torch.randn(shape, generator=g)


class MemoryHooks(Protocol):
    """What the pipeline asks of a memory manager (see :mod:`.memory`): one context per phase."""

    def phase(self, name: str, section: int | None = None) -> AbstractContextManager: ...

    # optional: ``watch(module)`` (an always-resident module, e.g. the history encoder) and
    # ``prepare(preset, seconds, *, history_mode, rate, start_image)`` (a plan for the request)


# --------------------------------------------------------------- generation
@dataclass
class Generation:
    """The state of one request between sections (what a checkpoint holds)."""

    request: GenerationRequest
    storyboard: list[tuple[float, str]]
    total_sections: int
    history: HistoryState
    next_section: int = 0
    image_cond: Conditioning = field(default_factory=Conditioning)


class Pipeline:
    """Generates a long video section by section from one backbone + encoder."""

    def __init__(self, backbone: Backbone, encoder: HistoryEncoder | None, preset: Preset,
                 memory: MemoryHooks | None = None) -> None:
        self.backbone = backbone
        self.encoder = encoder
        self.preset = preset
        self._text_cache: dict[str, Conditioning] = {}
        #: called around every phase (text/image/VAE encode, denoise, decode); its hooks load what runs
        self.memory = memory
        if encoder is not None and hasattr(memory, "watch"):
            memory.watch(encoder)

    def _phase(self, name: str, section: int | None = None) -> AbstractContextManager:
        return nullcontext() if self.memory is None else self.memory.phase(name, section)

    # ------------------------------------------------------------- settings
    def option(self, request: GenerationRequest, name: str):
        """The request's value, or the preset's when the request leaves it unset."""
        value = getattr(request, name)
        if value is not None:
            return value
        source = {"history_mode": ("history", "mode"), "window_frames": ("history", "window_frames"),
                  "history_guidance": ("history", "guidance")}.get(name, ("sampling", name))
        return getattr(getattr(self.preset, source[0]), source[1])

    @property
    def section_latent_frames(self) -> int:
        return self.backbone.geometry.latent_frames(self.preset.video.section_frames)

    def sections_for(self, seconds: float) -> int:
        return max(1, math.ceil(seconds * self.preset.video.fps / self.preset.video.section_frames - 1e-9))

    def text(self, prompt: str) -> Conditioning:
        """Prompt embeddings, computed once per distinct prompt and kept on the host between uses."""
        if prompt not in self._text_cache:
            with torch.no_grad(), self._phase("text_encode"):
                self._text_cache[prompt] = self.backbone.encode_text(prompt).to("cpu")
        return self._text_cache[prompt].to(self.backbone.device)

    # -------------------------------------------------------------- start
    def start(self, request: GenerationRequest) -> tuple[Generation, np.ndarray | None]:
        """Validate, read inputs, encode any start frames into the history.

        Returns the generation state and the frames the video starts with.
        """
        board = request.validate(self.preset)
        mode = self.option(request, "history_mode")
        if mode == "encoder" and self.encoder is None:
            raise InputError("--history", "this preset has no history encoder; use 'window' or 'none'")
        v = self.preset.video
        history = HistoryState(self.encoder if mode == "encoder" else None, self.backbone.device)
        gen = Generation(request, board, self.sections_for(request.seconds), history)
        if hasattr(self.memory, "prepare"):  # a plan for this request (mode, length, tokens, resolution) first
            rate = None if self.encoder is None else self.encoder.config.rate
            starts = bool(request.image or request.continue_video) or self.backbone.name == "toy"
            self.memory.prepare(self.preset, request.seconds, history_mode=mode, rate=rate, start_image=starts)
        if self.memory is not None:  # every prompt now, so the text encoders are loaded once per request
            for prompt in dict.fromkeys(p for _, p in board):
                self.text(prompt)
            if float(self.option(request, "cfg")) != 1.0:
                self.text(self.preset.sampling.negative_prompt)
        frames: np.ndarray | None = None
        if request.continue_video:
            frames = read_video(request.continue_video, v.width, v.height, v.fps, int(MAX_CONTINUE_SECONDS * v.fps))
        elif request.image:
            frames = read_image(request.image, v.width, v.height)[None]
        else:  # text-to-video: the backbone may offer a start frame (the toy world does)
            start = self.backbone.default_start(request.seed, request.prompt, request.seconds, v.width, v.height)
            frames = None if start is None else start[None]
        if frames is not None:
            # The image condition is the frame the video goes on from: the start image, or the last frame.
            with torch.no_grad(), self._phase("image_encode"):
                gen.image_cond = self.backbone.encode_image(to_pixels(frames[-1:])[0, :, 0].to(self.backbone.device))
            with torch.no_grad(), self._phase("vae_encode"):
                latents = self.backbone.vae_encode(to_pixels(frames))
            history.append(latents)
        return gen, frames

    # ------------------------------------------------------------- one section
    def context(self, gen: Generation) -> Context:
        """What the DiT sees of the past, by history mode."""
        mode = self.option(gen.request, "history_mode")
        window = int(self.option(gen.request, "window_frames"))
        if mode == "window" and window == 0:
            window = self.section_latent_frames  # the baseline: one section of raw latents
        ctx = Context()
        if mode == "encoder":
            toks = gen.history.tokens()
            if toks is not None:
                ctx.history_tokens, ctx.history_positions = toks
        if mode in ("encoder", "window") and window > 0:
            win = gen.history.window(window)
            if win is not None:
                ctx.window_latents = win.to(self.backbone.device, self.backbone.dtype)
                ctx.window_t0 = -float(win.shape[2])
                track = gen.history.track[-win.shape[2]:]
                if bool(track.any()):
                    ctx.window_w = track
        ctx.target_w = self.camera_track(gen)
        return ctx

    def camera_track(self, gen: Generation) -> torch.Tensor | None:
        """The next section's view offsets (canvas-position backbones), continuing the history's track."""
        v = self.preset.video
        steps = self.backbone.camera_steps(gen.storyboard, gen.next_section * v.section_frames,
                                           self.section_latent_frames, v.fps, v.width)
        if steps is None:
            return None
        track = gen.history.track
        last = float(track[-1]) if len(track) else 0.0
        return last + torch.cumsum(steps.float(), 0)

    def generate_section(self, gen: Generation, on_step: Callable[[dict], None] | None = None) -> SectionDone:
        """Denoise, decode and append the next section; advance ``gen``."""
        idx = gen.next_section
        req, bb, v = gen.request, self.backbone, self.preset.video
        t_start = idx * v.section_frames / v.fps
        cond = self.text(prompt_at(gen.storyboard, t_start))
        cond = Conditioning({**gen.image_cond.tensors, **cond.tensors})
        cfg = float(self.option(req, "cfg"))
        neg = None
        if cfg != 1.0:
            neg = Conditioning({**gen.image_cond.tensors, **self.text(self.preset.sampling.negative_prompt).tensors})
        ctx = self.context(gen)
        guidance = float(self.option(req, "guidance"))
        # history guidance needs history tokens to guide with (none in the other modes, none yet
        # when a text-to-video request has no start frame)
        hg = float(self.option(req, "history_guidance")) if ctx.history_tokens is not None else 1.0
        no_history = replace(ctx, history_tokens=None, history_positions=None)

        def model(x: torch.Tensor, s: torch.Tensor, conditional: bool, with_history: bool) -> torch.Tensor:
            return bb.predict(x, s, cond if conditional else neg, ctx if with_history else no_history, guidance).float()

        geo = bb.geometry
        shape = (1, geo.latent_channels, self.section_latent_frames, v.height // geo.spatial_scale, v.width // geo.spatial_scale)
        noise = section_noise(shape, req.seed, idx).to(bb.device)
        t0 = time.perf_counter()
        with self._phase("denoise", idx):
            latents = sample(
                self.option(req, "sampler"), guided(history_guided(model, hg), cfg), noise,
                int(self.option(req, "steps")), float(self.option(req, "shift")), on_step,
            )
        t1 = time.perf_counter()
        with torch.no_grad(), self._phase("vae_decode", idx):
            frames = to_uint8(bb.vae_decode(latents.to(bb.dtype))[0])
            t2 = time.perf_counter()
            tokens = gen.history.append(latents, track=ctx.target_w)
        t3 = time.perf_counter()
        gen.next_section += 1
        return SectionDone(idx, gen.total_sections, frames,
                           {"denoise_s": t1 - t0, "decode_s": t2 - t1, "history_encode_s": t3 - t2}, tokens)

    def preview(self, index: int, info: dict) -> StepPreview:
        with torch.no_grad(), self._phase("preview", index):
            img = to_uint8(self.backbone.preview(info["denoised"].to(self.backbone.dtype))[:, None])[0]
        return StepPreview(index, info["step"], info["total"], img)

    # ---------------------------------------------------------------- loop
    def run(
        self,
        request: GenerationRequest,
        on_step: Callable[[int, dict], None] | None = None,
        resume: Generation | None = None,
    ) -> Iterator[Event]:
        """Yield events for a whole request (or for the rest of a resumed one).

        ``on_step(section_index, info)`` runs after every denoising step (see
        :mod:`.sampling`): draw previews there with :meth:`preview`, or raise
        :class:`~.sampling.Cancelled` to stop. The finished generation is
        left in ``self.last_generation``.
        """
        if resume is None:
            gen, start_frames = self.start(request)
            if start_frames is not None:
                yield ContextFrames(start_frames)
        else:
            gen = resume
        self.last_generation = gen
        while gen.next_section < gen.total_sections:
            idx = gen.next_section
            t_start = idx * self.preset.video.section_frames / self.preset.video.fps
            yield SectionStarted(idx, gen.total_sections, prompt_at(gen.storyboard, t_start))
            step_cb = None if on_step is None else (lambda info, idx=idx: on_step(idx, info))
            yield self.generate_section(gen, step_cb)
        yield Finished(gen.total_sections, gen.total_sections * self.preset.video.section_frames, gen.history.num_tokens)
