"""The Generate section: the form and the job buttons (left), the stage (right), and the events between them."""

from __future__ import annotations

import random
from dataclasses import dataclass

import gradio as gr
from gradio.components import Component
from gradio.events import Dependency

from framepack_history.config.presets import (
    CACHE_SETTINGS,
    HISTORY_MERGES,
    HISTORY_MODES,
    MAX_HISTORY_GUIDANCE,
    START_FRAMES,
    Preset,
    load_preset,
)
from framepack_history.errors import InputError
from framepack_history.ui.handlers import Handlers
from framepack_history.ui.plan import (
    KEYFRAME_SLOTS,
    LORA_SLOTS,
    START_FRAME_LABELS,
    cap_info,
    keyframes_allowed,
    lora_choices,
)
from framepack_history.ui.tabs import PRIVATE
from framepack_history.ui.tabs.stage import Stage, build_stage

CACHE_NOTE = ("Step cache skips most of the model on steps where it barely changes: fewer passes, "
              "slightly softer detail (hands, fine texture); off = every step in full.")
KEYFRAME_HINT = ("The video shows each image at its time; at 0 s it is the start image. A prompt here is the storyboard's "
                 "entry from that time on (left empty, the prompt before it goes on). The toy and FramePack's original "
                 "model presets only.")
STORYBOARD_HINT = "A prompt, or a storyboard with times: `0s: camera pans right; 10s: camera holds, a red ball enters`"


@dataclass(frozen=True)
class Advanced:
    """The Advanced accordion: the settings a preset decides."""

    steps: gr.Number
    guidance: gr.Number
    shift: gr.Number
    rate: gr.Dropdown
    history: gr.Radio
    window: gr.Number
    history_guidance: gr.Number
    history_cap: gr.Number
    history_merge: gr.Radio
    cache: gr.Radio


@dataclass(frozen=True)
class Form:
    """What a job is asked to do: the left column's values, listed in the order each handler takes them."""

    prompt: gr.Textbox
    image: gr.Image
    video: gr.Video
    start_frame: gr.Dropdown
    seconds: gr.Slider
    seed: gr.Number
    preset: gr.Dropdown
    advanced: Advanced
    loras: tuple[tuple[gr.Dropdown, gr.Slider], ...]
    #: the end image and its strength: shown on presets whose loop can use them (FramePack's original model)
    end_image: gr.Image
    end_strength: gr.Slider
    #: the keyframe list (shown on presets that allow keyframes) and its rows: image, time, prompt each
    keyframes: gr.Accordion
    keyframe_rows: tuple[tuple[gr.Image, gr.Textbox, gr.Textbox], ...]
    #: memory controls (pin, forget, cut as text) and the finished job whose history the video starts with
    memory: gr.Textbox
    borrow: gr.Textbox

    @property
    def keyframe_values(self) -> list[Component]:
        """The rows' widgets, row by row: keyframe_image_1, keyframe_time_1, keyframe_prompt_1, ..."""
        return [c for row in self.keyframe_rows for c in row]

    @property
    def inputs(self) -> list[Component]:
        """Generate's values, in :meth:`Handlers.spec`'s order (the ``/generate`` API's too)."""
        a = self.advanced
        values = [self.prompt, self.image, self.video, self.seconds, self.seed, self.preset, a.steps, a.guidance, a.shift,
                  a.rate, a.history, a.window, a.history_guidance, self.start_frame, a.history_cap]
        values += [c for pair in self.loras for c in pair]  # lora_1, lora_weight_1, ...
        return values + [a.cache, a.history_merge, self.end_image, self.end_strength, *self.keyframe_values,
                         self.memory, self.borrow]

    @property
    def defaults(self) -> list[Component]:
        """What a preset decides, in :meth:`PlanInfo.preset_defaults`'s order."""
        a = self.advanced
        return [a.steps, a.guidance, a.shift, a.rate, a.history, a.window, a.history_guidance, self.seconds,
                self.start_frame, a.history_cap, a.cache, a.history_merge, self.end_image, self.end_strength,
                self.keyframes, *self.keyframe_values]

    @property
    def settings(self) -> list[Component]:
        """What Reuse settings fills, in :meth:`GalleryActions.reuse_settings`'s order."""
        a = self.advanced
        return [self.prompt, self.seconds, self.seed, self.preset, a.steps, a.guidance, a.shift, a.rate, a.history,
                a.window, a.history_guidance, self.start_frame, a.history_cap, a.history_merge, a.cache,
                self.end_image, self.end_strength, self.keyframes, *self.keyframe_values, self.memory, self.borrow]

    @property
    def lora_names(self) -> list[gr.Dropdown]:
        return [name for name, _ in self.loras]

    @property
    def plan_inputs(self) -> list[Component]:
        """What the plan depends on, in :meth:`PlanInfo.preview_plan`'s order."""
        a = self.advanced
        return [self.preset, a.rate, self.seconds, a.history, a.history_cap, a.history_merge, *self.lora_names]


