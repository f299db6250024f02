"""What a request starts from: resolution buckets, text-to-video start frames, and cheap previews."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.buckets import REFERENCE_BUCKETS, bucket_list, nearest_bucket
from framepack_history.generation.pipeline import Pipeline, to_uint8
from tests.conftest import TINY_HUNYUAN

#: where the start-frame picker sits in ``Handlers.preset_defaults`` (steps, guidance, shift, rate, history,
#: window, history guidance, seconds, start frame, ...)
START_FRAME_AT = 8

# FramePack's own find_nearest_bucket(h, w, resolution=640) on these (width, height) sources, as (width, height)
# (lllyasviel/FramePack diffusers_helper/bucket_tools.py, run on these inputs).
REFERENCE_CHOICES = {
    (600, 900): (512, 768),  # portrait 2:3
    (560, 1000): (480, 832),  # portrait 9:16
    (500, 500): (608, 640),  # square: a tie between 608x640 and 640x608, the later bucket wins
    (1280, 720): (832, 480),  # landscape 16:9
    (800, 600): (704, 544),  # landscape 4:3
    (300, 100): (960, 416),  # 3:1, beyond the widest bucket
}


@pytest.fixture(scope="module")
def hunyuan():
    from framepack_history.generation.loading import build_encoder, load_backbone

    preset = load_preset(TINY_HUNYUAN)
    backbone = load_backbone(preset.model)
    return backbone, build_encoder(preset.model, backbone), preset


def _pipeline(hunyuan, width: int, height: int) -> Pipeline:
    backbone, encoder, preset = hunyuan
    preset = dataclasses.replace(preset, video=dataclasses.replace(preset.video, width=width, height=height))
    return Pipeline(backbone, encoder, preset)


def _image(tmp_path, w: int, h: int, name: str = "start.png"):
    rng = np.random.default_rng(w * 7 + h)
    path = tmp_path / name
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------ buckets
def test_bucket_list_is_framepacks_at_832x480_and_keeps_the_budget_when_scaled():
    assert bucket_list(832, 480) == list(REFERENCE_BUCKETS)
    for (w, h), want in REFERENCE_CHOICES.items():
        assert nearest_bucket(h, w, list(REFERENCE_BUCKETS))[::-1] == want
    for w, h in ((64, 64), (128, 128), (512, 320)):
        buckets = bucket_list(w, h)
        assert all(bh % 16 == 0 and bw % 16 == 0 and bh * bw <= w * h for bh, bw in buckets)
        ratios = [bw / bh for bh, bw in buckets]
        assert ratios == sorted(ratios, reverse=True) and ratios[0] > 1.5 and ratios[-1] < 1 / 1.5
        assert any(abs(math.log(r)) < 0.1 for r in ratios)  # a square (or nearly) bucket


@pytest.mark.parametrize("source", [(600, 900), (500, 500), (1280, 720)], ids=["portrait", "square", "landscape"])
def test_start_image_gets_framepacks_bucket_through_pipeline_start(hunyuan, tmp_path, source):
    """At the presets' 832x480 budget the bucket is FramePack's; start latents and section noise follow it."""
    pipe = _pipeline(hunyuan, 832, 480)
    request = GenerationRequest(prompt="a cat", seconds=0.5, image=str(_image(tmp_path, *source)))
    gen, frames = pipe.start(request)
    want = REFERENCE_CHOICES[source]
    assert pipe.size_of(gen) == want and (request.width, request.height) == want
    assert frames.shape == (1, want[1], want[0], 3)
    scale = pipe.backbone.geometry.spatial_scale
    assert tuple(gen.image_cond.tensors["start_latents"].shape[-2:]) == (want[1] // scale, want[0] // scale)
    assert tuple(gen.history.latents.shape[-2:]) == (want[1] // scale, want[0] // scale)
    assert request.to_dict()["width"] == want[0] and request.to_dict()["height"] == want[1]  # what the sidecar shows


def test_tiny_preset_buckets_and_a_section_at_the_bucket(hunyuan, tmp_path):
    """On the 64x64 tiny preset: portrait, square and landscape buckets, and one whole section at a portrait one."""
    pipe = _pipeline(hunyuan, 64, 64)
    sizes = {}
    for name, (w, h) in {"portrait": (300, 500), "square": (200, 200), "landscape": (500, 300)}.items():
        gen, frames = pipe.start(GenerationRequest(prompt="x", seconds=0.5, image=str(_image(tmp_path, w, h, f"{name}.png"))))
        sizes[name] = pipe.size_of(gen)
        if name == "portrait":
            done = pipe.generate_section(gen)
            assert done.frames.shape[1:3] == (sizes[name][1], sizes[name][0])
    assert sizes == {"portrait": (48, 80), "square": (64, 64), "landscape": (80, 48)}
    assert all(w * h <= 64 * 64 for w, h in sizes.values())


def test_text_to_video_uses_the_preset_size(hunyuan):
    pipe = _pipeline(hunyuan, 64, 64)
    request = GenerationRequest(prompt="x", seconds=0.5)
    gen, _ = pipe.start(request)
    assert pipe.size_of(gen) == (64, 64) == (request.width, request.height)


@pytest.mark.parametrize("size,needle", [
    ((12, 12), "too small for its"),
    ((400, 60), "aspect ratio of 6.7:1"),
])
def test_bad_image_sizes_name_the_field(hunyuan, tmp_path, size, needle):
    pipe = _pipeline(hunyuan, 832, 480)
    with pytest.raises(InputError) as err:
        pipe.start(GenerationRequest(prompt="x", seconds=0.5, image=str(_image(tmp_path, *size))))
    assert err.value.field == "--image" and needle in err.value.message, err.value


def test_video_without_a_readable_size_is_an_input_error(hunyuan, short_video, monkeypatch):
    from framepack_history.generation import video

    monkeypatch.setattr(video, "probe_video", lambda path, field: {"size": (0, 0)})
    with pytest.raises(InputError) as err:
        _pipeline(hunyuan, 64, 64).start(GenerationRequest(prompt="x", seconds=0.5, continue_video=str(short_video)))
    assert err.value.field == "--continue-video" and "no usable frame size" in err.value.message


def test_continued_video_gets_its_bucket(hunyuan, tmp_path):
    from framepack_history.generation.video import write_segment

    clip = write_segment(np.full((4, 96, 160, 3), 90, np.uint8), tmp_path / "wide.mp4", fps=8)
    pipe = _pipeline(hunyuan, 64, 64)
    gen, frames = pipe.start(GenerationRequest(prompt="x", seconds=0.5, continue_video=str(clip)))
    assert pipe.size_of(gen) == (80, 48) and frames.shape[1:3] == (48, 80)


def test_bucket_settings_are_checked():
    toy = load_preset("toy-cpu")
    assert not toy.video.buckets and load_preset(TINY_HUNYUAN).video.buckets
    assert all(load_preset(p).video.buckets for p in ("rtx4070-12gb", "rtx4090-24gb", "h100-80gb"))
    from framepack_history.config.presets import preset_from_dict

    data = toy.to_dict()
    data["video"]["buckets"] = True
    with pytest.raises(InputError, match="video.buckets"):
        preset_from_dict(data)
    data = load_preset(TINY_HUNYUAN).to_dict()
    data["video"]["width"] = 72
    with pytest.raises(InputError, match="video.width"):
        preset_from_dict(data)


def test_planner_plans_the_chosen_size():
    from framepack_history.memory.planner import plan

    preset = load_preset(TINY_HUNYUAN)
    base = plan(preset, 1.0)
    big = plan(preset, 1.0, size=(48, 80))
    assert big.device_peak != base.device_peak
    assert plan(preset, 1.0, size=(64, 64)).device_peak == base.device_peak


# ------------------------------------------------------------- start frames
def test_text_to_video_start_frames_on_an_i2v_checkpoint(hunyuan):
    pipe = _pipeline(hunyuan, 64, 64)
    bb = pipe.backbone
    anchors = {}
    for kind in ("black", "white", "green", "noise"):
        request = GenerationRequest(prompt="x", seconds=0.5, seed=5, start_frame=kind)
        gen, frames = pipe.start(request)
        assert frames is None  # conditioning only: not part of the video
        assert request.to_dict()["start_frame"] == kind
        anchors[kind] = gen.image_cond.tensors["start_latents"]
        assert torch.equal(gen.history.latents.to(anchors[kind].device), anchors[kind].float())
    white = torch.full((1, 3, 1, 64, 64), 1.0)
    assert torch.allclose(anchors["white"], bb.vae_encode(white).float())
    green = torch.tensor([0, 177, 64]).view(1, 3, 1, 1, 1) / 127.5 - 1
    assert torch.allclose(anchors["green"], bb.vae_encode(green.expand(1, 3, 1, 64, 64)).float())
    noise = anchors["noise"]
    assert noise.shape == (1, 16, 1, 8, 8) and abs(float(noise.std()) - 1) < 0.2  # latent-space noise
    again, _ = pipe.start(GenerationRequest(prompt="x", seconds=0.5, seed=5, start_frame="noise"))
    assert torch.equal(again.image_cond.tensors["start_latents"], noise)  # seeded
    other, _ = pipe.start(GenerationRequest(prompt="x", seconds=0.5, seed=6, start_frame="noise"))
    assert not torch.equal(other.image_cond.tensors["start_latents"], noise)


def test_start_frame_default_and_validation():
    hy, toy = load_preset(TINY_HUNYUAN), load_preset("toy-cpu")
    r = GenerationRequest(prompt="x")
    r.validate(hy)
    assert r.start_frame == "noise"  # the documented default, recorded
    r = GenerationRequest(prompt="x")
    r.validate(toy)
    assert r.start_frame == "world"
    for request, preset, needle in (
        (GenerationRequest(prompt="x", start_frame="purple"), hy, "not offered by the hunyuan_framepack backbone"),
        (GenerationRequest(prompt="x", start_frame="black"), toy, "choices: world"),
        (GenerationRequest(prompt="x", start_frame="black", image="a.png"), hy, "is for text-to-video"),
    ):
        with pytest.raises(InputError) as err:
            request.validate(preset)
        assert err.value.field == "--start-frame" and needle in err.value.message


def test_toy_start_frame_is_still_the_world(toy_pipeline):
    from framepack_history.backbones.toyworld import WorldSpec, start_frame

    gen, frames = toy_pipeline.start(GenerationRequest(prompt="camera holds", seconds=1.0, seed=4))
    assert gen.request.start_frame == "world"
    assert np.array_equal(frames[0], start_frame(4, WorldSpec(view=32), storyboard="camera holds", seconds=1.0))


# ----------------------------------------------------------------- previews
class _NoVAE:
    """Hooks on the VAE that raise: previews must not run it."""

    def __init__(self, vae: torch.nn.Module) -> None:
        self.handles = [m.register_forward_pre_hook(self._raise) for m in vae.modules()]

    @staticmethod
    def _raise(module, args):
        raise AssertionError(f"the VAE ran during a preview ({type(module).__name__})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _denoised_section(pipe: Pipeline, request: GenerationRequest) -> tuple[torch.Tensor, list]:
    """One section with a preview at every step; returns the section's latents and the previews."""
    previews = []
    gen, _ = pipe.start(request)

    def on_step(info):
        with _NoVAE(pipe.backbone.vae):
            previews.append((pipe.preview(0, info).image, info["denoised"].clone()))

    pipe.generate_section(gen, on_step)
    return gen.history.latents[:, :, -pipe.section_latent_frames:], previews


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_toy_preview_is_the_decoded_frame_without_the_vae():
    """The toy world's space-to-depth VAE is linear: the least-squares fit finds it, previews equal the decode."""
    from framepack_history.generation.loading import build_encoder, load_backbone

    preset = load_preset("toy-cpu")
    preset.model = dataclasses.replace(preset.model, weights="", encoder="")  # random DiT, the real VAE config
    bb = load_backbone(preset.model)
    m = bb.latent_rgb()
    assert m.block == 2 and torch.allclose(m.weight, torch.eye(12), atol=1e-5) and float(m.bias.abs().max()) < 1e-5
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset)
    _, previews = _denoised_section(pipe, GenerationRequest(prompt="camera pans right", seconds=1.0, seed=2))
    assert len(previews) == preset.sampling.steps
    psnrs = []
    for image, denoised in previews:
        decoded = to_uint8(bb.vae_decode(denoised[:, :, -1:])[0])[0]
        assert image.shape == decoded.shape == (16, 16, 3)
        psnrs.append(_psnr(image, decoded))
    print("toy preview PSNR vs decode:", psnrs)
    assert min(psnrs) > 60.0  # measured: identical (inf)


