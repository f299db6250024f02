"""Stage II: autoregressive (next-section) finetuning.

Each step splits the clips at a random point; everything before the split
is history, the next section is the target. The DiT sees what the generator
would feed it there, built by the generator's own
:func:`~framepack_history.generation.context.section_context`: the encoder's
embedding of the *whole* preceding history, the backbone's recent context
(FramePack-F1: the clip's first latent as the start anchor and the last 19
latents at F1's 4x/2x/1x indices; the toy: optionally a tiny window of the
last raw latent frames), and the caption in force at the section start; it
predicts the section with the rectified-flow loss. F1 clips are cut where
generation cuts a video, after the start latent at whole sections
(:func:`split_points`); the toy's at any latent.

* the DiT gets a fresh LoRA (real backbones) or keeps finetuning (toy); the
  encoder starts from Stage I (``model.encoder``) and stays trainable unless
  ``stage2.freeze_encoder`` (the paper's ablation);
* with probability ``stage2.p_frame_query`` a step trains Stage I's
  frame-query objective instead (the embedding must stay decodable, and the
  DiT keeps reading past frames out of it);
* with probability ``stage2.p_revisit_split`` the split is drawn where the
  target shows canvas that only the history beyond the window has seen
  (camera tracks only): the sections where memory, not the window, helps;
* with probability ``stage2.p_keyframe`` a next-section step also sees one clean latent of the clip at
  its true time after the split (up to ``stage2.keyframe_horizon`` latents on, inside the section or
  beyond it): the keyframe a generation request may give (backbones with ``Backbone.keyframes``);
* with probability ``stage2.p_window_mode`` a step trains the sliding-window
  baseline instead (no embedding; the last section of raw latents, or F1's
  own context, exactly what :class:`~framepack_history.generation.pipeline.Pipeline`
  feeds in ``window`` mode), so that baseline is measured with the same weights.

The split point is shared by a batch (history lengths must match to batch
the encoder); it is redrawn every step, so the run covers every length.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from framepack_history.backbones.base import Backbone
from framepack_history.config.storyboard import caption_at
from framepack_history.errors import InputError
from framepack_history.generation.context import Keyframes, section_context
from framepack_history.training.common import logit_normal
from framepack_history.training.modeling import FlowModule
from framepack_history.training.settings import Stage2Config, TrainConfig
from framepack_history.training.stage1_frame_query import FrameQueryModule, Stage1Task
from framepack_history.training.stages import StageTask, latents_of, run_stage, track_of


class NextSectionModule(FlowModule):
    """``forward(batch)``: history -> embedding (+ window) -> denoise the next section."""

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if batch.get("frame_query"):
            out = FrameQueryModule.forward(self, batch)
            return {"loss": out["loss"], "frame_query": torch.tensor(1.0)}
        x, split, n = batch["latents"], batch["split"], batch["section"]
        x0 = x[:, :, split : split + n]
        track = batch.get("track")  # [B, T] camera offsets (canvas positions), or None
        mode = "encoder" if batch["use_encoder"] else "window"
        history = None
        if batch["use_encoder"]:
            history = self.history(x[:, :, :split], None if track is None else track[:, :split], cap=batch.get("cap", 0))
        # The generator's own context builder: F1's clean context, or the sliding window, exactly as it feeds them.
        ctx = section_context(self.backbone, mode, x[:, :, :split], history=history, window_frames=batch["window"],
                              section_latents=n, past_w=None if track is None else track[:, :split],
                              target_w=None if track is None else track[:, split : split + n],
                              keyframes=keyframe_of(x, track, split, batch.get("keyframe")))
        sigma, noise = batch["sigma"], batch["noise"]
        sv = sigma.view(-1, 1, 1, 1, 1)
        pred = self.backbone.predict((1 - sv) * x0 + sv * noise, sigma, batch["cond"], ctx, batch.get("guidance", 1.0))
        loss = self.flow_loss(pred, x0, noise, sigma).mean()
        return {"loss": loss, "history_frames": torch.tensor(float(split)),
                "window_mode": torch.tensor(0.0 if batch["use_encoder"] else 1.0), "frame_query": torch.tensor(0.0),
                "keyframe": torch.tensor(0.0 if batch.get("keyframe") is None else 1.0)}


def keyframe_of(x: torch.Tensor, track: torch.Tensor | None, split: int, offset: int | None) -> Keyframes | None:
    """The clip's latent ``offset`` frames after the split as a keyframe at its true time (None: no keyframe)."""
    if offset is None:
        return None
    at = split + offset
    t = torch.tensor([float(offset)], device=x.device)
    return Keyframes(x[:, :, at : at + 1], t, None if track is None else track[:, at : at + 1])


