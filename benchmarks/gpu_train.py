"""A few Stage II training steps at full size with random weights, against the training plan.

FramePack-F1's 13 B DiT is built from its config on ``meta`` and materialised on
the GPU with random weights in the config's ``weights_dtype`` (frozen); the
trainer's own code then injects the config's LoRA with gradient checkpointing
(``training.modeling.prepare_transformer``), builds a fresh history encoder
(``training.modeling.build_encoder``) and runs ``--steps`` Stage II steps
through ``NextSectionModule.forward`` (history encoder, F1's context, DiT,
flow loss) under the config's autocast, with backward and an AdamW step over
the LoRA and the encoder. The batch is one clip of the config's ``data.frames``
at the preset's size as random latents, cut before its last section (the
longest history a step sees: the peak), with random prompt and image
conditioning of the real shapes: the frozen text and image encoders and the
VAE are not built, so their rows of the plan are left out of the comparison.

A ``stream_blocks = true`` config (``--config 24gb``: ``hunyuan_stage2_1x24gb.toml``)
runs as the trainer runs it: the DiT's stem is materialised on the GPU, its blocks
in pinned host memory (block by block, through the GPU, so the random weights are
those of the resident run), the LoRA is injected, and
``training.modeling.stream_frozen_blocks`` streams every frozen block through the
card in the forward and again in the checkpointed recompute; after each backward
the streamer releases the first block, as ``StageTask.after_backward`` does. The
run then also reports the bytes copied to the device per step and the pinned host
bytes of the blocks.

Prints seconds per step (the first, which includes warm-up, apart) and
``torch.cuda.max_memory_allocated`` against the rows of ``plan_training`` this
run holds (the DiT, the LoRA and the encoder with their optimiser state, the
activations, the batch), and the plan's compute estimate per step.

    python benchmarks/gpu_train.py                    # needs CUDA: hunyuan_stage2.toml, the 80 GB config
    python benchmarks/gpu_train.py --config 24gb      # the 1x24 GB config, frozen blocks streamed from the host
    python benchmarks/gpu_train.py --steps 5 --json train.json
    python benchmarks/gpu_train.py --tiny [--config 24gb]  # CPU dry run on the tiny test model (streamed: a simulated device)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framepack_history.backbones.base import Conditioning
from framepack_history.device import torch_dtype
from framepack_history.memory.components import meta_components, read_config
from framepack_history.memory.planner import GiB
from framepack_history.memory.streaming import block_placement
from framepack_history.training.common import logit_normal
from framepack_history.training.modeling import (
    build_encoder,
    param_groups,
    prepare_transformer,
    stream_frozen_blocks,
    training_preset,
)
from framepack_history.training.settings import TrainConfig, load_config
from framepack_history.training.stage2_autoregressive import NextSectionModule, section_latent_frames, split_points

try:  # the training memory planner; without it the run still reports what it measured
    from framepack_history.training.plan import CARDS, plan_training
except ImportError:
    plan_training, CARDS = None, ()

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "framepack_history" / "training" / "configs"
#: ``--config`` by name: the 80 GB config (everything resident) and the 1x24 GB one (blocks streamed)
CONFIGS = {"80gb": CONFIG_DIR / "hunyuan_stage2.toml", "24gb": CONFIG_DIR / "hunyuan_stage2_1x24gb.toml"}
CONFIG = CONFIGS["80gb"]
TINY = ROOT / "tests" / "presets" / "tiny-hunyuan.toml"
#: plan rows for the components this run does not build (the trainer keeps them to encode captions and frames)
NOT_BUILT = ("text encoder", "image encoder", "VAE", "data loader")


def materialise(module: nn.Module, device: torch.device, dtype: torch.dtype, seed: int = 0,
                on_device: Callable[[str], bool] | None = None) -> nn.Module:
    """A ``meta``-built module with random weights on ``device`` (norm scales 1 and biases 0, so deep stacks stay finite).

    ``on_device(name)`` False: that tensor is drawn on ``device`` (the same numbers either way) and
    moved to pinned host memory, one tensor at a time, so the host never waits on a CPU generator.
    """
    gen = torch.Generator(device=device).manual_seed(seed)

    def place(name: str, t: torch.Tensor) -> torch.Tensor:
        if on_device is None or on_device(name) or device.type != "cuda":
            return t
        return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)

    for prefix, m in module.named_modules():
        for name, p in list(m._parameters.items()):
            if p is None:
                continue
            if p.dim() == 1:
                t = torch.full(p.shape, 1.0 if name == "weight" else 0.0, dtype=dtype, device=device)
            else:
                t = torch.empty(p.shape, dtype=dtype, device=device).normal_(0.0, 0.5 / p[0].numel() ** 0.5, generator=gen)
            m._parameters[name] = nn.Parameter(place(f"{prefix}.{name}" if prefix else name, t), requires_grad=False)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_meta:
                t = torch.zeros(b.shape, dtype=b.dtype if not b.is_floating_point() else dtype, device=device)
                m._buffers[name] = place(f"{prefix}.{name}" if prefix else name, t)
    return module


def full_backbone(device: torch.device, dtype: torch.dtype, streamed: bool = False):
    """FramePack-F1's DiT full-size with random weights on ``device``; the VAE stays on ``meta`` (only its config is read).

    ``streamed``: only the stem on ``device``, the blocks in pinned host memory (as ``stream_blocks`` loads them).
    """
    from diffusers import AutoencoderKLHunyuanVideo

    from framepack_history.backbones.framepack_transformer import HistoryFramepackTransformer3DModel
    from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone

    with torch.device("meta"):
        dit = HistoryFramepackTransformer3DModel.from_config(read_config("framepack_f1_transformer.json"))
        vae = AutoencoderKLHunyuanVideo.from_config(read_config("hunyuan_video_vae.json"))
    dit = materialise(dit, device, dtype, on_device=block_placement(dit, ()) if streamed else None)
    return HunyuanFramepackBackbone(dit, vae, None, None, None, None, device=device, dtype=dtype, offload=True)


def tiny_backbone(preset):
    from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone

    return HunyuanFramepackBackbone.tiny(seed=preset.model.seed, **preset.model.config)


def config(args: argparse.Namespace) -> TrainConfig:
    """The config to time: its LoRA, checkpointing, precision and clip length; a fresh encoder (no Stage I folder)."""
    cfg = load_config(TrainConfig, config_path(args.config))
    cfg.model = {k: v for k, v in cfg.model.items() if k != "encoder"}
    if args.tiny:  # the same steps on the tiny model: float32 on the CPU, a small LoRA, a short clip
        cfg.preset, cfg.weights_dtype, cfg.mixed_precision, cfg.lora_rank = str(TINY), "float32", "no", 4
        cfg.model = {**cfg.model, "config": {"num_layers": 2, "num_single_layers": 3}}
        cfg.data.frames = 21
    return cfg


def config_path(value: str | Path) -> Path:
    """``--config``: a name of :data:`CONFIGS` or a config file."""
    return CONFIGS.get(str(value), Path(value))


def random_batch(cfg: TrainConfig, module: NextSectionModule, preset, comps, device: torch.device, seed: int) -> dict:
    """One clip of random latents cut before its last section, and random conditioning of the real shapes."""
    bb, geo, v = module.backbone, module.backbone.geometry, preset.video
    gen = torch.Generator().manual_seed(seed)
    t = geo.latent_frames(cfg.data.frames)
    h, w = v.height // geo.spatial_scale, v.width // geo.spatial_scale
    n = section_latent_frames(module, v.section_frames)
    splits = split_points(bb, t, n, max(1, cfg.stage2.min_history_frames))
    if not splits:
        raise SystemExit(f"data.frames {cfg.data.frames} gives {t} latent frames: too short for a section of {n}")
    b = cfg.batch_size
    x = torch.randn(b, geo.latent_channels, t, h, w, generator=gen)
    cond = {k: (torch.randn(c.shape, generator=gen) if c.is_floating_point() else torch.ones(c.shape, dtype=c.dtype))
            for k, c in comps.conditioning(cfg.image_condition).tensors.items()}
    cond = {k: c.expand(b, *c.shape[1:]).to(device=device, dtype=bb.dtype if c.is_floating_point() else c.dtype)
            for k, c in cond.items()}
    return {"latents": x.to(device), "track": None, "split": splits[-1], "section": n, "use_encoder": True,
            # F1 reads its own context (generation gives it no add-on window); other backbones the config's
            "window": 0 if bb.context_frames else min(cfg.stage2.window_frames, splits[-1]), "cap": 0,
            "guidance": float(preset.sampling.guidance) if bb.name == "hunyuan_framepack" else 1.0,
            "sigma": logit_normal(b, cfg.sigma_mean, cfg.sigma_std, gen).to(device),
            "noise": torch.randn(b, geo.latent_channels, n, h, w, generator=gen).to(device), "cond": Conditioning(cond)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny test model on the CPU")
    ap.add_argument("--config", default="80gb",
                    help="a Stage II training config: 80gb (default; hunyuan_stage2.toml), 24gb (hunyuan_stage2_1x24gb.toml, "
                         "its frozen blocks streamed from the host) or a path")
    ap.add_argument("--steps", type=int, default=0, help="training steps (default 3, --tiny 2)")
    ap.add_argument("--no-plan", action="store_true", help="skip the training plan (its trace takes a while)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    args.steps = args.steps or (2 if args.tiny else 3)
    args.config = config_path(args.config)
    if not args.config.is_file():
        ap.error(f"--config: {args.config} is neither {' nor '.join(CONFIGS)} nor a config file")
    cfg = config(args)
    if cfg.stage != "stage2":
        ap.error(f"{args.config} is a {cfg.stage!r} config; this times Stage II")
    if args.tiny:
        device, card = torch.device("cpu"), "cpu (dry run, tiny model)"
    else:
        if not torch.cuda.is_available():
            print("needs CUDA (or --tiny)", file=sys.stderr)
            return 2
        device, card = torch.device("cuda"), torch.cuda.get_device_name(0)
    preset = training_preset(cfg)
    dtype = torch_dtype(cfg.weights_dtype)
    comps = meta_components(preset)  # the conditioning's shapes
    t0 = time.perf_counter()
    bb = tiny_backbone(preset) if args.tiny else full_backbone(device, dtype, streamed=cfg.stream_blocks)
    prepare_transformer(cfg, bb)  # LoRA and gradient checkpointing, as the trainer does
    streamer = stream_frozen_blocks(cfg, bb)  # stream_blocks: every frozen block through the device, as the trainer does
    encoder = build_encoder(cfg, preset.model, bb)
    module = NextSectionModule(bb, encoder, cfg).train()
    optimizer = torch.optim.AdamW(param_groups(module, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = random_batch(cfg, module, preset, comps, device, cfg.seed)
    build_s = time.perf_counter() - t0
    trainable = sum(p.numel() for g in param_groups(module, cfg) for p in g["params"])
    print(f"{card}: built in {build_s:.0f} s; {trainable / 1e6:.1f} M trainable parameters (LoRA rank {cfg.lora_rank}, "
          f"encoder); clip of {batch['latents'].shape[2]} latents cut at {batch['split']}, section {batch['section']}"
          + (f"; {len(streamer.order)} blocks ({size(streamer.streamed_bytes)}) streamed from the host"
             if streamer is not None else ""))
    autocast = torch.autocast("cuda", dtype=torch_dtype(cfg.mixed_precision)) if (
        device.type == "cuda" and cfg.mixed_precision in ("bf16", "fp16")) else torch.autocast("cpu", enabled=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        if streamer is not None:
            torch.cuda.empty_cache()  # the blocks were drawn on the card: hand back the memory they passed through
        torch.cuda.reset_peak_memory_stats()
    times, losses, copied, error = [], [], [], ""
    try:
        for _ in range(args.steps):
            t = time.perf_counter()
            before = streamer.copied_bytes if streamer is not None else 0
            with autocast:
                loss = module(batch)["loss"]
            loss.backward()
            if streamer is not None:
                streamer.release()  # the first block, kept through its backward, leaves the device (after_backward)
                copied.append(streamer.copied_bytes - before)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            losses.append(float(loss.detach()))
            print(f"step {len(times)}: {times[-1]:.2f} s, loss {losses[-1]:.4f}", flush=True)
    except torch.OutOfMemoryError as e:
        error = f"out of memory: {str(e).splitlines()[0][:200]}"
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    reserved = torch.cuda.max_memory_reserved() if device.type == "cuda" else 0
    out = {"card": card, "config": str(args.config), "lora_rank": cfg.lora_rank, "trainable_params": trainable,
           "gradient_checkpointing": cfg.gradient_checkpointing, "mixed_precision": cfg.mixed_precision,
           "latent_frames": int(batch["latents"].shape[2]), "split": batch["split"], "build_s": build_s,
           "s_per_step": float(np.median(times[1:] or times)) if times else None, "first_step_s": times[0] if times else None,
           "losses": losses, "peak_gib": peak / GiB, "reserved_gib": reserved / GiB, "error": error,
           "streamed": streamer is not None,
           # host-to-device bytes of the frozen blocks per step: each block in the forward and again in the recompute
           "copied_bytes_per_step": int(np.median(copied)) if copied else None,
           "copied_gib_per_step": float(np.median(copied)) / GiB if copied else None,
           "streamed_block_bytes": streamer.streamed_bytes if streamer is not None else None,
           "streamed_block_gib": streamer.streamed_bytes / GiB if streamer is not None else None}
    out.update(planned(cfg, args, preset))
    report(out, device)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if error or not all(np.isfinite(losses)) else 0


def planned(cfg: TrainConfig, args: argparse.Namespace, preset) -> dict:
    """The training plan's rows this run holds, its total, and its compute estimate per step on an H100."""
    if plan_training is None or args.no_plan:
        return {"planned_gib": None, "plan_rows": [], "planned_s_per_step_h100": None}
    p = plan_training(cfg, config_name=args.config.stem)
    rows = [r for r in p.rows if not r.name.startswith(NOT_BUILT)]
    h100 = next((c for c in CARDS if c.gib == 80), None)
    # one micro-batch per step here (the config's grad_accum is the optimiser's business, not memory's)
    per_step = p.flops_per_sample * p.batch / (h100.tflops * 1e12 * 0.38) if h100 and not args.tiny else None
    return {"planned_gib": sum(r.device for r in rows) / GiB, "plan_total_gib": p.device_total / GiB,
            "plan_rows": [{"name": r.name, "gib": r.device / GiB} for r in rows], "planned_s_per_step_h100": per_step}


