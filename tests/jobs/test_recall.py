"""The memory inspector: recall a past frame from a job's history embedding, or say why not."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from framepack_history.cli.main import main
from tests.conftest import TINY_TOY


def test_recall_writes_the_frame_and_prints_its_psnr(tmp_path, capsys):
    job = tmp_path / "job"
    args = ["generate", "--preset", "toy-cpu", "--prompt", "0s: camera pans right; 2s: camera pans left", "--seconds", "4",
            "--seed", "1", "--steps", "2", "--quiet", "--job-dir", str(job), "--out", str(tmp_path / "v.mp4")]
    assert main(args) == 0
    capsys.readouterr()
    out, real = tmp_path / "frame.png", tmp_path / "real.png"
    assert main(["recall", str(job), "--at", "1.5", "--out", str(out), "--real-out", str(real), "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    m = re.search(r"PSNR (\d+\.\d+) dB", printed)
    assert m, printed
    assert "latent frame 6" in printed  # 1.5 s at 4 fps: video frame 6; the start frame is latent 0, so latent 6
    got, ref = np.asarray(Image.open(out)), np.asarray(Image.open(real))
    assert got.shape == ref.shape == (256, 256, 3)  # 16x16 written at the preset's display scale
    mse = ((got.astype(np.float64) - ref) ** 2).mean()
    assert abs(10 * np.log10(255.0**2 / mse) - float(m.group(1))) < 0.05  # the printed PSNR is that of the two PNGs
    assert float(m.group(1)) > 12  # the embedding holds the frame: far above noise (about 8 dB)
    # a time outside the video is a clear error
    assert main(["recall", str(job), "--at", "40", "--out", str(out)]) == 2
    assert "--at" in capsys.readouterr().err


@pytest.mark.parametrize("preset,mode,reason", [
    (str(TINY_TOY), None, "no trained history encoder"),
    ("toy-cpu", "window", "history mode 'window'"),
])
def test_recall_without_an_embedding_exits_2_with_the_reason(tmp_path, capsys, preset, mode, reason):
    job = tmp_path / "job"
    args = ["generate", "--preset", preset, "--prompt", "camera holds", "--seconds", "1", "--steps", "1", "--quiet",
            "--job-dir", str(job), "--out", str(tmp_path / "v.mp4")] + (["--history", mode] if mode else [])
    assert main(args) == 0
    capsys.readouterr()
    assert main(["recall", str(job), "--at", "0.5", "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1, err
    assert not (tmp_path / "f.png").exists()
    assert main(["recall", str(tmp_path / "nowhere"), "--at", "0.5"]) == 2


@pytest.mark.parametrize("context", [1, 33])  # a start image; a continued video of 33 frames (9 causal latents)
def test_layout_times_invert_the_inspectors_time_to_frame_map(context):
    """A run boundary's time is the first time ``frame_at`` maps to that latent frame (4x causal VAE, 30 fps)."""
    from types import SimpleNamespace

    from framepack_history.backbones.base import LatentGeometry
    from framepack_history.jobs.recall import frame_at, seconds_of

    geo = LatentGeometry(spatial_scale=8, temporal_scale=4, causal_first_frame=True, latent_channels=16,
                         patch_size=(1, 2, 2), hidden_size=64)
    pipe = SimpleNamespace(preset=SimpleNamespace(video=SimpleNamespace(fps=30, section_frames=36)),
                           section_latent_frames=9, backbone=SimpleNamespace(geometry=geo))
    ck = {"next_section": 3, "context_frames": context}
    frames = geo.latent_frames(context) + 27  # the start latents, then three sections of 9
    for f in range(frames):
        t = seconds_of(pipe, ck, frames, f)
        pos, _ = frame_at(pipe, ck, frames, t)
        assert pos >= f and (t == 0 or frame_at(pipe, ck, frames, t - 1 / 30)[0] < f), (f, t, pos)
