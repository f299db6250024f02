"""An image-to-video request end to end on one GPU under a 12 GiB cap, every component full-size.

Random weights in the real shapes (no checkpoint needed): the LLaMA-3-8B-shaped
text encoder quantised to nf4 by bitsandbytes when first called, CLIP-L, SigLIP
so400m, the HunyuanVideo VAE and the 13 B FramePack-F1 DiT, all parked in
pinned host memory. The request goes through the real ``Pipeline`` and
``MemoryManager`` (residency hooks, block streaming, per-request plan) with
the process capped by ``torch.cuda.set_per_process_memory_fraction``: the
start (text, image and VAE encode), then the last two sections of a 60 s
request after a synthesised history. Prints, per phase, the measured peak
(``max_memory_allocated``) against the planned one, the host RSS peak, seconds
per denoising step and the card's name; ``--json`` writes them to a file.

    python benchmarks/gpu_e2e.py                 # needs CUDA and bitsandbytes
    python benchmarks/gpu_e2e.py --tiny          # CPU dry run on the tiny test model (strict mode)
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import build_encoder
from framepack_history.memory.manager import MemoryManager
from framepack_history.memory.planner import Budget, GiB, plan
from framepack_history.memory.streaming import Residency

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "presets" / "tiny-hunyuan.toml"


def randomise(module: nn.Module, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Fill a (meta-built) module with random weights in (pinned) host memory, drawn on ``device`` (fast)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    pin = device.type == "cuda"
    for mname, m in module.named_modules():
        for pname, p in list(m._parameters.items()):
            if p is None:
                continue
            host = torch.empty(p.shape, dtype=dtype, pin_memory=pin)
            if p.dim() == 1:  # norm scales 1, biases 0: activations stay finite through deep stacks
                host.fill_(1.0 if pname == "weight" else 0.0)
            else:
                host.copy_(torch.empty(p.shape, dtype=dtype, device=device).normal_(0.0, 0.5 / p[0].numel() ** 0.5, generator=gen))
            m._parameters[pname] = nn.Parameter(host, requires_grad=False)
        for bname, b in list(m._buffers.items()):
            if b is not None and b.is_meta:
                m._buffers[bname] = torch.zeros(b.shape, dtype=b.dtype if not b.is_floating_point() else dtype)
    return module.eval().requires_grad_(False)


def nf4_llama(device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The LLaMA-3-8B-shaped text encoder with random weights, its linear layers quantised to nf4 on ``device``."""
    import bitsandbytes as bnb
    from transformers import LlamaConfig, LlamaModel

    from framepack_history.memory.components import read_config

    with torch.device("meta"):
        model = LlamaModel(LlamaConfig(**read_config("llava_llama3_8b_text_encoder.json")))
    gen = torch.Generator(device=device).manual_seed(1)
    for name, m in list(model.named_modules()):
        for cname, child in list(m.named_children()):
            if isinstance(child, nn.Linear):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, quant_type="nf4", device="meta")
                w = torch.empty(child.weight.shape, dtype=dtype, device=device).normal_(0, child.in_features ** -0.5, generator=gen)
                q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True).to(device)
                if child.bias is not None:
                    q.bias = nn.Parameter(torch.zeros(child.out_features, dtype=dtype, device=device), requires_grad=False)
                setattr(m, cname, q)
    rest = [n for n, p in model.named_parameters() if p.is_meta]
    for n in rest:  # embeddings and norms, straight to the device
        owner, _, leaf = n.rpartition(".")
        mod = model.get_submodule(owner)
        p = mod._parameters[leaf]
        t = torch.ones(p.shape, dtype=dtype, device=device) if p.dim() == 1 else \
            torch.empty(p.shape, dtype=dtype, device=device).normal_(0, 0.02, generator=gen)
        mod._parameters[leaf] = nn.Parameter(t, requires_grad=False)
    for m in model.modules():
        for bname, b in list(m._buffers.items()):
            if b is not None and b.is_meta:
                m._buffers[bname] = torch.zeros(b.shape, dtype=b.dtype, device=device)
    if hasattr(model, "rotary_emb"):  # inv_freq is computed at init; on meta it was lost
        cfg = model.config
        rope = type(model.rotary_emb)(config=cfg, device=device)
        model.rotary_emb = rope
    model.is_quantized = True
    return model.eval().requires_grad_(False)


