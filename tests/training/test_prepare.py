"""prepare-data's pieces without a model: clips cut on section boundaries, storyboards re-timed per clip,
the prompts training will ask for, and a prepared folder's selection of files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from framepack_history.config.storyboard import caption_at
from framepack_history.errors import InputError
from framepack_history.fsio import atomic_save_tensors
from framepack_history.training.data import PreparedDataset, first_latent_key
from framepack_history.training.prepare import clip_caption, clip_prompts, clips_of, storyboard_entries


def test_long_videos_split_into_whole_clips_and_a_short_one_keeps_whole_sections():
    frames = (np.full((8, 8, 3), i, np.uint8) for i in range(50))
    clips = list(clips_of(frames, (8, 8), length=21, section=4, first=1))
    assert [(start, len(c)) for start, c in clips] == [(0, 21), (21, 21)]  # the 8 frames after them are dropped
    assert clips[1][1][0, 0, 0, 0] == 21  # each clip starts where the last ended
    short = list(clips_of((np.zeros((8, 8, 3), np.uint8) for _ in range(12)), (8, 8), length=21, section=4, first=1))
    assert [len(c) for _, c in short] == [9]  # the start frame + 2 whole sections
    assert list(clips_of((np.zeros((8, 8, 3), np.uint8) for _ in range(4)), (8, 8), 21, 4, 1)) == []


def test_storyboards_are_retimed_to_each_clip():
    entries = storyboard_entries("0s: a cat sleeps; 12s: the cat wakes; 25s~2s: the cat runs")
    first, second = clip_caption(entries, 0.0, 20.0), clip_caption(entries, 20.0, 40.0)
    assert first == "0s: a cat sleeps; 12s: the cat wakes"
    assert caption_at(second, 0.0) == "the cat wakes" and caption_at(second, 6.0) == "the cat runs"
    assert clip_caption(storyboard_entries("a plain caption"), 20.0, 40.0) == "a plain caption"
    assert set(clip_prompts(second)) == {"the cat wakes", "the cat runs"}
    # a caption that only looks like a storyboard is plain text to caption_at, and so to the prompts
    assert clip_prompts("5 cats: sleeping") == [caption_at("5 cats: sleeping", 0.0)]


def _fake_prepared(root, files: dict[str, list[int]]) -> None:
    """A prepare-data folder whose clips have the given latent lengths (no model needed)."""
    (root / "clips").mkdir(parents=True)
    manifest = {"settings": {"backbone": "toy", "fps": 8}, "files": {}}
    for i, (rel, lengths) in enumerate(files.items()):
        tensors = {f"latents.{j}": torch.full((4, t, 2, 2), float(i)) for j, t in enumerate(lengths)}
        tensors.update({f"cond.{j}.image_embeds": torch.full((1, 3), float(i)) for j in range(len(lengths))})
        atomic_save_tensors(root / "clips" / f"{i}.safetensors", tensors, metadata={
            "captions": json.dumps([rel] * len(lengths)), "width": "4", "height": "4"})
        manifest["files"][rel] = {"status": "ok", "shard": f"{i}.safetensors", "size": [4, 4]}
    manifest["files"]["bad.mp4"] = {"status": "error", "error": "bad"}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_a_prepared_folder_selects_files_and_keeps_whole_clips(tmp_path):
    _fake_prepared(tmp_path, {"a.mp4": [7, 7], "b.mp4": [5], "c.mp4": [7]})
    everything = PreparedDataset(tmp_path)
    assert len(everything) == 3 and everything.frames == 7 and everything.short == 1  # b's short clip is left out
    assert {tuple(everything[i]["latents"].shape) for i in range(3)} == {(4, 7, 2, 2)}
    held_out = PreparedDataset(tmp_path, files=["c.mp4"])
    assert [held_out[i]["source"] for i in range(len(held_out))] == ["c.mp4"]
    train = PreparedDataset(tmp_path, exclude_files=["c.mp4"])
    assert sorted(train[i]["source"] for i in range(len(train))) == ["a.mp4", "a.mp4"]
    assert len(PreparedDataset(tmp_path, files=["b.mp4"])) == 1  # alone, a short video's clip is the longest
    with pytest.raises(InputError, match="not a prepared file"):
        PreparedDataset(tmp_path, files=["nope.mp4"])
    # the start image is found by the clip's first latent, whatever the batch holds
    item = held_out[0]
    assert torch.equal(held_out.image(first_latent_key(item["latents"], held_out.dtype))["image_embeds"],
                       torch.full((1, 3), 2.0))
    assert held_out.image("no such clip") is None


def test_a_folder_that_was_not_prepared_is_refused_with_the_command(tmp_path):
    with pytest.raises(InputError, match="prepare-data"):
        PreparedDataset(tmp_path)
