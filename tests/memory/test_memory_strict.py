"""Every kind of request through the tightest real plan shape, in strict mode.

The shape is the rtx4070-12gb strategy on a tiny HunyuanVideo-FramePack model
loaded the way that preset loads it (``offload=True`` from folders in the
hub's layout): the DiT built on ``meta`` and read block by block, some blocks
resident and the others streamed, the text and image encoders built on first
call and dropped (not moved) when the room is needed, a tiled VAE.

bitsandbytes' nf4 layers need 64-wide inputs and the tiny LLaMA is 32 wide, so
the text encoder here is built in full precision by the same loader path the
nf4 one takes (``backbone.loaders``: ``from_pretrained`` on first call, dropped
on eviction); the plan accounts for it as nf4. nf4 itself on the CPU is in
``test_memory.py::test_quantised_text_encoder_runs_on_cpu``.

Strict mode makes device mistakes visible on the CPU: any module whose forward
runs while the residency ledger says one of its weights is off the device
raises :class:`OffDeviceError`, naming the module.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from framepack_history.backbones.base import transformer_blocks
from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import Cancelled, OffDeviceError
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone
from framepack_history.history.state import HistoryState
from framepack_history.jobs.checkpoint import JobDir
from framepack_history.memory.budget import Budget, GiB
from framepack_history.memory.components import meta_components
from framepack_history.memory.manager import RESIDENT_HOOK, MemoryManager, OnFirstCall
from framepack_history.memory.measure import module_bytes
from framepack_history.memory.planner import Plan, plan
from tests.backbones.tiny_framepack import save_hub_layout
from tests.conftest import TINY_HUNYUAN

DEEP = {"num_layers": 2, "num_single_layers": 3}  # five blocks: some stay, some stream
TILES = {"tile_sample_min_height": 48, "tile_sample_min_width": 48, "tile_sample_stride_height": 40,
         "tile_sample_stride_width": 40}  # 2x2 real tiles at 64x64 (the defaults start at 256 px)
SECONDS = 1.0  # two sections
STORYBOARD = "0s: a red circle moves left; 0.5s: a blue square holds still"


@pytest.fixture
def start_image(tmp_path):
    """A square start image: its resolution bucket is the preset's 64x64, the size the tight plans are made for."""
    from PIL import Image

    path = tmp_path / "square.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The tiny model saved like the hub repos, and its preset."""
    preset = load_preset(TINY_HUNYUAN)
    preset.model.config.update(DEEP)
    bb = load_backbone(preset.model)
    root = tmp_path_factory.mktemp("hub")
    save_hub_layout(bb, root)
    paths = {"transformer": str(root / "transformer"), "base": str(root / "base"),
             "image_encoder": str(root / "redux"), "dtype": torch.float32, "local_files_only": True}
    return preset, paths


_PLANS: dict[str, Plan] = {}


def _tight_plan(preset) -> Plan:
    """The plan the tight pipelines start from (planned once: the traces are the slow part)."""
    if preset.name not in _PLANS:
        _PLANS[preset.name] = p = plan(preset, SECONDS, budget=_budget(preset), text_encoder_quantization="nf4")
        p.strategy.vae_tiling = True
    return _PLANS[preset.name]


