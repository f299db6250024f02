"""Footage to a generating preset, at tiny size: prepare-data, Stage I, Stage II, export, generate.

A tiny FramePack-F1 (random weights, saved in the hub's layout) stands in
for the real model; four short mp4s of moving squares with captions stand in
for footage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.cli.main import main
from framepack_history.generation.video import write_segment
from framepack_history.training.common import read_log
from framepack_history.training.data import PreparedDataset
from tests.backbones.tiny_framepack import save_hub_layout

from .conftest import train

COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))
STORYBOARD = "0s: a square moves right; 2s: the square keeps moving"


def write_videos(root: Path, seconds: float = 5.0, fps: int = 8) -> Path:
    """Four 64x64 mp4s of a square moving right (two with storyboard captions) and one broken file."""
    root.mkdir(parents=True, exist_ok=True)
    n = int(seconds * fps)
    for i, colour in enumerate(COLOURS):
        frames = np.zeros((n, 64, 64, 3), np.uint8)
        for t in range(n):
            x = (2 * t + 10 * i) % 48
            frames[t, 20:36, x : x + 16] = colour
        write_segment(frames, root / f"clip{i}.mp4", fps)
        (root / f"clip{i}.txt").write_text(STORYBOARD if i % 2 else "a square moves")
    (root / "broken.mp4").write_bytes(b"this is not a video")
    return root


def tiny_f1_preset(root: Path) -> Path:
    """A tiny F1 in the hub's layout (DiT, HunyuanVideo base, redux image encoder) and a preset naming it."""
    save_hub_layout(HunyuanFramepackBackbone.tiny(seed=0), root, "f1")
    path = root / "tiny-f1.toml"
    path.write_text(f"""
[model]
backbone = "hunyuan_framepack"
weights = "{root / 'f1'}"
components = {{ base = "{root / 'base'}", image_encoder = "{root / 'redux'}" }}
encoder_rate = "2x2x2"
encoder_rates = ["2x2x2", "4x4x2"]
encoder_channels = [8, 16, 16, 32]
[video]
width = 64
height = 64
fps = 8
section_frames = 5
max_seconds = 10
[sampling]
sampler = "unipc"
steps = 2
guidance = 10.0
shift = 3.0
[history]
mode = "encoder"
[hardware]
device = "cpu"
dtype = "float32"
""")
    return path


#: a few steps of each stage on the prepared clips (LoRA on the tiny DiT)
STEPS = {"lora_rank": 4, "max_steps": 2, "batch_size": 2, "save_every": 1, "log_every": 1, "caption_dropout": 0.5}
STAGE2 = {"stage2": {"window_frames": 0, "p_window_mode": 0.0}}  # F1 reads its own context, no add-on window


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    preset = tiny_f1_preset(root)
    videos = write_videos(root / "videos")
    out = root / "prepared"
    return {"root": root, "preset": preset, "videos": videos, "out": out,
            "rc": main(["prepare-data", str(videos), "--preset", str(preset), "--out", str(out), "--clip-seconds", "2"])}


def test_prepare_data_writes_clips_text_and_start_images_and_names_a_bad_file(prepared, capsys):
    assert prepared["rc"] == 0
    manifest = json.loads((prepared["out"] / "manifest.json").read_text())
    files = manifest["files"]
    assert {rel for rel, e in files.items() if e["status"] == "ok"} == {f"clip{i}.mp4" for i in range(4)}
    assert files["broken.mp4"]["status"] == "error" and "broken.mp4" in files["broken.mp4"]["error"]
    # 2 s at 8 fps rounds to 3 sections: a start frame + 3 x 2 latents = 7 latents, 25 frames
    assert manifest["settings"]["clip_frames"] == 25
    data = PreparedDataset(prepared["out"])
    assert len(data) == 4
    item = data[0]
    assert item["latents"].shape == (16, 7, 8, 8)
    texts = data.text_table()
    assert {"", "a square moves", "a square moves right", "the square keeps moving"} <= set(texts)
    assert {"prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask"} <= set(texts[""])
    assert len(data.starts) == 4 and all("image_embeds" in data.image(key) for key in data.starts)


