"""Continuing a long video in the tightest plan shape, strict mode: the encode stays within its planned row.

The shape is ``test_memory_strict``'s (the rtx4070-12gb strategy on the tiny
HunyuanVideo-FramePack model, streamed DiT blocks, tiled VAE, strict residency).
The request continues a 30 s clip, the most a start reads (240 frames at the
tiny preset's 8 fps). Its ``vae_encode`` phase is measured as live tensor bytes
(:class:`~framepack_history.memory.measure.LiveBytes`) beside the VAE's resident
weights, and compared with the plan's row for it. The same clip encoded in one
call, as continuing a video used to, does not fit that row.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from framepack_history.config.request import GenerationRequest
from framepack_history.generation.continuation import cut
from framepack_history.generation.pipeline import Pipeline, SectionDone, to_pixels
from framepack_history.generation.video import MAX_CONTINUE_SECONDS, read_video, write_segment
from framepack_history.memory.manager import MemoryManager
from framepack_history.memory.measure import LiveBytes
from tests.memory.test_memory_strict import _tight, hub  # noqa: F401 (hub: the fixture, used by name)


class _Measured:
    """The manager's hooks, with the ``vae_encode`` phase measured: resident VAE weights + live tensor peak."""

    def __init__(self, manager: MemoryManager) -> None:
        self.manager = manager
        self.peaks: dict[str, int] = {}

    def __getattr__(self, name: str):
        return getattr(self.manager, name)  # prepare, adapters_changed, ...

    @contextmanager
    def phase(self, name: str, section: int | None = None):
        with self.manager.phase(name, section):
            if name != "vae_encode":
                yield
                return
            self.manager.use("vae")  # what the VAE's first forward does: its weights are not activations
            weights = self.manager.residency.resident_bytes(("vae",))
            with LiveBytes() as lb:
                yield
            self.peaks[name] = max(self.peaks.get(name, 0), weights + lb.peak)


def _row(manager: MemoryManager):
    return next(r for r in manager.plan if r.phase == "vae_encode")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """30 s at 8 fps, 64x64 (the tiny preset's size): more than a start reads would not change anything."""
    frames = (np.random.default_rng(7).random((int(MAX_CONTINUE_SECONDS * 8), 64, 64, 3)) * 255).astype(np.uint8)
    return write_segment(frames, tmp_path_factory.mktemp("clip") / "long.mp4", fps=8)


def _measured(hub) -> tuple[Pipeline, _Measured]:  # noqa: F811
    torch.set_num_threads(1)  # the tiny VAE is quicker on one thread than fighting for two
    pipe = _tight(hub)
    hooks = _Measured(pipe.memory)
    pipe.memory = hooks
    return pipe, hooks


def test_continuing_30s_stays_within_the_planned_vae_encode_row(hub, long_clip):  # noqa: F811
    pipe, hooks = _measured(hub)
    request = GenerationRequest(prompt="a red circle", seconds=0.5, seed=5, history_mode="encoder",
                                continue_video=str(long_clip))
    done = [e for e in pipe.run(request) if isinstance(e, SectionDone)]  # strict: nothing ran off the device
    row = _row(hooks.manager)
    assert len(done) == 1 and pipe.last_generation.history.num_frames == 60 + 2  # the whole clip, then a section
    assert "53 frames a call" in row.strategy
    assert hooks.peaks["vae_encode"] <= row.device_peak_bytes, (hooks.peaks["vae_encode"], row.device_peak_bytes)
    assert hooks.manager.residency.peak <= hooks.manager.plan.budget.usable


def test_the_whole_clip_in_one_call_does_not_fit_the_row(hub, long_clip):  # noqa: F811
    """What continuing did before: every frame as float32, and one VAE call on all of them."""
    pipe, hooks = _measured(hub)
    request = GenerationRequest(prompt="a red circle", seconds=0.5, seed=5, history_mode="encoder",
                                continue_video=str(long_clip))
    pipe.prepare_memory(request, request.validate(pipe.preset), "encoder", 0, (64, 64))
    row = _row(hooks.manager)
    frames = cut(pipe.backbone, read_video(long_clip, 64, 64, 8, 240))
    with torch.no_grad(), hooks.phase("vae_encode"):
        whole = pipe.backbone.vae_encode(to_pixels(frames))
    assert whole.shape[2] == 60
    assert hooks.peaks["vae_encode"] > row.device_peak_bytes, (hooks.peaks["vae_encode"], row.device_peak_bytes)
