"""The embedded toy model: fidelity against the true world, and speed on 2 CPU cores.

* fidelity: on held-out worlds, with the camera holding, PSNR of the first
  generated section against the true toy world (text-to-video from the
  world's own start frame; the sprites keep moving, so this also scores
  motion). One frame does not show which way a sprite moves, so two more
  figures split the score: the same section on the background alone (pixels
  no sprite touches in the start frame or the section), and a section
  predicted after 2 s of the true video (teacher-forced, where the raw
  window shows the sprites' motion). "Copy the start frame" is the
  reference for a model that draws the world perfectly and keeps sprites
  still;
* speed: 60 s of toy video written to disk like the CLI does (segments, final
  mp4, sidecar), wall time, and the time to the first finished section.

    python benchmarks/toy_quality.py [--preset toy-cpu] [--worlds 8] [--seconds 60]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from framepack_history.backbones.toyworld import EVAL_SEED_START, World, WorldSpec  # noqa: E402
from framepack_history.config.presets import load_preset  # noqa: E402
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import build_encoder, load_backbone  # noqa: E402
from framepack_history.generation.pipeline import Pipeline, SectionDone  # noqa: E402
from framepack_history.jobs.render import render  # noqa: E402
from framepack_history.training.revisit import _generation, encode_like_pipeline  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = float(err.mean() if mask is None else err[np.broadcast_to(mask[..., None], err.shape)].mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def fidelity(pipe: Pipeline, worlds: int) -> None:
    """Camera holds: the first section from the start frame, and a section after 2 s of the true video."""
    v = pipe.preset.video
    spec, s = WorldSpec(view=v.width, fps=v.fps), v.section_frames
    full, background, copy, after = [], [], [], []
    for i in range(worlds):
        seed = EVAL_SEED_START + i
        world = World.from_seed(seed, spec)
        board = "0s: camera holds"
        ep = world.render(board, (1 + 3 * s) / v.fps)  # start frame + three sections
        truth = ep.frames[1 : 1 + s]
        req = GenerationRequest(prompt=world.caption(board), seconds=s / v.fps, seed=seed)
        got = [e for e in pipe.run(req) if isinstance(e, SectionDone)][0].frames
        still = ~ep.sprite_mask[: 1 + s].any(0)  # background: no sprite there in the start frame or the section
        full.append(psnr(got, truth))
        background.append(psnr(got, truth, np.broadcast_to(still, got.shape[:3])))
        copy.append(psnr(np.broadcast_to(ep.frames[:1], truth.shape), truth))
        lat = encode_like_pipeline(pipe, ep.frames, 2)  # the true first 2 s: start frame + two sections
        gen = _generation(pipe, ep, pipe.preset.history.mode, seed, 3, 2, lat)
        after.append(psnr(pipe.generate_section(gen).frames, ep.frames[1 + 2 * s : 1 + 3 * s]))
    print(f"fidelity (camera holds, {worlds} held-out worlds, PSNR mean [min, max]; goal >= 30 dB):")
    for name, xs in (("first section from the start frame", full), ("  same, background only", background),
                     ("  copy the start frame (sprites kept still)", copy),
                     ("a section after 2 s of the true video", after)):
        print(f"  {name:<45} {np.mean(xs):6.2f} dB [{np.min(xs):.2f}, {np.max(xs):.2f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="toy-cpu")
    ap.add_argument("--worlds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    t0 = time.perf_counter()
    bb = load_backbone(preset.model, preset.hardware.device, preset.hardware.dtype)
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset)
    load_s = time.perf_counter() - t0
    fidelity(pipe, args.worlds)
    v = preset.video
    spec = WorldSpec(view=v.width, fps=v.fps)

    world = World.from_seed(EVAL_SEED_START + 100, spec)
    board = "0s: camera pans right; 10s: camera pans left; 20s: camera holds"
    req = GenerationRequest(prompt=world.caption(board), seconds=args.seconds, seed=EVAL_SEED_START + 100)
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        data = render(pipe, req, Path(tmp) / "v.mp4", Path(tmp) / "seg")
        wall = time.perf_counter() - t1
    print(f"speed: {args.seconds:g} s of video ({len(data['sections'])} sections) in {wall:.1f} s wall "
          f"(ratio wall/video {wall / args.seconds:.2f}; goal <= 2.0); first section after {data['first_section_s']:.2f} s "
          f"(goal <= 5 s; model load before it {load_s:.2f} s)")


if __name__ == "__main__":
    main()
