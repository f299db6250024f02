"""The page: Gradio Blocks layout and event wiring, nothing else.

Three kinds of events:
* page events (Generate, Cancel, preset changes), private to the page;
* followers: a generator per page that streams one job's segments into the
  player and its progress into the rest (:class:`~.follow.Follower`), started by
  Generate, by "Show" in the queue and on page load (re-attach);
* the HTTP API: ``/generate``, ``/cancel``, ``/status``, ``/resume`` and ``/recall``.
"""

from __future__ import annotations

import random
from pathlib import Path

import gradio as gr

from framepack_history.config.presets import (
    CACHE_SETTINGS,
    HISTORY_MERGES,
    HISTORY_MODES,
    MAX_HISTORY_GUIDANCE,
    START_FRAMES,
    available_presets,
    load_preset,
)
from framepack_history.errors import InputError
from framepack_history.jobs.studio import Studio
from framepack_history.jobs.worker import Worker
from framepack_history.ui.api import generate_inputs
from framepack_history.ui.handlers import Handlers
from framepack_history.ui.memory_tab import MemoryTab
from framepack_history.ui.plan import LORA_SLOTS, START_FRAME_LABELS, cap_info, lora_choices
from framepack_history.ui.progress import progress_html
from framepack_history.ui.weights import WeightsPanel

CACHE_NOTE = ("Step cache skips most of the model on steps where it barely changes: fewer passes, "
              "slightly softer detail (hands, fine texture); off = every step in full.")
STORYBOARD_HINT = "A prompt, or a storyboard with times: `0s: camera pans right; 10s: camera holds, a red ball enters`"

CSS = """
.fph-progress { font-size: 0.95rem; padding: 6px 2px; }
.fph-line { margin-bottom: 6px; }
.fph-bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.dark .fph-bar { background: var(--neutral-700); }
.fph-bar > div { height: 100%; background: var(--color-accent); transition: width 0.4s; }
.fph-status { text-transform: uppercase; font-size: 0.75rem; padding: 1px 6px; border-radius: 4px;
              background: var(--neutral-200); margin-right: 2px; }
.fph-status.running { background: #dbeafe; color: #1e40af; }
.fph-status.done { background: #dcfce7; color: #166534; }
.fph-status.failed { background: #fee2e2; color: #991b1b; }
.fph-status.cancelled { background: #fef3c7; color: #92400e; }
.fph-msg { margin-top: 6px; color: var(--body-text-color-subdued); }
#fph-preview img { image-rendering: pixelated; object-fit: contain; }
#fph-player video { image-rendering: pixelated; }
#fph-recalled img, #fph-real img { image-rendering: pixelated; object-fit: contain; }
"""


def preset_choices(default: str) -> list[tuple[str, str]]:
    """Preset names from presets/, plus the launch preset when it is a .toml path."""
    names = available_presets()
    choices = [(n, n) for n in names]
    if default not in names:
        choices.insert(0, (Path(default).stem, default))
    return choices


def max_seconds(presets: list[str]) -> float:
    """The longest video any offered preset allows (unreadable presets count as 0)."""
    longest = 0.0
    for name in presets:
        try:
            longest = max(longest, load_preset(name).video.max_seconds)
        except InputError:
            pass
    return longest


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


def random_seed() -> int:
    """Random seed button: a new seed."""
    return random.randrange(0, 2**31 - 1)