@dataclass(frozen=True)
class JobButtons:
    """Under the form: Generate and Cancel, Edit storyboard, and Resume for jobs a restart left unfinished."""

    generate: gr.Button
    cancel: gr.Button
    steer_text: gr.Textbox
    steer: gr.Button
    interrupted_box: gr.Group
    interrupted: gr.Dropdown
    resume: gr.Button


def build_generate(demo: gr.Blocks, h: Handlers, choices: list[tuple[str, str]], default_preset: str, preset: Preset,
                   job_id: gr.State) -> tuple[Form, Stage]:
    """The Generate section; returns the form (Reuse settings fills it, the API reads it) and the stage."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            form = build_form(demo, h, choices, default_preset, preset)
            buttons = build_job_buttons()
        stage = build_stage(demo, h, job_id, default_preset, preset)
    wire_job_buttons(demo, h, form, buttons, stage)
    wire_preset(demo, h, form, stage.plan)
    return form, stage


def build_form(demo: gr.Blocks, h: Handlers, choices: list[tuple[str, str]], default_preset: str, preset: Preset) -> Form:
    """Prompt, start image (and end image) or video, start frame, length, seed, preset, advanced settings and LoRAs
    (top to bottom)."""
    prompt = gr.Textbox(label="Prompt or storyboard", lines=3, max_length=2000, info=STORYBOARD_HINT,
                        placeholder="0s: camera pans right over the hills; 8s: camera holds")
    with gr.Row():
        image = gr.Image(label="Start image (optional)", type="filepath", height=150, sources=["upload", "clipboard"],
                         elem_id="fph-image")
        ends = preset.model.loop == "inverted"  # the preset's choice (preset_defaults) shows or hides them again
        end_image = gr.Image(label="End image (optional)", type="filepath", height=150, sources=["upload", "clipboard"],
                             elem_id="fph-end-image", visible=ends)
        video = gr.Video(label="Video to continue (optional)", height=150, sources=["upload"])
    end_strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="End frame strength", visible=ends,
                             elem_id="fph-end-strength", info="how strongly the end image anchors the video's end")
    keyframes, keyframe_rows = keyframe_list(preset)
    kinds = START_FRAMES.get(preset.model.backbone, ())
    start_frame = gr.Dropdown([(START_FRAME_LABELS.get(k, k), k) for k in kinds], value=kinds[0] if kinds else None,
                              label="Start frame (text-to-video)", visible=len(kinds) > 1, elem_id="fph-start-frame",
                              info="what a video without a start image or video starts from")
    with gr.Row():
        # the server-side bound is the largest any preset allows; each preset's own is checked on submit
        seconds = gr.Slider(0.5, preset.video.max_seconds, value=5, step=0.5, label="Length (seconds)")
        seconds.maximum = max_seconds(h.presets)
    with gr.Row(equal_height=True):
        seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, scale=3)
        dice = gr.Button("Random seed", scale=1, min_width=110)
    preset_dd = gr.Dropdown(choices, value=default_preset, label="Preset")
    advanced = build_advanced(preset)
    with gr.Accordion("LoRAs", open=False, elem_id="fph-loras"):
        loras = tuple(lora_pickers())
        lora_reload = gr.Button("Refresh list", size="sm")
    with gr.Accordion("Memory controls", open=False, elem_id="fph-memory-controls"):
        memory = gr.Textbox(label="Memory controls", lines=1, elem_id="fph-memory", placeholder="pin 10:20; forget 30:40; cut 12",
                            info="pin: never merged by the history cap; forget: left out of what the model reads "
                                 "(undo by removing it); cut: a new shot at that time that keeps the history (seconds)")
        borrow = gr.Textbox(label="Borrow memory from (job id)", lines=1, elem_id="fph-borrow",
                            info="a finished job of yours (encoder mode, this preset and size): the new video starts "
                                 "knowing its world")
    dice.click(random_seed, None, seed, queue=False, **PRIVATE)
    names = [name for name, _ in loras]
    lora_reload.click(h.lora_refresh, None, names, **PRIVATE)
    demo.load(h.lora_refresh, None, names, **PRIVATE)
    return Form(prompt, image, video, start_frame, seconds, seed, preset_dd, advanced, loras, end_image, end_strength,
                keyframes, keyframe_rows, memory, borrow)


def keyframe_list(preset: Preset) -> tuple[gr.Accordion, tuple[tuple[gr.Image, gr.Textbox, gr.Textbox], ...]]:
    """Keyframe rows: an image the video shows at a time, and the prompt from then on (the storyboard entry).

    Shown on presets that allow keyframes (the preset's choice shows or hides it again: ``keyframe_updates``).
    """
    rows = []
    with gr.Accordion("Keyframes", open=False, visible=keyframes_allowed(preset), elem_id="fph-keyframes") as box:
        gr.Markdown(KEYFRAME_HINT)
        for i in range(1, KEYFRAME_SLOTS + 1):
            with gr.Row(equal_height=True):
                image = gr.Image(label=f"Keyframe {i}", type="filepath", height=130, sources=["upload", "clipboard"],
                                 elem_id=f"fph-keyframe-image-{i}", scale=1, min_width=140)
                with gr.Column(scale=2, min_width=160):
                    # text, not gr.Number: a number field shows and sends 0 when left empty, which is a time
                    time = gr.Textbox(label="at (seconds)", placeholder="e.g. 8", max_length=20,
                                      elem_id=f"fph-keyframe-time-{i}")
                    prompt = gr.Textbox(label="prompt from then on (optional)", max_length=500,
                                        elem_id=f"fph-keyframe-prompt-{i}")
            rows.append((image, time, prompt))
    return box, tuple(rows)


def build_advanced(preset: Preset) -> Advanced:
    """The Advanced accordion, at the preset's values (the page's load event sets them again)."""
    rates = [preset.model.encoder_rate] if preset.model.encoder else preset.model.encoder_rates
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            steps = gr.Number(value=preset.sampling.steps, precision=0, minimum=1, maximum=1000, label="Steps")
            guidance = gr.Number(value=preset.sampling.guidance, minimum=0, maximum=100, label="Guidance")
            shift = gr.Number(value=preset.sampling.shift, minimum=0.01, maximum=100, label="Shift")
        with gr.Row():
            rate = gr.Dropdown(rates, value=preset.model.encoder_rate, label="Encoder rate (HxWxT)", visible=len(rates) > 1)
            history = gr.Radio(list(HISTORY_MODES), value=preset.history.mode, label="History")
            window = gr.Number(value=preset.history.window_frames, precision=0, minimum=0, maximum=1000,
                               label="Sliding-window frames")
            history_guidance = gr.Number(value=preset.history.guidance, minimum=0, maximum=MAX_HISTORY_GUIDANCE,
                                         label="History guidance (1 = off)")
            history_cap = gr.Number(value=preset.history.max_tokens, precision=0, minimum=0,
                                    label="History-token cap (0 = none)", elem_id="fph-history-cap",
                                    info=cap_info(preset))
            history_merge = gr.Radio(list(HISTORY_MERGES), value=preset.history.merge, label="Cap merges",
                                     elem_id="fph-history-merge",
                                     info="similar: what repeats; oldest: the oldest history first")
        with gr.Row(equal_height=True):
            cache = gr.Radio(list(CACHE_SETTINGS), value=preset.sampling.cache, label="Step cache", scale=1)
            gr.Markdown(CACHE_NOTE, elem_id="fph-cache-note")
    return Advanced(steps, guidance, shift, rate, history, window, history_guidance, history_cap, history_merge, cache)


def lora_pickers() -> list[tuple[gr.Dropdown, gr.Slider]]:
    """LoRA slots: a file (from ``loras/``, or a typed path) and its weight each."""
    choices = lora_choices()
    picks = []
    for i in range(1, LORA_SLOTS + 1):
        with gr.Row(equal_height=True):
            name = gr.Dropdown(choices, value=None, label=f"LoRA {i}", allow_custom_value=True, scale=3,
                               elem_id=f"fph-lora-{i}", info="a .safetensors file in loras/, or a path" if i == 1 else None)
            weight = gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="weight", scale=2, elem_id=f"fph-lora-weight-{i}")
        picks.append((name, weight))
    return picks


def build_job_buttons() -> JobButtons:
    """Generate and Cancel; Edit storyboard of the job shown; the interrupted jobs' picker (hidden while there is none)."""
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", size="lg")
        cancel = gr.Button("Cancel", variant="stop", size="lg")
    # steer while it streams: the job shown here follows a new storyboard from its next section
    with gr.Accordion("Edit storyboard of the job shown", open=False, elem_id="fph-steer"):
        steer_text = gr.Textbox(label="New storyboard", lines=2, max_length=2000, elem_id="fph-steer-text",
                                info="times count from the video's start; sections not yet started follow it")
        steer = gr.Button("Apply to the running job", elem_id="fph-steer-apply")
    # jobs a crash or restart left unfinished: they continue after their last finished section
    with gr.Group(visible=False, elem_id="fph-interrupted") as interrupted_box, gr.Row(equal_height=True):
        interrupted = gr.Dropdown([], label="Interrupted jobs", scale=4)
        resume = gr.Button("Resume", scale=1, min_width=100)
    return JobButtons(generate, cancel, steer_text, steer, interrupted_box, interrupted, resume)


