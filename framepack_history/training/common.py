"""Pieces every training stage shares.

* a TOML config file plus ``--key value`` overrides (see :mod:`.settings`);
* accelerate set-up (CPU, one or many GPUs; FSDP/DeepSpeed via
  ``accelerate config``);
* checkpoints with accelerate's ``save_state``: optimizer, scheduler, step
  and RNG state; the weights are written as safetensors, trainable
  parameters only, so a LoRA checkpoint of a 13B model stays small;
* a JSONL loss log, a loss-curve PNG and a progress bar.

Resuming reproduces an uninterrupted run exactly: every random draw of a
step (data order, noise, sigma, Omega) comes from a generator seeded by
``(seed, step, micro-batch, rank)``, never from a global RNG stream.
"""

from __future__ import annotations

"""SHA-256 over the trainable parameters in name order: equal on every rank when DDP is in sync."""
import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from framepack_history.errors import InputError
from framepack_history.training.settings import TrainConfig, find_path

CHECKPOINT_DIR = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"


# ------------------------------------------------------------------- logging
class LossLog:
    """Append-only JSONL log; a resumed run drops the lines past its step first."""

    def __init__(self, path: Path, resume_step: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def plot_losses(log_path: Path, png: Path, title: str = "") -> None:
    """Loss against step (raw and smoothed), log scale: one PNG next to the log."""
    import matplotlib  # matplotlib: only when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: only when a chart is drawn

    rows = read_log(log_path)
    if not rows:
        return
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    smooth, s = [], losses[0]
    for v in losses:
        s = 0.9 * s + 0.1 * v
        smooth.append(s)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    ax.plot(steps, smooth, lw=1.5, label="smoothed")
    if all(v > 0 for v in losses):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


# ------------------------------------------------------------ randomness
def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """A CPU generator that depends only on where we are in training (resume-safe)."""
    key = ((seed * 1_000_003 + step) * 1_009 + micro) * 10_007 + rank
    return torch.Generator().manual_seed(key % (2**63 - 1))


def logit_normal(n: int, mean: float, std: float, gen: torch.Generator) -> torch.Tensor:
    """``sigmoid(N(mean, std))`` samples, clamped away from 0 and 1."""
    return torch.sigmoid(torch.randn(n, generator=gen) * std + mean).clamp(1e-3, 1 - 1e-3)


# ---------------------------------------------------------------- the loop
class Task(Protocol):
    """What a stage gives the shared loop."""

    module: nn.Module  # forward(batch) -> {"loss": scalar tensor, other float stats}

    def param_groups(self) -> list[dict[str, Any]]: ...

    def make_batch(self, items: dict[str, Any], gen: torch.Generator) -> dict[str, Any]: ...

    def export(self, out: Path, module: nn.Module) -> None: ...


class TrainState:
    """The step counter, checkpointed with accelerate's custom-object mechanism."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class EMA:
    """Exponential moving average of the trainable parameters (fp32 shadows)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for n, p in module.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for n, p in module.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n].to(p.dtype))


def make_accelerator(cfg: TrainConfig):
    """An Accelerator for this config (launch settings come from ``accelerate launch``)."""
    from accelerate import Accelerator  # accelerate: only when training runs
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration  # accelerate: only when training runs

    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        raise InputError("--mixed_precision", f"must be no, bf16 or fp16 (got {cfg.mixed_precision!r})")
    # Window-mode steps of stage 2 never call the encoder: DDP must not wait for its gradients.
    find_unused = cfg.find_unused_parameters or (
        cfg.stage == "stage2" and cfg.stage2.p_window_mode > 0 and not cfg.stage2.freeze_encoder)
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        project_config=ProjectConfiguration(project_dir=str(cfg.out)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
    )


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    total = cfg.lr_total_steps or cfg.max_steps

    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * frac))
        return 1.0

    return fn


def checkpoints(out: Path) -> list[Path]:
    folder = out / CHECKPOINT_DIR
    return sorted(p for p in folder.glob("step_*") if p.is_dir()) if folder.is_dir() else []


