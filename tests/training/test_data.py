"""Datasets, the latent cache (resume, refusal of a foreign cache), batch order, config overrides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framepack_history.config.storyboard import caption_at
from framepack_history.errors import InputError
from framepack_history.training.data import (
    LatentCacheDataset,
    StepBatchSampler,
    VideoFolderDataset,
    build_latent_cache,
    toyworld_dataset,
)
from framepack_history.training.settings import DataConfig, TrainConfig, load_config, parse_overrides


def test_toyworld_items_have_the_training_format():
    ds = toyworld_dataset(DataConfig(frames=8, num_videos=3), 32, 32, 8)
    item = ds[0]
    assert item["video"].shape == (3, 8, 32, 32) and -1 <= item["video"].min() and item["video"].max() <= 1
    assert item["caption"].startswith("0s:") and item["camera_x"].shape == (8,)
    held = toyworld_dataset(DataConfig(frames=8, num_videos=3, split="eval"), 32, 32, 8)
    assert held[0]["seed"] != item["seed"]  # held-out worlds are other worlds


def test_caption_at_picks_the_storyboard_entry_in_force():
    board = "0s: camera pans right; 5s: camera pans left"
    assert caption_at(board, 0.0) == "camera pans right"
    assert caption_at(board, 5.0) == "camera pans left"
    assert caption_at("a plain caption", 3.0) == "a plain caption"


def test_video_folder_reads_clips_and_caption_sidecars(tmp_path, short_video):
    folder = tmp_path / "videos"
    folder.mkdir()
    clip = folder / "clip.mp4"
    clip.write_bytes(short_video.read_bytes())
    (folder / "clip.txt").write_text("0s: camera holds; 1s: camera pans left\n")
    ds = VideoFolderDataset(folder, frames=12, width=16, height=16, fps=8)
    item = ds[0]
    assert item["video"].shape == (3, 12, 16, 16)  # 8 decoded frames, padded with the last one
    assert torch.equal(item["video"][:, -1], item["video"][:, 7])
    assert item["caption"].startswith("0s: camera holds")
    with pytest.raises(InputError):
        VideoFolderDataset(tmp_path / "missing", 4, 16, 16, 8)


def test_latent_cache_resumes_and_refuses_a_foreign_cache(tmp_path):
    ds = toyworld_dataset(DataConfig(frames=4, num_videos=5), 32, 32, 8)
    calls = []

    def encode(video: torch.Tensor) -> torch.Tensor:
        calls.append(video.shape[0])
        return video[:, :2, :, ::2, ::2] * 2  # a stand-in "VAE"

    fp = {"vae": {"kind": "stand-in", "_use_default_values": ["a", "b"]}, "frames": 4}
    build_latent_cache(ds, tmp_path / "c", encode, fp, shard_size=2, batch=2, progress=False)
    assert sum(calls) == 5
    first = LatentCacheDataset(tmp_path / "c")
    assert len(first) == 5 and first[4]["latents"].shape == (2, 4, 16, 16) and first[4]["caption"] == ds[4]["caption"]
    torch.testing.assert_close(first[3]["latents"], (ds[3]["video"][:2, :, ::2, ::2] * 2).half().float())

    (tmp_path / "c" / "shard_00001.safetensors").unlink()  # an interrupted run: one shard missing
    calls.clear()
    # diffusers' bookkeeping keys come in no fixed order: they never make a cache foreign
    fp = {"vae": {"kind": "stand-in", "_use_default_values": ["b", "a"]}, "frames": 4}
    build_latent_cache(ds, tmp_path / "c", encode, fp, shard_size=2, batch=2, progress=False)
    assert sum(calls) == 2  # only the missing shard was encoded again
    assert "camera_x" in first[0] and torch.equal(first[0]["camera_x"], ds[0]["camera_x"])
    assert len(LatentCacheDataset(tmp_path / "c")) == 5
    with pytest.raises(InputError):
        build_latent_cache(ds, tmp_path / "c", encode, {"vae": "another"}, shard_size=2, progress=False)


def test_latent_cache_items_through_open_shards_equal_fresh_reads_and_survive_pickling(tmp_path):
    import pickle

    from safetensors import safe_open

    ds = toyworld_dataset(DataConfig(frames=4, num_videos=5), 16, 16, 8)
    build_latent_cache(ds, tmp_path / "c", lambda v: v[:, :, :, ::2, ::2], {"v": 1}, shard_size=2, progress=False)
    cache = LatentCacheDataset(tmp_path / "c")
    for i in (4, 0, 3, 0):  # across shards and back: a kept handle serves the same shard again
        s, key, caption = cache.index[i]
        with safe_open(str(cache.shards[s]), "pt") as f:
            fresh = f.get_tensor(key).float(), f.get_tensor(f"camera_x.{key}")
        item = cache[i]
        assert torch.equal(item["latents"], fresh[0]) and torch.equal(item["camera_x"], fresh[1])
        assert item["caption"] == caption
    copy = pickle.loads(pickle.dumps(cache))  # what a spawned DataLoader worker gets: no open handles
    assert copy._open == {} and torch.equal(copy[3]["latents"], cache[3]["latents"])


def test_batch_order_depends_only_on_the_step_and_splits_ranks():
    full = list(StepBatchSampler(10, 2, seed=3, start=0, stop=12))
    resumed = list(StepBatchSampler(10, 2, seed=3, start=5, stop=12))
    assert full[5:] == resumed
    epoch = [i for b in full[:5] for i in b]
    assert sorted(epoch) == list(range(10))  # one epoch sees every clip once
    r0 = list(StepBatchSampler(10, 2, 3, 0, 2, rank=0, world=2))
    r1 = list(StepBatchSampler(10, 2, 3, 0, 2, rank=1, world=2))
    assert not set(r0[0]) & set(r1[0])


def test_overrides_reach_into_tables_and_are_typed(tmp_path):
    over = parse_overrides(["--max_steps", "7", "--stage1.omega_max=6", "--lr", "3e-4", "--data.kind", "folder",
                            "--gradient-checkpointing", "true", "--model.config.dit.depth", "2"])
    cfg = load_config(TrainConfig, None, over)
    assert (cfg.max_steps, cfg.stage1.omega_max, cfg.lr, cfg.data.kind) == (7, 6, 3e-4, "folder")
    assert cfg.gradient_checkpointing is True and cfg.model == {"config": {"dit": {"depth": 2}}}
    with pytest.raises(InputError, match="max_steps"):
        load_config(TrainConfig, None, {"max_steps": "many"})
    with pytest.raises(InputError, match="unknown field"):
        load_config(TrainConfig, None, {"stage1.omega": 3})
    with pytest.raises(InputError):
        parse_overrides(["max_steps", "3"])


def test_ssim_and_psnr():
    from framepack_history.generation.frame_query import psnr, ssim

    a = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    assert float(psnr(a, a).min()) > 90
    noisy = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert float(ssim(a, noisy).max()) < 0.95
    assert 15 < float(psnr(a, noisy).mean()) < 25
    assert np.isclose(float(psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5))), 10 * np.log10(4), atol=1e-4)
