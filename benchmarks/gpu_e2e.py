"""Requests end to end on one GPU under a 12 GiB cap, every component full-size, against their plans.

Random weights in the real shapes (no checkpoint needed): the LLaMA-3-8B-shaped
text encoder quantised to nf4 by bitsandbytes when first called, CLIP-L, SigLIP
so400m, the HunyuanVideo VAE and the 13 B FramePack-F1 DiT, all parked in
pinned host memory. The request goes through the real ``Pipeline`` and
``MemoryManager`` (residency hooks, block streaming, per-request plan) with
the process capped by ``torch.cuda.set_per_process_memory_fraction``: the
start (text, image and VAE encode), then the last two sections of a 60 s
request after a synthesised history.

Scenarios, in one process on one set of weights (``--scenarios``):
``i2v`` (that image-to-video request, step cache on), ``cache-off`` (its last
section again with the cache off), ``continue`` (continue-video of a 30 s
clip: read, encoded into the history, then one section) and ``lora-fp8`` (the
DiT's blocks cast to float8 in place and a rank-32 LoRA on them; last, since
the cast stays). Prints per scenario and phase the measured peak
(``max_memory_allocated``, and ``max_memory_reserved``) against the planned
row, seconds per step, the bytes the block streamer copied per computed and
per skipped step (the step cache's skips), the host RSS peak, and what the
run saw of the planner's CUDA allowance; ``--json`` writes them after every
scenario, so a run stopped by a time limit keeps what it measured.

    python benchmarks/gpu_e2e.py                 # needs CUDA and bitsandbytes
    python benchmarks/gpu_e2e.py --tiny          # CPU dry run on the tiny test model (strict mode)
    python benchmarks/gpu_e2e.py --scenarios i2v,cache-off --json e2e.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framepack_history.backbones.base import transformer_blocks
from framepack_history.backbones.speed import apply_speed
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation import step_cache
from framepack_history.generation.loading import build_encoder
from framepack_history.memory.budget import CUDA_ALLOWANCE, Budget, GiB
from framepack_history.memory.manager import MemoryManager
from framepack_history.memory.planner import plan
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
    """Memory hooks around the manager's: the measured device peak of every phase (``max_memory_allocated``).

    On CUDA each row also keeps ``max_memory_reserved``: what the caching allocator held at the peak, so
    reserved less allocated is the fragmentation the planner's CUDA allowance keeps room for.
    """

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
            reserved = torch.cuda.max_memory_reserved() if cuda else peak
            self.rows.append((name, section, peak, reserved))


class StepProbe:
    """Per denoising step: seconds, bytes the block streamer copied, and whether the DiT ran all its blocks.

    A linear layer inside the second block runs only when the step cache did not skip the blocks after the
    first one (the block's own hooks run either way), so a step whose count did not move was skipped.
    """

    def __init__(self, backbone, device: torch.device) -> None:
        blocks = transformer_blocks(backbone.transformer)
        inner = next(m for m in blocks[1].modules() if isinstance(m, nn.Linear))
        self.device, self.calls, self.steps = device, 0, []
        self._handle = inner.register_forward_hook(self._count)
        self.streamer = None
        self._last = (0.0, 0, 0)

    def _count(self, *_: object) -> None:
        self.calls += 1

    def start(self, streamer) -> None:
        """Time and count from now, against ``streamer``'s copies (a section start or a scenario's)."""
        self.streamer = streamer
        self._last = (time.perf_counter(), streamer.copied_bytes, self.calls)

    def __call__(self, *_: object) -> None:  # on_step(info) or on_step(section, info)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now, copied = time.perf_counter(), self.streamer.copied_bytes
        t, b, c = self._last
        self.steps.append({"s": now - t, "copied_bytes": copied - b, "computed": self.calls > c})
        self._last = (now, copied, self.calls)

    def close(self) -> None:
        self._handle.remove()


@contextmanager
def cache_threshold(setting: str, value: float) -> Iterator[None]:
    """``setting``'s First Block Cache threshold set to ``value`` in this benchmark's process while it runs.

    Random weights make the cache's decisions meaningless for quality; a loose threshold makes some steps
    skip, so what a skipped step moves and costs is measured. The benchmark runs one request at a time on
    one thread, so the table is never read by anything else meanwhile. ``value`` 0 keeps the preset's.
    """
    table = step_cache.THRESHOLDS["hunyuan_framepack"]
    old = table[setting]
    table[setting] = value or old
    try:
        yield
    finally:
        table[setting] = old


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


def write_clip(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    """A smooth synthetic clip (a drifting colour gradient: small, fast to encode), frames made as they are written."""
    import imageio_ffmpeg

    n = round(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, output_params=["-preset", "ultrafast", "-crf", "28"])
    writer.send(None)
    for i in range(n):
        phase = 2 * np.pi * i / max(1, n)
        frame = np.stack([np.sin(xx / 37 + phase), np.cos(yy / 23 - phase), np.sin((xx + yy) / 53 + 2 * phase)], -1)
        writer.send(np.ascontiguousarray(((frame + 1) * 127.5).astype(np.uint8)))
    writer.close()
    return path


def write_lora(transformer: nn.Module, path: Path, rank: int, dtype: torch.dtype) -> tuple[Path, int]:
    """A random LoRA of every attention/MLP linear in the DiT's blocks, in the diffusers/peft key layout."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(7)
    sd: dict[str, torch.Tensor] = {}
    for name, m in transformer.named_modules():
        if isinstance(m, nn.Linear) and name.split(".", 2)[-1] in LORA_LAYERS and name.startswith(("transformer_blocks.",
                                                                                                  "single_transformer_blocks.")):
            sd[f"transformer.{name}.lora_A.weight"] = (torch.randn(rank, m.in_features, generator=gen) / m.in_features ** 0.5).to(dtype)
            sd[f"transformer.{name}.lora_B.weight"] = (torch.randn(m.out_features, rank, generator=gen) * 0.01).to(dtype)
    save_file(sd, str(path))
    return path, sum(t.numel() * t.element_size() for t in sd.values())