def wire_job_buttons(demo: gr.Blocks, h: Handlers, form: Form, b: JobButtons, stage: Stage) -> None:
    """Generate queues the job, then follows it here; Cancel and Edit act on the job shown; Resume restarts one."""
    job_id, progress = stage.job_id, stage.progress
    # preprocess=False: the handlers check every value themselves, with messages that name the input;
    # gradio's own image decoding would fail on a bad upload with a generic error (uploads are still
    # checked to come from the upload folder before this point)
    started = b.generate.click(h.generate_click, form.inputs, [job_id], trigger_mode="multiple",
                               concurrency_limit=None, preprocess=False, **PRIVATE)
    announced = started.success(h.started, [job_id], [stage.files, progress], concurrency_limit=None, **PRIVATE)
    stage.follow(announced.success)
    b.cancel.click(h.cancel_click, [job_id], [progress], concurrency_limit=None, **PRIVATE)
    b.steer.click(h.steer_click, [job_id, b.steer_text], [progress], concurrency_limit=None, **PRIVATE)
    # resume an interrupted job, follow it here, and refresh the list
    listed = [b.interrupted, b.interrupted_box]
    demo.load(h.interrupted_choices, None, listed, **PRIVATE)
    resumed = b.resume.click(h.resume_click, [b.interrupted], [job_id, progress], concurrency_limit=None, **PRIVATE)
    resumed.success(h.interrupted_choices, None, listed, **PRIVATE)
    stage.follow(resumed.success)


