"""Bounded history: the cap holds, recent groups and uncapped states are untouched, positions are true."""

from __future__ import annotations

import pytest
import torch

from framepack_history.config import GenerationRequest, InputError, preset_from_dict
from framepack_history.history import MIN_CAP_GROUPS, HistoryState

from .test_encoder import make_encoder

TOKENS_PER_GROUP = 16  # 16x16 latents, patch 2, rate 2x2: a 4x4 grid per token frame


def _latents(frames: int, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(1, 4, frames, 16, 16)


def _fill(state: HistoryState, latents: torch.Tensor, splits: list[int], track: torch.Tensor | None = None) -> list[int]:
    counts, t = [], 0
    for n in splits:
        counts.append(state.append(latents[:, :, t : t + n], None if track is None else track[t : t + n]))
        t += n
    return counts


@pytest.mark.parametrize("cap", [10 * TOKENS_PER_GROUP, 12 * TOKENS_PER_GROUP + 7, 40 * TOKENS_PER_GROUP])
def test_cap_is_never_passed(cap):
    enc = make_encoder("2x2x2")
    state = HistoryState(enc, max_tokens=cap)
    counts = _fill(state, _latents(1 + 9 * 30), [1] + [9] * 30)
    assert max(counts) <= cap
    assert counts[-1] == state.num_tokens == state.tokens()[0].shape[1]
    # once full, the history sits within one group (plus the partial one) of the cap
    assert counts[-1] >= (cap // TOKENS_PER_GROUP - 2) * TOKENS_PER_GROUP
    assert state.num_groups == (1 + 9 * 30) // 2  # fine groups, merged or not


def test_no_cap_is_todays_state_bitwise():
    enc = make_encoder("2x2x2")
    lat = _latents(1 + 9 * 6)
    plain, zero = HistoryState(enc), HistoryState(enc, max_tokens=0)
    _fill(plain, lat, [1] + [9] * 6)
    _fill(zero, lat, [1] + [9] * 6)
    # the uncapped state of before the cap existed: encoding everything at once
    with torch.no_grad():
        once = enc(lat)
    assert torch.equal(zero.grid, plain.grid)
    assert torch.equal(zero.tokens()[1], plain.tokens()[1])
    torch.testing.assert_close(zero.grid, once, atol=1e-5, rtol=1e-5)
    assert zero.chunk(0, 0).keys() == plain.chunk(0, 0).keys()


def test_recent_groups_keep_full_detail():
    enc = make_encoder("2x2x2")
    lat, track = _latents(1 + 9 * 20), torch.arange(1 + 9 * 20, dtype=torch.float32) * 0.5
    cap = 20 * TOKENS_PER_GROUP
    full, capped = HistoryState(enc), HistoryState(enc, max_tokens=cap)
    _fill(full, lat, [1] + [9] * 20, track)
    _fill(capped, lat, [1] + [9] * 20, track)
    tf, pf = full.tokens()
    tc, pc = capped.tokens()
    budget = cap // TOKENS_PER_GROUP - 1
    recent = (budget // 2 + 1) * TOKENS_PER_GROUP  # at least half the budget at level 0, plus the partial group
    assert torch.equal(tc[:, -recent:], tf[:, -recent:])
    assert torch.equal(pc[-recent:], pf[-recent:])
    assert tc.shape[1] < tf.shape[1]


def test_coarse_groups_sit_at_the_centre_of_their_frames():
    enc = make_encoder("2x2x2")  # 2 latent frames per group
    frames = 1 + 9 * 20
    lat, track = _latents(frames), torch.arange(frames, dtype=torch.float32) * 0.25
    state = HistoryState(enc, max_tokens=12 * TOKENS_PER_GROUP)
    _fill(state, lat, [1] + [9] * 20, track)
    _, pos = state.tokens()
    pos = pos.view(-1, TOKENS_PER_GROUP, 3)
    spatial = enc.positions(1, 4, 4)[0].reshape(-1, 3)
    levels = [seg[1] for seg in state._segs]
    assert max(levels) >= 2 and levels == sorted(levels, reverse=True)  # older is coarser
    for i, (first_group, level, _) in enumerate(state._segs):
        a, n = first_group * 2, 2 * 2**level
        centre = a + (n - 1) / 2 - frames  # token-frame units (patch_t 1), relative to the next frame
        assert torch.allclose(pos[i, :, 0], torch.full((TOKENS_PER_GROUP,), centre))
        assert torch.allclose(pos[i, :, 1], spatial[:, 1])
        assert torch.allclose(pos[i, :, 2], spatial[:, 2] + track[a : a + n].mean())
    # the segments tile the history without gaps, and a coarse group is the encoder on the time-averaged frames
    starts = [seg[0] for seg in state._segs]
    assert starts[0] == 0 and all(b - a == 2 ** s[1] for a, b, s in zip(starts, starts[1:], state._segs))
    first, level, tok = next(s for s in state._segs if s[1] == 2)
    pooled = lat[:, :, first * 2 : first * 2 + 8].unflatten(2, (2, 4)).mean(3)
    with torch.no_grad():
        assert torch.equal(tok, enc(pooled))


def test_layout_does_not_depend_on_how_the_history_was_appended():
    enc = make_encoder("2x2x2")
    lat = _latents(1 + 9 * 16)
    a, b = HistoryState(enc, max_tokens=14 * TOKENS_PER_GROUP), HistoryState(enc, max_tokens=14 * TOKENS_PER_GROUP)
    _fill(a, lat, [1] + [9] * 16)
    _fill(b, lat, [37, 40, 1, 67])
    assert [(s[0], s[1]) for s in a._segs] == [(s[0], s[1]) for s in b._segs]
    assert torch.equal(a.tokens()[1], b.tokens()[1])
    # coarse tokens depend only on their frames; full-detail ones are encoded with different neighbours
    for sa, sb in zip(a._segs, b._segs):
        if sa[1] > 0:
            assert torch.equal(sa[2], sb[2])
        else:
            torch.testing.assert_close(sa[2], sb[2], atol=1e-5, rtol=1e-5)


def test_capped_chunks_rebuild_the_same_state():
    enc = make_encoder("2x2x2")
    lat = _latents(1 + 9 * 18)
    cap = 12 * TOKENS_PER_GROUP
    state = HistoryState(enc, max_tokens=cap)
    chunks, since = [], (0, 0)
    for i, n in enumerate([1] + [9] * 18):
        state.append(lat[:, :, since[0] : since[0] + n])
        chunks.append(state.chunk(*since))
        since = (state.num_frames, state.num_groups)
    again = HistoryState(enc, max_tokens=cap)
    again.load_chunks(chunks)
    assert [(s[0], s[1]) for s in again._segs] == [(s[0], s[1]) for s in state._segs]
    assert torch.equal(again.grid, state.grid)
    assert torch.equal(again.tokens()[1], state.tokens()[1])
    assert again.num_tokens == state.num_tokens and again.num_groups == state.num_groups
    # and it goes on identically
    more = _latents(9, seed=5)
    assert again.append(more) == state.append(more)
    assert torch.equal(again.grid, state.grid)


def test_a_cap_below_the_least_is_refused():
    enc = make_encoder("2x2x2")
    state = HistoryState(enc, max_tokens=MIN_CAP_GROUPS * TOKENS_PER_GROUP)
    with pytest.raises(ValueError, match="at least"):
        _fill(state, _latents(40), [40])
    with pytest.raises(ValueError, match="max_tokens"):
        HistoryState(enc, max_tokens=-1)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "100"])
def test_invalid_request_cap_is_an_input_error(bad):
    preset = preset_from_dict({"name": "t", "model": {"backbone": "toy"}})
    with pytest.raises(InputError) as e:
        GenerationRequest(prompt="camera holds", max_history_tokens=bad).validate(preset)
    assert e.value.field == "--max-history-tokens"


def test_invalid_preset_cap_is_an_input_error():
    with pytest.raises(InputError) as e:
        preset_from_dict({"name": "t", "model": {"backbone": "toy"}, "history": {"max_tokens": -4}})
    assert e.value.message.startswith("history.max_tokens must be >= 0")
    with pytest.raises(InputError) as e:
        preset_from_dict({"name": "t", "model": {"backbone": "toy"}, "history": {"max_tokens": 2.5}})
    assert e.value.message.startswith("history.max_tokens must be an integer")


def test_a_capped_job_resumes_identically(toy_pipeline, tmp_path):
    """Crash after section 5 of 8 with merges already done; the resumed job equals the uninterrupted one."""
    import numpy as np

    from framepack_history.checkpoint import JobDir
    from framepack_history.render import render

    from .test_checkpoint import CrashingJobDir, _Crash, decoded

    cap = 9 * TOKENS_PER_GROUP  # the tiny toy: 16 tokens per group, 2 per section: merges from section 4 on
    request = GenerationRequest(prompt="0s: camera pans right; 2s: camera pans left", seconds=4, seed=5, steps=2,
                                max_history_tokens=cap)
    render(toy_pipeline, request, tmp_path / "straight.mp4", tmp_path / "seg-a")
    straight = toy_pipeline.last_generation.history
    assert max(seg[1] for seg in straight._segs) >= 1 and straight.num_tokens <= cap
    job = CrashingJobDir(tmp_path / "job", "before_cleanup", section=5)
    job.create(request, toy_pipeline.preset, out=tmp_path / "resumed.mp4")
    with pytest.raises(_Crash):
        render(toy_pipeline, request, tmp_path / "resumed.mp4", job.root / "segments", job=job)
    gen, _ = JobDir(job.root).restore(toy_pipeline)
    assert gen.history.max_tokens == cap and gen.next_section == 5
    assert any(seg[1] > 0 for seg in gen.history._segs)  # the restored state already holds merged groups
    render(toy_pipeline, request, tmp_path / "resumed.mp4", job.root / "segments", job=JobDir(job.root))
    resumed = toy_pipeline.last_generation.history
    assert torch.equal(resumed.grid, straight.grid) and torch.equal(resumed.tokens()[1], straight.tokens()[1])
    assert np.array_equal(decoded(tmp_path / "resumed.mp4"), decoded(tmp_path / "straight.mp4"))
    # done, with an embedding: the history stays for the memory inspector
    ck = JobDir(job.root).checkpoint()
    assert ck["status"] == "done" and ck["chunks"] == 9 and (job.root / "history").is_dir()


def test_a_finished_window_job_keeps_its_history_for_extend(toy_pipeline, tmp_path):
    from framepack_history.checkpoint import JobDir
    from framepack_history.render import render

    request = GenerationRequest(prompt="camera holds", seconds=1, seed=1, steps=1, history_mode="window")
    job = JobDir(tmp_path / "job")
    job.create(request, toy_pipeline.preset, out=tmp_path / "v.mp4")
    render(toy_pipeline, request, tmp_path / "v.mp4", job.root / "segments", job=job)
    ck = job.checkpoint()
    # every finished job keeps its raw latents: Extend continues from them (window mode has no embedding)
    assert ck["status"] == "done" and ck["chunks"] > 0 and (job.root / "history").is_dir()