def size(nbytes: int) -> str:
    """``23.21 GiB`` (``0.47 MiB`` below a GiB: the tiny model's blocks)."""
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB else f"{nbytes / 2**20:.2f} MiB"


def report(out: dict, device: torch.device) -> None:
    unit = "GiB" if device.type == "cuda" else "GiB (CPU: not measured)"
    print(f"\n{out['card']}: {out['s_per_step'] or 0:.3f} s/step (first {out['first_step_s'] or 0:.2f} s), peak "
          f"{out['peak_gib']:.2f} {unit} (reserved {out['reserved_gib']:.2f})")
    if out["streamed"]:
        print(f"  streamed: {size(out['copied_bytes_per_step'] or 0)} copied to the device per step "
              f"({size(out['streamed_block_bytes'])} of frozen blocks in pinned host memory)")
    if out["planned_gib"] is not None:
        for r in out["plan_rows"]:
            print(f"  planned {r['name']:<28}{r['gib']:>8.2f} GiB")
        print(f"  planned for what this run holds: {out['planned_gib']:.2f} GiB (the whole plan with the frozen encoders: "
              f"{out['plan_total_gib']:.2f} GiB)"
              + (f"; planned compute per step on an H100: {out['planned_s_per_step_h100']:.1f} s"
                 if out["planned_s_per_step_h100"] else ""))
    else:
        print("  no training plan (--no-plan, or framepack_history.training.plan missing)")
    if out["error"]:
        print(f"ERROR {out['error']}")


if __name__ == "__main__":
    raise SystemExit(main())