def _register_weight_hooks(accelerator, ema: EMA | None) -> None:
    """Save/load trainable parameters only, as safetensors (plain DDP/CPU/one GPU)."""
    from safetensors.torch import load_file, save_file  # safetensors: only when tensors are read or written

    def save_hook(models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        if accelerator.is_main_process:
            module = accelerator.unwrap_model(models[0])
            tensors = {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}
            if ema is not None:
                tensors.update({f"ema::{n}": t.cpu().contiguous() for n, t in ema.shadow.items()})
            save_file(tensors, str(Path(output_dir) / TRAINABLE_FILE))
        weights.clear()  # accelerate must not write the full (frozen) state dict as well

    def load_hook(models: list[nn.Module], input_dir: str) -> None:
        module = accelerator.unwrap_model(models[0])
        data = load_file(str(Path(input_dir) / TRAINABLE_FILE))
        params = dict(module.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in data]
        if missing:
            raise RuntimeError(f"checkpoint {input_dir} lacks trainable parameters, e.g. {missing[:3]}")
        with torch.no_grad():
            for n, t in data.items():
                if n.startswith("ema::"):
                    if ema is not None:
                        ema.shadow[n[5:]].copy_(t)
                else:
                    params[n].copy_(t)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def run(cfg: TrainConfig, accelerator, task: Task, batches: Callable[[int, int], Any]) -> Path:
    """Train ``task`` to ``cfg.max_steps``, resuming when a checkpoint exists; export the result.

    ``batches(start_step, rank)`` yields collated raw batches, one per
    micro-step, in the order that only depends on the step.
    """
    from accelerate.utils import DistributedType  # accelerate: only when training runs
    from tqdm import tqdm  # tqdm: only for a progress bar on a terminal

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    native = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    module, optimizer, scheduler, state, ema = _prepare(cfg, accelerator, task, native)
    _resume(cfg, accelerator, out, state)
    log = LossLog(out / "loss.jsonl", state.step, accelerator.is_main_process)
    if accelerator.is_main_process:
        (out / "config.json").write_text(json.dumps(_asdict(cfg), indent=2))

    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=cfg.stage or "train", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    rank = accelerator.process_index
    stream = iter(batches(state.step, rank))
    # FSDP clips through the wrapped module's own parameters; elsewhere only the trained ones matter.
    params = list(module.parameters()) if native else [p for g in task.param_groups() for p in g["params"]]
    t0 = time.perf_counter()
    window: list[float] = []  # step losses since the last log row
    while state.step < cfg.max_steps:
        losses, stats = _step(cfg, accelerator, task, module, optimizer, params, stream, state.step, rank)
        scheduler.step()
        state.step += 1
        if ema is not None:
            ema.update(accelerator.unwrap_model(module))
        mean = torch.tensor(sum(losses) / len(losses), device=accelerator.device)
        mean = float(accelerator.reduce(mean, reduction="mean"))
        window.append(mean)
        if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
            log.write({"step": state.step, "loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0],
                       "time_s": round(time.perf_counter() - t0, 3), **stats})
            window = []
        bar.update(1)
        bar.set_postfix(loss=f"{mean:.4f}")
        if state.step % cfg.save_every == 0 or state.step == cfg.max_steps:
            save_checkpoint(accelerator, out, state.step, cfg.keep_checkpoints)
            if accelerator.is_main_process:
                plot_losses(out / "loss.jsonl", out / "loss.png", f"{cfg.stage} loss")
    bar.close()
    _export(cfg, accelerator, task, module, out, native, ema)
    return out


def adamw_kernel(native: bool) -> dict[str, bool]:
    """AdamW's fused kernel (the same update, one pass over all tensors) where the plain loop would run.

    Why: on the CPU ``torch.optim.AdamW`` defaults to a per-tensor Python loop; for the toy's ~100 small
    tensors that loop cost more than the whole update (benchmarks/train_speed.py). FSDP and DeepSpeed
    keep their own default.
    """
    return {} if native else {"fused": True}


def _prepare(cfg: TrainConfig, accelerator, task: Task, native: bool) -> tuple[nn.Module, Any, Any, TrainState, EMA | None]:
    """The prepared module and optimizer, the LR schedule, the step counter and EMA, registered for checkpoints."""
    optimizer = torch.optim.AdamW(task.param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay, **adamw_kernel(native))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    # Streamed frozen blocks live on the host: accelerate must not move the whole module to the device.
    placement = {"device_placement": [False, None]} if cfg.stream_blocks else {}
    module, optimizer = accelerator.prepare(task.module, optimizer, **placement)
    if hasattr(task, "after_prepare"):
        task.after_prepare(accelerator.unwrap_model(module))
    state = TrainState()
    ema = EMA(accelerator.unwrap_model(module), cfg.ema_decay) if cfg.ema_decay > 0 else None
    if ema is not None and native:
        raise InputError("--ema_decay", "EMA is supported with DDP/single-device runs only")
    # The scheduler is a registered object, not prepared: accelerate would step it once per process.
    accelerator.register_for_checkpointing(state, scheduler)
    if not native:
        _register_weight_hooks(accelerator, ema)
    return module, optimizer, scheduler, state, ema


def _resume(cfg: TrainConfig, accelerator, out: Path, state: TrainState) -> None:
    """Load the checkpoint ``cfg.resume`` names (``auto``: the newest in ``out``, if any) into the registered state."""
    resume = None
    if cfg.resume == "auto":
        found = checkpoints(out)
        resume = found[-1] if found else None
    elif cfg.resume:
        resume = find_path(cfg.resume)
    if resume is not None:
        accelerator.load_state(str(resume))
        accelerator.print(f"resumed from {resume} at step {state.step}")


def _step(cfg: TrainConfig, accelerator, task: Task, module: nn.Module, optimizer: Any, params: list, stream: Any,
          step: int, rank: int) -> tuple[list[float], dict[str, float]]:
    """One optimiser step over ``cfg.grad_accum`` micro-batches: their losses and the mean of the other outputs."""
    module.train()
    losses: list[float] = []
    stats: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        items = next(stream)
        gen = step_generator(cfg.seed, step, micro, rank)
        batch = task.make_batch(items, gen)
        with accelerator.accumulate(module):
            result = module(batch)
            loss = result["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}")
            accelerator.backward(loss)
            if hasattr(task, "after_backward"):
                task.after_backward()
            if accelerator.sync_gradients and cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        for k, v in result.items():
            if k != "loss":
                stats[k] = stats.get(k, 0.0) + float(v) / cfg.grad_accum
    return losses, stats


def _export(cfg: TrainConfig, accelerator, task: Task, module: nn.Module, out: Path, native: bool,
            ema: EMA | None) -> None:
    """Write the trained weights (the EMA's where kept) and the final loss plot, once every rank is done."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(module)
    if native:
        # Sharded weights: gather a full state dict (a collective: every rank calls it), export from it.
        state = accelerator.get_state_dict(module)
        if accelerator.is_main_process:
            task.export_state(out, state)
    else:
        if cfg.checksum_weights:
            write_checksum(out / "checksums" / f"rank{accelerator.process_index}.txt", unwrapped)
        if ema is not None:
            ema.copy_to(unwrapped)
        if accelerator.is_main_process:
            task.export(out, unwrapped)
    if accelerator.is_main_process:
        plot_losses(out / "loss.jsonl", out / "loss.png", f"{cfg.stage} loss")
    accelerator.wait_for_everyone()


def write_checksum(path: Path, module: nn.Module) -> str:
    h = hashlib.sha256()
    for n, p in sorted(module.named_parameters()):
        if p.requires_grad:
            h.update(n.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(h.hexdigest() + "\n")
    return h.hexdigest()


def save_checkpoint(accelerator, out: Path, step: int, keep: int) -> Path:
    """``save_state`` into ``out/checkpoints/step_N``; older ones beyond ``keep`` are removed."""
    path = out / CHECKPOINT_DIR / f"step_{step:07d}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and keep > 0:
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _asdict(cfg: Any) -> dict[str, Any]:

    return dataclasses.asdict(cfg)
