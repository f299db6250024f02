"""Learned finishing models: RRDBNet, SRVGGNetCompact and RIFE's IFNet from safetensors, told apart by their keys.

Tiny random-weight models of the real architectures in their released key layouts
(tests/tiny_finishing.py); what is checked is the machinery (detection, refusals, tiles, shapes,
timesteps), not picture quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from framepack_history.cli.main import main
from framepack_history.errors import InputError
from framepack_history.generation import finishing as F
from framepack_history.generation import learned
from framepack_history.generation.video import count_frames, write_segment
from framepack_history.hub.finishing_weights import describe, resolve
from tests.tiny_finishing import RIFE, RRDB, SRVGG, save_rife, save_rrdbnet, save_srvgg


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"rrdb4": save_rrdbnet(d / "rrdb_x4.safetensors", 4), "rrdb2": save_rrdbnet(d / "rrdb_x2.safetensors", 2),
            "srvgg4": save_srvgg(d / "srvgg_x4.safetensors", 4), "srvgg2": save_srvgg(d / "srvgg_x2.safetensors", 2),
            "rife": save_rife(d / "flownet.safetensors")}


@pytest.fixture
def video(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    return write_segment(frames, tmp_path / "v.mp4", fps=4)


# ------------------------------------------------------------------ detection
@pytest.mark.parametrize(("name", "arch", "scale", "config"), [
    ("rrdb4", "rrdbnet", 4, {"in_ch": 3, "out_ch": 3, "scale": 4, **RRDB}),
    ("rrdb2", "rrdbnet", 2, {"in_ch": 3, "out_ch": 3, "scale": 2, **RRDB}),  # conv_first takes 12 channels
    ("srvgg4", "srvgg", 4, {"in_ch": 3, "out_ch": 3, "scale": 4, **SRVGG}),
    ("srvgg2", "srvgg", 2, {"in_ch": 3, "out_ch": 3, "scale": 2, **SRVGG}),
    ("rife", "ifnet", 1, RIFE),
])
def test_the_architecture_and_its_sizes_are_read_from_the_keys(models, name, arch, scale, config):
    info = describe(models[name])
    assert (info.arch, info.scale, info.config) == (arch, scale, config)
    if arch == "ifnet":  # the released layout: DataParallel's prefix and training-only modules, set aside
        assert info.prefix == "module." and info.ignored == ("caltime.0.weight", "teacher.conv0.0.0.weight")
    model = learned.load(info)  # strict: every key used, every shape fits
    assert sum(p.numel() for p in model.parameters()) > 0


def test_pickles_strangers_and_wrong_scales_are_refused_by_name(models, tmp_path):
    (tmp_path / "x4.pth").write_bytes(b"\x80\x04pickle")
    (tmp_path / "fake.safetensors").write_bytes(b"\x80\x04 not a header at all")
    extra = save_rrdbnet(tmp_path / "extra.safetensors", 4, extra_layer=torch.zeros(2))
    state = load_file(str(models["srvgg4"]))
    state.pop("body.3.weight")  # a PReLU gone
    save_file(state, str(tmp_path / "short.safetensors"))
    cases = [
        (lambda: resolve(str(tmp_path / "x4.pth"), "upscale"), "--model", "pickle-based checkpoint, which is never loaded"),
        (lambda: describe(tmp_path / "fake.safetensors"), "--model", "fake.safetensors is not a safetensors file"),
        (lambda: describe(extra), "--model", "extra.safetensors: keys a RRDBNet \\(ESRGAN\\) does not have: extra_layer"),
        (lambda: describe(tmp_path / "short.safetensors"), "--model", "short.safetensors: a SRVGGNetCompact without body.3"),
        (lambda: F.check_model("esrgan", str(models["rrdb4"]), 2), "--scale", "upscales 4x only"),
        (lambda: F.check_model("esrgan", str(models["rife"]), 2), "--model", "a model for interpolate, not upscale"),
        (lambda: F.check_model("rife", str(models["srvgg4"])), "--model", "a model for upscale, not interpolate"),
        (lambda: F.check_model("bicubic", str(models["rrdb4"]), 4), "--model", "bicubic takes no model"),
        (lambda: F.check_model("esrgan", "realesr-animevideov3", 4), "--model",
         "not downloaded yet: get it with `.*download --finishing realesr-animevideov3`"),
        (lambda: F.check_model("rife", "realesr-animevideov3"), "--model", "an upscale model, not one for interpolate"),
        (lambda: F.check_interpolate_method("optical"), "--method", "not an interpolation method"),
    ]
    for call, field, words in cases:
        with pytest.raises(InputError, match=words) as e:
            call()
        assert e.value.field == field, e.value


# ------------------------------------------------------------------ tiles
@pytest.mark.parametrize("name", ["rrdb4", "rrdb2", "srvgg4"])
def test_tiled_equals_untiled(models, name):
    """With the receptive field inside the overlap, tiles give the whole picture's result: no seams."""
    info = describe(models[name])
    model = learned.load(info)
    x = torch.rand(1, 3, 26, 38, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(x)
        tiled = learned.upscale_tiled(model, x, info.scale, tile=8, overlap=16)
        crude = learned.upscale_tiled(model, x, info.scale, tile=8, overlap=0)  # no context: the seams show
    assert whole.shape == (1, 3, 26 * info.scale, 38 * info.scale)
    assert torch.allclose(tiled, whole, atol=1e-5), (tiled - whole).abs().max()
    assert (crude - whole).abs().max() > 1e-4


def test_the_tile_follows_the_memory_budget(models):
    info = describe(models["rrdb4"])
    small, large = (learned.tile_for(info, b, 4) for b in (64 << 20, 4 << 30))
    assert learned.MIN_TILE <= small < large
    # the padded tile of the larger budget fits it by the estimate
    assert (large + 2 * learned.OVERLAP) ** 2 * learned.bytes_per_pixel(info, 4) <= 4 << 30
    assert learned.tile_for(describe(models["rrdb2"]), 64 << 20, 4) % 2 == 0  # a 2x RRDBNet folds 2x2 pixels


def test_upscaled_frames_have_the_models_scale_and_odd_sides_survive_a_2x_rrdbnet(models):
    frames = np.random.default_rng(2).integers(0, 256, (2, 15, 21, 3), dtype=np.uint8)
    for name, scale in (("rrdb2", 2), ("srvgg4", 4)):
        out = list(learned.upscale_frames(frames, describe(models[name]), "cpu", tile=8))
        assert [f.shape for f in out] == [(15 * scale, 21 * scale, 3)] * 2 and out[0].dtype == np.uint8


# ------------------------------------------------------------------ RIFE
def test_rife_keeps_the_duration_and_uses_the_timestep(models):
    info = describe(models["rife"])
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    out = list(learned.interpolate_frames(frames, info, 4, "cpu"))
    assert len(out) == 12 and all(f.shape == (20, 30, 3) for f in out)
    assert np.array_equal(out[0], frames[0]) and np.array_equal(out[4], frames[1]) and np.array_equal(out[8], frames[2])
    assert all(np.array_equal(f, frames[2]) for f in out[8:])  # the last frame held: 3 frames at 4 fps = 12 at 16
    assert not np.array_equal(out[1], out[3])  # t = 1/4 and t = 3/4 differ: the timestep is an input
    # between two equal flat frames any warp gives the same frame (64x64: no padding, whose zeros a flow may reach)
    flat = np.full((2, 64, 64, 3), 90, np.uint8)
    mid = list(learned.interpolate_frames(flat, info, 2, "cpu"))[1]
    assert np.abs(mid.astype(int) - 90).max() <= 1


# ------------------------------------------------------------------ CLI and worker
def test_the_cli_upscales_with_a_model_and_interpolates_with_rife(models, video, tmp_path, capsys):
    before = video.read_bytes()
    up = tmp_path / "up.mp4"
    assert main(["upscale", str(video), "--scale", "4", "--method", "esrgan", "--model", str(models["srvgg4"]),
                 "--device", "cpu", "--out", str(up)]) == 0
    assert F.inspect_video(up).size == (128, 96) and count_frames(up) == 3
    side = json.loads(up.with_suffix(".json").read_text())
    assert side["settings"] == {"scale": 4, "method": "esrgan", "model": str(models["srvgg4"])}
    assert side["model"]["sha256"] == F.file_sha256(models["srvgg4"]) and "SRVGGNetCompact" in side["model"]["architecture"]
    smooth = tmp_path / "smooth.mp4"
    assert main(["interpolate", str(video), "--factor", "2", "--method", "rife", "--model", str(models["rife"]),
                 "--out", str(smooth)]) == 0
    assert count_frames(smooth) == 6 and F.inspect_video(smooth).fps == 8
    assert "RIFE IFNet" in capsys.readouterr().out
    assert main(["upscale", str(video), "--method", "esrgan", "--model", str(models["rrdb2"]), "--out",
                 str(tmp_path / "x2.mp4")]) == 0  # no --scale: the model's own
    assert F.inspect_video(tmp_path / "x2.mp4").size == (64, 48)
    assert main(["upscale", str(video), "--scale", "2", "--method", "esrgan", "--model", str(models["rrdb4"])]) == 2
    assert capsys.readouterr().err.startswith("error: --scale: rrdb_x4.safetensors upscales 4x only")
    assert video.read_bytes() == before and not (tmp_path / "v-upscale.mp4").exists()


def test_a_worker_job_runs_the_model_on_its_lane_and_records_it(models, video, tmp_path):
    from framepack_history.jobs.worker import Worker
    from tests.jobs.test_jobs import wait

    worker = Worker(tmp_path / "outputs", preview_every_s=0.0).start()
    try:
        with pytest.raises(InputError) as e:  # refused before queueing, naming the field
            worker.submit_tool("upscale", {"scale": 2, "method": "esrgan", "model": str(models["srvgg4"])},
                               files=[str(video)])
        assert e.value.field == "--scale" and worker.store.jobs() == []
        job = worker.submit_tool("upscale", {"scale": 2, "method": "esrgan", "model": str(models["rrdb2"])},
                                 files=[str(video)])
        job = wait(worker, job.id)
        assert job.status == "done", job.message
        assert job.device == "cpu" and job.progress.frames == 3  # the toy preset's device; progress per frame
        assert F.inspect_video(job.video).size == (64, 48)
        side = json.loads(job.sidecar.read_text())
        assert side["model"]["file"] == str(models["rrdb2"]) and side["model"]["sha256"] == F.file_sha256(models["rrdb2"])
        rife = wait(worker, worker.submit_tool("interpolate", {"factor": 4, "method": "rife", "model": str(models["rife"])},
                                               job_ids=[job.id]).id)
        assert rife.status == "done", rife.message
        assert count_frames(rife.video) == 12 and job.video.is_file()  # the original is kept
    finally:
        worker.stop(timeout=30)
