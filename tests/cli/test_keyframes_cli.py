"""Keyframes on the command line: ``--keyframe TIME:IMAGE`` and ``[image]`` storyboard entries; bad ones exit 2 with one
line naming the entry, before any weights load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framepack_history.cli.main import main
from tests.conftest import TINY_TOY

TINY = str(TINY_TOY)


@pytest.fixture
def pngs(tmp_path) -> dict[str, str]:
    out = {}
    for i, name in enumerate(("start", "door", "garden")):
        Image.fromarray((np.random.default_rng(i).random((40, 56, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
        out[name] = str(tmp_path / f"{name}.png")
    (tmp_path / "broken.png").write_bytes(b"no image here")
    out["broken"] = str(tmp_path / "broken.png")
    return out


def _refused(capsys, *argv: str) -> str:
    assert main(["generate", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_keyframes_exit_2_naming_the_entry(pngs, capsys):
    base = ["--preset", TINY, "--seconds", "2"]
    line = _refused(capsys, *base, "--prompt", f"0s: a; 1s: [{pngs['broken']}] b")
    assert line == "error: --prompt: keyframe at 1s ([broken.png]): broken.png is not a readable image " \
                   "(not PNG, JPEG, WebP, BMP, TIFF, GIF or another format Pillow knows)"
    line = _refused(capsys, *base, "--prompt", "a", "--keyframe", f"3:{pngs['door']}")
    assert line == "error: --keyframe: keyframe at 3s ([door.png]) is outside the video (0 to 2s)"
    line = _refused(capsys, *base, "--prompt", f"0s: a; 1s: [{pngs['door']}] b", "--keyframe", f"1:{pngs['garden']}")
    assert line.startswith("error: --prompt: keyframe at 1s ([door.png]): keyframe at 1s ([garden.png]) is at the same time")
    line = _refused(capsys, *base, "--prompt", "a", "--keyframe", pngs["door"])
    assert line.startswith("error: --keyframe: ") and "write TIME:IMAGE" in line
    line = _refused(capsys, *base, "--prompt", "a", "--image", pngs["start"], "--keyframe", f"0:{pngs['door']}")
    assert "keyframe at 0s ([door.png]) is the start image" in line


def test_an_f1_preset_refuses_keyframes_before_looking_for_weights(pngs, capsys):
    line = _refused(capsys, "--preset", "rtx4090-24gb", "--prompt", "a", "--keyframe", f"2:{pngs['door']}")
    assert line.startswith("error: --keyframe: keyframe at 2s ([door.png]): keyframes need the original model: presets "
                           "framepack-original-12gb, framepack-original-24gb or framepack-original-80gb")
    line = _refused(capsys, "--preset", "rtx4090-24gb", "--prompt", f"0s: a; 2s: [{pngs['door']}] b")
    assert line.startswith("error: --prompt: keyframe at 2s ([door.png]): keyframes need the original model")


def test_a_keyframed_job_keeps_its_images_and_records_them(pngs, tmp_path, capsys):
    out, job = tmp_path / "v.mp4", tmp_path / "job"
    argv = ["generate", "--preset", TINY, "--seconds", "1", "--steps", "1", "--quiet", "--out", str(out),
            "--job-dir", str(job), "--prompt", f"0s: [{pngs['start']}] camera pans left; 0.5s: [{pngs['door']}]",
            "--keyframe", f"1:{pngs['garden']}"]
    assert main(argv) == 0, capsys.readouterr().err
    import json

    data = json.loads(out.with_suffix(".json").read_text())
    assert [(k["time"], k["file"]) for k in data["keyframes"]] == [(0.5, "door.png"), (1.0, "garden.png")]
    assert data["request"]["prompt"] == "0s: camera pans left" and Path(data["request"]["image"]).name == "image.png"
    kept = [Path(k["image"]) for k in data["request"]["keyframes"]]
    assert [p.name for p in kept] == ["keyframe_0.png", "keyframe_1.png"] and all(p.parent == job / "inputs" for p in kept)
    from framepack_history.lora.files import sha256

    assert [k["sha256"] for k in data["keyframes"]] == [sha256(Path(pngs["door"])), sha256(Path(pngs["garden"]))]

    # extend: the old job's keyframes go on (kept in the new job folder); new images are refused
    line = _refused_extend(capsys, str(job), "--seconds", "0.5", "--prompt", f"0s: a; 1.2s: [{pngs['door']}] b")
    assert line.startswith("error: --prompt: keyframe at 1.2s ([door.png]): an extension cannot add keyframes")
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.extend import extend_job

    new = JobDir(tmp_path / "longer")
    request = extend_job(JobDir(job), new, "0s: camera holds", 0.5, out=tmp_path / "longer.mp4",
                         segments_dir=new.root / "segments")
    assert [k["time"] for k in request.keyframes] == [0.5, 1.0]
    assert [Path(k["image"]).parent for k in request.keyframes] == [new.root / "inputs"] * 2
    assert Path(request.keyframes[1]["image"]).read_bytes() == Path(pngs["garden"]).read_bytes()
    assert new.info().request.keyframes == request.keyframes


def _refused_extend(capsys, *argv: str) -> str:
    assert main(["extend", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]