def test_hunyuan_preview_is_framepacks_fixed_map_without_the_vae(hunyuan):
    from framepack_history.backbones.hunyuan_framepack import LATENT_RGB_BIAS, LATENT_RGB_FACTORS

    pipe = _pipeline(hunyuan, 64, 64)
    _, previews = _denoised_section(pipe, GenerationRequest(prompt="x", seconds=0.5, seed=1))
    assert len(previews) == pipe.preset.sampling.steps
    # FramePack's vae_decode_fake: a 1x1x1 conv3d with the factors, clamped to [0, 1], then x255
    weight = torch.tensor(LATENT_RGB_FACTORS).T[:, :, None, None, None]
    for image, denoised in previews:
        ref = torch.nn.functional.conv3d(denoised[:, :, -1:].float(), weight, torch.tensor(LATENT_RGB_BIAS)).clamp(0, 1)
        ref = ref[0, :, 0].repeat_interleave(8, 1).repeat_interleave(8, 2)  # one colour per latent pixel, 8x8 pixels
        ref = (ref * 2 - 1 + 1) * 127.5
        assert image.shape == (64, 64, 3)
        assert np.abs(image.astype(np.float64) - ref.permute(1, 2, 0).numpy()).max() <= 0.5 + 1e-3
    assert LATENT_RGB_FACTORS[0] == (-0.0395, -0.0331, 0.0445) and LATENT_RGB_FACTORS[15] == (0.0249, -0.0469, -0.1703)
    assert LATENT_RGB_BIAS == (0.0259, -0.0192, -0.0761) and len(LATENT_RGB_FACTORS) == 16


