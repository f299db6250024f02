"""The headless CLI: runs write a playable mp4 + sidecar; bad input exits 2 with one line.

One real process proves ``python -m framepack_history generate`` end to end (exit status 0, the files);
the other runs go through ``main`` in this process: the same code, without paying the interpreter's
start-up and imports once per case.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from framepack_history.cli.main import main
from framepack_history.generation.video import count_frames
from tests import waiting
from tests.conftest import TINY_HUNYUAN, TINY_TOY


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m framepack_history ARGS``, as long as it keeps working."""
    return waiting.run([sys.executable, "-m", "framepack_history", *args], capture_output=True, text=True)


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``main(ARGS)`` in this process: (exit status, stdout, stderr); argparse's own exits (help) count as returns."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_subcommands(capsys):
    code, out, _ = run_main(capsys, "--help")  # a real process runs --help in tests/cli/test_help.py
    assert code == 0
    for sub in ("generate", "inspect"):
        assert sub in out


@pytest.mark.parametrize(
    "preset,extra,frames",
    [
        (TINY_TOY, ["--prompt", "camera pans left", "--seconds", "1.5"], 1 + 12),  # the world's start frame + 3 sections of 4 frames
        (TINY_TOY, ["--prompt", "0s: camera pans right; 1s: camera pans left", "--seconds", "2", "--history", "window"], 1 + 16),
        # 2 sections of 2 latents after the (hidden) noise start latent, decoded as FramePack-F1: 4 frames per latent
        (TINY_HUNYUAN, ["--prompt", "a cat", "--seconds", "1"], 8 + 8),
    ],
    ids=["toy-t2v", "toy-storyboard-window", "hunyuan-t2v"],
)
def test_generate_writes_mp4_and_sidecar(tmp_path, preset, extra, frames, capsys):
    out = tmp_path / "v.mp4"
    argv = ("generate", "--preset", str(preset), "--seed", "4", "--out", str(out), *extra)
    if preset == TINY_TOY and "--history" not in extra:  # the one real process: the command's exit status and files
        r = cli(*argv)
        assert r.returncode == 0, r.stderr
    else:
        code, _, err = run_main(capsys, *argv)
        assert code == 0, err
    assert count_frames(out) == frames
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["seed"] == 4 and side["request"]["prompt"] == extra[1]
    assert {"torch", "diffusers", "framepack_history"} <= set(side["versions"])
    assert len(side["sections"]) == len(side["sections"]) and all("denoise_s" in s for s in side["sections"])
    assert "history_tokens" in side["sections"][0]


def test_generate_image_and_continue_video(tmp_path, start_image, short_video, capsys):
    out = tmp_path / "i2v.mp4"
    code, _, err = run_main(capsys, "generate", "--preset", str(TINY_TOY), "--image", str(start_image), "--seconds", "1",
                            "--out", str(out))
    assert code == 0, err
    assert count_frames(out) == 1 + 8
    out2 = tmp_path / "cont.mp4"
    code, _, err = run_main(capsys, "generate", "--preset", str(TINY_TOY), "--continue-video", str(short_video), "--prompt",
                            "go on", "--seconds", "1", "--out", str(out2))
    assert code == 0, err
    assert count_frames(out2) == 8 + 8


def test_hunyuan_image_to_video(tmp_path, start_image, capsys):
    out = tmp_path / "h.mp4"
    code, _, err = run_main(capsys, "generate", "--preset", str(TINY_HUNYUAN), "--image", str(start_image), "--prompt",
                            "a cat", "--seconds", "0.5", "--out", str(out))
    assert code == 0, err
    assert count_frames(out) == 1 + 8  # the start image, then 4 frames per latent as FramePack-F1 decodes


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--seconds", "0"], "--seconds"),
        (["--seconds", "-1"], "--seconds"),
        (["--seconds", "nan"], "--seconds"),
        (["--seconds", "inf"], "--seconds"),
        (["--seconds", "100000"], "--seconds"),
        (["--seconds", "abc"], "--seconds"),
        (["--prompt", ""], "--prompt"),
        (["--preset", "no-such-preset"], "--preset"),
        (["--image", "/nonexistent/x.png"], "--image"),
        (["--continue-video", "/nonexistent/x.mp4"], "--continue-video"),
        (["--history", "forget"], "--history"),
        (["--history-merge", "newest"], "--history-merge"),
        (["--out", "video.avi"], "--out"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle, capsys):
    """In-process (fast); the subprocess test below proves the real exit status."""
    base = {"--prompt": "a", "--seconds": "1", "--preset": str(TINY_TOY)}
    argv = ["generate"]
    given = dict(zip(args[::2], args[1::2]))
    for k, v in {**base, **given}.items():
        argv += [k, v]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_corrupt_image_exits_2(tmp_path, capsys):
    """Exit status 2 and one line naming the argument (a real process: tests/cli/test_bad_input.py's
    test_cli_real_process)."""
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, _, err = run_main(capsys, "generate", "--preset", str(TINY_TOY), "--image", str(bad), "--seconds", "1")
    assert code == 2 and "--image" in err and "not a readable image" in err
    assert len(err.strip().splitlines()) == 1


def test_inspect_json(capsys):
    code, out, err = run_main(capsys, "inspect", "--preset", "rtx4070-12gb", "--json")
    assert code == 0, err
    info = json.loads(out)
    row = info["history"]["rates"]["4x4x2"]
    assert row["compression"] == pytest.approx(30, rel=0.1)  # 1/32 of the raw tokens, up to edge padding
