"""Memory controls on the history itself: pinned groups never merge under the cap; forgotten tokens leave what the
DiT reads and come back when the forget is removed."""

from __future__ import annotations

import pytest
import torch

from framepack_history.history.state import HistoryState
from tests.history.test_encoder import make_encoder
from tests.history.test_history_cap import TOKENS_PER_GROUP, _fill, _latents

CAP = 17 * TOKENS_PER_GROUP  # 16 complete groups (one kept free for the partial group)
PIN = (9, 15)  # latent frames 9..14: groups 4..7 (frames_per_group 2) overlap it
SPLITS = [1] + [4] * 20  # a start latent, then 20 sections of 4 latent frames: 40 groups into 16


@pytest.mark.parametrize("merge", ["similar", "oldest"])
def test_pinned_groups_survive_a_tight_cap_unmerged(merge):
    enc = make_encoder("2x2x2")
    lat = _latents(sum(SPLITS))
    pinned, plain = HistoryState(enc, max_tokens=CAP, merge=merge), HistoryState(enc, max_tokens=CAP, merge=merge)
    pinned.steer(pins=[PIN])
    counts = _fill(pinned, lat, SPLITS)
    _fill(plain, lat, SPLITS)
    assert max(counts) <= CAP  # the cap still holds: the others merge instead
    held = [seg for seg in pinned._segs if seg[0] * 2 < PIN[1] and PIN[0] < (seg[0] + seg[1]) * 2]
    assert [seg[:2] for seg in held] == [[g, 1] for g in range(4, 8)]  # every pinned group at full detail
    # without the pin some of them merged (so the pin is what kept them)
    assert any(seg[1] > 1 and seg[0] * 2 < PIN[1] and PIN[0] < (seg[0] + seg[1]) * 2 for seg in plain._segs)
    # their tokens are the fine ones, as encoded when they arrived
    fine = HistoryState(enc)
    _fill(fine, lat, SPLITS)
    for seg in held:
        torch.testing.assert_close(seg[2], fine.grid[:, seg[0] : seg[0] + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("merge", ["similar", "oldest"])
def test_pins_replay_from_chunks_to_the_same_layout(merge):
    enc = make_encoder("2x2x2")
    lat = _latents(sum(SPLITS))
    state = HistoryState(enc, max_tokens=CAP, merge=merge)
    state.steer(pins=[PIN])
    _fill(state, lat, SPLITS[:12])
    chunks = [state.chunk(0, 0)]
    frames, groups = state.num_frames, state.num_groups
    _fill(state, lat[:, :, frames:], SPLITS[12:])
    chunks.append(state.chunk(frames, groups))
    again = HistoryState(enc, max_tokens=CAP, merge=merge)
    again.steer(pins=[PIN])  # set before the chunks load, as a resume does
    again.load_chunks(chunks)
    assert [s[:2] for s in again._segs] == [s[:2] for s in state._segs]
    assert torch.equal(again.tokens()[0], state.tokens()[0]) and torch.equal(again.tokens()[1], state.tokens()[1])


@pytest.mark.parametrize("cap", [0, CAP])
def test_forgotten_tokens_leave_the_dits_input_and_come_back(cap):
    enc = make_encoder("2x2x2")
    state = HistoryState(enc, max_tokens=cap)
    _fill(state, _latents(1 + 4 * 6), [1] + [4] * 6)
    tokens, pos = state.tokens()
    per = TOKENS_PER_GROUP
    state.steer(forgets=[(4, 8)])  # latent frames 4..7: token frames 2 and 3 (groups of 2 frames)
    less, less_pos = state.tokens()
    assert less.shape[1] == tokens.shape[1] - 2 * per
    keep = torch.cat([torch.arange(0, 2 * per), torch.arange(4 * per, tokens.shape[1])])
    assert torch.equal(less, tokens[:, keep]) and torch.equal(less_pos, pos[keep])  # the rest untouched, in place
    assert state.num_frames == 25 and state.latents.shape[2] == 25  # raw latents kept
    state.steer(forgets=[])
    back, back_pos = state.tokens()
    assert torch.equal(back, tokens) and torch.equal(back_pos, pos)
    state.steer(forgets=[(0, state.num_frames)])
    assert state.tokens() is None  # all forgotten: the DiT reads no history tokens
