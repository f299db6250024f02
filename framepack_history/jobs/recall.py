"""The memory inspector: a past frame recalled from a job's history embedding, beside the real one.

The recall is Stage I's frame query (``generation/frame_query.retrieve``): the DiT
denoises one latent frame at its own time position in the past from the
history embedding and the prompt (no window; on FramePack-F1 also the start
image, the history's first latent, as Stage I conditions on it), and the VAE
decodes it. The real frame is the same latent frame as the job saved it
in its history, decoded; PSNR compares the two.

Where it runs: on the CPU, from the job's last checkpoint (its history
chunks), with a model of its own. The worker owns the device and its loaded
models; a recall never touches either, so it can look into a running job
(as of its last finished section) while the worker goes on denoising. Only a
backbone whose history encoder was trained (``model.encoder`` names weights)
and a job that ran in history mode ``encoder`` have an embedding worth
recalling from; anything else is refused with the reason.

No torch at import time: the page reaches this through the worker.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_history.errors import InputError
from framepack_history.jobs.checkpoint import JobDir, read_tensors, tensor_files

if TYPE_CHECKING:
    import numpy as np

    from framepack_history.generation.pipeline import Pipeline


@dataclass
class Recall:
    """One recalled frame, the real one, and how alike they are."""

    at: float  # the time asked for (seconds into the video)
    frame: int  # the history's latent frame recalled
    age_s: float  # how far before the end of the saved history that frame lies (seconds)
    sections: int  # finished sections the saved history covers
    history_tokens: int
    coarse: int  # time reduction of the token group that holds the frame (1 = full detail; > 1: a capped history)
    recalled: np.ndarray  # uint8 [H, W, 3]
    real: np.ndarray  # uint8 [H, W, 3]
    psnr: float  # dB
    seconds: float  # the video's length so far
    #: what the embedding keeps: ``(from s, to s, time reduction)`` runs of the saved history (1 = full detail)
    layout: tuple[tuple[float, float, int], ...] = ()

    def layout_text(self) -> str:
        """``memory: 0-5 s full detail, 5-230 s 156x coarser, ...`` (capped histories merge what repeats)."""
        runs = [f"{round(a, 2):g}-{round(b, 2):g} s " + ("full detail" if k == 1 else f"{k}x coarser")
                for a, b, k in self.layout]
        return "memory: " + ", ".join(runs) if runs else ""

    def summary(self) -> str:
        detail = "full detail" if self.coarse == 1 else f"a group {self.coarse}x coarser in time (bounded history)"
        return (f"recalled the frame at {self.at:.2f} s (latent frame {self.frame}, {self.age_s:.1f} s before the end of "
                f"the saved history, {self.history_tokens} history tokens, {detail}): "
                f"PSNR {self.psnr:.2f} dB against the real frame")


def why_not(job: JobDir) -> str | None:
    """Why the job has no embedding to recall from (``None`` when it has one); reads only JSON."""
    info, ck = job.info(), job.checkpoint()
    mode = info.settings.history_mode
    name = info.preset.name
    if mode != "encoder":
        return (f"job {job.id} ran in history mode '{mode}': it kept no history embedding, so there is nothing to "
                f"recall (the memory inspector needs mode 'encoder' and a trained history encoder)")
    if not info.preset.model.encoder:
        return (f"preset {name} ({info.preset.model.backbone}) has no trained history encoder (model.encoder is empty): "
                f"its embedding comes from untrained weights and holds nothing to recall")
    files, _ = tensor_files(ck, str(job.root))
    if not files:
        if ck.get("status") == "done":
            return f"job {job.id} finished before finished jobs kept their history: its embedding is gone"
        return f"job {job.id} has no finished section yet: there is no saved history to recall from"
    return None


class Inspector:
    """Recalls frames on the CPU with its own model, loaded once per preset and kept (one at a time)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._lock = threading.Lock()
        self._key: str | None = None
        self._pipeline: Pipeline | None = None

    def pipeline(self, job: JobDir) -> Pipeline:

        from framepack_history.generation.loading import (  # torch: kept off the page's import path
            build_encoder,
            load_backbone,
        )
        from framepack_history.generation.pipeline import Pipeline  # torch: kept off the page's import path

        info = job.info()
        preset = info.preset
        key = json.dumps([preset.to_dict(), info.encoder_rate], sort_keys=True, default=str)
        if key != self._key:
            preset.hardware.device, preset.hardware.dtype = self.device, "float32"
            backbone = load_backbone(preset.model, self.device, "float32")
            encoder = build_encoder(preset.model, backbone, info.encoder_rate)
            backbone.transformer.eval()
            self._key, self._pipeline = key, Pipeline(backbone, encoder, preset)
        assert self._pipeline is not None
        return self._pipeline

    def recall(self, job_dir: str | Path, at: float, steps: int | None = None, seed: int = 0) -> Recall:
        """The frame at ``at`` seconds recalled from the job's saved history (:class:`InputError` if none)."""
        job = JobDir(job_dir)
        if not job.exists():
            raise InputError("JOB_DIR", f"{job_dir} is not a job folder (no request.json)")
        reason = why_not(job)
        if reason:
            raise InputError("recall", reason)
        with self._lock:  # one recall at a time: the pipeline's caches are not shared across threads
            return _recall(self.pipeline(job), job, at, steps, seed)


