"""What the device will hold for a request, as lines for the page: history tokens, LoRA bytes, the memory plan.

The plan is traced on the ``meta`` device in the caller's thread and cached (seconds for the large
presets); it is advice, so a plan that fails leaves a line naming the device instead. No torch at import
time: the page imports this, and the planner loads only when a plan is drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from framepack_history.config.loras import parse_arg
from framepack_history.config.presets import Preset, load_preset
from framepack_history.device import torch_dtype
from framepack_history.errors import InputError
from framepack_history.generation.video import MAX_CONTINUE_SECONDS, video_frames
from framepack_history.lora.files import adapter_numel, locate

log = logging.getLogger(__name__)


def plan_lines(preset_name: str, encoder_rate: str | None, seconds: float, history_tokens: int | None = None,
               history_mode: str | None = None, size: tuple[int, int] | None = None, max_tokens: int | None = None,
               merge: str | None = None, loras: tuple[str, ...] = (), continue_video: str | None = None) -> list[str]:
    """What the device will hold: history tokens now, for the whole request (at ``size``, its bucket), and the memory plan.

    ``max_tokens``/``merge``: the request's history cap and its rule (None = the preset's); ``loras``: the
    LoRA files (names in ``loras/`` or paths) whose adapters stay resident beside the DiT; ``continue_video``:
    the video a request continues (its encode is planned chunk by chunk, for the frames it holds).
    """
    now = [f"history tokens now: **{history_tokens}**"] if history_tokens is not None else []
    # the LoRA files are read each time (a file replaced under its name changes the plan); the rest is cached
    preset = load_preset(preset_name)
    names = tuple(loras) or _preset_loras(preset)
    adapters = lora_bytes(names, preset.hardware.dtype)
    frames = continued_frames(continue_video, preset.video.fps) if continue_video else 0
    return now + list(_plan_lines(preset_name, encoder_rate, float(seconds), history_mode, size, max_tokens, merge,
                                  len(names), adapters, frames))


def continued_frames(path: str, fps: int) -> int:
    """Frames a continued video gives its history, from the file's duration (the most a start reads if unreadable)."""
    most = int(MAX_CONTINUE_SECONDS * fps)
    try:
        return video_frames(path, fps, most)
    except InputError:  # gone or unreadable: the job's own start says so; plan the most it could read
        return most


def _preset_loras(preset: Preset) -> tuple[str, ...]:
    """The preset's own LoRA files: what a job takes when the request picks none."""
    return tuple(parse_arg(text, "loras")["name"] for text in preset.loras)


def lora_bytes(names: tuple[str, ...], dtype: str) -> int:
    """Bytes the LoRA adapters of ``names`` take on the DiT in ``dtype`` (read from the files' headers)."""
    import torch  # torch: kept off the page's import path

    size = torch.empty(0, dtype=torch_dtype(dtype)).element_size()
    return sum(adapter_numel(locate(n)) for n in names) * size


@functools.lru_cache(maxsize=64)
def _plan_lines(preset_name: str, encoder_rate: str | None, seconds: float, history_mode: str | None,
                size: tuple[int, int] | None = None, max_tokens: int | None = None, merge: str | None = None,
                loras: int = 0, adapters: int = 0, continue_frames: int = 0) -> tuple[str, ...]:
    """Cached: the memory planner traces models on the meta device (seconds for the large presets)."""
    from framepack_history.history.budget import history_budget  # torch: kept off the page's import path

    preset = load_preset(preset_name)
    h = preset.history
    h = dataclasses.replace(h, max_tokens=h.max_tokens if max_tokens is None else max_tokens, merge=merge or h.merge)
    preset = dataclasses.replace(preset, history=h)
    rate = encoder_rate or preset.model.encoder_rate
    mode = history_mode or preset.history.mode
    budget = history_budget(preset, seconds=max(seconds, 1.0))
    row = budget["rates"].get(rate) or next(iter(budget["rates"].values()))
    if mode == "encoder":
        cap = preset.history.max_tokens
        capped = f", capped at **{cap}** ({preset.history.merge})" if cap and cap < row["tokens"] else ""
        tokens = (f"at {seconds:g} s: **{row['tokens']}** history tokens (rate {rate}, "
                  f"{row['tokens_per_second']:.1f}/s, 1/{row['compression']:.0f} of the raw DiT tokens){capped}")
        lines = [tokens]
    else:
        lines = [f"history mode **{mode}**: no history tokens"]
    if adapters:
        lines.append(f"LoRAs: {loras}, {adapters / 2**20:.1f} MiB resident beside the DiT")
    hw = preset.hardware
    try:
        from framepack_history.memory.planner import plan  # torch: kept off the page's import path

        lines.append(plan(preset, seconds, history_mode=mode, rate=rate, size=size, adapter_bytes=adapters,
                          continue_frames=continue_frames).summary())
    except Exception:  # the plan is advice: its absence or failure must not break the page
        log.warning("no memory plan for %s", preset.name, exc_info=True)
        budget_gib = f"{hw.device_budget_gib:g} GiB" if hw.device_budget_gib else "whatever is free"
        lines.append(f"device: {hw.device} ({hw.dtype}), budget {budget_gib}")
    return tuple(lines)
