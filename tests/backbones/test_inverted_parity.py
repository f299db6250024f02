"""Our inverted loop (FramePack's original model) against diffusers' ``sampling_type="inverted_anti_drifting"``.

As tests/backbones/test_f1_parity.py does for F1: a tiny random FramePack saved in the
hub's layout, loaded through ``loading.load_backbone`` from a preset with
``model.loop = "inverted"``; the reference ``HunyuanVideoFramepackPipeline`` on the
same weights, start latent (the VAE mode, handed over as ``image_latents``), end
latent and seed. Every transformer call's inputs are recorded on both sides.

With an end image the reference computes the start and end images' averaged SigLIP
embedding and then passes the start image's alone (diffusers 0.42.1); FramePack's
pull request 167, which it credits, conditions on the average. The reference here is
handed that average, computed by its own image encoder, so both sides condition alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline, HunyuanVideoFramepackTransformer3DModel
from PIL import Image

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.inverted import paddings
from framepack_history.generation.loading import load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone, to_uint8
from framepack_history.generation.video import read_image
from tests.backbones.tiny_framepack import recorder, save_image, save_tiny

SIZE, SECTIONS, STEPS, PROMPT = 64, 3, 3, "a red fox runs through snow"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("original")
    return {"root": root, "preset": load_preset(save_tiny(root, SIZE, STEPS, loop="inverted")),
            "image": save_image(root / "start.png", SIZE, 0), "end": save_image(root / "end.png", SIZE, 1)}


@pytest.fixture(scope="module")
def backbone(folders):
    bb = load_backbone(folders["preset"].model, "cpu", "float32")
    bb.numerics = "diffusers"  # the reference's arithmetic (see test_f1_parity)
    return bb


def _run(folders, backbone, end: bool, out: Path) -> dict:
    """Both loops on the same weights, latents and noise; every transformer call recorded.

    Ours renders a job to files in ``out`` (the render tests read them), and a checkpoint of it is taken after
    section 1 (the resume test's starting point), so no test renders these sections again.
    """
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.render import render

    pipe = Pipeline(backbone, None, folders["preset"])
    request = GenerationRequest(prompt=PROMPT, seconds=SECTIONS * 36 / 30, seed=7, image=folders["image"],
                                end_image=folders["end"] if end else None)
    job, after_1 = JobDir(out / "job"), JobDir(out / "after_1")
    job.create(request, folders["preset"], out=out / "v.mp4")
    after_1.create(request, folders["preset"], out=out / "resumed.mp4")
    events: list = []
    written: list = []
    held: list[bool] = []

    def on_event(ev) -> None:
        events.append(ev)
        if isinstance(ev, SectionDone) and ev.index == 1:  # as a job's checkpoint after that section would be
            g = pipe.last_generation.held
            held.append(g is not None)
            # only the frames the next decode blends stay float; the rest are held as final 8-bit frames
            assert g.head.dtype == torch.float32 and g.head.shape[2] == pipe.loop.overlap < g.shape[2]
            assert all(f.dtype == np.uint8 for f in g.final) and len(g.frames()) == g.shape[2]
            after_1.save_section(pipe.last_generation, [], [], 0)

    ours: list[dict] = []
    handle = backbone.transformer.register_forward_pre_hook(recorder(ours), with_kwargs=True)
    try:
        data = render(pipe, request, out / "v.mp4", job.info().segments_dir, on_event=on_event, on_segment=written.append,
                      job=job)
    finally:
        handle.remove()
    gen = pipe.last_generation

    ref_tr = HunyuanVideoFramepackTransformer3DModel.from_pretrained(folders["root"] / "dit").eval()
    assert type(ref_tr) is HunyuanVideoFramepackTransformer3DModel
    ref = HunyuanVideoFramepackPipeline(
        transformer=ref_tr, vae=backbone.vae, scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, text_encoder_2=backbone.text_encoder_2,
        tokenizer_2=backbone.tokenizer_2, image_encoder=backbone.image_encoder, feature_extractor=backbone.feature_extractor,
    )
    ref.set_progress_bar_config(disable=True)
    start_img = Image.fromarray(read_image(folders["image"], SIZE, SIZE))
    end_img = Image.fromarray(read_image(folders["end"], SIZE, SIZE))
    # The VAE modes of both images, in the order the reference asks for them (start, then end).
    modes = [gen.image_cond.tensors["start_latents"]]
    if end:
        pixels = ref.video_processor.preprocess(end_img, SIZE, SIZE)
        modes.append(backbone.vae.encode(pixels[:, :, None]).latent_dist.mode() * backbone.vae.config.scaling_factor)
        embeds = [ref.encode_image(ref.video_processor.preprocess(im, SIZE, SIZE)) for im in (start_img, end_img)]
        average = (embeds[0] + embeds[1]) / 2
        ref.encode_image = lambda image, device=None, dtype=None: average  # see the module docstring
    latents = iter(modes)
    ref.prepare_image_latents = lambda image, dtype, device, generator, latents_=None, **kw: next(latents).to(device, dtype)
    theirs: list[dict] = []
    handle = ref_tr.register_forward_pre_hook(recorder(theirs), with_kwargs=True)
    try:
        video = ref(
            image=start_img, last_image=end_img if end else None, prompt=PROMPT, height=SIZE, width=SIZE,
            num_frames=SECTIONS * 33, latent_window_size=9, num_inference_steps=STEPS, guidance_scale=10.0,
            true_cfg_scale=1.0, prompt_template=backbone.prompt_template,
            generator=torch.Generator("cpu").manual_seed(request.seed), output_type="pt",
            sampling_type="inverted_anti_drifting",
        ).frames[0]
    finally:
        handle.remove()
    assert next(latents, None) is None  # every latent handed over was asked for
    return {"events": events, "gen": gen, "ours": ours, "theirs": theirs, "ref_video": video, "pipe": pipe,
            "end_mode": modes[-1] if end else None, "job": job, "data": data, "written": written, "mp4": out / "v.mp4",
            "after_1": after_1, "held": held}


@pytest.fixture(scope="module")
def plain(folders, backbone, tmp_path_factory) -> dict:
    return _run(folders, backbone, end=False, out=tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def ended(folders, backbone, tmp_path_factory) -> dict:
    return _run(folders, backbone, end=True, out=tmp_path_factory.mktemp("ended"))


EXACT = ("timestep", "guidance", "indices_latents", "indices_latents_clean", "indices_latents_history_2x",
         "indices_latents_history_4x")
CLOSE = ("hidden_states", "latents_clean", "latents_history_2x", "latents_history_4x", "encoder_hidden_states",
         "encoder_attention_mask", "pooled_projections", "image_embeds")


def _same_inputs(run: dict) -> dict:
    ours, theirs = run["ours"], run["theirs"]
    assert len(ours) == len(theirs) == SECTIONS * STEPS
    worst = {k: 0.0 for k in CLOSE}
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for key in EXACT:
            assert torch.equal(a[key].float(), b[key].float()), (i, key, a[key], b[key])
        for key in CLOSE:
            assert a[key].shape == b[key].shape, (i, key)
            worst[key] = max(worst[key], (a[key].float() - b[key].float()).abs().max().item())
    print("max abs diff of transformer inputs:", worst)
    assert max(worst.values()) <= 1e-5, worst
    return worst


def test_every_transformer_call_gets_the_original_models_inputs(plain) -> None:
    _same_inputs(plain)
    ours, n = plain["ours"], 9
    # Section 0 (the video's end): start at 0, 2 sections of blank, itself at 19-27, post 1x at 28, 2x 29-30, 4x 31-46.
    first = ours[0]
    assert first["indices_latents"].tolist() == list(range(1 + 2 * n, 1 + 3 * n))
    assert first["indices_latents_clean"].tolist() == [0, 28]
    assert first["indices_latents_history_2x"].tolist() == [29, 30]
    assert first["indices_latents_history_4x"].tolist() == list(range(31, 47))
    assert not first["latents_clean"][:, :, 1:].any() and not first["latents_history_4x"].any()
    # The last section generated (the video's start) touches the start latent: itself at 1-9.
    assert ours[-1]["indices_latents"].tolist() == list(range(1, 10))
    # Section 2 sees section 1 (the 9 latents after it in time) first, then section 0, zeros past the end.
    hist = plain["gen"].history.latents  # start, then sections in the order generated
    s0, s1 = hist[:, :, 1:10], hist[:, :, 10:19]
    third = ours[2 * STEPS]
    assert torch.equal(third["latents_clean"][:, :, 1:], s1[:, :, :1])
    assert torch.equal(third["latents_history_2x"], s1[:, :, 1:3])
    assert torch.equal(third["latents_history_4x"], torch.cat([s1[:, :, 3:], s0, torch.zeros_like(s0[:, :, :1])], 2))


def test_frames_equal_the_reference(plain) -> None:
    """One video at the end, in time order, 109 frames as the reference's; frame 0 is the start image itself."""
    done = [ev for ev in plain["events"] if isinstance(ev, SectionDone)]
    assert [len(ev.frames) for ev in done] == [0, 0, 108]
    gen, ref = plain["gen"], plain["ref_video"]
    video = plain["pipe"].loop.replay(gen.history, SECTIONS, SECTIONS, 1, all_float=True).head  # our decode again, float
    assert np.array_equal(done[-1].frames, to_uint8(video[0, :, 1:]))
    # as the loop holds it (final frames as 8 bits early): the same bytes
    assert np.array_equal(plain["pipe"].loop.replay(gen.history, SECTIONS, SECTIONS, 1).frames(), to_uint8(video[0]))
    assert video.shape[2] == len(ref) == 36 * SECTIONS + 1
    diff = ((video[0].permute(1, 0, 2, 3) / 2 + 0.5).clamp(0, 1) - ref).abs().max().item()
    print(f"frames: {video.shape[2]}; max abs diff {diff:.3g}")
    assert diff <= 1e-4


def test_end_image_inputs_and_frames_equal_the_reference(ended, plain) -> None:
    """With ``last_image``: the end latent at the first section's 1x post place, the averaged embedding."""
    _same_inputs(ended)
    first = ended["ours"][0]
    assert torch.equal(first["latents_clean"][:, :, 1:], ended["end_mode"].to(first["latents_clean"]))
    assert all(not c["latents_clean"][:, :, 1:].equal(first["latents_clean"][:, :, 1:]) for c in ended["ours"][STEPS:])
    assert not torch.equal(ended["ours"][0]["image_embeds"], plain["ours"][0]["image_embeds"])
    video = ended["pipe"].loop.replay(ended["gen"].history, SECTIONS, SECTIONS, 1, all_float=True).head
    diff = ((video[0].permute(1, 0, 2, 3) / 2 + 0.5).clamp(0, 1) - ended["ref_video"]).abs().max().item()
    assert diff <= 1e-4
    assert (ended["gen"].history.latents - plain["gen"].history.latents).abs().max() > 1e-3  # the end image counts


def test_padding_schedule() -> None:
    """FramePack's: counting down to 0 up to 4 sections, then 3, 2, ..., 2, 1, 0."""
    assert paddings(1) == [0] and paddings(3) == [2, 1, 0] and paddings(4) == [3, 2, 1, 0]
    assert paddings(6) == [3, 2, 2, 2, 1, 0]


def test_encoder_mode_is_refused(folders, backbone) -> None:
    """The history encoder codes the past; this loop conditions on the future (storyboards, keyframes and
    continuing a video are tests/backbones/test_inverted_segments.py's)."""
    pipe = Pipeline(backbone, None, folders["preset"])
    with pytest.raises(InputError, match="conditions on the sections after"):
        pipe.start(GenerationRequest(prompt=PROMPT, seconds=1.2, image=folders["image"], history_mode="encoder"))


def test_end_image_is_refused_on_a_forward_loop(folders) -> None:
    """F1 and the toy generate forward: an end image names the presets that take one."""
    from dataclasses import replace

    preset = folders["preset"]
    forward = replace(preset, model=replace(preset.model, loop="forward"))
    request = GenerationRequest(prompt=PROMPT, image=folders["image"], end_image=folders["end"])
    with pytest.raises(InputError, match="needs the original model: presets framepack-original-12gb"):
        request.validate(forward)
    request.validate(preset)  # the original model's loop takes it
    with pytest.raises(InputError, match="goes with a start image"):
        GenerationRequest(prompt=PROMPT, end_image=folders["end"]).validate(preset)
    with pytest.raises(InputError, match=r"--end-frame-strength: must be a number in \[0, 1\]"):
        GenerationRequest(prompt=PROMPT, image=folders["image"], end_image=folders["end"],
                          end_frame_strength=1.5).validate(preset)


def test_render_writes_the_video_in_time_order(plain, tmp_path) -> None:
    """The job's mp4: the start image, then the whole video sent with the last section (109 frames, as the reference)."""
    from framepack_history.generation.video import read_video
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.extend import extend_job

    job, data = plain["job"], plain["data"]  # the frames compared above, rendered to a job's files
    assert job.checkpoint()["status"] == "done"
    with pytest.raises(InputError, match="cannot be extended"):  # its end is made: nothing comes after it
        extend_job(job, JobDir(tmp_path / "more"), PROMPT, 1.2, out=tmp_path / "m.mp4", segments_dir=tmp_path / "m")
    assert [p.name for p in plain["written"]] == ["context.mp4", "section_00002.mp4"]
    assert [s["frames"] for s in data["sections"]] == [0, 0, 108] and data["frames"] == len(plain["ref_video"]) == 109
    video = read_video(str(plain["mp4"]), SIZE, SIZE, 30, 1000)
    assert len(video) == 109
    # time order: the file's frames follow the reference's (mp4 is lossy: nearest, not equal)
    ref = (plain["ref_video"].permute(0, 2, 3, 1).numpy() * 255).astype(np.float32)
    err = np.abs(video.astype(np.float32)[:, None] - ref[None, [1, 54, 108]]).mean(axis=(2, 3, 4))
    assert err.argmin(axis=0).tolist() == [1, 54, 108], err.argmin(axis=0)


def test_resume_replays_the_held_video(folders, backbone, ended) -> None:
    """Checkpoint after section 1, restore (no held pixels): the end image and the frames come back the same."""
    request = ended["gen"].request
    assert ended["held"] == [True]  # the checkpoint was taken while the decode was held back
    restored, _ = ended["after_1"].restore(Pipeline(backbone, None, folders["preset"]))
    assert restored.held is None and restored.next_section == 2
    assert torch.equal(restored.image_cond.tensors["end_latents"], ended["gen"].image_cond.tensors["end_latents"])
    rest = [ev.frames for ev in Pipeline(backbone, None, folders["preset"]).run(request, resume=restored)
            if isinstance(ev, SectionDone)]
    expected = [ev.frames for ev in ended["events"] if isinstance(ev, SectionDone)]
    assert len(rest) == 1 and np.array_equal(rest[0], expected[-1])


def test_end_frame_strength_scales_the_end_latent(folders, backbone, ended) -> None:
    """FramePack-Studio's strength: the end latent's scale in the first section's context (1 = diffusers' last_image)."""
    pipe = Pipeline(backbone, None, folders["preset"])
    request = GenerationRequest(prompt=PROMPT, seconds=SECTIONS * 36 / 30, seed=7, image=folders["image"],
                                end_image=folders["end"], end_frame_strength=0.25)
    gen, _ = pipe.start(request)
    ctx = pipe.loop.context(gen, "window", pipe.latent_shape(gen))
    assert torch.allclose(ctx.post_latents[:, :, :1], 0.25 * ended["end_mode"], atol=1e-6)
    assert torch.equal(gen.image_cond.tensors["image_embeds"], ended["ours"][0]["image_embeds"])


def test_cli_generates_toward_an_end_image(folders, tmp_path, capsys) -> None:
    """``generate --end-image`` on the original model's preset writes the whole video; a forward preset refuses it.

    Through ``main`` in this process: the real command's exit status and files are tests/cli/test_cli.py's.
    """
    from framepack_history.cli.main import main
    from framepack_history.generation.video import read_video

    out = tmp_path / "v.mp4"
    args = ["generate", "--preset", str(folders["root"] / "tiny.toml"), "--device", "cpu", "--image", str(folders["image"]),
            "--end-image", str(folders["end"]), "--seconds", "2.4", "--prompt", PROMPT, "--out", str(out), "--quiet",
            "--steps", "1"]  # the frames are the reference tests' above; here the command's wiring and the file
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    assert len(read_video(str(out), SIZE, SIZE, 30, 1000)) == 73  # 2 sections: 36 * 2 + 1
    forward = tmp_path / "forward.toml"
    forward.write_text((folders["root"] / "tiny.toml").read_text().replace('loop = "inverted"', 'loop = "forward"'))
    capsys.readouterr()
    assert main(args[:2] + [str(forward)] + args[3:]) == 2
    assert "needs the original model: presets framepack-original-12gb" in capsys.readouterr().err