def _budget(preset) -> Budget:
    """About half of the DiT's blocks fit beside everything else (as on a 12 GB card with the real model)."""
    roomy = plan(preset, SECONDS, budget=Budget(GiB, GiB, "cpu", "test"), text_encoder_quantization="nf4")
    blocks = sum(module_bytes(b) for b in meta_components(preset).blocks)
    return Budget(int((roomy.device_peak - blocks // 2) / 0.96), GiB, "cpu", "test")


def _tight(hub, strict: bool = True) -> Pipeline:
    """The rtx4070-12gb shape: offload-mode loading, streamed + resident blocks, nf4 path, tiled VAE."""
    preset, paths = hub
    bb = HunyuanFramepackBackbone.from_pretrained(**paths, offload=True)
    p = copy.deepcopy(_tight_plan(preset))  # a manager changes its plan (re-plans, OOM levers)
    manager = MemoryManager(bb, p, strict=strict)
    bb.vae.enable_tiling(**TILES)
    assert manager.streamer.order and manager.streamer.resident and p.strategy.text_encoder == "nf4"
    return Pipeline(bb, build_encoder(preset.model, bb), preset, memory=manager)


_REFERENCE: dict = {}


def _reference(hub, key: str, **kw) -> np.ndarray:
    """Frames of the same request from the plain, fully resident backbone (tiled alike)."""
    if key not in _REFERENCE:
        preset, paths = hub
        bb = HunyuanFramepackBackbone.from_pretrained(**paths)
        bb.vae.enable_tiling(**TILES)
        _REFERENCE[key] = _frames(Pipeline(bb, build_encoder(preset.model, bb), preset), **kw)
    return _REFERENCE[key]


def _frames(pipe: Pipeline, on_step=None, **kw) -> np.ndarray:
    req = GenerationRequest(**{"prompt": "a red circle", "seconds": SECONDS, "seed": 5, **kw})
    return np.concatenate([e.frames for e in pipe.run(req, on_step=on_step) if isinstance(e, SectionDone)])


# --------------------------------------------------------------- strict mode
def test_strict_mode_names_the_module_that_ran_off_the_device(hub):
    pipe = _tight(hub)
    manager = pipe.memory
    manager.streamer.evict()  # behind the manager's back: the ledger says the stem is on the host
    with pytest.raises(OffDeviceError, match=r"transformer\.x_embedder\.proj"):
        HistoryState(pipe.encoder).append(torch.zeros(1, 16, 2, 8, 8))


def test_image_encode_loads_the_vae(hub, start_image):
    """encode_image calls vae_encode for the start latent: the VAE is made resident by that call."""
    pipe = _tight(hub)
    manager, bb = pipe.memory, pipe.backbone
    image = torch.zeros(3, 64, 64)
    with manager.phase("image_encode"):
        cond = bb.encode_image(image)
    assert {"start_latents", "image_embeds"} <= set(cond.tensors) and "vae" in manager._lru
    # the bug this replaces: the VAE left on the host during image_encode; strict mode names it
    manager.evict("vae")
    for m in bb.vae.modules():
        if hasattr(m, "_diffusers_hook"):
            m._diffusers_hook.remove_hook(RESIDENT_HOOK, recurse=False)
    with pytest.raises(OffDeviceError, match=r"^vae\."):
        bb.encode_image(image)


def test_history_append_after_text_encode_runs_the_patchifier_on_the_device(hub):
    """rtx4070: text_encode evicts the DiT's resident part; appending history then needs its patchifier."""
    pipe = _tight(hub)
    manager, bb = pipe.memory, pipe.backbone
    with manager.phase("text_encode"):
        bb.encode_text("a cat")
    manager.evict("transformer")  # what the 12 GB plan does to make room for the 8B text encoder
    assert not manager.streamer.stem.on_device
    history = HistoryState(pipe.encoder)
    assert history.append(torch.randn(1, 16, 3, 8, 8)) > 0  # outside any phase
    assert manager.streamer.stem.on_device and "transformer" in manager._lru


def test_a_dit_built_in_host_memory_is_loaded_on_first_use(hub, start_image):
    """A DiT whose weights start on the host (parked in pinned memory, not read block by block onto the device):
    the manager must not take it for resident. Image-to-video appends the start latent to the history before
    any DiT step, so the patchifier is the first of its modules to run."""
    from framepack_history.memory.streaming import Residency

    preset, paths = hub
    bb = HunyuanFramepackBackbone.from_pretrained(**paths)
    ledger = Residency("cpu")
    for t in (*bb.transformer.parameters(), *bb.transformer.buffers()):
        ledger.mark_host(t)
    manager = MemoryManager(bb, copy.deepcopy(_tight_plan(preset)), strict=True, residency=ledger)
    bb.vae.enable_tiling(**TILES)
    assert not manager.streamer.loaded and "transformer" not in manager._lru
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset, memory=manager)
    kw = {"history_mode": "encoder", "image": str(start_image)}
    assert np.array_equal(_frames(pipe, **kw), _reference(hub, "image-to-video, encoder", **kw))


# ------------------------------------------------------------- every request
CASES = {
    "text-to-video, encoder": {"history_mode": "encoder"},
    "image-to-video, window": {"history_mode": "window", "image": "START"},
    "continue-video, encoder": {"history_mode": "encoder", "continue_video": "VIDEO"},
    "storyboard, encoder, previews": {"history_mode": "encoder", "prompt": STORYBOARD, "previews": True},
}


@pytest.mark.parametrize("case", list(CASES))
def test_requests_in_strict_mode_match_the_resident_backbone(hub, case, start_image, short_video):
    kw = dict(CASES[case])
    previews = kw.pop("previews", False)
    kw = {k: {"START": str(start_image), "VIDEO": str(short_video)}.get(v, v) for k, v in kw.items()}
    pipe = _tight(hub)
    shown = []
    on_step = (lambda i, info: shown.append(pipe.preview(i, info).image)) if previews else None
    got = _frames(pipe, on_step=on_step, **kw)
    assert np.array_equal(got, _reference(hub, case, **kw))
    manager = pipe.memory
    assert manager.residency.peak <= manager.plan.budget.usable
    assert isinstance(pipe.backbone.text_encoder, OnFirstCall)  # built on call, dropped for the DiT's room
    assert not previews or (len(shown) == 4 and shown[0].shape == (64, 64, 3))


def test_cancel_then_resume_in_strict_mode(hub, tmp_path):
    from framepack_history.jobs.render import render

    req = GenerationRequest(prompt="a red circle", seconds=SECONDS, seed=5, history_mode="encoder")
    job = JobDir(tmp_path / "job")
    pipe = _tight(hub)
    job.create(req, pipe.preset, out=tmp_path / "v.mp4")
    done: list[SectionDone] = []

    def cancel(i, info):
        if i == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        render(pipe, req, tmp_path / "v.mp4", job.root / "segments", on_event=done.append, on_step=cancel, job=job)
    pipe = _tight(hub)  # a fresh process: resume from the checkpoint
    render(pipe, req, tmp_path / "v.mp4", job.root / "segments", on_event=done.append, job=job)
    got = np.concatenate([e.frames for e in done if isinstance(e, SectionDone)])
    assert [e.index for e in done if isinstance(e, SectionDone)] == [0, 1]
    assert np.array_equal(got, _reference(hub, "text-to-video, encoder", history_mode="encoder"))


def test_out_of_memory_while_denoising_streams_more_and_finishes_identically(hub, tmp_path):
    from framepack_history.jobs.render import render

    req = GenerationRequest(prompt="a red circle", seconds=SECONDS, seed=5, history_mode="encoder")
    pipe = _tight(hub)
    manager = pipe.memory
    calls = {"n": 0}

    def oom(*_):  # the third DiT forward, third block: section 1 (after a checkpoint), mid-denoise
        calls["n"] += 1
        if calls["n"] == 2 * 5 + 3:
            calls["resident"] = set(manager.streamer.resident)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    for block in transformer_blocks(pipe.backbone.transformer):
        block.register_forward_pre_hook(oom)
    job = JobDir(tmp_path / "job")
    job.create(req, pipe.preset, out=tmp_path / "v.mp4")
    events: list = []
    data = render(pipe, req, tmp_path / "v.mp4", job.root / "segments", on_event=events.append, job=job)
    assert job.status == "done" and calls["n"] == 4 * 5 + 3  # four forwards + the failed one's first three blocks
    assert data["out_of_memory_retry"].startswith("out of memory in denoise: ")
    assert "DiT blocks streamed" in data["out_of_memory_retry"] and "measured peak" in data["out_of_memory_peak"]
    assert set(manager.streamer.resident) < calls["resident"]  # the retry's plan streams more
    assert set(manager.plan.strategy.resident) == set(manager.streamer.resident)
    got = np.concatenate([e.frames for e in events if isinstance(e, SectionDone)])
    assert np.array_equal(got, _reference(hub, "text-to-video, encoder", history_mode="encoder"))


# ------------------------------------------------------------------ planning
def test_plan_per_request_budgets_history_tokens(hub):
    preset, _ = hub
    manager = _tight(hub).memory
    manager.prepare(preset, SECONDS, history_mode="window", rate=None, start_image=True)
    assert all(r.history_tokens == 0 for r in manager.plan)
    manager.prepare(preset, 1.875, history_mode="encoder", rate="2x2x2", start_image=False)  # 3 sections of 0.625 s
    den = [r for r in manager.plan if r.phase == "denoise"]
    assert manager.plan.seconds == 1.875 and len(den) == 3 and den[-1].history_tokens > 0
    assert not any(r.phase == "image_encode" for r in manager.plan)  # text-to-video: no image encoder budgeted


def test_planning_on_another_thread_leaves_a_running_job_alone(hub):
    """The measuring pass is thread-local: a plan made on the page's thread while the worker denoises."""
    pipe = _tight(hub, strict=False)
    expected = _reference(hub, "text-to-video, encoder", history_mode="encoder")
    preset = load_preset(TINY_HUNYUAN)  # its own traces: clearing them leaves the other tests' cache alone
    stop, started, plans = threading.Event(), threading.Event(), [0]

    def planner():
        comps = meta_components(preset)
        while not stop.is_set():
            comps.traces.clear()  # trace again each time (fused attention on meta, on this thread)
            started.set()
            plan(preset, SECONDS, budget=Budget(GiB, GiB, "cpu", "test"))
            plans[0] += 1

    thread = threading.Thread(target=planner)
    thread.start()
    try:
        started.wait(30)
        got = _frames(pipe, history_mode="encoder")
    finally:
        stop.set()
        thread.join()
    assert plans[0] >= 1 and np.array_equal(got, expected)
