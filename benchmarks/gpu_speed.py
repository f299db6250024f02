"""Seconds per step and per frame of one FramePack-F1 section at 480x832 under a 12 GiB cap, per speed setting.

Full-size random weights (``gpu_e2e.full_backbone``: the 13 B DiT, VAE, CLIP,
SigLIP; the LLaMA built in nf4 on first call), the real ``Pipeline`` and
``MemoryManager`` with the rtx4070-12gb plan for each variant, the process
capped with ``set_per_process_memory_fraction``. Each variant plans and loads
through its own memory manager (the variants share one set of random weights,
cast to float8 in place when first asked), encodes the start image and
generates one section; it reports the median
seconds per denoising step, the VAE decode, the bytes the block streamer
copied per step, and seconds per new frame at the preset's 25 steps
(``(25 * s/step + decode) / 36``) against FramePack's own figures on an RTX
4090: 2.5 s/frame, 1.5 s/frame with TeaCache.

Variants: ``bf16`` (the rtx4070-12gb preset), ``fp8`` (its blocks stored in
float8), ``fp8-hg2`` (history mode ``encoder``, history guidance 2.0: both
passes per block in one DiT call) and ``fp8-hg2-twopass`` (the same, one DiT
call per branch: what the one-pass form saves). The attention kernel is the
preset's choice (``auto``: the fastest installed); ``--attention native``
forces SDPA.

    python benchmarks/gpu_speed.py                      # needs CUDA and bitsandbytes
    python benchmarks/gpu_speed.py --variants bf16,fp8 --steps 6 --json speed.json
    python benchmarks/gpu_speed.py --tiny               # CPU dry run on the tiny test model (strict mode)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_e2e import TINY, full_backbone, rss_gib, tiny_backbone

from framepack_history.backbones.base import Backbone
from framepack_history.backbones.speed import apply_speed
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import build_encoder
from framepack_history.memory.budget import Budget, GiB
from framepack_history.memory.manager import MemoryManager
from framepack_history.memory.planner import plan

FRAMEPACK_4090 = {"FramePack": 2.5, "FramePack + TeaCache": 1.5}  # s/frame, its README (RTX 4090)
VARIANTS = {
    "bf16": dict(hardware={}, history=None, two_pass=False),
    "fp8": dict(hardware={"weights_dtype": "float8_e4m3fn"}, history=None, two_pass=False),
    "fp8-hg2": dict(hardware={"weights_dtype": "float8_e4m3fn"}, history=2.0, two_pass=False),
    "fp8-hg2-twopass": dict(hardware={"weights_dtype": "float8_e4m3fn"}, history=2.0, two_pass=True),
}


def tiny_budget(preset, bb, seconds: float, mode: str) -> Budget:
    """About half the tiny DiT's blocks fit (the 12 GB card's shape), as in gpu_e2e's dry run."""
    roomy = plan(preset, seconds, history_mode=mode, budget=Budget(GiB, GiB, "cpu", "tiny"),
                 text_encoder_quantization="nf4")
    blocks = sum(p.numel() * p.element_size() for b in (*bb.transformer.transformer_blocks,
                                                          *bb.transformer.single_transformer_blocks)
                 for p in b.parameters())
    return Budget(int((roomy.device_peak - blocks // 2) / 0.96), GiB, "cpu", "tiny")


def backbone_for(preset, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, built: dict):
    """The backbone for ``preset``: built once, its blocks cast to float8 in place when a variant first asks.

    Building the random full-size weights takes longer than timing a section,
    so the variants share one backbone (bf16 first, then float8); a bf16
    variant after a float8 one builds afresh.
    """
    want = preset.hardware.weights_dtype
    if built.get("bb") is None or (built["weights"] and not want):
        built["bb"] = tiny_backbone(preset) if args.tiny else full_backbone(device, dtype)
        built["weights"] = ""
    bb = built["bb"]
    stored = built["weights"]
    hw = dataclasses.replace(preset.hardware, weights_dtype="" if stored else want)
    speed = apply_speed(bb, hw)  # float8 storage (once) and the attention kernel, before a manager reads the weights
    built["weights"] = stored or want
    speed["weights_dtype"] = built["weights"] or speed["weights_dtype"]
    return bb, speed


def run_variant(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, built: dict) -> dict:
    from framepack_history.generation.pipeline import Pipeline

    spec = VARIANTS[name]
    preset = load_preset(TINY if args.tiny else "rtx4070-12gb")
    if args.tiny:
        preset.model.config.update({"num_layers": 2, "num_single_layers": 3})
    hw = {**spec["hardware"], **({"attention": args.attention} if args.attention else {})}
    preset = dataclasses.replace(preset, hardware=dataclasses.replace(preset.hardware, **hw))
    mode = "encoder" if spec["history"] else "window"
    preset.history.mode, preset.history.guidance = mode, spec["history"] or 1.0
    preset.sampling.steps = args.steps
    t0 = time.perf_counter()
    bb, speed = backbone_for(preset, args, device, dtype, built)
    build_s = time.perf_counter() - t0
    section_s = preset.video.section_frames / preset.video.fps
    budget = tiny_budget(preset, bb, section_s, mode) if args.tiny else Budget(
        int(preset.hardware.device_budget_gib * GiB), int(preset.hardware.host_budget_gib * GiB), "cuda", "preset")
    p = plan(preset, section_s, history_mode=mode, budget=budget, text_encoder_quantization="nf4")
    manager = MemoryManager(bb, p, strict=args.tiny)
    bb.__dict__.pop("predict_branches", None)
    if spec["two_pass"]:  # one DiT call per guidance branch: every streamed block copied once per branch
        bb.predict_branches = partial(Backbone.predict_branches, bb)
    encoder = build_encoder(preset.model, bb) if mode == "encoder" else None
    pipe = Pipeline(bb, encoder, preset, memory=manager)

    v = preset.video
    from PIL import Image

    img = Path("/tmp/gpu_speed_start.png")
    Image.fromarray((np.random.default_rng(0).random((v.height, v.width, 3)) * 255).astype(np.uint8)).save(img)
    req = GenerationRequest(prompt="a red fox runs through snow", seconds=section_s, seed=0, image=str(img),
                            history_mode=mode)
    gen, _ = pipe.start(req)
    steps: list[float] = []
    copied: list[int] = []
    streamer = manager.streamer
    last = [time.perf_counter(), streamer.copied_bytes]

    def on_step(info: dict) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        now, b = time.perf_counter(), streamer.copied_bytes
        steps.append(now - last[0])
        copied.append(b - last[1])
        last[0], last[1] = now, b

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    last[0], last[1] = time.perf_counter(), streamer.copied_bytes
    error = ""
    try:
        done = pipe.generate_section(gen, on_step)
        decode = done.timings["decode_s"]
    except torch.OutOfMemoryError as e:  # keep the steps timed so far; name where the plan fell short
        done, decode = None, float("nan")
        error = f"out of memory in {manager.failed_phase}: {str(e).splitlines()[0][:160]}"
        print(f"{name}: {error}", flush=True)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else manager.residency.peak
    s_step = float(np.median(steps[1:] if len(steps) > 1 else steps)) if steps else float("nan")
    frames = v.section_frames
    out = {"variant": name, "attention": speed["attention"], "weights": speed["weights_dtype"],
           "history_guidance": preset.history.guidance, "two_pass": spec["two_pass"],
           "strategy": manager.plan.strategy.describe(), "s_per_step": s_step, "decode_s": decode,
           "copied_gib_per_step": float(np.median(copied[1:] if len(copied) > 1 else copied)) / GiB if copied else float("nan"),
           "planned_peak_gib": manager.plan.device_peak / GiB,
           "s_per_frame_25_steps": (25 * s_step + decode) / frames, "peak_gib": peak / GiB, "build_s": build_s,
           "host_rss_peak_gib": rss_gib(), "frames": int(done.frames.shape[0]) if done else 0, "error": error}
    manager.unload()
    del pipe, manager, encoder, gen, done
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny test model on the CPU, in strict mode")
    ap.add_argument("--cap-gib", type=float, default=12.0, help="device memory cap (set_per_process_memory_fraction)")
    ap.add_argument("--steps", type=int, default=0, help="denoising steps timed per variant (default 4, --tiny 2; "
                                                     "s/frame assumes 25)")
    ap.add_argument("--variants", default="bf16,fp8,fp8-hg2,fp8-hg2-twopass")
    ap.add_argument("--attention", default="", help="override hardware.attention (auto, native, flash, sage, ...)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    args.steps = args.steps or (2 if args.tiny else 4)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if args.tiny:
        device, dtype, card = torch.device("cpu"), torch.float32, "cpu (dry run, tiny model)"
    else:
        if not torch.cuda.is_available():
            print("needs CUDA (or --tiny)", file=sys.stderr)
            return 2
        device, dtype = torch.device("cuda"), torch.bfloat16
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GiB / total))
        card = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    rows, built = [], {}
    for n in names:
        rows.append(run_variant(n, args, device, dtype, built))
        r = rows[-1]
        if args.json:  # after every variant: a run stopped by a time limit keeps what it measured
            args.json.write_text(json.dumps({"card": card, "cap_gib": args.cap_gib, "rows": rows}, indent=1))
        print(f"{n}: {r['s_per_step']:.3f} s/step, {r['copied_gib_per_step'] * GiB / (1 << 20):.2f} MiB copied/step; "
              f"{r['strategy']}", flush=True)
    print(f"\n{card}, cap {args.cap_gib:g} GiB, one section at {'64x64 (tiny)' if args.tiny else '480x832'}, "
          f"{args.steps} steps timed")
    unit, u = (GiB, "G") if not args.tiny else (1 << 20, "M")  # the tiny model in MiB
    head = f"{'variant':<17}{'attention':<11}{'weights':<15}{'s/step':>8}{'MiB/step' if args.tiny else 'GiB/step':>10}{'decode s':>10}{'s/frame@25':>12}{'peak':>8}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['variant']:<17}{r['attention']:<11}{r['weights']:<15}{r['s_per_step']:>8.3f}"
              f"{r['copied_gib_per_step'] * GiB / unit:>10.2f}{r['decode_s']:>10.2f}{r['s_per_frame_25_steps']:>12.3f}"
              f"{r['peak_gib'] * GiB / unit:>7.2f}{u}")
    base = rows[0]["s_per_frame_25_steps"]
    for label, ref in FRAMEPACK_4090.items():
        print(f"{rows[0]['variant']} vs {label} on a 4090 ({ref} s/frame): {ref / base:.2f}x"
              + ("" if not args.tiny else " (tiny CPU model: not comparable)"))
    if len(rows) > 1:
        print("ratios to the first variant (s/step): " + ", ".join(
            f"{r['variant']} {r['s_per_step'] / rows[0]['s_per_step']:.2f}x" for r in rows[1:]))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"card": card, "cap_gib": args.cap_gib, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
