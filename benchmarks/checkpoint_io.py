"""Bytes written per checkpoint over a long job: each checkpoint writes only its section.

Runs a job of N sections (default 60 on toy-cpu, the shipped model: 60 s)
into a job folder and records, for every checkpoint, the bytes it wrote
(history chunk, conditioning the first time, checkpoint.json). From the same
run it computes what rewriting the whole history at every checkpoint would
have written (the history, conditioning and RNG state serialised whole, plus
the same checkpoint.json). Prints per-checkpoint rows, then first/last and
last/first for the section checkpoints (goal <= 1.1) and the totals.

    python benchmarks/checkpoint_io.py [--preset toy-cpu] [--sections 60] [--steps 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save  # noqa: E402

from framepack_history.config.presets import load_preset  # noqa: E402
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import build_encoder, load_backbone  # noqa: E402
from framepack_history.generation.pipeline import Pipeline  # noqa: E402
from framepack_history.jobs.checkpoint import CHECKPOINT, JobDir  # noqa: E402
from framepack_history.jobs.render import render  # noqa: E402


class MeasuredJobDir(JobDir):
    """A job folder that records what each checkpoint wrote and what a whole rewrite would have."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.rows: list[dict] = []

    def save_section(self, gen, segments, sections, frames, context_frames=0) -> int:
        t0 = time.perf_counter()
        written = super().save_section(gen, segments, sections, frames, context_frames)
        seconds = time.perf_counter() - t0
        json_bytes = (self.root / CHECKPOINT).stat().st_size
        whole = gen.history.chunk(0, 0)
        cond = {f"cond.{k}": v.detach().cpu().contiguous() for k, v in gen.image_cond.tensors.items()}
        rewrite = len(save(whole)) + len(save({**cond, "rng.cpu": torch.get_rng_state()})) + json_bytes
        self.rows.append({"section": gen.next_section, "written": written, "json": json_bytes, "rewrite": rewrite,
                          "seconds": seconds})
        return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="toy-cpu")
    ap.add_argument("--sections", type=int, default=60)
    ap.add_argument("--steps", type=int, default=2, help="denoising steps (bytes do not depend on them)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    preset = load_preset(args.preset)
    v = preset.video
    seconds = args.sections * v.section_frames / v.fps
    preset.video.max_seconds = max(preset.video.max_seconds, seconds)
    bb = load_backbone(preset.model, preset.hardware.device, preset.hardware.dtype)
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset)
    request = GenerationRequest(prompt="0s: camera pans right; 30s: camera pans left", seconds=seconds,
                                seed=args.seed, steps=args.steps)
    with tempfile.TemporaryDirectory(prefix="checkpoint-io-") as tmp:
        job = MeasuredJobDir(Path(tmp) / "job")
        job.create(request, preset, out=Path(tmp) / "video.mp4")
        t0 = time.perf_counter()
        render(pipe, request, Path(tmp) / "video.mp4", job.root / "segments", job=job)
        wall = time.perf_counter() - t0

    rows = job.rows
    print(f"{preset.name}: {args.sections} sections ({seconds:g} s), {len(rows)} checkpoints, run {wall:.0f} s")
    print(f"{'after':>6} {'written B':>10} {'of it json':>10} {'whole rewrite B':>16} {'ms':>6}")
    for r in rows:
        if r["section"] in (0, 1, 2, 3) or r["section"] % 10 == 0 or r is rows[-1]:
            print(f"{r['section']:>6} {r['written']:>10} {r['json']:>10} {r['rewrite']:>16} {1000 * r['seconds']:>6.1f}")
    sec = [r for r in rows if r["section"] >= 1]  # the start checkpoint (context frames, conditioning) apart
    first, last = sec[0], sec[-1]
    tensors = [r["written"] - r["json"] for r in sec]
    print(f"section checkpoints: first {first['written']} B, last {last['written']} B, "
          f"last/first {last['written'] / first['written']:.3f} (goal <= 1.1)")
    print(f"  tensors only: first {tensors[0]} B, last {tensors[-1]} B, last/first {tensors[-1] / tensors[0]:.3f}; "
          f"checkpoint.json: first {first['json']} B, last {last['json']} B")
    print(f"  a whole rewrite: first {first['rewrite']} B, last {last['rewrite']} B, last/first "
          f"{last['rewrite'] / first['rewrite']:.2f}")
    total, rewrite = sum(r["written"] for r in rows), sum(r["rewrite"] for r in rows)
    print(f"total written {total} B; rewriting the whole history every time: {rewrite} B ({rewrite / total:.1f}x)")


if __name__ == "__main__":
    main()
