"""What the toy-world benchmarks share: loading a model, the held-out worlds, PSNR and mean ± standard error.

Imported by the scripts beside it (``benchmarks/keyframes.py``, ``benchmarks/memory_controls.py``), which put
the repository root on ``sys.path`` first.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from framepack_history.backbones.toyworld import EVAL_SEED_START, World, WorldSpec
from framepack_history.config.paths import PRESET_DIR
from framepack_history.generation.pipeline import Pipeline
from framepack_history.history.state import HistoryState
from framepack_history.training.evaluate import load_run
from framepack_history.training.revisit import encode_like_pipeline
from framepack_history.training.stages import track_of


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 arrays of frames, over all their pixels (99 dB when equal)."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def load(spec: str) -> Pipeline:
    """``toy-cpu`` (a preset name), a preset file or a training run folder."""
    path = Path(spec)
    if not path.exists() and (PRESET_DIR / f"{spec}.toml").is_file():
        path = PRESET_DIR / f"{spec}.toml"
    return load_run(path)


def world_of(pipe: Pipeline, i: int) -> tuple[World, int]:
    """Held-out world ``i`` (seed 1,000,000 + i; training uses seeds below) at the model's view and frame rate."""
    v = pipe.preset.video
    seed = EVAL_SEED_START + i
    return World.from_seed(seed, WorldSpec(view=v.width, fps=v.fps)), seed


def mean_se(xs: list[float]) -> str:
    """``"mean ± standard error"`` (the SE of paired differences when ``xs`` are per-world differences)."""
    a = np.asarray(xs, np.float64)
    se = a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return f"{a.mean():.2f} ± {se:.2f}"


@torch.no_grad()
def true_history(pipe: Pipeline, ep, sections: int, cap: int = 0,
                 pins: list[tuple[int, int]] = ()) -> HistoryState:
    """The history a job holds after the start frame and ``sections`` true sections of ``ep`` (teacher-forced).

    ``cap``: the history-token cap (0 = none), with the preset's merge rule; ``pins``: latent frame ranges
    the cap never merges (set before the frames arrive, as a job does).
    """
    bb = pipe.backbone
    latents = encode_like_pipeline(pipe, ep.frames, sections)
    hist = HistoryState(pipe.encoder, bb.device, max_tokens=cap, merge=pipe.preset.history.merge)
    hist.steer(list(pins))
    track = track_of({"camera_x": torch.as_tensor(ep.camera_x - ep.camera_x[0])[None]}, bb)
    hist.append(latents, frame_context=None if track is None else track[0, : latents.shape[2]].cpu())
    return hist
