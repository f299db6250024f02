"""A step the cache skips copies no streamed block; a computed step streams as before; off changes no bit.

The shape is the rtx4070-12gb strategy on the tiny FramePack-F1 (``test_memory_strict``'s tight pipeline:
some blocks resident, the others streamed, strict residency checks), with the first block resident as the
planner places it (its spread order starts at block 0, in the 12 GB plan of a minute as well).
"""

from __future__ import annotations

import numpy as np
from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

from framepack_history.generation import step_cache
from framepack_history.memory.planner import plan
from tests.memory.test_memory_strict import _frames, _reference, _tight, hub  # noqa: F401  (hub: the fixture)

KW = {"history_mode": "encoder", "steps": 8}


def _copied_per_call(pipe, **kw) -> tuple[list[tuple[bool, int]], np.ndarray]:
    """``(ran every block, bytes the streamer copied)`` of each DiT call, and the frames."""
    bb, streamer = pipe.backbone, pipe.memory.streamer
    head = bb.transformer.transformer_blocks[0]
    rows: list[tuple[bool, int]] = []
    inner = bb.predict

    def counted(noisy, sigma, cond, context, guidance=1.0):
        before = streamer.copied_bytes
        out = inner(noisy, sigma, cond, context, guidance)
        reg = getattr(head, "_diffusers_hook", None)
        hook = None if reg is None else reg.get_hook(_FBC_LEADER_BLOCK_HOOK)
        rows.append((hook is None or hook.state_manager.get_state().should_compute, streamer.copied_bytes - before))
        return out

    bb.predict = counted  # this backbone object only
    try:
        frames = _frames(pipe, **kw)
    finally:
        del bb.predict
    return rows, frames


def test_the_12gb_plan_keeps_the_first_block_resident():
    """So on the real card a skipped step copies nothing either (a streamed first block would cost one block)."""
    assert 0 in plan("rtx4070-12gb", 60, history_mode="encoder").strategy.resident


def test_skipped_steps_copy_nothing_and_computed_steps_stream_as_before(hub, monkeypatch):  # noqa: F811
    monkeypatch.setitem(step_cache.THRESHOLDS, "hunyuan_framepack", {"fast": 0.45, "faster": 0.45})
    off_pipe = _tight(hub)
    assert 0 in off_pipe.memory.streamer.resident and off_pipe.memory.streamer.order
    off, off_frames = _copied_per_call(off_pipe, cache="off", **KW)
    on_pipe = _tight(hub)
    on, _ = _copied_per_call(on_pipe, cache="fast", **KW)

    streamed = on_pipe.memory.streamer.streamed_bytes
    assert all(ran for ran, _ in off) and {b for _, b in off} <= {streamed, streamed + _first_streamed(on_pipe)}
    skipped = [b for ran, b in on if not ran]
    computed = [b for ran, b in on if ran]
    assert skipped and computed  # the threshold skips some calls and not all
    assert skipped == [0] * len(skipped)  # (each copied every streamed block before)
    assert set(computed) <= {b for _, b in off}  # each computed call copies what a call without the cache does
    assert on_pipe.memory.residency.peak <= on_pipe.memory.plan.budget.usable

    # caching off: the frames of the resident backbone, bit for bit
    assert np.array_equal(off_frames, _reference(hub, "step cache off", **{**KW, "cache": "off"}))


def _first_streamed(pipe) -> int:
    """Bytes of the first streamed block (the first call of a section also prefetches it for the next)."""
    streamer = pipe.memory.streamer
    return streamer.groups[streamer.order[0]].nbytes()
