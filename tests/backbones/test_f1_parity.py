"""Our ``hunyuan_framepack`` loop against diffusers' FramePack-F1 pipeline (``sampling_type="vanilla"``).

A tiny random-weight FramePack-F1 is saved to folders in the hub's layout and
loaded through the real loading code (``loading.load_backbone`` from a preset).
The reference, ``HunyuanVideoFramepackPipeline``, runs on the same weights
(the stock diffusers transformer read from the same folder) with the same
start latent (``image_latents=``: we take the VAE posterior's mode, the
reference would sample it) and the same seed: the reference draws every
section's noise from one CPU generator (``generator=``), as FramePack's demo
does, and so do we by default. Both use Euler: diffusers has no flow-matching
UniPC of FramePack's kind. The backbone selects diffusers' arithmetic
(``numerics="diffusers"``): SigLIP fed the float frame, as the pipeline does
(FramePack feeds it the 8-bit frame); in float32 the DiT call is the same
either way (tests/backbones/test_framepack_numerics.py, where FramePack's
numerics are checked as the default).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline, HunyuanVideoFramepackTransformer3DModel
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import calculate_shift
from PIL import Image

from framepack_history.backbones.base import Context
from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import load_backbone
from framepack_history.generation.overlap import OverlapDecoder
from framepack_history.generation.pipeline import Pipeline, SectionDone, section_noise, to_pixels, to_uint8
from framepack_history.generation.video import read_image
from framepack_history.history.state import HistoryState
from framepack_history.sampling import f1_mu, flow_sigmas
from tests.backbones.tiny_framepack import recorder, save_image, save_tiny

SIZE, SECTIONS, STEPS, PROMPT = 64, 3, 3, "a red fox runs through snow"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """A tiny FramePack-F1 saved in the hub's layout, a preset pointing at it, and a start image."""
    root = tmp_path_factory.mktemp("f1")
    preset = save_tiny(root, SIZE, STEPS)
    return {"root": root, "preset": load_preset(preset), "image": save_image(root / "start.png", SIZE, 0)}


@pytest.fixture(scope="module")
def backbone(folders) -> HunyuanFramepackBackbone:
    bb = load_backbone(folders["preset"].model, "cpu", "float32")
    assert bb.numerics == "framepack"  # the default (see tests/backbones/test_framepack_numerics.py)
    bb.numerics = "diffusers"  # the reference's arithmetic, selected explicitly
    return bb


@pytest.fixture(scope="module")
def runs(folders, backbone) -> dict:
    """Both loops on the same weights, start latent and noise; every transformer call recorded."""
    preset = folders["preset"]
    pipe = Pipeline(backbone, None, preset)
    request = GenerationRequest(prompt=PROMPT, seconds=SECTIONS * 36 / 30, seed=7, image=folders["image"])
    ours: list[dict] = []
    handle = backbone.transformer.register_forward_pre_hook(recorder(ours), with_kwargs=True)
    try:
        events = list(pipe.run(request))
    finally:
        handle.remove()
    gen = pipe.last_generation

    ref_tr = HunyuanVideoFramepackTransformer3DModel.from_pretrained(folders["root"] / "dit").eval()
    assert type(ref_tr) is HunyuanVideoFramepackTransformer3DModel  # the stock class, not ours
    ref = HunyuanVideoFramepackPipeline(
        transformer=ref_tr, vae=backbone.vae, scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, text_encoder_2=backbone.text_encoder_2,
        tokenizer_2=backbone.tokenizer_2, image_encoder=backbone.image_encoder, feature_extractor=backbone.feature_extractor,
    )
    ref.set_progress_bar_config(disable=True)
    start = gen.image_cond.tensors["start_latents"]
    # It takes ``image_latents`` only instead of an image (whose SigLIP embedding it needs): the mode is given here.
    ref.prepare_image_latents = lambda image, dtype, device, generator, latents=None: start.to(device, dtype)
    theirs: list[dict] = []
    handle = ref_tr.register_forward_pre_hook(recorder(theirs), with_kwargs=True)
    frames = read_image(folders["image"], SIZE, SIZE)
    try:
        video = ref(
            image=Image.fromarray(frames), prompt=PROMPT, height=SIZE, width=SIZE, num_frames=SECTIONS * 33,
            latent_window_size=9, num_inference_steps=STEPS, guidance_scale=10.0, true_cfg_scale=1.0,
            prompt_template=backbone.prompt_template, generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="pt", sampling_type="vanilla",
        ).frames[0]  # [F, 3, H, W] in [0, 1]
    finally:
        handle.remove()
    pixels = ref.video_processor.preprocess(Image.fromarray(frames), SIZE, SIZE)
    mode = backbone.vae.encode(pixels[:, :, None]).latent_dist.mode() * backbone.vae.config.scaling_factor
    return {"events": events, "gen": gen, "ours": ours, "theirs": theirs, "ref_video": video, "pipe": pipe,
            "ref_start_mode": mode}


