"""Memory planner and weight streaming, on tiny models and the CPU.

The CPU is both host and device here: the streamer runs against a simulated
device (device copies are clones, the residency ledger tells them from host
copies by storage), which is enough to prove which weights *would* be on a
GPU. Measured activation peaks are bytes of live tensors under
:class:`~framepack_history.memory.measure.LiveBytes` with real weights.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from framepack_history.backbones.base import transformer_blocks
from framepack_history.cli.main import main
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone
from framepack_history.memory.budget import Budget, GiB
from framepack_history.memory.components import denoise_activation, meta_components, vae_decode_activation
from framepack_history.memory.manager import MemoryManager, OnFirstCall
from framepack_history.memory.measure import LiveBytes, module_bytes
from framepack_history.memory.planner import format_table, plan, quantized_bytes, spread_order
from tests.backbones.tiny_framepack import save_hub_layout
from tests.conftest import TINY_HUNYUAN, TINY_TOY

# More blocks than the test presets' single one, so some stay and some stream.
DEEPER = {"toy": ("dit", {"depth": 5}), "hunyuan": (None, {"num_layers": 2, "num_single_layers": 3})}
PRESETS = {"toy": TINY_TOY, "hunyuan": TINY_HUNYUAN}
REQUEST = {"prompt": "camera pans left", "seconds": 1.3, "seed": 3}  # three sections of either tiny model


def _preset(kind: str):
    preset = load_preset(PRESETS[kind])
    key, over = DEEPER[kind]
    if key:
        preset.model.config.setdefault(key, {}).update(over)
    else:
        preset.model.config.update(over)
    return preset


def _pipeline(kind: str) -> Pipeline:
    preset = _preset(kind)
    bb = load_backbone(preset.model)
    return Pipeline(bb, build_encoder(preset.model, bb), preset)


def _frames(pipe: Pipeline, **kw) -> np.ndarray:
    req = GenerationRequest(**{**REQUEST, **kw})
    return np.concatenate([e.frames for e in pipe.run(req) if isinstance(e, SectionDone)])


def _tight_budget(pipe: Pipeline) -> Budget:
    """A device budget that holds about half of the DiT's blocks next to everything else."""
    roomy = plan(pipe.preset, REQUEST["seconds"], budget=Budget(GiB, GiB, "cpu", "test"))
    blocks = sum(module_bytes(b) for b in transformer_blocks(pipe.backbone.transformer))
    return Budget(int((roomy.device_peak - blocks // 2) / 0.96), GiB, "cpu", "test")


# ------------------------------------------------------------------ planner
def test_rtx4070_minute_fits_12gb_and_32gb():
    p = plan("rtx4070-12gb", 60, history_mode="encoder")
    assert p.fits and p.device_peak <= 11.5 * GiB and p.host_peak <= 32 * GiB
    st = p.strategy
    assert st.streamed and st.resident and st.text_encoder == "nf4" and st.vae_tiling
    den = [r for r in p if r.phase == "denoise"]
    assert len(den) == 50 and [r.section for r in den] == list(range(50))  # 60 s at 30 fps, 36-frame sections
    tokens = [r.history_tokens for r in den]
    assert tokens == sorted(tokens) and tokens[-1] > 3 * p.tokens_per_20s - 1000
    assert den[-1].activation_bytes > den[0].activation_bytes  # longer history, longer sequence
    assert "…" in format_table(p) and len(format_table(p, full=True).splitlines()) > 90


def test_more_memory_keeps_more_blocks_resident():
    small, big = plan("rtx4070-12gb", 60, history_mode="encoder"), plan("rtx4090-24gb", 60, history_mode="encoder")
    assert len(big.strategy.resident) > len(small.strategy.resident)
    assert plan("h100-80gb", 60, history_mode="encoder").strategy.streamed == ()


def test_plan_cli_json_lists_phases(capsys):
    assert main(["plan", "--preset", "rtx4070-12gb", "--seconds", "60", "--history", "encoder", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"phase", "device_peak_bytes", "host_peak_bytes", "history_tokens", "strategy"} <= set(rows[0])
    assert [r["phase"] for r in rows[:3]] == ["text_encode", "image_encode", "vae_encode"]
    assert main(["plan", "--preset", "rtx4070-12gb", "--seconds", "-1"]) == 2


def test_spread_order_prefixes_are_spread():
    order = spread_order(60)
    assert sorted(order) == list(range(60))
    assert max(order[:4]) - min(order[:4]) >= 40


@pytest.mark.parametrize("kind", ["toy", "hunyuan"])
def test_predicted_activations_match_measured(kind):
    """Meta trace (shallow DiT, fused-attention accounting) vs live tensor bytes of the real model on the CPU."""
    preset = _preset(kind)
    preset.video.width = preset.video.height = 128  # enough tokens for the blocks to dominate
    bb = load_backbone(preset.model)
    comps = meta_components(preset)
    geo = bb.geometry
    h = w = 128 // geo.spatial_scale
    t = geo.latent_frames(preset.video.section_frames)
    hist, window = 600, 2
    cond = bb.encode_text("a red circle")
    if kind == "hunyuan":
        cond.tensors["image_embeds"] = torch.randn(1, comps.image_tokens, bb.transformer.config.image_proj_dim)
        cond.tensors["prompt_attention_mask"] = torch.ones_like(cond.tensors["prompt_attention_mask"])
    from framepack_history.backbones.base import Context

    ctx = Context(torch.randn(1, hist, geo.hidden_size), torch.randn(hist, 3), torch.randn(1, geo.latent_channels, window, h, w), -2.0)
    with torch.no_grad(), LiveBytes() as lb:
        bb.predict(torch.randn(1, geo.latent_channels, t, h, w), torch.tensor([0.5]), cond, ctx).float()
    predicted = denoise_activation(comps, preset.video, hist, window, True)
    assert abs(predicted / lb.peak - 1) < 0.15
    with torch.no_grad(), LiveBytes() as lb:
        bb.vae_decode(torch.randn(1, geo.latent_channels, t, h, w))
    assert abs(vae_decode_activation(comps, (1, geo.latent_channels, t, h, w), tiled=False) / lb.peak - 1) < 0.15


class _Measured:
    """Memory hooks that wrap a manager and record, per phase, resident weights + persistent tensors + live peak.

    Weights are the DiT's and the VAE's (what a denoise or decode row counts): idle conditioning
    encoders may stay resident where the budget has room, beside what the phase needs.
    """

    def __init__(self, manager: MemoryManager, pipe: Pipeline) -> None:
        self.manager, self.pipe, self.rows = manager, pipe, {}
        self.gen = None

    @contextmanager
    def phase(self, name: str, section: int | None = None):
        with self.manager.phase(name, section):
            weights = self.manager.residency.resident_bytes(("transformer", "vae")) + module_bytes(self.pipe.encoder)
            gen = self.pipe.__dict__.get("last_generation")
            hist = 0 if gen is None or gen.history.grid is None else gen.history.grid.numel() * gen.history.grid.element_size()
            with LiveBytes() as lb:
                yield
            self.rows[(name, section)] = weights + hist + lb.peak


@pytest.mark.parametrize("kind", ["toy", "hunyuan"])
def test_predicted_phase_peaks_match_measured(kind):
    pipe = _pipeline(kind)
    # text-to-video starts from the backbone's start frame (the toy's world view, F1's noise image): a start latent
    p = plan(pipe.preset, REQUEST["seconds"], start_image=True)
    hooks = _Measured(MemoryManager(pipe.backbone, p), pipe)
    pipe.memory = hooks
    _frames(pipe)
    for row in p:
        if row.phase in ("denoise", "vae_decode"):
            measured = hooks.rows[(row.phase, row.section)]
            assert abs(row.device_peak_bytes / measured - 1) < 0.15, (row.phase, row.section, row.device_peak_bytes, measured)


# ---------------------------------------------------------------- mechanism
@pytest.mark.parametrize("kind", ["toy", "hunyuan"])
def test_streamed_run_stays_in_budget_and_matches_resident_run(kind):
    pipe = _pipeline(kind)
    resident_frames = _frames(pipe)
    budget = _tight_budget(pipe)
    p = plan(pipe.preset, REQUEST["seconds"], budget=budget, start_image=False)
    assert p.strategy.streamed and p.strategy.resident
    manager = MemoryManager(pipe.backbone, p, verify=True)
    streamed = [manager.streamer.groups[i] for i in manager.streamer.order]
    in_flight = []
    st = lambda: manager.streamer  # noqa: E731  (a request may re-plan: the streamer is then rebuilt)
    for block in transformer_blocks(pipe.backbone.transformer):  # runs after the streamer's own pre-hooks
        block.register_forward_pre_hook(lambda *_: in_flight.append(sum(st().groups[i].on_device for i in st().order)))
    pipe.memory = manager
    assert np.array_equal(_frames(pipe), resident_frames)
    res = manager.residency
    assert len(res.samples) > 4 * len(streamed)  # sampled before every streamed block of every step
    assert res.peak <= budget.usable
    assert 1 <= max(in_flight) <= 2  # current block + one prefetched, never more
    p = manager.plan  # the request's plan (prepare may have re-planned)

    def beside(phase: str) -> int:  # what a phase holds besides component weights (the history encoder's bytes included)
        return max(r.device_peak_bytes - r.weights_bytes for r in p if r.phase == phase)

    for name, section, resident in manager.phases:  # every phase started with room for what it allocates
        if any(r.phase == name for r in p):
            buffer = p.strategy.buffer_bytes if name == "denoise" else 0
            assert resident + buffer + beside(name) <= budget.usable, (name, section)
    pre = [b for where, b in res.samples if where.startswith("pre ")]  # streamed blocks in flight included
    assert max(pre) + beside("denoise") <= budget.usable
    manager.close()  # back to a plain backbone: same frames again
    pipe.memory = None
    # the whole run: FramePack-F1 cross-fades a section's tail into the next one, so a shorter video is no prefix
    assert np.array_equal(_frames(pipe), resident_frames)


def test_text_encoder_streamed_by_layer_gives_the_same_embeddings():
    pipe = _pipeline("hunyuan")
    expected = pipe.backbone.encode_text("a cat")
    p = plan(pipe.preset, REQUEST["seconds"], budget=_tight_budget(pipe), text_encoder_quantization="streamed")
    manager = MemoryManager(pipe.backbone, p, verify=True)
    assert "text_encoder" in manager.streamers
    with manager.phase("text_encode"):
        got = pipe.backbone.encode_text("a cat")
    assert all(torch.equal(expected.tensors[k], got.tensors[k]) for k in expected.tensors)
    with manager.phase("denoise", 0):
        assert manager.residency.resident_bytes() < module_bytes(pipe.backbone.transformer)


# ----------------------------------------------------------- quantisation
@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantised_text_encoder_runs_on_cpu(kind, tmp_path):
    """transformers + bitsandbytes quantise a tiny LLaMA on the CPU; the backbone encodes prompts with it."""
    pytest.importorskip("bitsandbytes")
    from transformers import LlamaConfig, LlamaModel

    from framepack_history.hub.hunyuan_weights import text_encoder_quantization_config

    bb = load_backbone(load_preset(TINY_HUNYUAN).model)
    tok = bb.tokenizer
    # 64-wide: bitsandbytes quantises in blocks of 64 along the input features.
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    bb.text_encoder = LlamaModel(cfg).eval()
    bb.text_encoder.save_pretrained(tmp_path)
    expected = bb.encode_text("a red circle moves left").tensors["prompt_embeds"]
    q = LlamaModel.from_pretrained(tmp_path, quantization_config=text_encoder_quantization_config(kind, torch.float32),
                                   device_map={"": "cpu"}, dtype=torch.float32)
    assert type(q.layers[0].mlp.up_proj).__name__ == ("Linear4bit" if kind == "nf4" else "Linear8bitLt")
    loaded = module_bytes(q)  # before the first forward: bitsandbytes' CPU kernels repack the state on first use
    bb.text_encoder = q
    got = bb.encode_text("a red circle moves left").tensors["prompt_embeds"]
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.97
    with torch.device("meta"):
        predicted = quantized_bytes(LlamaModel(cfg), kind)
    assert abs(predicted / loaded - 1) < 0.15
    assert loaded < 0.6 * sum(p.numel() * 4 for p in LlamaModel(cfg).parameters())


# ------------------------------------------------------------------ GPU only
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_streaming_matches_resident_and_respects_the_plan():
    preset = _preset("hunyuan")
    preset.hardware.device = "cuda"
    bb = load_backbone(preset.model, "cuda")
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset)
    resident_frames = _frames(pipe)
    tight = _tight_budget(pipe)  # the same usable bytes on CUDA: the budget carries the CUDA allowance on top
    budget = Budget(tight.usable + Budget(0, 0, "cuda").allowance, GiB, "cuda", "test")
    assert budget.usable == tight.usable
    manager = MemoryManager(bb, plan(preset, REQUEST["seconds"], budget=budget, start_image=False), verify=True)
    pipe.memory = manager
    torch.cuda.reset_peak_memory_stats()
    assert np.array_equal(_frames(pipe), resident_frames)
    assert manager.residency.peak <= budget.usable
    assert manager.streamer.stream is not None




def test_offload_mode_reads_the_dit_by_block_and_builds_encoders_on_use(tmp_path):
    from PIL import Image

    from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone

    # a square start image: its resolution bucket is the preset's 64x64, the size _tight_budget is made for
    start_image = tmp_path / "square.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(start_image)

    pipe = _pipeline("hunyuan")
    save_hub_layout(pipe.backbone, tmp_path)
    paths = {"transformer": str(tmp_path / "transformer"), "base": str(tmp_path / "base"),
             "image_encoder": str(tmp_path / "redux"), "dtype": torch.float32, "local_files_only": True}
    full = HunyuanFramepackBackbone.from_pretrained(**paths)
    lazy = HunyuanFramepackBackbone.from_pretrained(**paths, offload=True)
    assert lazy.text_encoder is None and set(lazy.loaders) == {"text_encoder", "text_encoder_2", "image_encoder"}
    assert all(p.is_meta for p in lazy.transformer.parameters())
    kw = {"image": str(start_image), "seconds": 1.0}
    expected = _frames(Pipeline(full, build_encoder(pipe.preset.model, full), pipe.preset), **kw)
    p = plan(pipe.preset, 1.0, budget=_tight_budget(pipe))
    manager = MemoryManager(lazy, p, verify=True)
    assert not any(q.is_meta for q in lazy.transformer.parameters())
    got = _frames(Pipeline(lazy, build_encoder(pipe.preset.model, lazy), pipe.preset, memory=manager), **kw)
    assert np.array_equal(got, expected)
    # built on first call, dropped (not moved) when the DiT needed the room
    assert isinstance(lazy.text_encoder, OnFirstCall) and isinstance(lazy.image_encoder, OnFirstCall)
    assert [ph for ph, _, _ in manager.phases[:3]] == ["text_encode", "image_encode", "vae_encode"]


def test_one_large_backbone_per_device_unless_the_budget_holds_two():
    from types import SimpleNamespace

    from framepack_history.generation.loading import fits_beside, needs_manager

    preset = load_preset("rtx4070-12gb")
    assert needs_manager(preset) and not needs_manager(load_preset(TINY_HUNYUAN))
    cuda, cpu = SimpleNamespace(device=torch.device("cuda")), SimpleNamespace(device=torch.device("cpu"))
    large = SimpleNamespace(plan=plan(preset, preset.video.max_seconds))
    small = SimpleNamespace(plan=SimpleNamespace(device_peak=0))
    assert not fits_beside(preset, [(cuda, large)])  # two 12 GB plans do not share 12 GB
    assert fits_beside(preset, [(cuda, small)]) and fits_beside(preset, [(cpu, large)]) and fits_beside(preset, [])
    assert fits_beside(load_preset(TINY_TOY), [(cpu, None)])


def test_out_of_memory_part_way_through_a_copy_leaves_the_group_on_the_host():
    """A failed onload rolls back: no tensor of the group stays on the device (a retry then reloads it whole)."""
    from torch import nn

    from framepack_history.memory.streaming import Residency, WeightGroup

    class NoRoom(torch.Tensor):  # its copy to the (simulated) device fails, as cudaMalloc would
        def clone(self, *args, **kwargs):
            raise torch.OutOfMemoryError("no room for this tensor")

    ledger = Residency("cpu")
    group = WeightGroup.of("block", [nn.Linear(4, 4)], ledger)
    group.offload()
    real = group.host[1]
    group.host[1] = real.as_subclass(NoRoom)  # the weight copies, the bias does not
    with pytest.raises(torch.OutOfMemoryError):
        group.onload()
    assert not group.on_device and not any(ledger.is_resident(t) for t in group.tensors)
    group.host[1] = real
    group.onload()
    assert group.on_device and all(ledger.is_resident(t) for t in group.tensors)


def test_the_similar_rule_plans_its_segment_sums_on_the_host():
    """Capped with ``similar``, every segment keeps a float64 sum of its raw latents: the host rows count them."""
    from dataclasses import replace

    from framepack_history.config.presets import load_preset

    preset = load_preset("rtx4070-12gb")
    assert preset.history.max_tokens and preset.history.merge == "similar"
    oldest = replace(preset, history=replace(preset.history, merge="oldest"))
    a = plan(preset, 300, history_mode="encoder", rate="4x4x2", budget=Budget(64 * GiB, 64 * GiB, "cuda", "test"))
    b = plan(oldest, 300, history_mode="encoder", rate="4x4x2", budget=Budget(64 * GiB, 64 * GiB, "cuda", "test"))
    per_segment = 16 * 60 * 104 * 8  # 16 latent channels at 480x832 (60x104 latents), float64
    segments = preset.history.max_tokens // (8 * 13)  # 4x4x2 of 2x2 DiT patches on 60x104 latents: 8x13 per group
    assert a.host_peak - b.host_peak == per_segment * segments
    assert [r.device_peak_bytes for r in a] == [r.device_peak_bytes for r in b]  # the device is not touched
