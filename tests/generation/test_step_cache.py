"""Step caching (diffusers' First Block Cache): off changes nothing, on skips DiT passes within a measured
tolerance, no cached state crosses a section, request or guidance branch, and the streamed memory plan keeps working."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.cli.main import main
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation import step_cache
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone
from tests.conftest import TINY_TOY
from tests.memory.test_memory_strict import SECONDS, TILES, _frames, _tight, hub  # noqa: F401  (hub: the fixture)

PROMPT = "0s: camera pans right; 1s: a red circle moves"


@pytest.fixture(scope="module")
def toy() -> Pipeline:
    """The embedded toy model (four blocks, 8 steps, history guidance 2: two branches per step)."""
    preset = load_preset("toy-cpu")
    bb = load_backbone(preset.model, preset.hardware.device, preset.hardware.dtype)
    return Pipeline(bb, build_encoder(preset.model, bb), preset)


def _sections(pipe: Pipeline, **kw) -> list[SectionDone]:
    req = GenerationRequest(**{"prompt": PROMPT, "seconds": 2.0, "seed": 4, **kw})
    return [e for e in pipe.run(req) if isinstance(e, SectionDone)]


def _video(done: list[SectionDone]) -> np.ndarray:
    return np.concatenate([d.frames for d in done])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _cache_hooks(module: torch.nn.Module) -> list[str]:
    """Names of the diffusers cache hooks anywhere under ``module``."""
    return [name for m in module.modules() for name in getattr(getattr(m, "_diffusers_hook", None), "hooks", {})
            if name.startswith("fbc")]


# ------------------------------------------------------------------------------ off
def test_off_installs_nothing_and_hooks_alone_change_no_bit(toy, monkeypatch):
    """``off`` never installs a hook; First Block Cache that never skips (threshold 0) gives the same bits."""
    seen = []
    req = GenerationRequest(prompt=PROMPT, seconds=2.0, seed=4, cache="off")
    off = [e for e in toy.run(req, on_step=lambda i, info: seen.append(_cache_hooks(toy.backbone.transformer)))
           if isinstance(e, SectionDone)]
    assert seen and not any(seen)
    assert all(d.dit_passes["full"] == d.dit_passes["calls"] == 8 * 2 for d in off)  # 8 steps x 2 branches
    assert np.array_equal(_video(off), _video(_sections(toy)))  # the preset's default is off too
    monkeypatch.setitem(step_cache.THRESHOLDS, "toy", {"fast": 0.0, "faster": 0.0})
    hooked = []
    req = GenerationRequest(prompt=PROMPT, seconds=2.0, seed=4, cache="fast")
    zero = [e for e in toy.run(req, on_step=lambda i, info: hooked.append(_cache_hooks(toy.backbone.transformer)))
            if isinstance(e, SectionDone)]
    assert all(hooked) and np.array_equal(_video(zero), _video(off))
    assert not _cache_hooks(toy.backbone.transformer)  # taken off after every section


# ------------------------------------------------------------------------------- on
@pytest.mark.parametrize("setting,fewer,min_psnr", [("fast", 2.0, 25.0), ("faster", 2.5, 24.0)])
def test_cache_skips_dit_passes_within_tolerance(toy, setting, fewer, min_psnr):
    """Full passes counted independently (the last block's MLP runs only when the block computes).

    Tolerance: these two sections measured 26.9 dB (fast) and 25.6 dB (faster) against ``off``, where half
    the steps without a cache give 32.5 dB; against the true world the cost is nil (``benchmarks/step_cache.py``).
    """
    calls, mlp = [], []
    tr = toy.backbone.transformer
    hooks = [tr.register_forward_pre_hook(lambda m, a: calls.append(1)),
             tr.blocks[-1].mlp.register_forward_hook(lambda m, a, o: mlp.append(1))]
    try:
        on = _sections(toy, cache=setting)
    finally:
        for h in hooks:
            h.remove()
    full = sum(d.dit_passes["full"] for d in on)
    assert len(calls) == sum(d.dit_passes["calls"] for d in on) == 2 * 8 * 2
    assert len(mlp) == full and len(calls) / full >= fewer
    assert _psnr(_video(on), _video(_sections(toy, cache="off"))) >= min_psnr


def test_first_and_last_step_of_every_branch_run_in_full(toy, monkeypatch):
    """Even a threshold that would skip everything computes the first and the last step of each branch."""
    monkeypatch.setitem(step_cache.THRESHOLDS, "toy", {"fast": 1e9, "faster": 1e9})
    for d in _sections(toy, cache="fast"):
        assert d.dit_passes["by_branch"] == {"cond": [2, 8], "cond/no_history": [2, 8]}


# ------------------------------------------------------------------------ no leaks
def test_no_state_crosses_sections_or_requests(toy):
    """A section generated right after the one before it equals the same section after an unrelated request."""
    req = GenerationRequest(prompt=PROMPT, seconds=3.0, seed=4, cache="faster")
    gen, _ = toy.start(req)
    for _ in range(2):
        toy.generate_section(gen)
    snapshot = copy.deepcopy(gen)
    after_its_own = toy.generate_section(gen)
    assert not toy.backbone.transformer.is_cache_enabled
    other = _sections(toy, prompt="0s: camera pans left", seed=9, cache="faster")
    assert other[0].dit_passes["full"] < other[0].dit_passes["calls"]
    after_other = toy.generate_section(snapshot)
    assert np.array_equal(after_its_own.frames, after_other.frames)
    assert after_its_own.dit_passes == after_other.dit_passes


def test_guidance_branches_keep_separate_states(toy):
    """With and without the history embedding: each call runs in its own cache context and state."""
    from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

    bb = toy.backbone
    head = bb.transformer.blocks[0]
    seen: list[tuple[str, object, bool]] = []
    inner = bb.predict

    def spy(noisy, sigma, cond, context, guidance=1.0):
        out = inner(noisy, sigma, cond, context, guidance)
        manager = head._diffusers_hook.get_hook(_FBC_LEADER_BLOCK_HOOK).state_manager
        seen.append((manager.context.name, manager.get_state(), context.history_tokens is not None))  # kept alive
        return out

    bb.predict = spy  # this backbone object only
    try:
        _sections(toy, seconds=1.0, cache="faster")
    finally:
        del bb.predict
    by_name = {}
    for name, state, with_history in seen:
        by_name.setdefault(name, set()).add((id(state), with_history))
    assert set(by_name) == {"cond", "cond/no_history"}
    states = {name: {s for s, _ in v} for name, v in by_name.items()}
    assert not states["cond"] & states["cond/no_history"]  # never one state for both
    assert all(len(v) == 2 for v in states.values())  # each branch: one state, and a fresh one for its last step
    assert {w for s, w in by_name["cond"]} == {True} and {w for s, w in by_name["cond/no_history"]} == {False}


# ---------------------------------------------------------------- streamed memory plan
def test_streamed_plan_in_strict_mode_matches_the_resident_backbone(hub, monkeypatch):  # noqa: F811
    """The rtx4070-12gb shape (streamed + resident blocks, strict residency checks) with passes skipped."""
    monkeypatch.setitem(step_cache.THRESHOLDS, "hunyuan_framepack", {"fast": 0.45, "faster": 0.45})
    kw = {"history_mode": "encoder", "steps": 8, "cache": "fast"}
    tight = _tight(hub)
    passes = []
    got = np.concatenate([e.frames for e in tight.run(GenerationRequest(prompt="a red circle", seconds=SECONDS, seed=5, **kw))
                          if isinstance(e, SectionDone) and not passes.append(e.dit_passes)])
    assert sum(p["full"] for p in passes) < sum(p["calls"] for p in passes)
    preset, paths = hub
    bb = HunyuanFramepackBackbone.from_pretrained(**paths)
    bb.vae.enable_tiling(**TILES)
    assert np.array_equal(got, _frames(Pipeline(bb, build_encoder(preset.model, bb), preset), **kw))
    assert tight.memory.residency.peak <= tight.memory.plan.budget.usable
    assert not _cache_hooks(tight.backbone.transformer)


# --------------------------------------------------------------------- the sidecar
def test_sidecar_records_the_setting_and_passes_per_section(toy, tmp_path):
    from framepack_history.jobs.render import render

    req = GenerationRequest(prompt=PROMPT, seconds=2.0, seed=4, cache="faster")
    data = render(toy, req, tmp_path / "v.mp4", tmp_path / "seg")
    on_disk = json.loads((tmp_path / "v.json").read_text())
    assert on_disk["cache"] == "faster" and on_disk["request"]["cache"] == "faster"
    rows = [s["dit_passes"] for s in on_disk["sections"]]
    assert len(rows) == 2 and all(r["full"] < r["calls"] == 16 for r in rows)
    assert on_disk["dit_passes"] == {"calls": 32, "full": sum(r["full"] for r in rows)} == data["dit_passes"]


# ---------------------------------------------------------------------- bad values
@pytest.mark.parametrize("value", ["fastest", "", "FAST", 1])
def test_bad_request_value_names_the_field(value):
    with pytest.raises(InputError) as e:
        GenerationRequest(prompt="a", seconds=1, cache=value).validate(load_preset(TINY_TOY))
    assert e.value.field == "--cache" and "off, fast, faster" in e.value.message


def test_bad_preset_value_names_the_field(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(TINY_TOY.read_text().replace("[sampling]\n", '[sampling]\ncache = "turbo"\n'))
    with pytest.raises(InputError, match=r"sampling\.cache must be one of off, fast, faster"):
        load_preset(path)


def test_cli_bad_cache_exits_2_with_one_line(capsys):
    assert main(["generate", "--preset", str(TINY_TOY), "--prompt", "a", "--seconds", "1", "--cache", "max"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--cache" in lines[0], lines


def test_page_and_api_pass_the_setting_through():
    """The page's inputs and the API's parameters end with ``cache, history_merge`` and then the end image's two
    (options are appended, so positional API clients keep working): both reach the request."""
    import inspect

    from framepack_history.ui.handlers import Handlers

    from framepack_history.ui.plan import KEYFRAME_SLOTS

    tail = ["cache", "history_merge", "end_image", "end_frame_strength"]
    rows = 3 * KEYFRAME_SLOTS  # then the page's keyframe rows (image, time, prompt each), then the memory controls' two
    memory = ["memory", "borrow"]
    params = list(inspect.signature(Handlers.spec).parameters)
    assert params[-4 - rows - 2:-rows - 2] == tail and params[-2:] == memory
    # the API's last value parameters (gradio fills the trailing ``request`` itself): the keyframes' two, the memory's two
    api = [n for n in inspect.signature(Handlers.api_generate).parameters if n != "request"]
    assert api[-8:] == tail + ["keyframe_images", "keyframe_times"] + memory
    h = Handlers.__new__(Handlers)  # spec() reads only the presets
    h.presets, h.default_preset = ["toy-cpu"], "toy-cpu"
    spec = h.spec("a", None, None, 1, 0, "toy-cpu", None, None, None, None, None, None, cache="faster", history_merge="oldest")
    assert spec.request.cache == "faster" and spec.request.history_merge == "oldest"
    assert h.spec("a", None, None, 1, 0, "toy-cpu", None, None, None, None, None, None).request.cache is None


def test_page_controls_are_the_last_generate_inputs(tmp_path):
    """The step cache and the cap's merge rule come just before the end image's two inputs, then the keyframes' and the memory controls'."""
    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.layout import build_app

    cfg = build_app(Worker(tmp_path / "out", jobs_dir=tmp_path / "jobs")).get_config_file()
    labels = {c["id"]: c.get("props", {}) for c in cfg["components"]}
    generate = next(d for d in cfg["dependencies"] if d.get("api_name") == "generate")
    cache, merge, end, strength, keyframes, times, memory, borrow = (labels[i] for i in generate["inputs"][-8:])
    assert memory["label"] == "Memory controls" and borrow["label"].startswith("Borrow memory")
    assert keyframes["label"] == "Keyframes" and keyframes["file_count"] == "multiple"
    assert times["label"] == "Keyframe times (seconds)"
    assert end["label"].startswith("End image") and strength["label"] == "End frame strength"
    assert cache["label"] == "Step cache" and [v for v, _ in cache["choices"]] == ["off", "fast", "faster"]
    assert merge["label"] == "Cap merges" and [v for v, _ in merge["choices"]] == ["similar", "oldest"]
