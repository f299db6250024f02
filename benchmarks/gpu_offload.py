"""Budgeted weight streaming of the full-size FramePack-F1 DiT on one GPU, against its plan.

Builds the 13B-parameter transformer from its config with random bf16 weights
(on ``meta`` first, then each tensor filled on the GPU and parked in pinned
host memory: no checkpoint needed), caps the process at ``--cap-gib`` of
device memory with ``torch.cuda.set_per_process_memory_fraction``, and runs
the last two sections of a minute-long request at the 640 bucket (480x832,
history tokens of ~60 s). Prints the measured peak against the planner's
prediction, and seconds per denoising step for budgeted streaming versus
everything resident (uncapped). Both are measured in this one run, on the
same card.

    python benchmarks/gpu_offload.py                 # needs CUDA
    python benchmarks/gpu_offload.py --tiny          # CPU dry run on the tiny test model
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framepack_history.backbones.framepack_transformer import HistoryFramepackTransformer3DModel
from framepack_history.config.presets import load_preset
from framepack_history.memory.budget import Budget, GiB
from framepack_history.memory.components import meta_components, read_config
from framepack_history.memory.planner import plan
from framepack_history.memory.streaming import BlockStreamer, Residency

TINY = Path(__file__).resolve().parent.parent / "tests" / "presets" / "tiny-hunyuan.toml"


def materialise(cfg: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The transformer with random weights in (pinned) host memory; values drawn on ``device`` (fast)."""
    with torch.device("meta"):
        model = HistoryFramepackTransformer3DModel.from_config(cfg).to(dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    pin = device.type == "cuda"
    for mname, module in model.named_modules():
        for pname, p in list(module._parameters.items()):
            if p is None:
                continue
            host = torch.empty(p.shape, dtype=dtype, pin_memory=pin)
            if p.dim() == 1:  # norm scales 1, biases 0: activations stay finite through 60 blocks
                host.fill_(1.0 if pname == "weight" else 0.0)
            else:
                std = 0.5 / p[0].numel() ** 0.5
                host.copy_(torch.empty(p.shape, dtype=dtype, device=device).normal_(0.0, std, generator=gen))
            module._parameters[pname] = nn.Parameter(host, requires_grad=False)
        for bname, b in list(module._buffers.items()):
            if b is not None and b.is_meta:
                module._buffers[bname] = torch.zeros(b.shape, dtype=b.dtype)
    return model.eval()


def inputs(cfg: dict, video, hist: int, window: int, device: torch.device, dtype: torch.dtype, image_tokens: int) -> dict:
    """What ``HunyuanFramepackBackbone.predict`` hands the DiT (batch 1, distilled guidance, rope offset 20)."""
    t, h, w = 1 + (video.section_frames - 1) // 4, video.height // 8, video.width // 8
    g = torch.Generator(device=device).manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, device=device).to(dtype)
    kw = {
        "hidden_states": r(1, cfg["in_channels"], t, h, w),
        "encoder_hidden_states": r(1, 256, cfg["text_embed_dim"]),
        "encoder_attention_mask": torch.ones(1, 256, dtype=torch.long, device=device),
        "pooled_projections": r(1, cfg["pooled_projection_dim"]),
        "indices_latents": 20.0 + torch.arange(t, device=device, dtype=torch.float32),
        "guidance": torch.full((1,), 10000.0, device=device, dtype=dtype),
    }
    if window:  # FramePack's 1x clean latents: the last raw frames
        kw["latents_clean"] = r(1, cfg["in_channels"], window, h, w)
        kw["indices_latents_clean"] = 20.0 - window + torch.arange(window, device=device, dtype=torch.float32)
    if image_tokens:
        kw["image_embeds"] = r(1, image_tokens, cfg["image_proj_dim"])
    if hist:
        kw["history_tokens"] = r(1, hist, cfg["num_attention_heads"] * cfg["attention_head_dim"])
        kw["history_positions"] = torch.rand(hist, 3, generator=g, device=device) * torch.tensor([-60.0, 30, 52], device=device) + 20
    return kw


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def denoise(model: nn.Module, kw: dict, steps: int, device: torch.device, last: list | None = None) -> list[float]:
    """``steps`` Euler steps on the section; seconds per step (the final latents go to ``last``)."""
    x, times = kw["hidden_states"], []
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        sigma = 1.0 - i / steps
        v = model(**{**kw, "hidden_states": x}, timestep=torch.full((1,), sigma * 1000, device=device), return_dict=False)[0]
        x = x - v / steps
        sync(device)
        times.append(time.perf_counter() - t0)
    if last is not None:
        last.append(x.float().cpu())
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="rtx4070-12gb")
    ap.add_argument("--seconds", type=float, default=60.0, help="request length the plan is made for")
    ap.add_argument("--cap-gib", type=float, default=12.0, help="device memory cap (set_per_process_memory_fraction)")
    ap.add_argument("--steps", type=int, default=3, help="denoising steps per section")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run with the tiny test model")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("gpu_offload: needs CUDA (use --tiny for a CPU dry run)")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    preset = load_preset(TINY if args.tiny else args.preset)
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.tiny:
        preset.model.config.update({"num_layers": 2, "num_single_layers": 3})
        preset.hardware.dtype = "float32"
        preset.history.window_frames = 2
        args.seconds = min(args.seconds, 5.0)
    comps = meta_components(preset)
    cfg = dict(comps.backbone.transformer.config) if args.tiny else read_config("framepack_f1_transformer.json")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    budget = Budget.for_preset(preset, device.type)
    if args.tiny:  # half the blocks, to exercise streaming
        roomy = plan(preset, args.seconds, history_mode="encoder", budget=Budget(GiB, GiB, "cpu", "dry run"))
        budget = Budget(int((roomy.device_peak - sum(comps.block_bytes()) // 2) / 0.96), GiB, "cpu", "dry run")
    p = plan(preset, args.seconds, history_mode="encoder", budget=budget)
    rows = [r for r in p if r.phase == "denoise"][-2:]  # the two longest-history sections
    window = preset.history.window_frames
    name = torch.cuda.get_device_name() if cuda else "CPU (simulated device)"
    print(f"device: {name}; torch {torch.__version__}")
    print(p.summary())

    t0 = time.perf_counter()
    model = materialise(cfg, device, dtype)
    print(f"materialised {sum(x.numel() for x in model.parameters()) / 1e9:.2f} B parameters in {time.perf_counter() - t0:.1f} s")

    # Budgeted streaming, under the cap.
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GiB / total))
    residency = Residency(device)
    streamer = BlockStreamer(model, p.strategy.resident, residency)
    streamer.load()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    stream_times, measured, outs = [], [], []
    for r in rows:
        kw = inputs(cfg, preset.video, r.history_tokens, window, device, dtype, comps.image_tokens)
        try:
            stream_times += denoise(model, kw, args.steps, device, outs)
        except torch.cuda.OutOfMemoryError as e:  # report it with the figures rather than lose the run
            print(f"section {r.section}: out of memory under the {args.cap_gib:g} GiB cap: {str(e).splitlines()[0]}")
            stream_times += [float("nan")]
        streamer.release()
        measured.append(torch.cuda.max_memory_allocated() if cuda else None)
        del kw
    reserved = torch.cuda.max_memory_reserved() if cuda else 0
    resident_w = residency.sample("after streaming")

    # Everything resident, uncapped (the baseline).
    if cuda:
        torch.cuda.set_per_process_memory_fraction(1.0)
    streamer.close()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    resident_times, ref = [], []
    for r in rows:
        kw = inputs(cfg, preset.video, r.history_tokens, window, device, dtype, comps.image_tokens)
        resident_times += denoise(model, kw, args.steps, device, ref)
        del kw
    same = len(outs) == len(ref) and all(torch.equal(a, b) for a, b in zip(outs, ref))
    diff = max(((a - b).abs().max().item() for a, b in zip(outs, ref)), default=float("nan"))
    finite = all(torch.isfinite(a).all().item() for a in ref)
    resident_peak = torch.cuda.max_memory_allocated() if cuda else 0

    med = lambda xs: statistics.median(xs[1:] if len(xs) > 2 else xs)
    out = {
        "device": name, "preset": preset.name, "cap_gib": args.cap_gib, "budget_gib": budget.device_bytes / GiB,
        "resident_blocks": len(p.strategy.resident), "streamed_blocks": len(p.strategy.streamed),
        "streamed_gib_per_step": streamer.streamed_bytes / GiB,
        "sections": [{"section": r.section, "history_tokens": r.history_tokens, "dit_tokens": r.tokens,
                      "planned_peak_gib": r.device_peak_bytes / GiB,
                      "measured_peak_gib": None if m is None else m / GiB} for r, m in zip(rows, measured)],
        "max_reserved_gib": reserved / GiB, "resident_weights_gib": resident_w / GiB,
        "s_per_step_streamed": med(stream_times), "s_per_step_resident": med(resident_times),
        "resident_peak_gib": resident_peak / GiB,
        "outputs_identical": same, "max_abs_diff": diff, "outputs_finite": finite,
    }
    print(f"strategy: {p.strategy.describe()}; {out['streamed_gib_per_step']:.2f} GiB streamed per step")
    for s in out["sections"]:
        meas = "n/a" if s["measured_peak_gib"] is None else f"{s['measured_peak_gib']:.2f} GiB"
        print(f"section {s['section']}: {s['history_tokens']} history tokens, {s['dit_tokens']} DiT tokens; "
              f"peak planned {s['planned_peak_gib']:.2f} GiB, measured {meas} (max allocated, cap {args.cap_gib:g} GiB)")
    if cuda:
        print(f"max reserved {out['max_reserved_gib']:.2f} GiB; everything-resident peak {out['resident_peak_gib']:.2f} GiB")
    ratio = out["s_per_step_streamed"] / out["s_per_step_resident"]
    print(f"s/step: streamed {out['s_per_step_streamed']:.3f}, resident {out['s_per_step_resident']:.3f} "
          f"(streamed/resident = {ratio:.2f})")
    print(f"streamed and resident outputs identical: {same} (max |diff| {diff:.3g}, finite {finite})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
