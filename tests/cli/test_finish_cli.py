"""The finishing verbs on the command line: outputs checked, bad input is one line and exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from framepack_history.cli.main import main
from framepack_history.generation.finishing import inspect_video
from framepack_history.generation.video import count_frames, write_segment


@pytest.fixture
def clips(tmp_path):
    rng = np.random.default_rng(0)
    a = write_segment(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), tmp_path / "a.mp4", fps=4)
    b = write_segment(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), tmp_path / "b.mp4", fps=4)
    big = write_segment(rng.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8), tmp_path / "big.mp4", fps=4)
    return a, b, big


def test_each_verb_writes_its_output_and_a_sidecar(clips, tmp_path, capsys):
    a, b, _ = clips
    before = a.read_bytes()
    assert main(["upscale", str(a), "--scale", "2", "--method", "bicubic"]) == 0
    up = tmp_path / "a-upscale.mp4"  # the default name, beside the input
    assert inspect_video(up).size == (64, 64) and count_frames(up) == 6
    side = json.loads((tmp_path / "a-upscale.json").read_text())
    assert side["tool"] == "upscale" and side["settings"] == {"scale": 2, "method": "bicubic"}
    assert side["sources"][0]["file"] == str(a.resolve()) and len(side["sources"][0]["sha256"]) == 64
    assert main(["interpolate", str(a), "--factor", "2", "--out", str(tmp_path / "i.mp4")]) == 0
    assert count_frames(tmp_path / "i.mp4") == 12 and inspect_video(tmp_path / "i.mp4").fps == 8
    assert main(["loop", str(a), "--mode", "crossfade", "--fade-frames", "2", "--out", str(tmp_path / "l.mp4")]) == 0
    assert count_frames(tmp_path / "l.mp4") == 4
    assert main(["join", str(a), str(b), "--out", str(tmp_path / "j.mp4")]) == 0
    assert count_frames(tmp_path / "j.mp4") == 9
    assert main(["export", str(a), "--format", "webm", "--quality", "40", "--out", str(tmp_path / "a.webm")]) == 0
    assert count_frames(tmp_path / "a.webm") == 6
    assert "wrote" in capsys.readouterr().out
    assert a.read_bytes() == before


@pytest.mark.parametrize(("argv", "field"), [
    (["upscale", "{a}", "--scale", "3"], "--scale"),
    (["upscale", "{a}", "--method", "RealESRGAN_x4plus.pth"], "--method"),
    (["interpolate", "{a}", "--factor", "8"], "--factor"),
    (["loop", "{a}", "--mode", "crossfade", "--fade-frames", "3"], "--fade-frames"),
    (["join", "{a}", "{big}"], "INPUT"),
    (["join", "{a}"], "INPUT"),
    (["export", "{a}", "--format", "gif", "--quality", "1"], "--quality"),
    (["export", "{a}", "--format", "gif", "--out", "{a}"], "--out"),
    (["export", "{a}", "--format", "h265", "--out", "{dir}/x.webm"], "--out"),
    (["upscale", "{dir}/gone.mp4"], "INPUT"),
])
def test_bad_input_is_one_line_and_exit_status_2(clips, tmp_path, capsys, argv, field):
    a, _, big = clips
    argv = [x.format(a=a, big=big, dir=tmp_path) for x in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {field}:") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "big.mp4"]  # nothing written


def test_an_unknown_format_is_a_usage_error(clips, capsys):
    assert main(["export", str(clips[0]), "--format", "avi"]) == 2
    err = capsys.readouterr().err
    assert "--format" in err and err.count("\n") == 1
