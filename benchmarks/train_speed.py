"""Where a toy training step's time goes, per stage, on this machine's CPU.

Builds a stage exactly as ``train`` does (``training/stages.py::run_stage``: preset, backbone, encoder,
module, task, the accelerate-prepared optimizer and EMA) from a config plus overrides, then times each
part of the shared loop's step separately for ``--steps`` steps after ``--warmup``:

  data      the next raw batch (latent-cache read or toy-world rendering, collate)
  batch     ``task.make_batch`` (split, noise, masks, captions, text embeddings)
  forward   the module's forward (encoder + DiT + loss)
  backward  ``accelerator.backward``
  optim     grad clipping, AdamW step, zero_grad, the LR scheduler
  ema       the EMA update
  sync      the loop's ``float(loss)`` and ``accelerator.reduce``

Variants are alternated round by round (``--rounds``), so two variants see the same background load;
the report gives each part's median over rounds and each variant's total against the first.

    python benchmarks/train_speed.py --config toy_memory --variants threads1,threads2 --rounds 3
    python benchmarks/train_speed.py --config toy_stage1 --variants fp32,bf16
    python benchmarks/train_speed.py --render 64      # toy-world clips: render vs cache read, per clip

A variant is ``threadsN`` (torch intra-op threads; 2 if not given), plus ``+bf16`` for CPU autocast
around the forward (``threads1+bf16``) ``+batchN`` for another batch size (``threads1+batch32``) or ``+cl`` for channels-last (``channels_last_3d``)
convolution weights, which makes oneDNN run the convolutions channels-last (``train`` on the CPU does that; without
``+cl`` the weights are contiguous, as before). Weights are random (``--model.weights '""'``) unless an override names some: speed does not
depend on them. No file is written outside ``--out`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from framepack_history.backbones.toy import ToyVAE  # noqa: E402
from framepack_history.training import common  # noqa: E402
from framepack_history.training import stage1_frame_query as s1  # noqa: E402
from framepack_history.training import stage2_autoregressive as s2  # noqa: E402
from framepack_history.training.data import (  # noqa: E402
    LatentCacheDataset, build_latent_cache, step_batches, toyworld_dataset)
from framepack_history.training.modeling import (  # noqa: E402
    build_backbone, build_encoder, prepare_transformer, training_preset)
from framepack_history.training.settings import DataConfig, TrainConfig, load_config, parse_overrides  # noqa: E402
from framepack_history.training.stages import training_dataset  # noqa: E402

PARTS = ("data", "batch", "forward", "backward", "optim", "ema", "sync")
CONFIGS = Path(__file__).resolve().parent.parent / "framepack_history" / "training" / "configs"


def build(config: str, overrides: dict, out: Path):
    """The stage's task, prepared module, optimizer, scheduler, EMA, trained params and batch stream."""

    path = CONFIGS / f"{config}.toml" if not config.endswith(".toml") else Path(config)
    over = {"out": str(out / "run"), "model": {"weights": "", "encoder": ""}, "save_every": 10**9}
    cfg = load_config(TrainConfig, path, {**over, **overrides})
    if cfg.data.kind == "cache" and not Path(cfg.data.root).is_dir():
        # the memory legs read the canvas leg's cache: profile on a small toy-world cache of the same clips
        cfg.data.kind, cfg.data.frames, cfg.data.num_videos = "toyworld", 96, 256
    if cfg.data.kind == "toyworld" and cfg.data.cache:
        # a small cache of the same clips under --out: the config's own cache would get this run's fingerprint
        # (random weights), which the real run would then refuse
        cfg.data.cache, cfg.data.num_videos = str(out / "cache"), min(cfg.data.num_videos, 512)
    accelerator = common.make_accelerator(cfg)
    preset = training_preset(cfg)
    backbone = build_backbone(cfg, preset.model, accelerator.device)
    encoder = build_encoder(cfg, preset.model, backbone)
    prepare_transformer(cfg, backbone)
    encoder.train().requires_grad_(True)
    backbone.patch_embedding().requires_grad_(True)
    mod_cls, task_cls = ((s1.FrameQueryModule, s1.Stage1Task) if cfg.stage == "stage1"
                         else (s2.NextSectionModule, s2.Stage2Task))
    module = mod_cls(backbone, encoder, cfg)
    task = task_cls(cfg, module, preset.video.fps)
    task.preset = preset
    dataset = training_dataset(cfg, preset, backbone, accelerator)
    assert isinstance(dataset, LatentCacheDataset) or not cfg.data.cache
    module, optimizer, scheduler, state, ema = common._prepare(cfg, accelerator, task, False)
    params = [p for g in task.param_groups() for p in g["params"]]

    def batches(start: int, size: int = 0):
        return step_batches(dataset, size or cfg.batch_size, cfg.seed, 1, 10**7, 0, 1)(start, 0)

    return cfg, accelerator, task, module, optimizer, scheduler, ema, params, batches