LORA_LAYERS = {"attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "proj_mlp", "proj_out", "ff.net.0.proj", "ff.net.2"}


class Bench:
    """One backbone shared by the scenarios; each scenario plans and runs through a memory manager of its own."""

    def __init__(self, args: argparse.Namespace, preset, bb, budget: Budget, device: torch.device, card: str) -> None:
        self.args, self.preset, self.bb, self.budget, self.device, self.card = args, preset, bb, budget, device, card
        self.manager: MemoryManager | None = None
        self.hooks: Measured | None = None
        self.pipe = None
        self.results: list[dict] = []
        v = preset.video
        rng = np.random.default_rng(0)
        self.image = Path("/tmp/gpu_e2e_start.png")
        from PIL import Image

        Image.fromarray((rng.random((v.height, v.width, 3)) * 255).astype(np.uint8)).save(self.image)
        self.probe = StepProbe(bb, device)

    def pipeline(self):
        """The pipeline and its manager (a new one after :meth:`release`, when the backbone's weights changed)."""
        from framepack_history.generation.pipeline import Pipeline

        if self.pipe is not None:
            return self.pipe
        p = plan(self.preset, self.args.seconds, history_mode="encoder", budget=self.budget, text_encoder_quantization="nf4")
        ledger = Residency(self.device)
        if self.args.tiny:  # the DiT starts in (simulated) host memory, as the full-size one sits in pinned memory
            for t in (*self.bb.transformer.parameters(), *self.bb.transformer.buffers()):
                ledger.mark_host(t)
        self.manager = MemoryManager(self.bb, p, strict=self.args.tiny, residency=ledger)
        self.hooks = Measured(self.manager, self.device)
        self.pipe = Pipeline(self.bb, build_encoder(self.preset.model, self.bb), self.preset, memory=self.hooks)
        return self.pipe

    def release(self) -> None:
        """The manager's hooks off and every weight back on the host (before the weights themselves change)."""
        if self.manager is not None:
            self.manager.unload()
            self.pipe = self.manager = self.hooks = None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def run(self, name: str, req: GenerationRequest, last: int, note: str) -> dict:
        """Start ``req``, synthesise the history before its last ``last`` sections, run those; record everything."""
        from framepack_history.generation.pipeline import SectionDone

        pipe, probe = self.pipeline(), self.probe
        first_row, first_step = len(self.hooks.rows), len(probe.steps)
        done, error, start_s = [], "", None
        t0 = time.perf_counter()
        try:
            with cache_threshold("fast", self.args.skip_threshold if req.cache == "fast" else 0):
                gen, _ = pipe.start(req)  # text, image / video and VAE encode through the manager
                start_s = time.perf_counter() - t0
                geo, v = self.bb.geometry, self.preset.video
                t = geo.latent_frames(v.section_frames)
                h, w = v.height // geo.spatial_scale, v.width // geo.spatial_scale
                skip = max(0, gen.total_sections - last)
                for _ in range(skip):  # the sections before: random latents through the history encoder
                    gen.history.append(torch.randn(1, geo.latent_channels, t, h, w))
                gen.next_section = skip
                probe.start(self.manager.streamer)
                for ev in pipe.run(req, on_step=probe, resume=gen):
                    if isinstance(ev, SectionDone):
                        done.append(ev)
                        probe.start(self.manager.streamer)  # the decode is not a step
        except torch.OutOfMemoryError as e:  # keep what was measured; say where the plan fell short
            error = f"out of memory in {self.manager.failed_phase}: {str(e).splitlines()[0][:200]}"
        except Exception as e:  # noqa: BLE001 - one scenario's failure must not hide the others' figures
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        total_s = time.perf_counter() - t0
        planned = {(r.phase, r.section): r for r in self.manager.plan}
        rows = []
        for phase, section, peak, reserved in self.hooks.rows[first_row:]:
            want = planned.get((phase, section))
            want_b = want.device_peak_bytes if want else max((r.device_peak_bytes for r in self.manager.plan if r.phase == phase),
                                                            default=0)
            rows.append({"phase": phase, "section": section, "planned_gib": want_b / GiB, "measured_gib": peak / GiB,
                         "reserved_gib": reserved / GiB})
        steps = probe.steps[first_step:]
        skipped = [s for s in steps if not s["computed"]]
        computed = [s for s in steps if s["computed"]]
        med = lambda xs: float(np.median(xs)) if xs else None
        out = {"scenario": name, "note": note, "seconds": req.seconds, "cache": req.cache or self.preset.sampling.cache,
               "weights": (getattr(self.bb, "speed", None) or {}).get("weights_dtype") or str(self.bb.dtype).split(".")[-1],
               "loras": [e.get("name") for e in req.loras or []], "strategy": self.manager.plan.strategy.describe(),
               "planned_peak_gib": self.manager.plan.device_peak / GiB, "usable_gib": self.budget.usable / GiB,
               "start_s": start_s, "total_s": total_s, "sections": [e.index for e in done],
               "history_tokens": done[-1].history_tokens if done else 0,
               "s_per_step": med([s["s"] for s in steps[1:] or steps]),
               "s_per_computed_step": med([s["s"] for s in computed]), "s_per_skipped_step": med([s["s"] for s in skipped]),
               "steps": len(steps), "skipped_steps": len(skipped),
               "bytes_per_computed_step": med([s["copied_bytes"] for s in computed]),
               "bytes_per_skipped_step": med([s["copied_bytes"] for s in skipped]),
               "host_rss_peak_gib": rss_gib(), "phases": rows, "changes": list(self.manager.changes), "error": error}
        self.results.append(out)
        print_scenario(out, self.device)
        return out


def print_scenario(r: dict, device: torch.device) -> None:
    unit, u = (GiB, "G") if device.type == "cuda" else (GiB / 1024, "M")  # the tiny model in MiB
    print(f"\n== {r['scenario']}: {r['note']}\n{r['strategy']}; weights {r['weights']}; cache {r['cache']}"
          + (f"; LoRAs {r['loras']}" if r["loras"] else ""))
    print(f"{'phase':<13}{'sec':>5}{'planned':>10}{'measured':>10}{'reserved':>10}")
    for p in r["phases"]:
        sec = "" if p["section"] is None else p["section"]
        print(f"{p['phase']:<13}{sec:>5}{p['planned_gib'] * GiB / unit:>9.2f}{u}{p['measured_gib'] * GiB / unit:>9.2f}{u}"
              f"{p['reserved_gib'] * GiB / unit:>9.2f}{u}")
    mib = lambda b: "-" if b is None else f"{b / (1 << 20):.2f} MiB"
    print(f"{r['s_per_step'] or 0:.3f} s/step over {r['steps']} steps, {r['skipped_steps']} skipped; bytes copied per "
          f"computed step {mib(r['bytes_per_computed_step'])}, per skipped step {mib(r['bytes_per_skipped_step'])}; "
          f"host RSS peak {r['host_rss_peak_gib']:.2f} GiB; {r['total_s']:.0f} s"
          + (f"\nERROR {r['error']}" if r["error"] else ""), flush=True)


def allowance_seen(device: torch.device, results: list[dict]) -> dict:
    """What this run saw of the planner's CUDA allowance: the context (device memory outside PyTorch's allocator)
    and fragmentation (reserved less allocated at each phase's peak), beside the planned terms."""
    planned = {"context_mib": CUDA_ALLOWANCE.context / (1 << 20), "workspaces_mib": CUDA_ALLOWANCE.workspaces / (1 << 20),
               "fragmentation_mib": CUDA_ALLOWANCE.fragmentation / (1 << 20)}
    seen: dict = {"planned": planned}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info()
        # the whole device's use less what the allocator holds: the context and libraries (alone on the card)
        seen["context_mib"] = (total - free - torch.cuda.memory_reserved()) / (1 << 20)
        slack = [p["reserved_gib"] - p["measured_gib"] for r in results for p in r["phases"]]
        seen["fragmentation_mib"] = max(slack, default=0.0) * 1024
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny test model on the CPU, in strict mode")
    ap.add_argument("--cap-gib", type=float, default=12.0, help="device memory cap (set_per_process_memory_fraction)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the image-to-video request")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps per section (the preset's 25 take longer; "
                                                       "at least 3, so that a step between the first and last may skip)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, in order: {', '.join(SCENARIOS)}")
    ap.add_argument("--continue-seconds", type=float, help="length of the clip continue-video reads (default 30, --tiny 4)")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--skip-threshold", type=float, default=1.0,
                    help="First Block Cache threshold of the cache-on runs (random weights: loose, so steps skip; "
                         "0 = the preset's)")
    ap.add_argument("--json", type=Path, help="write the figures here (after every scenario)")
    args = ap.parse_args()
    args.continue_seconds = args.continue_seconds or (4.0 if args.tiny else 30.0)
    names = [n for n in args.scenarios.split(",") if n]
    if unknown := [n for n in names if n not in SCENARIOS]:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")

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
    v = preset.video
    section_s = v.section_frames / v.fps
    print(f"{card}: budget {budget.device_bytes / GiB:.2f} GiB, usable {budget.usable / GiB:.2f} GiB; "
          f"{budget.describe_allowance()}")
    bench = Bench(args, preset, bb, budget, device, card)
    image = str(bench.image)
    failed = False
    for name in names:
        req = {"prompt": "a red fox runs through snow", "seed": 0, "history_mode": "encoder"}
        if name == "i2v":
            r = bench.run(name, GenerationRequest(**req, seconds=args.seconds, image=image, cache="fast"), 2,
                          f"image-to-video, the start and the last two sections of {args.seconds:g} s, step cache on")
        elif name == "cache-off":
            r = bench.run(name, GenerationRequest(**req, seconds=args.seconds, image=image, cache="off"), 1,
                          f"the last section of {args.seconds:g} s again, step cache off")
        elif name == "continue":
            clip = write_clip(Path("/tmp/gpu_e2e_clip.mp4"), args.continue_seconds, v.fps, v.width, v.height)
            r = bench.run(name, GenerationRequest(**req, seconds=section_s, continue_video=str(clip), cache="fast"), 1,
                          f"continue-video of a {args.continue_seconds:g} s clip, then one section")
        else:  # lora-fp8: the blocks cast to float8 in place (this comes last: the cast is not undone)
            bench.release()  # the streamer's host copies are the bf16 ones: off the device first, then cast
            apply_speed(bb, dataclasses.replace(preset.hardware, weights_dtype="float8_e4m3fn"))
            path, nbytes = write_lora(bb.transformer, Path("/tmp/gpu_e2e_lora.safetensors"), args.lora_rank, dtype)
            r = bench.run(name, GenerationRequest(**req, seconds=args.seconds, image=image, cache="fast",
                                                  loras=[{"name": str(path), "weight": 1.0}]), 1,
                          f"float8 blocks and a rank-{args.lora_rank} LoRA ({nbytes / (1 << 20):.1f} MiB), "
                          f"the last section of {args.seconds:g} s")
        failed |= bool(r["error"])
        out = {"card": card, "cap_gib": args.cap_gib, "budget_gib": budget.device_bytes / GiB, "usable_gib": budget.usable / GiB,
               "allowance": allowance_seen(device, bench.results), "scenarios": bench.results}
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    bench.probe.close()
    seen = allowance_seen(device, bench.results)
    if device.type == "cuda":
        print(f"\nCUDA allowance planned: context {seen['planned']['context_mib']:.0f} MiB, fragmentation "
              f"{seen['planned']['fragmentation_mib']:.0f} MiB; seen: context {seen['context_mib']:.0f} MiB, "
              f"fragmentation (most reserved less allocated at a phase's peak) {seen['fragmentation_mib']:.0f} MiB")
    return 1 if failed else 0


SCENARIOS = ("i2v", "cache-off", "continue", "lora-fp8")

if __name__ == "__main__":
    raise SystemExit(main())