def test_every_transformer_call_gets_f1_inputs(runs) -> None:
    ours, theirs = runs["ours"], runs["theirs"]
    assert len(ours) == len(theirs) == SECTIONS * STEPS
    exact = ("timestep", "guidance", "indices_latents", "indices_latents_clean", "indices_latents_history_2x",
             "indices_latents_history_4x")
    close = ("hidden_states", "latents_clean", "latents_history_2x", "latents_history_4x", "encoder_hidden_states",
             "encoder_attention_mask", "pooled_projections", "image_embeds")
    worst = {k: 0.0 for k in close}
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for key in exact:
            assert torch.equal(a[key].float(), b[key].float()), (i, key, a[key], b[key])
        for key in close:
            assert a[key].shape == b[key].shape, (i, key)
            worst[key] = max(worst[key], (a[key].float() - b[key].float()).abs().max().item())
        assert a.get("history_tokens") is None
    print("max abs diff of transformer inputs:", worst)
    assert max(worst.values()) <= 1e-5, worst
    # F1's layout: start latent at 0 and the newest latent at 19 (1x), 17-18 (2x), 1-16 (4x), the section at 20-28.
    first = ours[0]
    assert first["indices_latents_clean"].tolist() == [0, 19]
    assert first["indices_latents_history_2x"].tolist() == [17, 18]
    assert first["indices_latents_history_4x"].tolist() == list(range(1, 17))
    assert first["indices_latents"].tolist() == list(range(20, 29))
    # Section 0 sees zeros where the history is short, and the start latent at both ends of the 1x path.
    start = runs["gen"].image_cond.tensors["start_latents"]
    assert torch.equal(first["latents_clean"], torch.cat([start, start], dim=2))
    assert not first["latents_history_4x"].any() and not first["latents_history_2x"].any()
    # Section 2 sees section 1's last latent at 19, its two before at 17-18, and the rest at 4x.
    hist = runs["gen"].history.latents
    third = ours[2 * STEPS]
    assert torch.equal(third["latents_clean"][:, :, 1:], hist[:, :, 18:19])
    assert torch.equal(third["latents_history_2x"], hist[:, :, 16:18])
    assert torch.equal(third["latents_history_4x"][:, :, -16:], hist[:, :, 0:16])


def test_frames_equal_the_reference(runs, backbone) -> None:
    """Same float frames (before 8-bit rounding) and the same frame count; ours begins with the start image itself."""
    gen, ref = runs["gen"], runs["ref_video"]
    # Our decode, replayed from the history's latents section by section (the pipeline's own code path) ...
    decoder, n = OverlapDecoder(backbone, 9), 9
    hist, parts, held = HistoryState(None), [], None
    hist.append(gen.history.latents[:, :, :1])
    for k in range(SECTIONS):
        hist.append(gen.history.latents[:, :, 1 + n * k: 1 + n * (k + 1)])
        ready, held = decoder.step(hist, k, 1, held)
        parts.append(ready)
    parts.append(held)
    ours = torch.cat(parts, dim=2)[0].permute(1, 0, 2, 3)  # [F, 3, H, W] in [-1, 1], unclamped
    # ... is exactly what the pipeline streamed, held-back tail included.
    streamed = np.concatenate([ev.frames for ev in runs["events"] if isinstance(ev, SectionDone)])
    assert np.array_equal(streamed, to_uint8(ours.permute(1, 0, 2, 3)))
    assert [len(ev.frames) for ev in runs["events"] if isinstance(ev, SectionDone)] == [3, 36, 36 + 33]
    assert 1 + len(streamed) == len(ref) == 37 + 36 * (SECTIONS - 1)  # 109
    diff = ((ours / 2 + 0.5).clamp(0, 1) - ref[1:]).abs().max().item()
    print(f"frames: ours {1 + len(streamed)}, reference {len(ref)}; max abs diff {diff:.3g}")
    assert diff <= 1e-4
    # Frame 0: the reference shows the start latent decoded; we show the start image as given.
    image = to_pixels(read_image(str(runs["pipe"].last_generation.request.image), SIZE, SIZE)[None])[0, :, 0]
    assert ((image / 2 + 0.5) - ref[0]).abs().max() > 0


