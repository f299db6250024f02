"""Finishing tools: loop, join, export, upscale, interpolate (tiny videos, real outputs checked)."""

from __future__ import annotations

import numpy as np
import pytest

from framepack_history.errors import Cancelled, InputError
from framepack_history.generation import finishing as F
from framepack_history.generation.video import count_frames, write_segment


def frames(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "a.mp4"
    write_segment(frames(), path, fps=4)
    return path


# ------------------------------------------------------------- on frames
def test_pingpong_plays_forward_then_back_without_repeating_the_turns():
    x = frames(5)
    out = F.loop(x, "pingpong")
    order = [0, 1, 2, 3, 4, 3, 2, 1]
    assert len(out) == len(order)
    for got, i in zip(out, order):
        assert np.array_equal(got, x[i])


def test_crossfade_blends_the_end_into_the_start():
    x = frames(7)
    out = F.loop(x, "crossfade", fade_frames=2)
    assert len(out) == 5
    assert np.array_equal(out[0], x[2]) and np.array_equal(out[2], x[4])  # the middle is untouched
    for i, a in enumerate((1 / 3, 2 / 3)):
        want = np.rint((1 - a) * x[5 + i].astype(np.float32) + a * x[i].astype(np.float32))
        assert np.abs(out[3 + i].astype(int) - want.astype(int)).max() <= 1


def test_interpolated_midpoints_are_the_mean_of_their_neighbours():
    x = frames(4)
    out = F.interpolate(x, 2)
    assert len(out) == 8  # the length in seconds is kept at twice the rate: the last frame is held
    for i in range(3):
        assert np.array_equal(out[2 * i], x[i])
        mean = (x[i].astype(int) + x[i + 1].astype(int)) / 2
        assert np.abs(out[2 * i + 1] - mean).max() <= 0.5
    assert np.array_equal(out[6], x[3]) and np.array_equal(out[7], x[3])
    quarter = F.interpolate(x, 4)[1].astype(int)  # factor 4: a quarter of the way
    assert np.abs(quarter - (3 * x[0].astype(int) + x[1]) / 4).max() <= 0.5


def test_upscale_nearest_repeats_pixels_and_bicubic_is_smooth():
    x = frames(2, 8)
    near = F.upscale(x, 4, "nearest")
    assert near.shape == (2, 32, 32, 3)
    assert np.array_equal(near[:, ::4, ::4], x) and np.array_equal(near[:, 3::4, 3::4], x)
    bic = F.upscale(x, 2, "bicubic")
    assert bic.shape == (2, 16, 16, 3) and not np.array_equal(bic, F.upscale(x, 2, "nearest"))


@pytest.mark.parametrize(("call", "field"), [
    (lambda: F.upscale(frames(1), 3), "--scale"),
    (lambda: F.upscale(frames(1), 2, "realesrgan_x4.pth"), "--method"),
    (lambda: F.upscale(frames(1), 2, "model.safetensors"), "--method"),
    (lambda: F.upscale(frames(1), 2, "lanczos"), "--method"),
    (lambda: F.interpolate(frames(2), 3), "--factor"),
    (lambda: F.loop(frames(2), "bounce"), "--mode"),
    (lambda: F.loop(frames(4), "crossfade", 2), "--fade-frames"),
    (lambda: F.check_export("avi", None), "--format"),
    (lambda: F.check_export("h264", 60), "--quality"),
    (lambda: F.check_export("gif", 1), "--quality"),
])
def test_bad_settings_are_refused_by_name(call, field):
    with pytest.raises(InputError) as e:
        call()
    assert e.value.field == field


def test_a_pickle_is_refused_and_a_weight_file_belongs_in_model():
    with pytest.raises(InputError, match="pickle.*nearest, bicubic, esrgan"):
        F.check_upscale(2, "RealESRGAN_x4plus.pth")
    with pytest.raises(InputError, match="give it as --model, with --method esrgan"):
        F.check_upscale(2, "x4.safetensors")
    with pytest.raises(InputError, match="use finish"):  # a model runs on files, through the worker or the CLI
        F.upscale(frames(1), 4, "esrgan")


def test_an_encoder_ffmpeg_lacks_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(F, "encoders", lambda: frozenset({"libx264"}))
    with pytest.raises(InputError, match="libx265") as e:
        F.check_export("h265", None)
    assert e.value.field == "--format"


# --------------------------------------------------------------- on files
def test_tools_on_files_give_the_frames_fps_and_size_asked_for(clip, tmp_path):
    src = clip.read_bytes()
    runs = {
        "l.mp4": ("loop", {"mode": "pingpong"}, (32, 32), 4.0, 10),
        "c.mp4": ("loop", {"mode": "crossfade", "fade_frames": 2}, (32, 32), 4.0, 4),
        "u.mp4": ("upscale", {"scale": 2, "method": "bicubic"}, (64, 64), 4.0, 6),
        "i.mp4": ("interpolate", {"factor": 4}, (32, 32), 16.0, 24),
    }
    for name, (tool, settings, size, fps, n) in runs.items():
        seen = []
        made = F.finish(tool, [clip], tmp_path / name, settings, on_progress=lambda d, t: seen.append((d, t)))
        info = F.inspect_video(tmp_path / name)
        assert (info.size, info.fps, count_frames(tmp_path / name)) == (size, fps, n), tool
        assert made["frames"] == n and seen[-1] == (n, n)
    assert clip.read_bytes() == src  # the original is untouched


def test_join_copies_alike_streams_and_reencodes_different_codecs(clip, tmp_path):
    b = write_segment(frames(3, seed=1), tmp_path / "b.mp4", fps=4)
    F.join([clip, b], tmp_path / "j.mp4")
    assert count_frames(tmp_path / "j.mp4") == 9
    h265 = F.export(b, tmp_path / "b265.mp4", "h265")
    assert not F.same_streams([F.inspect_video(clip), F.inspect_video(h265)])
    F.join([clip, h265], tmp_path / "j2.mp4")
    info = F.inspect_video(tmp_path / "j2.mp4")
    assert info.stream.startswith("h264") and count_frames(tmp_path / "j2.mp4") == 9


def test_join_refuses_another_size_or_rate_naming_the_file(clip, tmp_path):
    big = write_segment(frames(3, 48), tmp_path / "big.mp4", fps=4)
    fast = write_segment(frames(3), tmp_path / "fast.mp4", fps=8)
    with pytest.raises(InputError, match="big.mp4 is 48x48") as e:
        F.check("join", [clip, big], {})
    assert e.value.field == "input"
    with pytest.raises(InputError, match="fast.mp4 plays at 8 fps"):
        F.check("join", [clip, fast], {})
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(("fmt", "name", "quality"), [("h264", "e.mp4", 30), ("webm", "e.webm", None), ("gif", "e.gif", 64)])
def test_export_writes_each_format(clip, tmp_path, fmt, name, quality):
    out = F.export(clip, tmp_path / name, fmt, quality)
    assert count_frames(out) == 6
    with pytest.raises(InputError) as e:
        F.export(clip, tmp_path / "wrong.avi", fmt)
    assert e.value.field == "--out"


def test_a_cancel_stops_the_tool_and_leaves_no_output(clip, tmp_path):
    def cancel(done, total):
        if done >= 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        F.finish("interpolate", [clip], tmp_path / "i.mp4", {"factor": 2}, on_progress=cancel)
    assert list(tmp_path.glob("i*")) == []


def test_ffmpeg_tools_report_progress_and_a_cancel_kills_them(clip, tmp_path):
    seen = []
    F.export(clip, tmp_path / "e.mp4", "h265", on_progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (6, 6)

    def cancel(done, total):
        raise Cancelled()

    with pytest.raises(Cancelled):
        F.join([clip, clip], tmp_path / "j.mp4", on_progress=cancel)
    assert not list(tmp_path.glob("j*"))