def timed_steps(env, start: int, n: int, autocast: bool, batch: int = 0) -> dict[str, list[float]]:
    """Per part, the seconds of each of ``n`` steps from step ``start``: the loop's ``_step`` taken apart."""
    cfg, accelerator, task, module, optimizer, scheduler, ema, params, batches = env
    stream = iter(batches(start, batch))
    out: dict[str, list[float]] = {p: [] for p in PARTS}
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    module.train()
    for step in range(start, start + n):
        t = [time.perf_counter()]
        items = next(stream)
        t.append(time.perf_counter())
        batch = task.make_batch(items, common.step_generator(cfg.seed, step))
        t.append(time.perf_counter())
        with ctx():
            loss = module(batch)["loss"]
        t.append(time.perf_counter())
        accelerator.backward(loss)
        t.append(time.perf_counter())
        accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        t.append(time.perf_counter())
        if ema is not None:
            ema.update(accelerator.unwrap_model(module))
        t.append(time.perf_counter())
        float(accelerator.reduce(torch.tensor(float(loss.detach())), reduction="mean"))
        t.append(time.perf_counter())
        for i, p in enumerate(PARTS):
            out[p].append(t[i + 1] - t[i])
    return out


def render_costs(n: int) -> None:
    """Per clip: rendering a 96-frame toy-world clip, encoding it, and reading it back from a cache shard."""

    ds = toyworld_dataset(DataConfig(frames=96, num_videos=n), 16, 16, 4)
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    render = (time.perf_counter() - t0) / n
    vae = ToyVAE(latent_channels=12, spatial_scale=2, kind="space_to_depth")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_latent_cache(ds, tmp, vae.encode,
                           {"bench": n}, progress=False)
        build = (time.perf_counter() - t0) / n
        cache = LatentCacheDataset(tmp)
        t0 = time.perf_counter()
        for i in range(n):
            cache[i]
        read = (time.perf_counter() - t0) / n
        size = sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors")) / n
    print(f"per 96-frame clip: render {render * 1e3:.1f} ms, render+encode+write {build * 1e3:.1f} ms, "
          f"cache read {read * 1e3:.2f} ms, {size / 1e3:.0f} kB on disk")


def parse_variant(v: str) -> tuple[int, bool, int, bool]:
    """``threads1``, ``threads2+bf16``, ``threads1+batch32``, ``threads1+cl``: torch threads, bf16 autocast,
    batch size, channels-last conv weights."""
    parts = v.split("+")
    threads = next((int(p[7:]) for p in parts if p.startswith("threads")), 2)
    batch = next((int(p[5:]) for p in parts if p.startswith("batch")), 0)
    return threads, "bf16" in parts, batch, "cl" in parts


def set_variant(env, v: str) -> tuple[bool, int]:
    """Apply a variant's threads and memory format to the module; its autocast flag and batch size."""
    threads, bf16, batch, cl = parse_variant(v)
    torch.set_num_threads(threads)
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    with torch.no_grad():
        for p in env[3].parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=fmt)
    return bf16, batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="toy_memory", help="a config name in training/configs or a .toml path")
    ap.add_argument("--variants", default="threads2", help="comma-separated: threadsN, bf16, fp32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--render", type=int, default=0, help="only time rendering/caching N toy-world clips")
    ap.add_argument("--ops", type=int, default=0, help="also print torch.profiler's top N ops over --steps steps")
    ap.add_argument("--out", default="")
    args, rest = ap.parse_known_args()
    if args.render:
        render_costs(args.render)
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="train_speed_"))
    env = build(args.config, parse_overrides(rest), out)
    variants = args.variants.split(",")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    step = 0
    for r in range(args.rounds):
        for v in variants:
            bf16, batch = set_variant(env, v)
            timed_steps(env, step, args.warmup, bf16, batch)
            step += args.warmup
            res = timed_steps(env, step, args.steps, bf16, batch)
            step += args.steps
            runs[v].append({p: statistics.mean(res[p]) for p in PARTS})
    if args.ops:
        from torch.profiler import ProfilerActivity, profile  # torch.profiler: only when --ops asks for it

        bf16, batch = set_variant(env, variants[0])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed_steps(env, step, args.steps, bf16, batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))
    print(f"{args.config} {' '.join(rest)}: ms per step, median over {args.rounds} rounds of {args.steps} steps")
    print(f"{'variant':<10}" + "".join(f"{p:>9}" for p in PARTS) + f"{'total':>9}{'ratio':>7}")
    base = None
    for v in variants:
        med = {p: statistics.median(r[p] for r in runs[v]) * 1e3 for p in PARTS}
        total = statistics.median(sum(r.values()) for r in runs[v]) * 1e3
        base = base or total
        print(f"{v:<10}" + "".join(f"{med[p]:9.1f}" for p in PARTS) + f"{total:9.1f}{total / base:7.2f}")


if __name__ == "__main__":
    main()