def test_prepare_data_resumes_without_encoding_again(prepared, capsys):
    shards = sorted((prepared["out"] / "clips").glob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    rc = main(["prepare-data", str(prepared["videos"]), "--preset", str(prepared["preset"]),
               "--out", str(prepared["out"]), "--clip-seconds", "2"])
    err = capsys.readouterr().err
    assert rc == 0
    assert err.count("already prepared, skipped") == 4
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    assert "broken.mp4" in err  # named again, still not fatal


def test_prepare_data_bad_arguments_exit_2(prepared, tmp_path, capsys):
    assert main(["prepare-data", str(tmp_path / "nowhere"), "--preset", str(prepared["preset"])]) == 2
    assert "VIDEOS_DIR" in capsys.readouterr().err
    assert main(["prepare-data", str(prepared["videos"]), "--preset", "no-such-preset"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["prepare-data", str(prepared["videos"])]) == 2
    assert "--preset" in capsys.readouterr().err


def _refuse(*args, **kwargs):
    raise AssertionError("an encoder ran in a training step on prepared data")


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> dict:
    """Stage I then Stage II on the prepared folder with the VAE, text and image encoders made to raise."""
    mp = pytest.MonkeyPatch()
    for name in ("encode_text", "encode_image", "vae_encode", "vae_decode"):
        mp.setattr(HunyuanFramepackBackbone, name, _refuse)
    try:
        runs = tmp_path_factory.mktemp("runs")
        data = {"kind": "prepared", "root": str(prepared["out"]), "exclude_files": ["clip3.mp4"]}
        s1 = train("stage1", runs / "stage1", preset=str(prepared["preset"]), data=data, **STEPS)
        s2 = train("stage2", runs / "stage2", preset=str(prepared["preset"]), data=data, **STEPS, **STAGE2,
                   model={"weights": str(s1 / "transformer"), "encoder": str(s1 / "history_encoder")})
    finally:
        mp.undo()
    return {"stage1": s1, "stage2": s2}


def test_stages_train_from_prepared_clips_without_any_encoder(trained):
    for stage in ("stage1", "stage2"):
        rows = read_log(trained[stage] / "loss.jsonl")
        assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    s2 = trained["stage2"]
    assert (s2 / "history_encoder" / "diffusion_pytorch_model.safetensors").is_file()
    assert (s2 / "transformer_lora" / "adapter_model.safetensors").is_file()


def test_the_exported_preset_generates_with_history_tokens_read_by_the_dit(trained, prepared, tmp_path):
    """``generate --history encoder`` on the exported preset: the history tokens change the video.

    Encoder mode is window mode plus the history tokens (F1 parity), so the
    two videos differ exactly by what the DiT read from the tokens.
    """
    from framepack_history.generation.video import read_video

    preset = trained["stage2"] / "preset.toml"
    text = preset.read_text()
    assert str(trained["stage2"] / "history_encoder") in text and str(prepared["root"] / "base") in text
    videos = {}
    for mode in ("encoder", "window"):
        out = tmp_path / f"{mode}.mp4"
        rc = main(["generate", "--preset", str(preset), "--prompt", "a square moves", "--seconds", "1", "--seed", "3",
                   "--steps", "1", "--history", mode, "--quiet", "--out", str(out)])
        assert rc == 0
        side = json.loads(out.with_suffix(".json").read_text())
        videos[mode] = (read_video(out, 64, 64, 8, 1000), side)
    tokens = [s["history_tokens"] for s in videos["encoder"][1]["sections"]]
    assert tokens[-1] > 0  # the later sections had history tokens
    a, b = videos["encoder"][0].astype(int), videos["window"][0].astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() > 0


def test_retrieval_and_revisit_evaluate_held_out_prepared_clips(trained, prepared, tmp_path, capsys):
    """The held-out file (clip3, excluded from training) is scored with the toy's tables."""
    over = ["--models", f'["ours={trained["stage2"]}"]', "--data.kind", "prepared", "--data.root", str(prepared["out"]),
            "--data.files", '["clip3.mp4"]', "--steps", "1", "--queries_per_band", "1", "--out", str(tmp_path)]
    assert main(["eval", "retrieval", *over]) == 0
    res = json.loads((tmp_path / "retrieval.json").read_text())
    row = res["models"]["ours"]
    assert row["all"]["psnr"]["episodes"] == 1 and np.isfinite(row["all"]["psnr"]["mean"])
    assert (tmp_path / "retrieval.png").is_file()
    assert main(["eval", "revisit", *over]) == 0
    res = json.loads((tmp_path / "revisit.json").read_text())
    cell = next(iter(res["models"]["ours"]["real_footage"].values()))
    assert cell["episodes"] == 1
    assert {"teacher_forced_psnr"} <= set(cell["encoder"]) and {"teacher_forced_psnr"} <= set(cell["window"])
    printed = capsys.readouterr().out
    assert "ours" in printed


def test_resume_on_prepared_clips_continues_the_same_loss_curve(trained, prepared, tmp_path):
    """Stopped after step 1's checkpoint and started again: the same losses as Stage I's uninterrupted run."""
    data = {"kind": "prepared", "root": str(prepared["out"]), "exclude_files": ["clip3.mp4"]}
    part = tmp_path / "part"
    train("stage1", part, preset=str(prepared["preset"]), data=data, **{**STEPS, "max_steps": 1})
    train("stage1", part, preset=str(prepared["preset"]), data=data, **STEPS)  # resume="auto": from step_0000001
    a, b = read_log(trained["stage1"] / "loss.jsonl"), read_log(part / "loss.jsonl")
    assert [r["step"] for r in b] == [1, 2]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-6)


def test_two_processes_train_on_prepared_clips(prepared, tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo) on the prepared folder: ranks stay identical.

    The same launch streams the frozen DiT blocks (``stream_blocks``): each process streams its own, and the
    ranks' weights stay equal. The frozen block weights are kept out of DDP (``_ddp_params_and_buffers_to_ignore``):
    on a GPU they sit on the host, where DDP would neither broadcast nor accept them. (One launch for both: each
    two-rank launch pays two interpreters' start-up.)
    """
    from .test_distributed import two_rank_stage1

    out = tmp_path / "ddp"
    rows = two_rank_stage1(out, "--preset", str(prepared["preset"]), "--data.kind", "prepared",
                           "--data.root", str(prepared["out"]), "--batch_size", "1", "--lora_rank", "4",
                           "--gradient_checkpointing", "true", "--stream_blocks", "true")
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "transformer_lora" / "adapter_model.safetensors").is_file()