def test_start_latent_is_the_posterior_mode_of_the_same_pixels(runs) -> None:
    """The one input the reference is handed: our start latent, the VAE mode of what it would have encoded."""
    diff = (runs["gen"].image_cond.tensors["start_latents"] - runs["ref_start_mode"]).abs().max().item()
    assert diff <= 1e-5, diff


def test_dynamic_shift_matches_the_reference() -> None:
    """Our mu is the reference's ``calculate_shift`` capped at log 7, and the schedule its scheduler's, bit for bit."""
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    for tokens in (16 * 9, 64 * 9, 30 * 52 * 9, 45 * 80 * 9, 300, 4096, 3600):
        mu = min(calculate_shift(tokens), np.log(7.0))
        assert f1_mu(tokens) == pytest.approx(mu, abs=0, rel=1e-15)
        for steps in (1, 4, 25):
            sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1], mu=mu)
            assert torch.equal(flow_sigmas(steps, mu=f1_mu(tokens)), sched.sigmas), (tokens, steps)
    assert np.exp(f1_mu(9 * 30 * 52)) == pytest.approx(7.0)  # 480x832: shift 7


def test_encoder_mode_is_window_plus_history_tokens(backbone, runs) -> None:
    """An empty embedding leaves F1's context bit for bit; history tokens change the prediction."""
    gen = runs["gen"]
    cond = runs["pipe"].text(PROMPT)
    cond.tensors.update(gen.image_cond.tensors)
    x = section_noise(runs["pipe"].latent_shape(), 1, 0)
    sigma = torch.tensor([0.7])
    recent = gen.history.window(19)
    window = backbone.predict(x, sigma, cond, Context(recent_latents=recent), 10.0)
    d = backbone.geometry.hidden_size
    empty = Context(recent_latents=recent, history_tokens=torch.zeros(1, 0, d), history_positions=torch.zeros(0, 3))
    assert torch.equal(backbone.predict(x, sigma, cond, empty, 10.0), window)
    tokens = Context(recent_latents=recent, history_tokens=torch.randn(1, 4, d, generator=torch.Generator().manual_seed(0)),
                     history_positions=torch.tensor([[-30.0, 0, 0], [-30.0, 1, 1], [-25.0, 2, 2], [-25.0, 3, 3]]))
    assert (backbone.predict(x, sigma, cond, tokens, 10.0) - window).abs().max() > 1e-4


def test_none_mode_keeps_only_the_start_anchor(runs) -> None:
    from dataclasses import replace

    pipe, gen = runs["pipe"], runs["gen"]
    ctx = pipe.context(replace(gen, request=replace(gen.request, history_mode="none")))
    assert ctx.recent_latents is None and ctx.window_latents is None and ctx.history_tokens is None
    ctx = pipe.context(gen)
    assert torch.equal(ctx.recent_latents, gen.history.window(19))