# ---------------------------------------------------------------------- CLI
def test_cli_start_frame_and_bad_sizes_exit_2(tmp_path, capsys):
    from framepack_history.cli.main import main

    assert main(["generate", "--preset", str(TINY_HUNYUAN), "--prompt", "x", "--start-frame", "purple"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --start-frame: 'purple' is not offered") and "noise, black, white, green" in err
    thin = _image(tmp_path, 500, 50)
    assert main(["generate", "--preset", str(TINY_HUNYUAN), "--prompt", "x", "--image", str(thin)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --image: is 500x50, an aspect ratio of 10.0:1") and len(err.splitlines()) == 1


def test_cli_records_start_frame_and_size_in_the_sidecar(tmp_path):
    import json

    from framepack_history.cli.main import main

    out = tmp_path / "t2v.mp4"
    assert main(["generate", "--preset", str(TINY_HUNYUAN), "--prompt", "x", "--seconds", "0.5", "--start-frame", "green",
                 "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["request"]["start_frame"] == "green" and (data["request"]["width"], data["request"]["height"]) == (64, 64)
    assert data["frames"] == 8  # one section of 2 latents after the hidden start latent (F1 decode: 4 per latent), no start frame shown


# --------------------------------------------------------------------- page
def test_page_start_frame_picker_follows_the_preset_and_yields_to_a_start_image(tmp_path):
    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.handlers import Handlers

    h = Handlers(Worker(outputs=tmp_path / "outputs"), str(TINY_HUNYUAN), temp_dir=tmp_path / "tmp")
    picker = h.preset_defaults(str(TINY_HUNYUAN))[START_FRAME_AT]
    assert [v for _, v in picker["choices"]] == ["noise", "black", "white", "green"]
    assert picker["value"] == "noise" and picker["visible"]
    toy = h.preset_defaults("toy-cpu")[START_FRAME_AT]
    assert [v for _, v in toy["choices"]] == ["world"] and not toy["visible"]
    values = ["x", None, None, 1, 0, str(TINY_HUNYUAN), None, None, None, None, None, None, None]
    assert h.spec(*values, "white").request.start_frame == "white"
    assert h.spec(*values[:1], str(_image(tmp_path, 64, 64)), *values[2:], "white").request.start_frame is None
