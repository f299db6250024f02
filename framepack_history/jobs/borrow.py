"""Borrowing a finished job's memory: a new video that starts with another one's history.

A request's ``borrow`` names a finished job (its job folder; the worker turns a page's or the API's
job id into its folder). Admission checks that job (:func:`check_borrow`); when the new job starts,
:func:`borrowed_history` reads that job's saved raw latents and frame context (the toy's camera track),
which the pipeline encodes into the new history before the new video's own frames, so they sit at
negative times before it and are never shown. The new job's own checkpoints hold them from then on:
a resume never reads the borrowed job again. The sidecar names the job and the SHA-256 of what was
borrowed (:func:`borrow_entry`).

No torch at import time (admission runs on the page's side).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_history.config.fields import resolve
from framepack_history.config.presets import Preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.jobs.checkpoint import CHECKPOINT_FORMAT, JobDir, read_tensors, tensor_files

if TYPE_CHECKING:
    import torch

    from framepack_history.generation.pipeline import Generation

FIELD = "--borrow"


def check_borrow(request: GenerationRequest, preset: Preset, encoder_rate: str | None = None,
                 field: str = FIELD) -> None:
    """The borrowed job can lend its history to ``request``; ``request.borrow`` becomes its resolved folder.

    Required: a finished job with saved history chunks, made in history mode ``encoder`` on the same preset
    (backbone, weights, encoder rate) at the same size, so its latents mean the same to the new job's encoder
    and DiT. Run after the request's size is chosen (``check_inputs``).
    """
    if not request.borrow:
        return
    src = JobDir(request.borrow)
    name = f"job {src.id}"
    if not src.exists():
        raise InputError(field, f"{request.borrow} is not a job folder")
    ck = src.checkpoint()
    if ck.get("status") != "done":
        raise InputError(field, f"{name} is {ck.get('status')}, not finished; borrow a finished job's history")
    if ck.get("format") != CHECKPOINT_FORMAT or not ck.get("chunks"):
        raise InputError(field, f"{name} has no saved history (it finished before finished jobs kept theirs)")
    info = src.info()
    theirs, mine = info.preset, preset
    if theirs.model.backbone != mine.model.backbone or theirs.name != mine.name:
        raise InputError(field, f"{name} was made on preset {theirs.name} ({theirs.model.backbone}); this request's is "
                                f"{mine.name} ({mine.model.backbone}): a history is read only by the model that made it")
    rate_theirs = info.encoder_rate or theirs.model.encoder_rate
    rate_mine = encoder_rate or mine.model.encoder_rate
    if rate_theirs != rate_mine:
        raise InputError(field, f"{name} was encoded at rate {rate_theirs}; this request's is {rate_mine}")
    size_theirs = (info.request.width, info.request.height)
    size_mine = (request.width, request.height)
    if size_theirs != size_mine:
        raise InputError(field, f"{name} is {size_theirs[0]}x{size_theirs[1]}; this video is "
                                f"{size_mine[0]}x{size_mine[1]}: borrow a job of the same size")
    mode = resolve(info.request, theirs).history_mode
    if mode != "encoder":
        raise InputError(field, f"{name} was made in history mode {mode!r}; borrow a job made in 'encoder' mode")
    # Without a history-token cap the borrowed seconds add tokens and device memory beyond what the preset's
    # memory plan was made for (its max_seconds of video); with one, the tokens stay bounded whatever is borrowed.
    v = mine.video
    lent = int(ck.get("total_sections") or 0) * v.section_frames / v.fps
    if not resolve(request, mine).max_history_tokens and lent + request.seconds > v.max_seconds:
        raise InputError(field, f"{name}'s {lent:g} s of history and this {request.seconds:g} s video make "
                                f"{lent + request.seconds:g} s of uncapped history, beyond the {v.max_seconds:g} s the "
                                f"preset {mine.name} plans for: set a history-token cap (--max-history-tokens) or "
                                "borrow a shorter job")
    request.borrow = str(src.root)


def borrowed_history(folder: str | Path, field: str = FIELD) -> tuple[torch.Tensor, torch.Tensor]:
    """A finished job's raw latents ``[1, C, T, h, w]`` and frame context ``[T]``, from its saved chunks."""
    import torch  # torch: kept off the page's import path

    from framepack_history.history.state import CONTEXT_KEY  # torch: kept off the page's import path

    src = JobDir(folder)
    if not src.exists() or src.checkpoint().get("status") != "done":
        raise InputError(field, f"{folder} is no longer a finished job; its history cannot be borrowed")
    files, _ = tensor_files(src.checkpoint(), str(src.root))
    latents, track = [], []
    try:
        for name in files:
            tensors, _ = read_tensors(src.root / name)
            if "latents" in tensors:
                lat = tensors["latents"].to(torch.float32)
                latents.append(lat)
                track.append(tensors.get(CONTEXT_KEY, torch.zeros(int(lat.shape[2]))).to(torch.float32))
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(field, f"job {src.id}: its history is unreadable ({type(e).__name__})") from None
    if not latents:
        raise InputError(field, f"job {src.id} holds no history latents")
    return torch.cat(latents, dim=2), torch.cat(track)


def history_sha256(latents: torch.Tensor, track: torch.Tensor) -> str:
    """SHA-256 of a history's raw latents and frame context (float32, contiguous): what the sidecar records."""
    h = hashlib.sha256()
    for t in (latents, track):
        h.update(t.detach().to("cpu").float().contiguous().numpy().tobytes())
    return h.hexdigest()


def borrow_entry(gen: Generation) -> dict[str, Any] | None:
    """The sidecar's record of a borrowed history: the job, its folder, the latent frames and their SHA-256."""
    folder, n = gen.request.borrow, gen.borrowed_frames
    if not folder or not n:
        return None
    latents = gen.history.latents[:, :, :n]
    return {"job": Path(folder).name, "folder": str(folder), "latent_frames": n,
            "sha256": history_sha256(latents, gen.history.frame_context[:n])}