#: plans run one at a time in the order asked: leaving the cap field and picking a merge rule ask twice
#: at once, and the plan asked last (with both values) must be the one shown, not whichever ends last
PLAN_ORDER = {"concurrency_id": "plan", "concurrency_limit": 1}


def wire_preset(demo: gr.Blocks, h: Handlers, form: Form, plan: gr.Markdown) -> None:
    """The preset decides the advanced defaults; the plan follows every value it depends on."""
    # on the user's choice only: Reuse settings sets the preset together with its own advanced values
    picked = form.preset.input(h.preset_defaults, [form.preset], form.defaults, **PRIVATE)
    demo.load(h.preset_defaults, [form.preset], form.defaults, **PRIVATE)
    a = form.advanced
    # the slider on release only: each new length is a new plan, and large presets take seconds to plan
    events = [a.rate.change, a.history.change, form.seconds.release, a.history_cap.blur, a.history_cap.submit,
              a.history_merge.change] + [name.change for name in form.lora_names]
    for event in events:
        event(h.preview_plan, form.plan_inputs, [plan], show_progress="hidden", trigger_mode="always_last", **PLAN_ORDER,
              **PRIVATE)
    replan_after(h, form, plan, picked)


def replan_after(h: Handlers, form: Form, plan: gr.Markdown, *done: Dependency) -> None:
    """A new preset (or reused settings) plans once its own values are in the form, never with the old ones."""
    for event in done:
        event.success(h.preview_plan, form.plan_inputs, [plan], show_progress="hidden", **PLAN_ORDER, **PRIVATE)


def max_seconds(presets: list[str]) -> float:
    """The longest video any offered preset allows (unreadable presets count as 0)."""
    longest = 0.0
    for name in presets:
        try:
            longest = max(longest, load_preset(name).video.max_seconds)
        except InputError:
            pass
    return longest


def random_seed() -> int:
    """Random seed button: a new seed."""
    return random.randrange(0, 2**31 - 1)