def test_resume_recreates_the_held_back_tail(folders, backbone, runs, tmp_path) -> None:
    """Checkpoint after section 1, restore into a fresh generation (no held tail): the same frames follow."""
    from framepack_history.jobs.checkpoint import JobDir

    gen = runs["gen"]
    request = gen.request
    job = JobDir(tmp_path / "job")
    job.create(request, folders["preset"], out=tmp_path / "v.mp4")
    first = Pipeline(backbone, None, folders["preset"])
    events = first.run(request)
    done = []
    for ev in events:
        if isinstance(ev, SectionDone):
            done.append(ev.frames)
            if len(done) == 2:
                break
    assert first.last_generation.held is not None
    job.save_section(first.last_generation, [], [], 0)
    restored, _ = job.restore(Pipeline(backbone, None, folders["preset"]))
    assert restored.held is None and restored.next_section == 2
    rest = [ev.frames for ev in Pipeline(backbone, None, folders["preset"]).run(request, resume=restored)
            if isinstance(ev, SectionDone)]
    expected = [ev.frames for ev in runs["events"] if isinstance(ev, SectionDone)]
    assert all(np.array_equal(a, b) for a, b in zip(done + rest, expected)) and len(done + rest) == len(expected)


def test_render_joins_the_stream_and_records_the_shift(folders, backbone, runs, tmp_path) -> None:
    """The mp4 is the segments joined (109 frames, as the reference); the sidecar names F1's dynamic shift."""
    from framepack_history.generation.video import read_video
    from framepack_history.jobs.render import render

    pipe = Pipeline(backbone, None, folders["preset"])
    data = render(pipe, runs["gen"].request, tmp_path / "v.mp4", tmp_path / "seg")
    assert data["frames"] == len(runs["ref_video"]) == 109
    assert len(read_video(str(tmp_path / "v.mp4"), SIZE, SIZE, 30, 1000)) == 109
    assert data["shift"] == pytest.approx(float(np.exp(f1_mu(9 * 8 * 8 / 4))), rel=1e-6)
    assert [s["frames"] for s in data["sections"]] == [3, 36, 69]


def test_cancel_keeps_the_held_back_tail(folders, backbone, runs, tmp_path) -> None:
    """Cancelled during section 2: sections 0-1 and section 1's unblended tail are on disk, nothing else."""
    from framepack_history.errors import Cancelled
    from framepack_history.jobs.render import render

    def stop(index: int, info: dict) -> None:
        if index == 2:
            raise Cancelled()

    written: list = []
    with pytest.raises(Cancelled):
        render(Pipeline(backbone, None, folders["preset"]), runs["gen"].request, tmp_path / "v.mp4", tmp_path / "seg",
               on_step=stop, on_segment=written.append)
    assert [p.name for p in written] == ["context.mp4", "section_00000.mp4", "section_00001.mp4", "section_00001_tail.mp4"]


def test_encoder_mode_in_the_loop(folders, backbone) -> None:
    """Text-to-video, 2 sections from the same seeded noise start latent: ``encoder`` reads that latent's
    history tokens from section 0 on, so its sections differ from ``window``'s while the start is shared.
    (An empty embedding leaving F1's context bit for bit: ``test_encoder_mode_is_window_plus_history_tokens``.)"""
    from dataclasses import replace

    from framepack_history.generation.loading import build_encoder

    preset = folders["preset"]
    encoder = build_encoder(replace(preset.model, encoder_rate="2x2x2", encoder_channels=[8, 16, 16, 32]), backbone)
    latents, tokens = {}, {}
    for mode in ("window", "encoder"):
        pipe = Pipeline(backbone, encoder, preset)
        events = list(pipe.run(GenerationRequest(prompt=PROMPT, seconds=2 * 36 / 30, seed=5, history_mode=mode)))
        latents[mode] = pipe.last_generation.history.latents
        tokens[mode] = [e.history_tokens for e in events if isinstance(e, SectionDone)]
    assert latents["window"].shape[2] == latents["encoder"].shape[2] == 1 + 18  # the start latent, then 2 x 9
    assert torch.equal(latents["window"][:, :, :1], latents["encoder"][:, :, :1])
    assert tokens["window"] == [0, 0] and 0 < tokens["encoder"][0] < tokens["encoder"][1]
    assert (latents["window"][:, :, 1:10] - latents["encoder"][:, :, 1:10]).abs().max() > 1e-4