def draw_keyframe(c2, gen: torch.Generator, split: int, t: int) -> int | None:
    """A keyframe's offset after the split (``stage2.p_keyframe``), else None; draws nothing when the term is off."""
    if c2.p_keyframe <= 0 or float(torch.rand(1, generator=gen)) >= c2.p_keyframe:
        return None
    last = min(c2.keyframe_horizon, t - 1 - split)  # within the clip
    return int(torch.randint(last + 1, (1,), generator=gen))


def revisit_weights(camera_x: torch.Tensor, view: int, window: int, section: int) -> torch.Tensor:
    """Per split point: pixels of the target section that only the history beyond the window has seen.

    ``camera_x`` ``[B, T]`` is each frame's left edge on the canvas (one latent frame per frame).
    ``out[s]`` sums, over the batch and the ``section`` frames from ``s``, the columns in view that some
    frame before ``s - window`` showed and none of the ``window`` frames just before ``s`` shows: the
    part of a section that only memory can draw (a sliding window cannot). Float ``[T + 1]``.
    """
    cx = camera_x.long()
    b, t = cx.shape
    width = int(cx.max()) + view
    cols = torch.arange(width)
    cover = (cols >= cx[..., None]) & (cols < cx[..., None] + view)  # [B, T, W]
    seen = torch.cummax(cover.to(torch.uint8), dim=1).values.bool()  # columns shown by frames 0..i
    out = torch.zeros(t + 1)
    for s in range(1, t - section + 1):
        h = s - window  # history frames before the window
        if h < 1:
            continue
        in_window = cover[:, h:s].any(1) if window > 0 else torch.zeros(b, width, dtype=torch.bool)
        only_memory = seen[:, h - 1] & ~in_window  # [B, W]
        out[s] = (cover[:, s : s + section] & only_memory[:, None]).sum()
    return out


def draw_cap(c2, gen: torch.Generator) -> int:
    """A history-token cap for this step (``stage2.p_capped``), else 0; draws nothing when the term is off."""
    if c2.p_capped <= 0 or float(torch.rand(1, generator=gen)) >= c2.p_capped:
        return 0
    return int(c2.capped_tokens[int(torch.randint(len(c2.capped_tokens), (1,), generator=gen))])


def section_latent_frames(module: FlowModule, section_frames: int) -> int:
    return module.backbone.geometry.latent_frames(section_frames)


#: Latents before a clip's first section on a backbone with a start anchor (F1): the clip's first latent,
#: which conditions every section as generation's start image does (``StageTask.conditions``).
START_LATENTS = 1


def split_points(backbone: Backbone, t: int, n: int, lo: int) -> list[int]:
    """Where a clip of ``t`` latents may be cut before a section of ``n`` (the split is the history length).

    A backbone with its own context (F1) is cut where generation cuts: after the start latent, at
    whole sections (``1 + k n``), so every history, zero padding of a short one included, is one the
    generator builds. Otherwise at any latent from ``lo``: the sliding window, the history tokens and
    the camera track are the same function of the preceding latents at any length (generation's
    histories start at any length too, a continued video's).
    """
    if backbone.context_frames > 0:
        return [s for s in range(START_LATENTS, t - n + 1, n) if s >= lo]
    return list(range(lo, t - n + 1))