def full_backbone(device: torch.device, dtype: torch.dtype):
    """Every component full-size with random weights; the text encoder is built (nf4) on first call."""
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import CLIPTextConfig, CLIPTextModel, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from framepack_history.backbones.framepack_transformer import HistoryFramepackTransformer3DModel
    from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone, _byte_tokenizer
    from framepack_history.memory.components import HUNYUAN_TEMPLATE_TOKENS, read_config

    with torch.device("meta"):
        dit = HistoryFramepackTransformer3DModel.from_config(read_config("framepack_f1_transformer.json"))
        vae = AutoencoderKLHunyuanVideo.from_config(read_config("hunyuan_video_vae.json"))
        clip = CLIPTextModel(CLIPTextConfig(**read_config("clip_l_text_encoder.json")))
        siglip_cfg = read_config("siglip_so400m_image_encoder.json")
        siglip = SiglipVisionModel(SiglipVisionConfig(**siglip_cfg))
    parts = [randomise(m, device, dtype, seed) for seed, m in enumerate((dit, vae, clip, siglip))]
    tok = _byte_tokenizer(("<|begin_of_text|>", "<|end_of_text|>"), add_eos=False)
    tok2 = _byte_tokenizer(("<|startoftext|>", "<|endoftext|>"), add_eos=True)
    size = siglip_cfg["image_size"]
    fe = SiglipImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    bb = HunyuanFramepackBackbone(parts[0], parts[1], None, tok, parts[2], tok2, parts[3], fe,
                                  prompt_template={"template": "{}", "crop_start": HUNYUAN_TEMPLATE_TOKENS},
                                  device=device, dtype=dtype, offload=True)
    bb.loaders["text_encoder"] = lambda: nf4_llama(device, dtype)
    return bb


def tiny_backbone(preset):
    """The tiny test model; its text encoder dropped and rebuilt through a loader like the nf4 one."""
    from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone

    bb = HunyuanFramepackBackbone.tiny(seed=preset.model.seed, **preset.model.config)
    template = copy.deepcopy(bb.text_encoder)
    bb.loaders["text_encoder"] = lambda: copy.deepcopy(template)
    bb.text_encoder = None
    return bb