def _recall(pipeline: Pipeline, job: JobDir, at: float, steps: int | None, seed: int) -> Recall:
    import torch  # torch: kept off the page's import path

    from framepack_history.generation.frame_query import (  # torch: kept off the page's import path
        psnr,
        retrieve,
        to_unit,
    )
    from framepack_history.generation.pipeline import to_uint8  # torch: kept off the page's import path
    from framepack_history.history.state import HistoryState  # torch: kept off the page's import path

    ck, info = job.checkpoint(), job.info()
    files, _ = tensor_files(ck, str(job.root))
    try:
        chunks = [read_tensors(job.root / f)[0] for f in files]
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError("recall", f"{job.root}: history unreadable ({type(e).__name__}: {e})") from None
    request = info.request
    settings = pipeline.settings(request)
    cap = pipeline.history_cap(request, _size(request, pipeline.preset))
    history = HistoryState(pipeline.encoder, pipeline.backbone.device, max_tokens=cap, merge=settings.history_merge)
    # the job's pins and forgets, set before its chunks load as its resume does (the same merges, the same embedding)
    frames = sum(int(c["latents"].shape[2]) for c in chunks if "latents" in c)
    pipeline.steer_history(history, request, frames - int(ck.get("next_section", 0)) * pipeline.section_latent_frames)
    try:
        history.load_chunks(chunks)
    except (ValueError, RuntimeError) as e:
        raise InputError("recall", f"{job.root}: saved history inconsistent ({e})") from None
    pos, seconds = frame_at(pipeline, ck, history.num_frames, at)
    context = history.frame_context
    target_w = context[pos : pos + 1].to(pipeline.backbone.device) if bool(context.any()) else None
    bb = pipeline.backbone
    x0 = retrieve(pipeline, history, request.prompt, pos, steps or settings.steps, seed, target_w)
    with torch.no_grad():
        got = bb.vae_decode(x0.to(bb.dtype))[:, :, -1:]
        real = bb.vae_decode(history.latents[:, :, pos : pos + 1].to(bb.device, bb.dtype))[:, :, -1:]
    score = float(psnr(to_unit(got[:, :, 0]), to_unit(real[:, :, 0]))[0])
    fps = pipeline.preset.video.fps
    end_frame = history.num_frames - 1
    age = (end_frame - pos) * pipeline.preset.video.section_frames / pipeline.section_latent_frames / fps
    layout = tuple((seconds_of(pipeline, ck, history.num_frames, a), seconds_of(pipeline, ck, history.num_frames, a + n), k)
                   for a, n, k in history.layout())
    return Recall(at, pos, age, int(ck.get("next_section", 0)), history.num_tokens, history.time_reduction_at(pos),
                  to_uint8(got[0])[0], to_uint8(real[0])[0], score, seconds, layout)


def _size(request: Any, preset: Any) -> tuple[int, int]:
    return (request.width, request.height) if request.width and request.height else (preset.video.width, preset.video.height)


def frame_at(pipeline: Pipeline, ck: dict, history_frames: int, at: float) -> tuple[int, float]:
    """``(history latent frame, video length so far in s)`` of the video time ``at``.

    The video is the start frames shown (``context_frames``), then the sections; the history holds
    the start latents, then ``section_latent_frames`` latents per section.
    """
    v = pipeline.preset.video
    sections, context = int(ck.get("next_section", 0)), int(ck.get("context_frames", 0))
    n = pipeline.section_latent_frames
    seconds = (context + sections * v.section_frames) / v.fps
    if not (isinstance(at, (int, float)) and 0 <= at < seconds):
        raise InputError("--at", f"must be a time in [0, {seconds:g}) s: the saved history covers {seconds:g} s "
                                 f"({sections} sections) (got {at!r})")
    start = history_frames - n * sections  # latents before section 0 (start image, continued video)
    lent = int(ck.get("borrowed_frames", 0))  # a borrowed job's history comes first: never shown in this video
    p = int(at * v.fps + 1e-6)
    if p < context:  # inside the start frames
        pos = lent + min(start - lent - 1, pipeline.backbone.geometry.latent_frames(p + 1) - 1) if start > lent else lent
    else:
        pos = start + (p - context) * n // v.section_frames
    return max(0, min(history_frames - 1, pos)), seconds


def seconds_of(pipeline: Pipeline, ck: dict, history_frames: int, frame: int) -> float:
    """Video time (s) at which history latent ``frame`` begins: the inverse of :func:`frame_at`."""
    v = pipeline.preset.video
    sections, context = int(ck.get("next_section", 0)), int(ck.get("context_frames", 0))
    n = pipeline.section_latent_frames
    start = history_frames - n * sections  # latents before section 0 (start image, continued video)
    lent = int(ck.get("borrowed_frames", 0))
    if frame < lent:  # a borrowed job's history: before this video, at negative times
        return -(lent - frame) * v.section_frames / n / v.fps
    if frame < start:  # inside the start frames: the first one frame_at maps to this latent or a later one
        geo = pipeline.backbone.geometry
        first = next((p for p in range(context) if lent + min(start - lent - 1, geo.latent_frames(p + 1) - 1) >= frame),
                     context)
        return first / v.fps
    return (context + (frame - start) * v.section_frames / n) / v.fps


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Write ``uint8 [H, W, 3]`` as a PNG, enlarged ``scale`` times (nearest neighbour, as the videos are)."""
    import numpy as np  # numpy: only when frames are converted
    from PIL import Image  # PIL: only when an image is read or written

    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