def check_context_settings(backbone: Backbone, c2: Stage2Config) -> None:
    """Refuse Stage II settings the generator would never feed this backbone."""
    if backbone.context_frames == 0:
        return
    if c2.window_frames:
        raise InputError("stage2.window_frames", f"the {backbone.name} backbone reads its own context (the last "
                                                 f"{backbone.context_frames} latents); generation reads no add-on window: use 0")
    if c2.p_no_window:
        raise InputError("stage2.p_no_window", f"the {backbone.name} backbone has no add-on window to drop: use 0")


class Stage2Task(StageTask):
    """Batches with a split point, history mode, captions and noise drawn from the step's generator."""

    def make_batch(self, items: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
        c2, bb = self.cfg.stage2, self.module.backbone
        if c2.p_frame_query > 0 and float(torch.rand(1, generator=gen)) < c2.p_frame_query:
            return {**Stage1Task.make_batch(self, items, gen), "frame_query": True, "cap": draw_cap(c2, gen)}
        x = latents_of(items, bb)
        b, t = x.shape[0], x.shape[2]
        n = section_latent_frames(self.module, self.preset.video.section_frames)
        check_context_settings(bb, c2)
        lo = max(1, c2.min_history_frames, c2.window_frames)
        splits = split_points(bb, t, n, lo)
        if not splits:
            first = lo if bb.context_frames == 0 else START_LATENTS + n * math.ceil(max(0, lo - START_LATENTS) / n)
            raise InputError("data.frames", f"clips have {t} latent frames; stage 2 needs at least {first + n} "
                                          f"(history {first} + section {n})")
        split = splits[int(torch.randint(len(splits), (1,), generator=gen))]
        # Draw only when the term is on, so runs without it keep their random stream.
        revisit = c2.p_revisit_split > 0 and float(torch.rand(1, generator=gen)) < c2.p_revisit_split
        if revisit and "camera_x" in items and bb.geometry.temporal_scale == 1:
            weight = revisit_weights(torch.as_tensor(items["camera_x"]), self.preset.video.width, c2.window_frames, n)
            weight = weight[splits]
            if float(weight.sum()) > 0:
                split = splits[int(torch.multinomial(weight, 1, generator=gen))]
        use_encoder = not (float(torch.rand(1, generator=gen)) < c2.p_window_mode)
        # Window sizes exactly as the pipeline: encoder mode uses the add-on window (0 = none),
        # window mode defaults to one section of raw latents.
        window = c2.window_frames if use_encoder else (c2.window_frames or n)
        # Drawn only when the term is on, so runs without it keep their random stream.
        if use_encoder and c2.p_no_window > 0 and float(torch.rand(1, generator=gen)) < c2.p_no_window:
            window = 0
        window = min(window, split)
        cap = draw_cap(c2, gen) if use_encoder else 0
        sigma = logit_normal(b, self.cfg.sigma_mean, self.cfg.sigma_std, gen)
        noise = torch.randn((b, x.shape[1], n, *x.shape[3:]), generator=gen)
        drop = torch.rand(b, generator=gen) < self.cfg.caption_dropout
        if bb.context_frames > 0:  # the generator's time of section k: k sections after the start frame
            start_s = (split - START_LATENTS) // n * self.preset.video.section_frames / self.fps
        else:
            start_s = bb.geometry.pixel_frames(split) / self.fps  # pixel frames before the split
        prompts = ["" if drop[i] else caption_at(items["caption"][i], start_s) for i in range(b)]
        keyframe = draw_keyframe(c2, gen, split, t)  # last: the draws before it are those of a run without the term
        return {"latents": x, "track": track_of(items, bb), "split": split, "section": n, "use_encoder": use_encoder,
                "window": window, "cap": cap, "guidance": self.guidance, "keyframe": keyframe,
                "sigma": sigma.to(x.device), "noise": noise.to(x.device), "cond": self.batched(self.conditions(prompts, x))}


def main(cfg: TrainConfig) -> Path:
    """Train Stage II from a validated config; returns the output folder."""
    return run_stage(cfg, NextSectionModule, Stage2Task)