class Measured:
    """Memory hooks around the manager's: the measured device peak of every phase (``max_memory_allocated``)."""

    def __init__(self, manager: MemoryManager, device: torch.device) -> None:
        self.manager, self.device, self.rows = manager, device, []

    def __getattr__(self, name: str):
        return getattr(self.manager, name)

    @contextmanager
    def phase(self, name: str, section: int | None = None):
        with self.manager.phase(name, section):
            cuda = self.device.type == "cuda"
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            yield
            peak = torch.cuda.max_memory_allocated() if cuda else self.manager.residency.resident_bytes()
            self.rows.append((name, section, peak))


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny test model on the CPU, in strict mode")
    ap.add_argument("--cap-gib", type=float, default=12.0, help="device memory cap (set_per_process_memory_fraction)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps per section (the preset's 25 take longer)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    from framepack_history.generation.pipeline import Pipeline

    if args.tiny:
        preset = load_preset(TINY)
        preset.model.config.update({"num_layers": 2, "num_single_layers": 3})
        device, dtype = torch.device("cpu"), torch.float32
        bb = tiny_backbone(preset)
        roomy = plan(preset, args.seconds, budget=Budget(GiB, GiB, "cpu", "tiny"), text_encoder_quantization="nf4")
        blocks = sum(p.numel() * 4 for b in (*bb.transformer.transformer_blocks, *bb.transformer.single_transformer_blocks)
                     for p in b.parameters())
        budget = Budget(int((roomy.device_peak - blocks // 2) / 0.96), GiB, "cpu", "tiny")
        card = "cpu (dry run)"
    else:
        if not torch.cuda.is_available():
            print("needs CUDA (or --tiny)", file=sys.stderr)
            return 2
        preset = load_preset("rtx4070-12gb")
        device, dtype = torch.device("cuda"), torch.bfloat16
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GiB / total))
        budget = Budget(int(preset.hardware.device_budget_gib * GiB), int(preset.hardware.host_budget_gib * GiB), "cuda", "preset")
        card = torch.cuda.get_device_name(0)
        t0 = time.perf_counter()
        bb = full_backbone(device, dtype)
        print(f"built random full-size components in {time.perf_counter() - t0:.0f} s; host RSS {rss_gib():.1f} GiB")
    preset.sampling.steps = args.steps
    args.seconds = min(args.seconds, preset.video.max_seconds)
    p = plan(preset, args.seconds, history_mode="encoder", budget=budget, text_encoder_quantization="nf4")
    ledger = Residency(device)
    if args.tiny:  # the DiT starts in (simulated) host memory, as the full-size one sits in pinned memory
        for t in (*bb.transformer.parameters(), *bb.transformer.buffers()):
            ledger.mark_host(t)
    manager = MemoryManager(bb, p, strict=args.tiny, residency=ledger)
    hooks = Measured(manager, device)
    encoder = build_encoder(preset.model, bb)
    pipe = Pipeline(bb, encoder, preset, memory=hooks)

    v = preset.video
    rng = np.random.default_rng(0)
    image = (rng.random((v.height, v.width, 3)) * 255).astype(np.uint8)
    img_path = Path("/tmp/gpu_e2e_start.png")
    from PIL import Image

    Image.fromarray(image).save(img_path)
    req = GenerationRequest(prompt="a red fox runs through snow", seconds=args.seconds, seed=0, image=str(img_path),
                            history_mode="encoder")
    error, done, steps, start_s = "", [], [], None
    try:
        start_s = run_request(pipe, bb, req, v, done, steps)
    except torch.OutOfMemoryError as e:  # print what was measured up to here, and where the plan fell short
        error = f"out of memory in {manager.failed_phase}: {str(e).splitlines()[0][:200]}"
    report(args, card, budget, manager, hooks, done, steps, start_s, device, error)
    return 1 if error else 0


def run_request(pipe, bb, req: GenerationRequest, v, done: list, steps: list[float]) -> float:
    """The start (text, image and VAE encode), then the last two sections after a synthesised history."""
    from framepack_history.generation.pipeline import SectionDone

    t0 = time.perf_counter()
    gen, _ = pipe.start(req)  # text, image and VAE encode through the manager
    start_s = time.perf_counter() - t0
    # Synthesised history: the sections before the last two, as random latents through the history encoder.
    geo = bb.geometry
    t = geo.latent_frames(v.section_frames)
    h, w = v.height // geo.spatial_scale, v.width // geo.spatial_scale
    skip = gen.total_sections - 2
    for _ in range(skip):
        gen.history.append(torch.randn(1, geo.latent_channels, t, h, w))
    gen.next_section = skip
    last = [time.perf_counter()]

    def on_step(i: int, info: dict) -> None:
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now

    for ev in pipe.run(req, on_step=on_step, resume=gen):
        if isinstance(ev, SectionDone):
            done.append(ev)
            last[0] = time.perf_counter()
    return start_s


def report(args, card: str, budget: Budget, manager: MemoryManager, hooks: Measured, done: list, steps: list[float],
           start_s: float | None, device: torch.device, error: str) -> None:
    """Per phase, the measured peak against the planned one; the step time; ``--json``."""
    planned = {(r.phase, r.section): r.device_peak_bytes for r in manager.plan}
    rows = []
    for name, section, peak in hooks.rows:
        want = planned.get((name, section)) or max((r.device_peak_bytes for r in manager.plan if r.phase == name), default=0)
        rows.append({"phase": name, "section": section, "planned_gib": want / GiB, "measured_gib": peak / GiB})
    out = {"card": card, "cap_gib": args.cap_gib, "budget_gib": budget.device_bytes / GiB, "strategy": manager.plan.strategy.describe(),
           "text_encoder": manager.plan.strategy.text_encoder, "vae_tiling": manager.plan.strategy.vae_tiling,
           "history_tokens": done[-1].history_tokens if done else 0, "start_s": start_s,
           "s_per_step": float(np.median(steps)) if steps else None, "host_rss_peak_gib": rss_gib(),
           "sections": [e.index for e in done], "phases": rows, "changes": manager.changes, "error": error}
    print(f"{card}: {out['strategy']}; text encoder {out['text_encoder']}; vae {'tiled' if out['vae_tiling'] else 'untiled'}")
    unit, u = (GiB, "G") if device.type == "cuda" else (GiB / 1024, "M")  # the tiny model in MiB
    print(f"{'phase':<13}{'sec':>5}{'planned':>10}{'measured':>10}")
    for r in rows:
        sec = "" if r["section"] is None else r["section"]
        print(f"{r['phase']:<13}{sec:>5}{r['planned_gib'] * GiB / unit:>9.2f}{u}{r['measured_gib'] * GiB / unit:>9.2f}{u}")
    label = "measured" if device.type == "cuda" else "weights on the simulated device (ledger)"
    print(f"({label}); host RSS peak {out['host_rss_peak_gib']:.2f} GiB; "
          f"{out['s_per_step'] or 0:.3f} s/step; sections {out['sections']}; history tokens {out['history_tokens']}")
    if error:
        print(error)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
