"""FramePack's original model's presets: the F1 presets' hardware, the original transformer, and what download fetches."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from framepack_history.config.presets import load_preset
from tests.hub_standin import HubStandIn, go_online

ORIGINAL = "lllyasviel/FramePackI2V_HY"
PAIRS = {"framepack-original-12gb": "rtx4070-12gb", "framepack-original-24gb": "rtx4090-24gb",
         "framepack-original-80gb": "h100-80gb"}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_original_presets_are_the_f1_presets_on_the_original_model(name: str) -> None:
    p, f1 = load_preset(name), load_preset(PAIRS[name])
    assert p.model.loop == "inverted" and p.model.weights == ORIGINAL and f1.model.loop == "forward"
    assert p.model.components == f1.model.components
    assert asdict(p.hardware) == asdict(f1.hardware) and asdict(p.sampling) == asdict(f1.sampling)
    assert (p.video.width, p.video.height, p.video.fps, p.video.section_frames) == \
        (f1.video.width, f1.video.height, f1.video.fps, f1.video.section_frames)
    assert p.history.mode == "window" and not p.model.encoder


@pytest.fixture
def online(tmp_path: Path, monkeypatch):
    """A stand-in hub serving tiny repos under the original preset's hub ids."""
    from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone

    root = tmp_path / "repos"
    bb = HunyuanFramepackBackbone.tiny(seed=3)
    bb.transformer.save_pretrained(root / ORIGINAL)
    for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"):
        getattr(bb, name).save_pretrained(root / "hunyuanvideo-community/HunyuanVideo" / name)
    bb.image_encoder.save_pretrained(root / "lllyasviel/flux_redux_bfl" / "image_encoder")
    bb.feature_extractor.save_pretrained(root / "lllyasviel/flux_redux_bfl" / "feature_extractor")
    with HubStandIn(root) as hub:
        go_online(monkeypatch, hub.url, tmp_path / "cache")
        yield root


def test_download_plan_lists_the_original_transformer(online: Path) -> None:
    from framepack_history.hub.download import make_plan

    plan = make_plan(load_preset("framepack-original-24gb").model, "framepack-original-24gb")
    mine = sorted(f.path for f in plan.files if f.repo == ORIGINAL)
    assert mine == sorted(p.name for p in (online / ORIGINAL).iterdir() if p.suffix in (".json", ".safetensors"))
    assert "diffusion_pytorch_model.safetensors" in mine
    assert {f.repo for f in plan.files} == {ORIGINAL, "hunyuanvideo-community/HunyuanVideo", "lllyasviel/flux_redux_bfl"}
    assert plan.todo == plan.total > 0


def test_the_plan_counts_the_held_segment_on_the_host() -> None:
    """The original model's loop holds a segment back until its last section (8-bit final frames, the float
    frames the next blend reads): the plan's host rows count it, the forward loop's do not, and 300 s still fit."""
    import dataclasses

    from framepack_history.memory.planner import plan

    preset = load_preset("framepack-original-12gb")
    forward = dataclasses.replace(preset, model=dataclasses.replace(preset.model, loop="forward"))
    held, plain = plan(preset, 300), plan(forward, 300)
    v = preset.video
    frame = 3 * v.height * v.width
    last = [r for r in held if r.phase == "vae_decode"][-1]
    sections = last.section + 1
    expected = (sections * v.section_frames + 1) * frame + 33 * frame * 4  # 33: the blend's (9 - 1) * 4 + 1 frames
    assert last.host_peak_bytes - [r for r in plain if r.phase == "vae_decode"][-1].host_peak_bytes == expected
    assert expected > 10 * 1024**3 and held.fits
