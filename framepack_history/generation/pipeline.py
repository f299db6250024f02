"""The section loop: conditioning -> history -> denoise -> decode, as typed events.

The pipeline never touches files or the UI. It yields events (:mod:`.events`); whoever runs it
(the CLI, the worker) writes segments, shows previews and checks for cancellation. A
:class:`~.state.Generation` can be snapshotted after any section and resumed from that snapshot
with identical results, its noise included (:mod:`.noise`). What a request's memory controls do to
its history (:mod:`.memory_controls`) and how its keyframes are read (:mod:`.keyframes`) live in
rooms of their own; the pipeline hands them its backbone, its preset's video and its phases.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from framepack_history.backbones.base import Backbone, Conditioning, Context
from framepack_history.config.fields import Settings, resolve
from framepack_history.config.memory import MemoryPlan, check_memory
from framepack_history.config.presets import Preset
from framepack_history.config.request import GenerationRequest
from framepack_history.config.storyboard import prompt_weights
from framepack_history.errors import InputError
from framepack_history.generation.buckets import resolve_size
from framepack_history.generation.context import section_context, window_size
from framepack_history.generation.continuation import cut, encode_clip, latents_read, planned_frames
from framepack_history.generation.events import ContextFrames, Event, Finished, SectionDone, SectionStarted, StepPreview
from framepack_history.generation.inverted import InvertedLoop
from framepack_history.generation.keyframes import keyframe_latents, next_keyframe
from framepack_history.generation.memory_controls import borrow_history, frames_at, shot_start, steer_history
from framepack_history.generation.noise import section_noise, video_noise_generator
from framepack_history.generation.overlap import OverlapDecoder
from framepack_history.generation.pixels import to_pixels, to_uint8
from framepack_history.generation.state import Generation
from framepack_history.generation.step_cache import StepCache, threshold_for
from framepack_history.generation.video import MAX_CONTINUE_SECONDS, read_image, read_video
from framepack_history.history.encoder import HistoryEncoder
from framepack_history.history.merge import require_cap
from framepack_history.history.state import HistoryState
from framepack_history.lora.adapters import apply
from framepack_history.lora.files import requested
from framepack_history.sampling import Branch, guided_together, sample


class MemoryHooks(Protocol):
    """What the pipeline asks of a memory manager (see :mod:`.memory`): one context per phase."""

    def phase(self, name: str, section: int | None = None) -> AbstractContextManager: ...

    # optional: ``watch(module)`` (an always-resident module, e.g. the history encoder) and
    # ``prepare(preset, seconds, *, history_mode, rate, start_image, size)`` (a plan for the request)


#: prompt embeddings a pipeline keeps between jobs (the same prompt again is common; every prompt ever is a leak)
TEXT_CACHE_KEEP = 8


class Pipeline:
    """Generates a long video section by section from one backbone + encoder."""

    def __init__(self, backbone: Backbone, encoder: HistoryEncoder | None, preset: Preset,
                 memory: MemoryHooks | None = None) -> None:
        self.backbone = backbone
        self.encoder = encoder
        self.preset = preset
        #: prompt embeddings on the host, most recently used last; trimmed to TEXT_CACHE_KEEP after each job
        self._text_cache: OrderedDict[str, Conditioning] = OrderedDict()
        #: called around every phase (text/image/VAE encode, denoise, decode); its hooks load what runs
        self.memory = memory
        if encoder is not None and hasattr(memory, "watch"):
            memory.watch(encoder)
        #: FramePack's original model's loop (``model.loop = "inverted"``); None: the forward loop written here
        self.loop = (InvertedLoop(backbone, self.section_latent_frames, preset.video) if preset.model.loop == "inverted"
                     else None)

    def _phase(self, name: str, section: int | None = None) -> AbstractContextManager:
        return nullcontext() if self.memory is None else self.memory.phase(name, section)

    # ------------------------------------------------------------- settings
    def settings(self, request: GenerationRequest) -> Settings:
        """The settings ``request`` runs with: each its own, else this pipeline's preset's (``config.fields``)."""
        return resolve(request, self.preset)

    def option(self, request: GenerationRequest, name: str):
        """One of :meth:`settings`: the request's value, or the preset's when the request leaves it unset."""
        return getattr(self.settings(request), name)

    @property
    def section_latent_frames(self) -> int:
        return self.backbone.geometry.latent_frames(self.preset.video.section_frames)

    def sections_for(self, seconds: float) -> int:
        """Sections of a ``seconds`` long request: FramePack's count (``VideoSpec.sections``, the nearest)."""
        return self.preset.video.sections(seconds)

    def text(self, prompt: str) -> Conditioning:
        """Prompt embeddings, computed once per distinct prompt and kept on the host between uses."""
        if prompt not in self._text_cache:
            with torch.no_grad(), self._phase("text_encode"):
                self._text_cache[prompt] = self.backbone.encode_text(prompt).to("cpu")
        self._text_cache.move_to_end(prompt)
        return self._text_cache[prompt].to(self.backbone.device)

    def end_job(self) -> None:
        """Drop what only the finished job needed: its generation and all but the newest prompts' embeddings.

        A job reads every prompt of its storyboard, so the cache is trimmed between jobs, never
        during one; a server left running keeps :data:`TEXT_CACHE_KEEP` embeddings, not every prompt it saw.
        """
        self.last_generation = None
        while len(self._text_cache) > TEXT_CACHE_KEEP:
            self._text_cache.popitem(last=False)

    def text_at(self, storyboard: list[tuple[float, str]], t: float) -> Conditioning:
        """The text conditioning at time ``t``: one prompt's, or inside a transition a blend of two.

        One DiT call reads one text conditioning for all frames of its section, so a
        transition moves per section, by the section's start time (``config.prompt_weights``).
        """
        parts = prompt_weights(storyboard, t)
        if len(parts) == 1:  # no blend: exactly the prompt's own embedding
            return self.text(parts[0][0])
        (a, _), (b, weight) = parts
        with torch.no_grad():
            return self.backbone.blend_text(self.text(a), self.text(b), weight)

    # -------------------------------------------------------------- start
    def start(self, request: GenerationRequest,
              borrowed: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> tuple[Generation, np.ndarray | None]:
        """Validate, read inputs, encode any start frames into the history.

        ``borrowed``: a finished job's raw latents ``[1, C, T, h, w]`` and frame context ``[T]`` (the
        request's ``borrow``): encoded into the history first, so the video's own frames come after them.
        Returns the generation state and the frames the video starts with.
        """
        board = request.validate(self.preset)
        if self.loop is not None:  # before any input is read: what this loop cannot do at all
            self.loop.check(request, self.option(request, "history_mode"), board)
        w, h = self.size_for(request)
        mode = self.option(request, "history_mode")
        if mode == "encoder" and self.encoder is None:
            raise InputError("--history", "this preset has no history encoder; use 'window' or 'none'")
        v = self.preset.video
        cap = self.history_cap(request, (w, h)) if mode == "encoder" else 0
        history = HistoryState(self.encoder if mode == "encoder" else None, self.backbone.device, max_tokens=cap,
                               merge=self.option(request, "history_merge"))
        gen = Generation(request, board, self.sections_for(request.seconds), history)
        self.prepare_memory(request, board, mode, cap, (w, h))
        borrow_history(gen, mode, borrowed)
        frames, latents, shown = None, None, True
        if request.continue_video:
            frames = cut(self.backbone, read_video(request.continue_video, w, h, v.fps, int(MAX_CONTINUE_SECONDS * v.fps)))
        elif request.image:
            frames = read_image(request.image, w, h)[None]
        elif request.start_frame is not None:  # text-to-video: the backbone's start frame (config.START_FRAMES)
            start = self.backbone.default_start(request.start_frame, request.seed, request.prompt, request.seconds, w, h)
            if start is not None:
                frames, latents, shown = start.image[None], start.latents, start.content
        if frames is None:
            self.steer_history(history, request, history.num_frames)
            return gen, None
        # The image condition is the frame the video goes on from: the start image, or the last frame.
        with torch.no_grad(), self._phase("image_encode"):
            gen.image_cond = self.backbone.encode_image(to_pixels(frames[-1:])[0, :, 0].to(self.backbone.device), latents)
        if self.loop is not None:
            self.loop.encode_end(gen, (w, h), self._phase("image_encode"))
        if latents is None:  # the start frame, or the video continued chunk by chunk (what the mode reads of it)
            keep = latents_read(self.backbone, mode, int(self.option(request, "window_frames")), self.section_latent_frames)
            if self.loop is not None:  # the original model's one latent of the past: its start latent (see .inverted)
                keep = 1
            with torch.no_grad(), self._phase("vae_encode"):
                latents = encode_clip(self.backbone, frames, keep)
        history.append(latents)
        self.steer_history(history, request, history.num_frames)  # before the first group the pins can hold
        self.keyframe_latents(gen)  # read and encoded now, so a bad image fails before the first section
        return gen, frames if shown else None

    def prepare_memory(self, request: GenerationRequest, board: list[tuple[float, str]], mode: str, cap: int,
                       size: tuple[int, int]) -> None:
        """Plan device memory for this request and load its prompts' text (a start, and a resume alike).

        The plan reads the request's length, history mode and cap, resolution, guidance and cache, and
        the length of a video it continues (from the file's duration, so a resume finds the same):
        a job resumed after a restart needs the same plan its start made, not the manager's first one.
        """
        if hasattr(self.memory, "prepare"):  # a plan for this request (mode, length, tokens, resolution) first
            rate = None if self.encoder is None else self.encoder.config.rate
            # text-to-video starts from the backbone's start frame (validate filled in request.start_frame)
            starts = bool(request.image or request.continue_video or request.start_frame)
            # the request's own settings: its history cap and merge rule; step caching holds residuals through
            # the steps; guidance passes run block by block together (more activations)
            opt = lambda name: self.option(request, name)  # noqa: E731
            preset = replace(self.preset,
                             history=replace(self.preset.history, max_tokens=cap, merge=opt("history_merge"),
                                             guidance=float(opt("history_guidance")),
                                             window_frames=int(opt("window_frames"))),
                             sampling=replace(self.preset.sampling, cache=opt("cache"), cfg=float(opt("cfg"))))
            self.memory.prepare(preset, request.seconds, history_mode=mode, rate=rate, start_image=starts, size=size,
                                continue_frames=planned_frames(request, self.preset.video.fps))
        if self.memory is not None:  # every prompt now, so the text encoders are loaded once per request
            for prompt in dict.fromkeys(p for _, p in board):
                self.text(prompt)
            if float(self.option(request, "cfg")) != 1.0:
                self.text(self.preset.sampling.negative_prompt)

    # -------------------------------------------------------- memory controls
    def memory_plan(self, request: GenerationRequest) -> MemoryPlan:
        """The request's memory controls, checked (:mod:`~framepack_history.config.memory`)."""
        return check_memory(request.memory, request.seconds, self.preset, self.option(request, "history_mode"))

    def frames_at(self, seconds: float, origin: int, up: bool = False) -> int:
        """The history's latent frame at ``seconds`` into the video (``origin``: latent frames before section 0)."""
        return frames_at(self.preset.video, self.section_latent_frames, seconds, origin, up)

    def steer_history(self, history: HistoryState, request: GenerationRequest, origin: int) -> None:
        """Set the request's pins and forgets on ``history`` (:func:`.memory_controls.steer_history`)."""
        steer_history(history, self.memory_plan(request), self.preset.video, self.section_latent_frames, origin)

    def shot_start(self, gen: Generation) -> int:
        """The first latent frame of the next section's shot (:func:`.memory_controls.shot_start`); on the original
        model's loop, which takes no memory controls, always the video's own first frame."""
        cuts = self.memory_plan(gen.request).cuts
        return shot_start(gen, [] if self.loop is not None else cuts, self.section_latent_frames)

    def history_cap(self, request: GenerationRequest, size: tuple[int, int]) -> int:
        """The request's history-token cap (0 = none), checked against one token group at ``size``."""
        cap = int(self.option(request, "max_history_tokens") or 0)
        if not cap or self.encoder is None:
            return cap
        geo = self.backbone.geometry
        _, gh, gw = self.encoder.grid(1, size[1] // geo.spatial_scale, size[0] // geo.spatial_scale)
        field = "--max-history-tokens" if request.max_history_tokens is not None else "history.max_tokens"
        if getattr(self.encoder, "context_frames", 0):
            raise InputError(field, "this history encoder codes each group against the one before it "
                                    "(context_groups); a cap needs one that codes groups alone (0 = no cap)")
        require_cap(cap, gh * gw, size, field)
        return cap

    def size_for(self, request: GenerationRequest) -> tuple[int, int]:
        """The request's ``(width, height)``: its start image's or video's bucket, chosen and recorded once."""
        w, h = resolve_size(request, self.preset)
        geo = self.backbone.geometry
        grid = geo.spatial_scale * geo.patch_size[1], geo.spatial_scale * geo.patch_size[2]
        if w % grid[1] or h % grid[0]:
            raise InputError("--width" if w % grid[1] else "--height",
                             f"{w}x{h} is not a multiple of the {self.backbone.name} backbone's {grid[1]}x{grid[0]} pixel grid")
        return w, h

    def size_of(self, gen: Generation) -> tuple[int, int]:
        """``(width, height)`` ``gen`` is generated at: its request's (chosen by :meth:`start`), else the preset's."""
        r, v = gen.request, self.preset.video
        return (r.width, r.height) if r.width and r.height else (v.width, v.height)

    # ------------------------------------------------------------- one section
    def context(self, gen: Generation) -> Context:
        """What the DiT sees of the past, by history mode (:func:`~.context.section_context`, shared with training).

        ``window`` is the backbone's own context when it has one (FramePack-F1's
        multi-scale clean latents from the last 19 latents), else a sliding
        window of ``window_frames`` raw latents; ``encoder`` adds the history
        tokens of the whole past to it; ``none`` keeps only the start anchor.
        """
        mode = self.option(gen.request, "history_mode")
        window = int(self.option(gen.request, "window_frames"))
        n = window_size(self.backbone, mode, window, self.section_latent_frames)
        if n:  # never across a cut (a new shot), nor into a borrowed history: only this shot's frames
            n_past = min(n, gen.history.num_frames - self.shot_start(gen))
        past = gen.history.window(n_past) if n else None  # only the latents the context reads leave the host
        if n and past is None:  # nothing yet: an empty past (F1's context is then all zeros, as F1 starts)
            _, c, _, h, w = self.latent_shape(gen)
            past = torch.zeros(1, c, 0, h, w)
        return section_context(self.backbone, mode, past, history=gen.history.tokens() if mode == "encoder" else None,
                               window_frames=window, section_latents=self.section_latent_frames,
                               past_w=gen.history.frame_context, target_w=self.frame_context(gen),
                               keyframes=next_keyframe(gen, self.keyframe_latents(gen), self.backbone, self.preset.video,
                                                       self.size_of(gen)[0]))

    def keyframe_latents(self, gen: Generation) -> list[tuple[int, torch.Tensor]]:
        """``gen``'s keyframes as ``(latent frame index, clean latent)`` (:func:`.keyframes.keyframe_latents`).

        The original model's loop takes keyframes its own way (:mod:`.inverted`): none here.
        """
        if self.loop is not None and gen.keyframes is None:
            gen.keyframes = []
        return keyframe_latents(gen, self.backbone, self.preset.video, self.section_latent_frames, self.size_of(gen),
                                self._phase)

    def latent_shape(self, gen: Generation | None = None) -> tuple[int, int, int, int, int]:
        """``[1, C, T, h, w]`` of one section's latents, at ``gen``'s size (its bucket) or the preset's."""
        geo = self.backbone.geometry
        width, height = (self.preset.video.width, self.preset.video.height) if gen is None else self.size_of(gen)
        return (1, geo.latent_channels, self.section_latent_frames, height // geo.spatial_scale, width // geo.spatial_scale)

    def schedule(self, shift: float | None, gen: Generation | None = None) -> tuple[float, float | None]:
        """``(shift, mu)`` for a section: ``shift`` when given, else the backbone's own (F1: dynamic, ``e^mu``,
        from the token count at ``gen``'s size)."""
        if shift is not None:
            return float(shift), None
        mu = self.backbone.schedule_mu(self.latent_shape(gen))
        return (1.0, None) if mu is None else (math.exp(mu), mu)

    def frame_context(self, gen: Generation) -> torch.Tensor | None:
        """The next section's frame context (opaque: see :meth:`Backbone.frame_context`), continuing the history's."""
        v = self.preset.video
        return self.backbone.frame_context(gen.storyboard, gen.next_section * v.section_frames, self.section_latent_frames,
                                           v.fps, self.size_of(gen)[0], gen.history.frame_context)

    def section_start(self, gen: Generation, index: int) -> float:
        """Where section ``index`` (in the order generated) starts in the video, in seconds (its prompt's time)."""
        v = self.preset.video
        place = index if self.loop is None else self.loop.time_index(gen, index)  # the original model's run backward
        return place * v.section_frames / v.fps

    def generate_section(self, gen: Generation, on_step: Callable[[dict], None] | None = None) -> SectionDone:
        """Denoise, decode and append the next section; advance ``gen``."""
        idx = gen.next_section
        req, bb = gen.request, self.backbone
        cond = self.text_at(gen.storyboard, self.section_start(gen, idx))
        # the original model's loop: the section's segment's start latent, end anchor and image embedding
        image = gen.image_cond if self.loop is None else self.loop.conditioning(gen)
        cond = Conditioning({**image.tensors, **cond.tensors})
        cfg = float(self.option(req, "cfg"))
        neg = None
        if cfg != 1.0:
            neg = Conditioning({**image.tensors, **self.text(self.preset.sampling.negative_prompt).tensors})
        ctx = self.context(gen) if self.loop is None else self.loop.context(
            gen, self.option(req, "history_mode"), self.latent_shape(gen))
        guidance = float(self.option(req, "guidance"))
        # history guidance needs history tokens to guide with (none in the other modes, none yet
        # when a text-to-video request has no start frame)
        hg = float(self.option(req, "history_guidance")) if ctx.history_tokens is not None else 1.0

        steps = int(self.option(req, "steps"))
        # a fresh cache per section: no residual of another section, request or branch is ever reused
        cache = StepCache(bb.transformer, threshold_for(bb.name, self.option(req, "cache")), steps)
        model = self._branches_model(cache, cond, neg, ctx, guidance)

        noise = section_noise(self.latent_shape(gen), req.seed, idx, video_noise_generator(gen, bb)).to(bb.device)
        shift, mu = self.schedule(self.option(req, "shift"), gen)
        t0 = time.perf_counter()
        with self._phase("denoise", idx), cache:
            latents = sample(
                self.option(req, "sampler"), guided_together(model, cfg, hg), noise, steps, shift, on_step, mu=mu,
            )
        t1 = time.perf_counter()
        with torch.no_grad(), self._phase("vae_decode", idx):
            if self.loop is not None:
                frames, t2, tokens = self.loop.finish(gen, latents, ctx)
            elif bb.overlap_decode:  # F1 decodes from the history, so the section goes in first
                frames, t2, tokens = self._overlap_decode(gen, latents, ctx)
            else:
                frames = to_uint8(bb.vae_decode(latents.to(bb.dtype))[0])
                t2 = time.perf_counter()
                tokens = gen.history.append(latents, frame_context=ctx.target_w)
        t3 = time.perf_counter()
        gen.next_section += 1
        return SectionDone(idx, gen.total_sections, frames,
                           {"denoise_s": t1 - t0, "decode_s": t2 - t1, "history_encode_s": t3 - t2}, tokens, shift,
                           cache.passes.to_dict())

    def _branches_model(self, cache: StepCache, cond: Conditioning, neg: Conditioning | None, ctx: Context,
                        guidance: float) -> Callable[[torch.Tensor, torch.Tensor, list[Branch]], list[torch.Tensor]]:
        """The step's guidance branches ``(conditional, with_history)`` -> their predictions.

        Without step caching every branch runs in one DiT call (a streamed block is copied once for
        all of them); with it, each branch is its own call under its own cache state (diffusers'
        cache contexts keep one residual per branch, and one call cannot switch between them).
        """
        bb = self.backbone
        no_history = replace(ctx, history_tokens=None, history_positions=None)

        def name(c: bool, h: bool) -> str:
            return ("cond" if c else "uncond") + ("" if h else "/no_history")

        def model(x: torch.Tensor, s: torch.Tensor, branches: list[Branch]) -> list[torch.Tensor]:
            pairs = [(cond if c else neg, ctx if h else no_history) for c, h in branches]
            if cache.threshold is None:
                out = [v.float() for v in bb.predict_branches(x, s, pairs, guidance)]
                for c, h in branches:
                    cache.passes.add(name(c, h), True)
                return out
            return [cache.call(name(c, h), lambda pair=pair: bb.predict(x, s, *pair, guidance).float())
                    for (c, h), pair in zip(branches, pairs)]

        return model

    def _overlap_decode(self, gen: Generation, latents: torch.Tensor, ctx: Context) -> tuple[np.ndarray, float, int]:
        """Append the section, then decode as F1 does: send what is final, hold back the overlap tail.

        Returns the frames to send, when decoding ended and the history's token count.
        """
        idx, n = gen.next_section, self.section_latent_frames
        start_frames = gen.history.num_frames - n * idx  # latents before section 0 (start image, continued video)
        decoder = OverlapDecoder(self.backbone, n)
        if gen.held is None and idx > 0:  # resumed: decode the last tail again from the raw latents
            gen.held = decoder.held_after(gen.history, idx, start_frames)
        t_append = time.perf_counter()
        tokens = gen.history.append(latents, frame_context=ctx.target_w)
        t_append = time.perf_counter() - t_append
        ready, gen.held = decoder.step(gen.history, idx, start_frames, gen.held)
        if gen.tail_sent:  # extending a finished video, which already ends with that tail (unblended)
            ready, gen.tail_sent = ready[:, :, decoder.overlap:], False
        if idx == gen.total_sections - 1:  # the last section: nothing will blend the tail, send it now
            ready, gen.held = torch.cat([ready, gen.held], dim=2), None
        return to_uint8(ready[0]), time.perf_counter() - t_append, tokens

    def preview(self, index: int, info: dict) -> StepPreview:
        """The step's denoised estimate through the backbone's linear latent-to-RGB map: no VAE, no phase."""
        with torch.no_grad():
            img = to_uint8(self.backbone.preview(info["denoised"])[:, None])[0]
        return StepPreview(index, info["step"], info["total"], img)

    def set_loras(self, request: GenerationRequest) -> None:
        """Put the request's LoRAs (else the preset's) on the DiT, replacing the last job's; record them resolved."""
        request.loras = apply(self.backbone, requested(request.loras, self.preset.loras), self.memory)

    # ---------------------------------------------------------------- loop
    def run(
        self,
        request: GenerationRequest,
        on_step: Callable[[int, dict], None] | None = None,
        resume: Generation | None = None,
        before_section: Callable[[Generation], None] | None = None,
        borrowed: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> Iterator[Event]:
        """Yield events for a whole request (or for the rest of a resumed one).

        ``on_step(section_index, info)`` runs after every denoising step (see
        :mod:`.sampling`): draw previews there with :meth:`preview`, or raise
        :class:`~framepack_history.errors.Cancelled` to stop. ``before_section(gen)`` runs before each
        section starts (steering: it may replace ``gen.storyboard``). ``borrowed``: the history of the
        request's ``borrow`` (see :meth:`start`). The finished generation is left in ``self.last_generation``.
        """
        self.set_loras(request if resume is None else resume.request)
        if resume is None:
            gen, start_frames = self.start(request, borrowed)
            if start_frames is not None:
                yield ContextFrames(start_frames)
        else:
            gen = resume
        self.last_generation = gen
        while gen.next_section < gen.total_sections:
            if before_section is not None:
                before_section(gen)
            idx = gen.next_section
            parts = prompt_weights(gen.storyboard, self.section_start(gen, idx))
            blend = (parts[0][0], round(parts[1][1], 6)) if len(parts) == 2 else None
            yield SectionStarted(idx, gen.total_sections, parts[-1][0], blend)
            step_cb = None if on_step is None else (lambda info, idx=idx: on_step(idx, info))
            yield self.generate_section(gen, step_cb)
        yield Finished(gen.total_sections, gen.total_sections * self.preset.video.section_frames, gen.history.num_tokens)