def build_app(worker: Worker, default_preset: str = "toy-cpu", studio: Studio | None = None) -> gr.Blocks:
    """The whole page, wired to ``worker``; ``studio`` says who sees which job (``--auth``)."""
    choices = preset_choices(default_preset)
    h = Handlers(worker, default_preset, [value for _, value in choices], studio=studio)
    preset = load_preset(default_preset)
    rates = [preset.model.encoder_rate] if preset.model.encoder else preset.model.encoder_rates
    with gr.Blocks(title="FramePack History") as demo:
        job_id = gr.State("")
        seen = gr.State(None)
        gr.Markdown("## FramePack History · long video, section by section\n"
                    "Every finished section plays at once; the whole past is kept as a short history embedding.")
        # the first screen: which preset runs, what it needs (weights, with a Download button), what to do next
        weights = WeightsPanel(studio=studio)
        with gr.Group(elem_id="fph-first"):
            first_md = gr.Markdown(weights.view(default_preset, sizes=False)[0], elem_id="fph-weights", padding=True)
            download = gr.Button("Download", visible=False, variant="primary", elem_id="fph-download")
            download_progress = gr.HTML("", elem_id="fph-download-progress")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(label="Prompt or storyboard", lines=3, max_length=2000, info=STORYBOARD_HINT,
                                    placeholder="0s: camera pans right over the hills; 8s: camera holds")
                with gr.Row():
                    image = gr.Image(label="Start image (optional)", type="filepath", height=150, sources=["upload", "clipboard"],
                                     elem_id="fph-image")
                    video = gr.Video(label="Video to continue (optional)", height=150, sources=["upload"])
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
                with gr.Accordion("LoRAs", open=False, elem_id="fph-loras"):
                    lora_picks = lora_pickers()
                    lora_reload = gr.Button("Refresh list", size="sm")
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
            with gr.Column(scale=3, min_width=420):
                player = gr.Video(label="Video (grows section by section)", streaming=True, autoplay=True,
                                  interactive=False, elem_id="fph-player", height=360)
                with gr.Row(equal_height=False):
                    preview = gr.Image(label="Denoising", interactive=False, elem_id="fph-preview", height=180,
                                       scale=1, min_width=160, buttons=[])
                    with gr.Column(scale=2):
                        progress = gr.HTML(progress_html(None), elem_id="fph-progress")
                        plan = gr.Markdown(h.preview_plan(default_preset, preset.model.encoder_rate, 5), elem_id="fph-plan")
                files = gr.File(label="Video and sidecar", file_count="multiple", interactive=False, visible=False)
        with gr.Tabs():
            with gr.Tab("Queue"):
                queue = gr.Dataframe(headers=["job", "status", "sections", "seconds", "prompt", "message", "device"],
                                     interactive=False, wrap=True, elem_id="fph-queue")
                with gr.Row():
                    picked = gr.Dropdown([], label="Job", allow_custom_value=False, scale=3)
                    show = gr.Button("Show", scale=1)
                    cancel_picked = gr.Button("Cancel job", variant="stop", scale=1)
            with gr.Tab("Gallery"):
                gallery = gr.Gallery(label="Past results (outputs/)", columns=6, height=300, allow_preview=True)
                picked_video = gr.State("")
                with gr.Row(equal_height=True):
                    reuse = gr.Button("Reuse settings", scale=1, elem_id="fph-reuse")
                    settings_file = gr.File(label="…or load a video.json", file_types=[".json"], type="filepath",
                                            scale=2, elem_id="fph-settings-file")
                with gr.Row(equal_height=True):
                    extend_prompt = gr.Textbox(label="Extend with storyboard", lines=1, max_length=2000, scale=4,
                                               info="of the whole video, times from its start; empty = the old one's")
                    extend_seconds = gr.Number(value=5, minimum=0.5, label="Seconds to add", scale=1)
                    extend = gr.Button("Extend", variant="primary", scale=1, elem_id="fph-extend")
            with gr.Tab("Memory", elem_id="fph-memory"):
                gr.Markdown("What the history embedding remembers: pick a job and a time. The frame is recalled from the "
                            "embedding alone (on the CPU, from the job's last finished section) beside the real frame.")
                with gr.Row(equal_height=True):
                    recall_job = gr.Dropdown([], label="Job", scale=3, elem_id="fph-recall-job")
                    recall_at = gr.Slider(0, preset.video.max_seconds, value=0, step=0.25, label="Time (s)", scale=4,
                                          elem_id="fph-recall-at")
                    recall_button = gr.Button("Recall", scale=1, min_width=100)
                with gr.Row():
                    recalled = gr.Image(label="Recalled from the history embedding", interactive=False, height=256,
                                        elem_id="fph-recalled", buttons=[])
                    real_frame = gr.Image(label="Real frame", interactive=False, height=256, elem_id="fph-real", buttons=[])
                recall_md = gr.Markdown("", elem_id="fph-recall-psnr")
        timer = gr.Timer(2.0)

        # hidden outputs of the API
        api_video = gr.File(visible=False, label="video")
        api_sidecar = gr.File(visible=False, label="sidecar")

        inputs = [prompt, image, video, seconds, seed, preset_dd, steps, guidance, shift, rate, history, window, history_guidance,
                  start_frame, history_cap]
        inputs += [c for pair in lora_picks for c in pair]  # lora_1, lora_weight_1, ... (Handlers.spec)
        inputs += [cache, history_merge]
        follow_outputs = [player, preview, progress, plan, files]
        # the advanced settings a preset decides (Handlers.preset_defaults returns them in this order)
        defaults = [steps, guidance, shift, rate, history, window, history_guidance, seconds, start_frame, history_cap, cache,
                    history_merge]
        private = {"api_visibility": "private"}

        # -- Generate: queue the job, then follow it in this page
        # preprocess=False: the handlers check every value themselves, with messages that name the input;
        # gradio's own image decoding would fail on a bad upload with a generic error (uploads are still
        # checked to come from the upload folder before this point)
        started = generate.click(h.generate_click, inputs, [job_id], trigger_mode="multiple",
                                 concurrency_limit=None, preprocess=False, **private)
        announced = started.success(h.started, [job_id], [files, progress], concurrency_limit=None, **private)
        announced.success(h.follower.follow, [job_id], follow_outputs, concurrency_limit=None, show_progress="hidden", **private)
        cancel.click(h.cancel_click, [job_id], [progress], concurrency_limit=None, **private)
        dice.click(random_seed, None, seed, queue=False, **private)
        steer.click(h.steer_click, [job_id, steer_text], [progress], concurrency_limit=None, **private)

        # -- re-attach on load: the running job, else the newest
        loaded = demo.load(h.follower.attach, None, job_id, **private)
        loaded.then(h.follower.follow, [job_id], follow_outputs, concurrency_limit=None, show_progress="hidden", **private)
        demo.load(h.refresh, [seen, picked_video], [seen, queue, picked, gallery], **private)
        demo.load(h.preset_defaults, [preset_dd], defaults, **private)
        demo.load(h.interrupted_choices, None, [interrupted, interrupted_box], **private)

        # -- resume an interrupted job, follow it here, and refresh the list
        resumed = resume.click(h.resume_click, [interrupted], [job_id, progress], concurrency_limit=None, **private)
        resumed.success(h.interrupted_choices, None, [interrupted, interrupted_box], **private)
        resumed.success(h.follower.follow, [job_id], follow_outputs, concurrency_limit=None, show_progress="hidden", **private)

        # -- queue tab
        timer.tick(h.refresh, [seen, picked_video], [seen, queue, picked, gallery], concurrency_limit=None, show_progress="hidden",
                   **private)
        shown = show.click(lambda j: (j or ""), [picked], [job_id], **private)
        shown.then(h.follower.follow, [job_id], follow_outputs, concurrency_limit=None, show_progress="hidden", **private)
        cancel_picked.click(h.cancel_picked, [picked], None, concurrency_limit=None, **private)

        # -- memory tab: recall a past frame of a job from its history embedding
        memory = MemoryTab(h)
        for event in (demo.load, recall_job.focus):
            event(memory.recall_choices, None, recall_job, **private)
        recall_job.change(memory.recall_job, [recall_job], [recall_at], **private)
        recall_button.click(memory.recall_click, [recall_job, recall_at], [recalled, real_frame, recall_md],
                            concurrency_limit=1, **private)

        # -- gallery: reuse a past video's settings, or extend it from its saved history
        gallery.select(h.gallery_pick, None, picked_video, **private)
        form = [prompt, seconds, seed, preset_dd, steps, guidance, shift, rate, history, window, history_guidance, start_frame,
                history_cap, history_merge, cache]
        reused = [reuse.click(h.reuse_settings, [picked_video], form, **private),
                  settings_file.upload(h.reuse_settings, [picked_video, settings_file], form, **private)]
        extended = extend.click(h.extend_click, [picked_video, extend_prompt, extend_seconds], [job_id, progress],
                                concurrency_limit=None, **private)
        extended.success(h.follower.follow, [job_id], follow_outputs, concurrency_limit=None, show_progress="hidden", **private)

        # -- the preset decides the advanced defaults and the plan
        # (on the user's choice only: Reuse settings sets the preset together with its own advanced values)
        preset_picked = preset_dd.input(h.preset_defaults, [preset_dd], defaults, **private)
        # (the slider on release only: each new length is a new plan, and large presets take seconds to plan)
        plan_inputs = [preset_dd, rate, seconds, history, history_cap, history_merge] + [name for name, _ in lora_picks]
        plan_events = [rate.change, history.change, seconds.release, history_cap.blur, history_cap.submit,
                       history_merge.change] + [name.change for name, _ in lora_picks]
        for event in plan_events:
            event(h.preview_plan, plan_inputs, [plan], show_progress="hidden", trigger_mode="always_last", **private)
        # a new preset (or reused settings) plans once its own values are in the form, never with the old ones
        for done in (preset_picked, *reused):
            done.success(h.preview_plan, plan_inputs, [plan], show_progress="hidden", **private)

        # -- the first screen follows the preset; Download runs beside the worker and reports progress
        first = [first_md, download, download_progress]
        for event in (demo.load, preset_dd.change):
            event(weights.follow, [preset_dd], first, concurrency_limit=None, show_progress="hidden", **private)
        fetching = download.click(weights.start, [preset_dd], None, concurrency_limit=None, **private)
        fetching.success(weights.follow, [preset_dd], first, concurrency_limit=None, show_progress="hidden", **private)

        lora_reload.click(h.lora_refresh, None, [name for name, _ in lora_picks], **private)
        demo.load(h.lora_refresh, None, [name for name, _ in lora_picks], **private)

        # -- HTTP API (gradio_client): generate / cancel / status
        api_button = gr.Button(visible=False)
        # /generate has inputs of its own (named by the field table), not the page's widgets in their order
        api_button.click(h.api_generate, generate_inputs(), [api_video, api_sidecar], api_name="generate",
                         concurrency_limit=None, preprocess=False)
        gr.api(h.api_cancel, api_name="cancel", concurrency_limit=None)
        gr.api(h.api_status, api_name="status", concurrency_limit=None)
        gr.api(h.api_resume, api_name="resume", concurrency_limit=None)
        api_recall_button = gr.Button(visible=False)
        api_recall_outputs = [gr.File(visible=False, label="recalled"), gr.File(visible=False, label="real"),
                              gr.JSON(visible=False, label="recall")]
        api_recall_button.click(memory.api_recall, [gr.Textbox(visible=False), gr.Number(visible=False), gr.Number(visible=False)],
                                api_recall_outputs, api_name="recall", concurrency_limit=1)
        gr.api(h.api_steer, api_name="steer", concurrency_limit=None)
        gr.api(h.api_extend, api_name="extend", concurrency_limit=None)
    return demo
