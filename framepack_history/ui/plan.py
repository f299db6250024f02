"""What the page says about a job before and while it runs: its memory plan, the preset's defaults for the
form, the choices of the LoRA and start-frame pickers, and the history-token cap's help."""

from __future__ import annotations

from typing import Any

import gradio as gr

from framepack_history.config.presets import START_FRAMES, Preset, load_preset
from framepack_history.errors import InputError
from framepack_history.jobs.admission import least_cap
from framepack_history.jobs.store import Job
from framepack_history.jobs.tools import ToolSpec
from framepack_history.jobs.plan_summary import plan_lines
from framepack_history.lora.files import available
from framepack_history.ui.context import PageContext
from framepack_history.ui.values import _num

LORA_SLOTS = 3  # LoRA pickers on the page (and lora_N arguments of the API)
KEYFRAME_SLOTS = 4  # keyframe rows on the page (image, time, prompt; Handlers.spec's keyframe_*_N)
START_FRAME_LABELS = {"noise": "noise", "black": "black", "white": "white", "green": "green screen",
                      "world": "the world's first view"}


class PlanInfo(PageContext):
    """Page events that describe, never act: the memory plan, and the form following the preset."""

    def plan_md(self, job: Job) -> str:
        """A queued or running job's plan, with the history tokens it holds so far."""
        if isinstance(job.spec, ToolSpec):  # a finishing tool loads no model
            return f"**{job.spec.tool}**: no model; ffmpeg and numpy on the CPU"
        r = job.spec.request
        size = (r.width, r.height) if r.width and r.height else None  # the request's resolution bucket
        loras = tuple(e["path"] if e.get("path") else e["name"] for e in r.loras or ())
        return self.studio.say(self._plan_md(job.spec.preset, job.spec.encoder_rate, r.seconds, job.progress.history_tokens,
                                             r.history_mode, size, r.max_history_tokens, r.history_merge, loras,
                                             r.continue_video))

    def preview_plan(self, preset: str, encoder_rate: str | None, seconds: Any, history: str | None = None,
                     max_tokens: Any = None, merge: str | None = None, *loras: Any) -> str:
        """The plan shown before a job starts (preset, rate, length, history mode, cap or LoRAs changed)."""
        try:
            secs = _num(seconds, "seconds") or 5.0
            cap = _num(max_tokens, "history-token cap", integer=True)
        except InputError as e:
            return f"{e.field}: {e.message}"
        names = tuple(str(n) for n in loras if n)
        return self.studio.say(self._plan_md(preset or self.default_preset, encoder_rate or None, secs, None, history or None,
                                             None, cap, merge or None, names))

    @staticmethod
    def _plan_md(preset: str, rate: str | None, seconds: float, tokens: int | None, mode: str | None,
                 size: tuple[int, int] | None = None, max_tokens: int | None = None, merge: str | None = None,
                 loras: tuple[str, ...] = (), continue_video: str | None = None) -> str:
        try:
            lines = plan_lines(preset, rate, seconds, tokens, mode, size, max_tokens, merge, loras, continue_video)
        except (InputError, OSError, ValueError) as e:
            return f"memory plan unavailable: {e}"
        return "\n".join(f"- {line}" for line in lines)

    def lora_refresh(self) -> tuple:
        """The LoRA pickers list what is in ``loras/`` now (files added while the page was open)."""
        choices = lora_choices()
        return tuple(gr.update(choices=choices) for _ in range(LORA_SLOTS))

    def preset_defaults(self, preset: str) -> tuple:
        """Advanced settings follow the preset: its sampling defaults and encoder rates; the end image its loop."""
        try:
            p = load_preset(preset or self.default_preset)
        except InputError as e:
            raise self._error(e) from None
        rates = [p.model.encoder_rate] if p.model.encoder else p.model.encoder_rates
        return (
            gr.update(value=p.sampling.steps), gr.update(value=p.sampling.guidance), gr.update(value=p.sampling.shift),
            gr.update(choices=rates, value=p.model.encoder_rate, visible=len(rates) > 1),
            gr.update(value=p.history.mode), gr.update(value=p.history.window_frames),
            gr.update(value=p.history.guidance),
            gr.update(maximum=p.video.max_seconds),
            start_frame_update(p.model.backbone),
            gr.update(value=p.history.max_tokens, info=cap_info(p)),
            gr.update(value=p.sampling.cache),
            gr.update(value=p.history.merge),
            *end_image_updates(p),
            *keyframe_updates(p),
        )


def lora_choices() -> list[str]:
    """LoRA files in the LoRA folder (``loras/``), for the page's pickers."""
    return available()


def start_frame_update(backbone: str) -> Any:
    """The start-frame picker for a backbone: its choices, its default, shown when there is a choice."""
    kinds = START_FRAMES.get(backbone, ())
    return gr.update(choices=[(START_FRAME_LABELS.get(k, k), k) for k in kinds], value=kinds[0] if kinds else None,
                     visible=len(kinds) > 1)


def end_image_updates(preset: Preset, strength: float | None = None) -> tuple[Any, Any]:
    """The end image and its strength slider: shown on the original model's loop; hidden ones are emptied,
    so a preset that refuses an end image is never sent one the user cannot see."""
    if preset.model.loop == "inverted":
        strength_update = gr.update(visible=True) if strength is None else gr.update(visible=True, value=strength)
        return gr.update(visible=True), strength_update
    return gr.update(visible=False, value=None), gr.update(visible=False, value=1.0)


def keyframes_allowed(preset: Preset) -> bool:
    """Whether the preset's model can reach a keyframe: the toy, or FramePack's original model's loop."""
    return preset.model.backbone == "toy" or preset.model.loop == "inverted"


def keyframe_updates(preset: Preset, rows: list[tuple[float, str]] | None = None) -> tuple[Any, ...]:
    """The keyframe list and its rows (image, time, prompt each): shown where the preset allows keyframes.

    Hidden rows are emptied, so a preset that refuses keyframes is never sent one the user cannot see; ``rows``
    (Reuse settings) fills times and prompts, never images.
    """
    shown = keyframes_allowed(preset)
    out: list[Any] = [gr.update(visible=shown)]
    for i in range(KEYFRAME_SLOTS):
        if rows is not None or not shown:
            t, text = rows[i] if rows is not None and i < len(rows) and shown else (None, "")
            out += [gr.update(value=None), gr.update(value="" if t is None else f"{t:g}"), gr.update(value=text)]
        else:
            out += [gr.update(), gr.update(), gr.update()]
    return tuple(out)


def cap_info(preset: Preset) -> str:
    """The history-token cap's help: what it does and the least a job of this preset may use."""
    try:
        least = f"at least {least_cap(preset)}, " if preset.history.mode == "encoder" or preset.model.encoder else ""
    except Exception:  # noqa: BLE001 - advice only: a preset whose configs cannot be read still gets the help
        least = ""
    return f"bounded history: older history coarser, recent in full detail ({least}0 = no cap)"
