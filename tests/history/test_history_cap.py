"""Bounded history: the cap holds, recent groups and uncapped states are untouched, positions are true."""

from __future__ import annotations

import pytest
import torch

from framepack_history.config.presets import HISTORY_MERGES, load_preset, preset_from_dict
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.history.merge import MERGE_RULES, MIN_CAP_GROUPS, merge_similar
from framepack_history.history.state import HistoryState
from tests.history.test_encoder import make_encoder

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


@pytest.mark.parametrize("merge", ["similar", "oldest"])
@pytest.mark.parametrize("cap", [10 * TOKENS_PER_GROUP, 12 * TOKENS_PER_GROUP + 7, 40 * TOKENS_PER_GROUP])
def test_cap_is_never_passed(cap, merge):
    enc = make_encoder("2x2x2")
    state = HistoryState(enc, max_tokens=cap, merge=merge)
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


@pytest.mark.parametrize("merge", ["similar", "oldest"])
def test_recent_groups_keep_full_detail(merge):
    enc = make_encoder("2x2x2")
    lat, track = _latents(1 + 9 * 20), torch.arange(1 + 9 * 20, dtype=torch.float32) * 0.5
    cap = 20 * TOKENS_PER_GROUP
    full, capped = HistoryState(enc), HistoryState(enc, max_tokens=cap, merge=merge)
    _fill(full, lat, [1] + [9] * 20, track)
    _fill(capped, lat, [1] + [9] * 20, track)
    tf, pf = full.tokens()
    tc, pc = capped.tokens()
    budget = cap // TOKENS_PER_GROUP - 1
    recent = (budget // 2 + 1) * TOKENS_PER_GROUP  # at least half the budget at full detail, plus the partial group
    assert torch.equal(tc[:, -recent:], tf[:, -recent:])
    assert torch.equal(pc[-recent:], pf[-recent:])
    assert tc.shape[1] < tf.shape[1]


@pytest.mark.parametrize("merge", ["similar", "oldest"])
def test_coarse_groups_sit_at_the_centre_of_their_frames(merge):
    enc = make_encoder("2x2x2")  # 2 latent frames per group
    frames = 1 + 9 * 20
    lat, track = _latents(frames), torch.arange(frames, dtype=torch.float32) * 0.25
    state = HistoryState(enc, max_tokens=12 * TOKENS_PER_GROUP, merge=merge)
    _fill(state, lat, [1] + [9] * 20, track)
    _, pos = state.tokens()
    pos = pos.view(-1, TOKENS_PER_GROUP, 3)
    spatial = enc.positions(1, 4, 4)[0].reshape(-1, 3)
    covered = [seg[1] for seg in state._segs]
    if merge == "oldest":  # older is coarser, by powers of two
        assert max(covered) >= 4 and covered == sorted(covered, reverse=True)
        assert all(n & (n - 1) == 0 for n in covered)
    else:  # random views: merged by similarity, not by age, so some group is not a power of two
        assert max(covered) >= 4 and covered != sorted(covered, reverse=True)
    for i, (first_group, k, *_) in enumerate(state._segs):
        a, n = first_group * 2, 2 * k
        centre = a + (n - 1) / 2 - frames  # token-frame units (patch_t 1), relative to the next frame
        assert torch.allclose(pos[i, :, 0], torch.full((TOKENS_PER_GROUP,), centre))
        assert torch.allclose(pos[i, :, 1], spatial[:, 1])
        assert torch.allclose(pos[i, :, 2], spatial[:, 2] + track[a : a + n].mean())
    # the segments tile the history without gaps, and a coarse group is the encoder on the time-averaged frames
    starts = [seg[0] for seg in state._segs]
    assert starts[0] == 0 and all(b - a == s[1] for a, b, s in zip(starts, starts[1:], state._segs))
    assert starts[-1] + covered[-1] == state.num_groups
    first, k, tok, *_ = max(state._segs, key=lambda s: s[1])
    pooled = lat[:, :, first * 2 : (first + k) * 2].unflatten(2, (2, k)).mean(3)
    with torch.no_grad():
        assert torch.equal(tok, enc(pooled))


@pytest.mark.parametrize("merge", ["similar", "oldest"])
def test_layout_does_not_depend_on_how_the_history_was_appended(merge):
    enc = make_encoder("2x2x2")
    lat = _latents(1 + 9 * 16)
    cap = 14 * TOKENS_PER_GROUP
    a, b, c = (HistoryState(enc, max_tokens=cap, merge=merge) for _ in range(3))
    _fill(a, lat, [1] + [9] * 16)
    _fill(b, lat, [37, 40, 1, 67])
    _fill(c, lat, [1 + 9 * 16])  # one append
    assert max(s[1] for s in a._segs) > 1  # merges happened
    assert [(s[0], s[1]) for s in a._segs] == [(s[0], s[1]) for s in b._segs] == [(s[0], s[1]) for s in c._segs]
    if merge == "similar":  # the sums the rule reads are the same, bit for bit
        assert all(torch.equal(sa[3], sb[3]) and torch.equal(sa[3], sc[3]) for sa, sb, sc in zip(a._segs, b._segs, c._segs))
    assert torch.equal(a.tokens()[1], b.tokens()[1])
    # coarse tokens depend only on their frames; full-detail ones are encoded with different neighbours
    for sa, sb in zip(a._segs, b._segs):
        if sa[1] > 1:
            assert torch.equal(sa[2], sb[2])
        else:
            torch.testing.assert_close(sa[2], sb[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("merge", ["similar", "oldest"])
def test_capped_chunks_rebuild_the_same_state(merge):
    enc = make_encoder("2x2x2")
    lat = _latents(1 + 9 * 18)
    cap = 12 * TOKENS_PER_GROUP
    state = HistoryState(enc, max_tokens=cap, merge=merge)
    chunks, since = [], (0, 0)
    for i, n in enumerate([1] + [9] * 18):
        state.append(lat[:, :, since[0] : since[0] + n])
        chunks.append(state.chunk(*since))
        since = (state.num_frames, state.num_groups)
    again = HistoryState(enc, max_tokens=cap, merge=merge)
    again.load_chunks(chunks)
    assert max(s[1] for s in state._segs) > 1
    assert [(s[0], s[1]) for s in again._segs] == [(s[0], s[1]) for s in state._segs]
    assert torch.equal(again.grid, state.grid)
    assert torch.equal(again.tokens()[1], state.tokens()[1])
    assert again.num_tokens == state.num_tokens and again.num_groups == state.num_groups
    if merge == "oldest":  # chunks written before the merge rules (full-detail groups as a run) still load
        old = [{k: v for k, v in c.items() if k != "tokens_done_groups"} for c in chunks]
        for o, c in zip(old, chunks):
            if "tokens_done_groups" in c:
                index = c["tokens_done_groups"]
                assert torch.equal(index, torch.arange(int(index[0]), int(index[0]) + len(index)))
                o["tokens_done_from"] = index[0]
        before = HistoryState(enc, max_tokens=cap, merge="oldest")
        before.load_chunks(old)
        assert torch.equal(before.grid, state.grid)
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


@pytest.mark.parametrize("merge", [None, "oldest"])  # None: the preset's, the default rule
def test_a_capped_job_resumes_identically(toy_pipeline, tmp_path, merge):
    """Crash after section 5 of 8 with merges already done; the resumed job equals the uninterrupted one."""
    import numpy as np

    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.render import render
    from tests.jobs.test_checkpoint import CrashingJobDir, _Crash, decoded

    cap = 9 * TOKENS_PER_GROUP  # the tiny toy: 16 tokens per group, 2 per section: merges from section 4 on
    request = GenerationRequest(prompt="0s: camera pans right; 2s: camera pans left", seconds=4, seed=5, steps=2,
                                max_history_tokens=cap, history_merge=merge)
    render(toy_pipeline, request, tmp_path / "straight.mp4", tmp_path / "seg-a")
    straight = toy_pipeline.last_generation.history
    assert straight.merge == (merge or "similar")
    assert max(seg[1] for seg in straight._segs) > 1 and straight.num_tokens <= cap
    job = CrashingJobDir(tmp_path / "job", "before_cleanup", section=5)
    job.create(request, toy_pipeline.preset, out=tmp_path / "resumed.mp4")
    with pytest.raises(_Crash):
        render(toy_pipeline, request, tmp_path / "resumed.mp4", job.root / "segments", job=job)
    gen, _ = JobDir(job.root).restore(toy_pipeline)
    assert gen.history.max_tokens == cap and gen.next_section == 5 and gen.history.merge == straight.merge
    assert any(seg[1] > 1 for seg in gen.history._segs)  # the restored state already holds merged groups
    render(toy_pipeline, request, tmp_path / "resumed.mp4", job.root / "segments", job=JobDir(job.root))
    resumed = toy_pipeline.last_generation.history
    assert [s[:2] for s in resumed._segs] == [s[:2] for s in straight._segs]
    assert torch.equal(resumed.grid, straight.grid) and torch.equal(resumed.tokens()[1], straight.tokens()[1])
    assert np.array_equal(decoded(tmp_path / "resumed.mp4"), decoded(tmp_path / "straight.mp4"))
    # done, with an embedding: the history stays for the memory inspector
    ck = JobDir(job.root).checkpoint()
    assert ck["status"] == "done" and ck["chunks"] == 9 and (job.root / "history").is_dir()


def test_a_finished_window_job_keeps_its_history_for_extend(toy_pipeline, tmp_path):
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.render import render

    request = GenerationRequest(prompt="camera holds", seconds=1, seed=1, steps=1, history_mode="window")
    job = JobDir(tmp_path / "job")
    job.create(request, toy_pipeline.preset, out=tmp_path / "v.mp4")
    render(toy_pipeline, request, tmp_path / "v.mp4", job.root / "segments", job=job)
    ck = job.checkpoint()
    # every finished job keeps its raw latents: Extend continues from them (window mode has no embedding)
    assert ck["status"] == "done" and ck["chunks"] > 0 and (job.root / "history").is_dir()


# ------------------------------------------------------------------ the merge rules
def _scene(pattern: str, seed: int = 0) -> torch.Tensor:
    """Latents, one token group (2 frames) per letter: ``h`` the one held view (slight noise), ``x`` a view of its own."""
    gen = torch.Generator().manual_seed(seed)
    held = torch.randn(1, 4, 1, 16, 16, generator=gen)
    groups = [held + 0.01 * torch.randn(1, 4, 2, 16, 16, generator=gen) if c == "h"
              else 2 * torch.randn(1, 4, 2, 16, 16, generator=gen) for c in pattern]
    return torch.cat(groups, dim=2)


@pytest.mark.parametrize("merge", ["similar", "oldest"])
def test_a_view_seen_once_keeps_full_detail_with_similar(merge):
    """A distinct first view, then a held one: ``similar`` merges the held groups, ``oldest`` the old view."""
    enc = make_encoder("2x2x2")
    lat = _scene("x" + "h" * 40)
    cap = 10 * TOKENS_PER_GROUP
    state = HistoryState(enc, max_tokens=cap, merge=merge)
    counts = _fill(state, lat, [2] + [8] * 10)
    assert max(counts) <= cap and len(state._segs) == cap // TOKENS_PER_GROUP - 1
    assert state.num_groups == 41
    if merge == "similar":
        assert state.time_reduction_at(0) == state.time_reduction_at(1) == 1
        with torch.no_grad():  # the old view's tokens as they were encoded when it was new
            assert torch.equal(state._segs[0][2], enc(lat[:, :, :2]))
        assert state.time_reduction_at(2) > 1  # the held view right after it merged
    else:
        assert state.time_reduction_at(0) > 1
    assert state.time_reduction_at(81) == 1  # the newest group: full detail either way


def _seg(first: int, n: int, mean: list[float]) -> list:
    return [first, n, None, n * torch.tensor(mean, dtype=torch.float64).view(2, 1, 1)]


def test_merge_similar_takes_the_least_ward_cost():
    a, b, c, d = _seg(0, 1, [0, 0]), _seg(1, 8, [1, 0]), _seg(9, 1, [2, 0.6]), _seg(10, 1, [3.2, 1.1])
    recent = [_seg(11 + i, 1, [3.2, 1.1]) for i in range(3)]  # identical to d: free to merge, but recent
    segs = [a, b, c, d, *recent]
    # Ward's cost n_a n_b / (n_a + n_b) |mean_a - mean_b|^2 by hand:
    #   a|b 8/9 * 1 = 0.889, b|c 8/9 * (1 + 0.36) = 1.209, c|d 1/2 * (1.44 + 0.25) = 0.845
    # (unweighted, a|b would win: 1 < 1.69); d|recent costs 0 but the newest budget // 2 = 3 never merge
    merge_similar(segs, 6)
    assert [s[:2] for s in segs] == [[0, 1], [1, 8], [9, 2], [11, 1], [12, 1], [13, 1]]
    assert segs[2][2] is None and torch.equal(segs[2][3], c[3] + d[3])  # tokens to encode; the sums add
    # next, with budget 5 (newest 2 kept): cd|recent 2/3 * (0.36 + 0.0625) = 0.282 beats a|b 0.889 and
    # b|cd 16/10 * (2.56 + 0.7225) = 5.25: the size weighting of a 2-group segment
    merge_similar(segs, 5)
    assert [s[:2] for s in segs] == [[0, 1], [1, 8], [9, 3], [12, 1], [13, 1]]
    # the memo a state keeps: the same choices, and it forgets the pairs a merge ends
    segs, memo = [_seg(0, 1, [0, 0]), _seg(1, 8, [1, 0]), _seg(9, 1, [2, 0.6]), _seg(10, 1, [3.2, 1.1]), *recent], {}
    merge_similar(segs, 6, memo)
    assert [s[:2] for s in segs] == [[0, 1], [1, 8], [9, 2], [11, 1], [12, 1], [13, 1]]
    assert memo == pytest.approx({(0, 1, 8): 8 / 9})  # a|b is still a pair; b|c and c|d are gone
    # ties go to the oldest pair
    same = [_seg(i, 1, [1, 1]) for i in range(9)]
    merge_similar(same, 8)
    assert [s[:2] for s in same] == [[0, 2]] + [[i, 1] for i in range(2, 9)]


def test_the_cost_memo_changes_no_choice():
    gen = torch.Generator().manual_seed(2)
    views = [torch.randn(3, 2, 2, generator=gen, dtype=torch.float64) for _ in range(5)]
    layouts = []
    for memo in (None, {}):
        segs = []
        for g in range(200):  # a few views coming back in no order
            segs.append([g, 1, None, views[(g * g) % 5] + 1e-3 * g])
            while len(segs) > 20:
                merge_similar(segs, 20, memo)
        layouts.append([s[:2] for s in segs])
        assert memo is None or len(memo) < 20  # pairs the merges ended are forgotten
    assert layouts[0] == layouts[1]


def test_similar_chunks_index_scattered_full_detail_groups(tmp_path):
    """One long append merges between distinct views; the chunks say which groups their tokens are."""
    enc = make_encoder("2x2x2")
    lat = _scene("h" + "hhhhx" * 3 + "h" * 12)
    cap = 20 * TOKENS_PER_GROUP
    state = HistoryState(enc, max_tokens=cap)  # the default rule
    assert state.merge == "similar"
    state.append(lat[:, :, :2])
    chunks = [state.chunk(0, 0)]
    state.append(lat[:, :, 2:])
    chunks.append(state.chunk(2, 1))
    index = chunks[1]["tokens_done_groups"].tolist()
    assert {5, 10, 15} <= set(index)  # the distinct views kept full detail
    assert index != list(range(index[0], index[0] + len(index)))  # with merged groups between them
    for chunked in (chunks, [state.chunk(0, 0)]):
        again = HistoryState(enc, max_tokens=cap)
        again.load_chunks(chunked)
        assert [s[:2] for s in again._segs] == [s[:2] for s in state._segs]
        assert torch.equal(again.grid, state.grid) and torch.equal(again.tokens()[1], state.tokens()[1])
    state.save(tmp_path / "h.safetensors")
    again = HistoryState(enc, max_tokens=cap)
    again.load(tmp_path / "h.safetensors")
    assert torch.equal(again.grid, state.grid)


def test_the_rule_names_agree():
    from framepack_history.config.presets import HistorySpec

    assert HISTORY_MERGES == tuple(MERGE_RULES)
    assert HistorySpec().merge == HISTORY_MERGES[0] == HistoryState(None).merge == "similar"
    with pytest.raises(ValueError, match="similar, oldest"):
        HistoryState(None, merge="newest")


@pytest.mark.parametrize("bad", ["newest", "", 3, "Similar"])
def test_invalid_merge_is_an_input_error(bad):
    preset = preset_from_dict({"name": "t", "model": {"backbone": "toy"}})
    with pytest.raises(InputError) as e:
        GenerationRequest(prompt="camera holds", history_merge=bad).validate(preset)
    assert e.value.field == "--history-merge" and "similar, oldest" in e.value.message
    if isinstance(bad, str):
        with pytest.raises(InputError) as e:
            preset_from_dict({"name": "t", "model": {"backbone": "toy"}, "history": {"merge": bad}})
        assert e.value.message.startswith("history.merge must be one of similar, oldest")


def test_bad_merge_on_the_command_line_exits_2(tmp_path, capsys):
    from framepack_history.cli.main import main
    from tests.conftest import TINY_TOY

    assert main(["generate", "--preset", str(TINY_TOY), "--prompt", "a", "--history-merge", "newest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--history-merge" in err[0] and "'similar', 'oldest'" in err[0], err
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[model]\nbackbone = "toy"\n[history]\nmerge = "newest"\n')
    assert main(["generate", "--preset", str(bad), "--prompt", "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "history.merge must be one of similar, oldest" in err[0], err


def test_the_job_keeps_the_rule_it_started_with(toy_pipeline, tmp_path):
    """The request's rule, else the job's preset's; a job saved before the option existed merged ``oldest``."""
    import json

    from framepack_history.jobs.checkpoint import JobDir

    request = GenerationRequest(prompt="camera holds", seconds=1, max_history_tokens=9 * TOKENS_PER_GROUP)
    assert toy_pipeline.start(request)[0].history.merge == "similar"
    toy_pipeline.preset.history.merge = "oldest"
    assert toy_pipeline.start(request)[0].history.merge == "oldest"
    request.history_merge = "similar"
    assert toy_pipeline.start(request)[0].history.merge == "similar"
    toy_pipeline.preset.history.merge = "similar"
    request.history_merge = None
    job = JobDir(tmp_path / "job")
    job.create(request, toy_pipeline.preset, out=tmp_path / "v.mp4")
    assert job.info().preset.history.merge == "similar" and job.info().request.history_merge is None
    saved = json.loads((job.root / "preset.json").read_text())
    del saved["history"]["merge"]
    (job.root / "preset.json").write_text(json.dumps(saved))
    assert job.info().preset.history.merge == "oldest"


def test_the_inspector_rebuilds_the_history_with_the_jobs_rule(toy_pipeline, tmp_path):
    """The memory inspector reports the time reduction of the job's own layout, under either rule."""
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.recall import _recall
    from framepack_history.jobs.render import render

    coarse = {}
    for merge in ("oldest", None):  # None: the preset's (similar)
        request = GenerationRequest(prompt="0s: camera pans right; 2s: camera pans left", seconds=4, seed=5, steps=1,
                                    max_history_tokens=9 * TOKENS_PER_GROUP, history_merge=merge)
        job = JobDir(tmp_path / str(merge))
        job.create(request, toy_pipeline.preset, out=tmp_path / f"{merge}.mp4")
        render(toy_pipeline, request, tmp_path / f"{merge}.mp4", job.root / "segments", job=job)
        history = toy_pipeline.last_generation.history
        got = [_recall(toy_pipeline, job, at / 4, 1, 0) for at in range(16)]
        assert [r.coarse for r in got] == [history.time_reduction_at(r.frame) for r in got]
        assert got[-1].history_tokens == history.num_tokens
        # the layout the inspector shows: runs that tile the video, each frame in the run of its reduction
        runs = got[-1].layout
        assert runs[0][0] == 0 and runs[-1][1] == got[-1].seconds
        assert all(a[1] == b[0] for a, b in zip(runs, runs[1:])) and any(k > 1 for *_, k in runs)
        assert [next(k for a, b, k in runs if a <= r.at < b) for r in got] == [r.coarse for r in got]
        assert got[-1].layout_text().startswith("memory: 0-") and "x coarser" in got[-1].layout_text()
        coarse[merge] = [r.coarse for r in got]
    assert coarse["oldest"] != coarse[None] and max(coarse[None]) > 1  # the two rules' layouts differ here


def test_a_cap_below_the_least_is_refused_at_submit_not_when_the_job_starts(tmp_path, toy_pipeline):
    """The page and the API queue nothing for a cap too small: the same least cap the job's start checks."""
    from framepack_history.history.budget import least_cap
    from framepack_history.jobs.store import JobSpec
    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.handlers import cap_info
    from tests.conftest import TINY_TOY

    preset = load_preset(TINY_TOY)
    least = least_cap(preset)
    size = (preset.video.width, preset.video.height)
    with pytest.raises(InputError):  # the job's own check at start, for the same figure
        toy_pipeline.history_cap(GenerationRequest(prompt="camera holds", max_history_tokens=least - 1), size)
    assert toy_pipeline.history_cap(GenerationRequest(prompt="camera holds", max_history_tokens=least), size) == least
    worker = Worker(tmp_path / "outputs", jobs_dir=tmp_path / "jobs")  # not started
    with pytest.raises(InputError, match=f"5 is below the least cap at 32x32, {least} tokens"):
        worker.submit(JobSpec(GenerationRequest(prompt="camera holds", max_history_tokens=5), str(TINY_TOY)))
    assert worker.queued() == []
    ok = worker.submit(JobSpec(GenerationRequest(prompt="camera holds", max_history_tokens=least), str(TINY_TOY)))
    window = worker.submit(JobSpec(GenerationRequest(prompt="camera holds", max_history_tokens=5, history_mode="window"),
                                   str(TINY_TOY)))  # no embedding: the cap does not apply
    assert worker.queued() == [ok.id, window.id]
    assert f"at least {least}, 0 = no cap" in cap_info(preset)
