"""The embedded toy model: fidelity against the true world, and speed on 2 CPU cores.

* fidelity: on held-out worlds, with the camera holding, PSNR of the first
  generated section against the true toy world (text-to-video from the
  world's own start frame; the sprites keep moving, so this also scores
  motion);
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

from framepack_history.config import GenerationRequest, load_preset  # noqa: E402
from framepack_history.loading import build_encoder, load_backbone  # noqa: E402
from framepack_history.pipeline import Pipeline, SectionDone  # noqa: E402
from framepack_history.render import render  # noqa: E402
from framepack_history.toyworld import EVAL_SEED_START, World, WorldSpec  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


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
    v = preset.video
    spec = WorldSpec(view=v.width, fps=v.fps)

    scores = []
    for i in range(args.worlds):
        seed = EVAL_SEED_START + i
        world = World.from_seed(seed, spec)
        board = "0s: camera holds"
        truth = world.render(board, (1 + v.section_frames) / v.fps).frames  # start frame + one section
        req = GenerationRequest(prompt=world.caption(board), seconds=v.section_frames / v.fps, seed=seed)
        done = [e for e in pipe.run(req) if isinstance(e, SectionDone)][0]
        scores.append(psnr(done.frames, truth[1 : 1 + len(done.frames)]))
    print(f"fidelity (camera holds, first section vs the true world, {args.worlds} held-out worlds): "
          f"PSNR mean {np.mean(scores):.2f} dB, min {np.min(scores):.2f}, max {np.max(scores):.2f} (goal >= 30)")

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
