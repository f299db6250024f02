"""LoRAs on the tiny FramePack-F1: peft/diffusers, kohya/musubi and HunyuanVideo layouts, weights, streaming.

Every LoRA is made here: a peft ``LoraConfig`` injected into the tiny DiT, random non-zero
``lora_B``, saved as safetensors in the diffusers/peft key layout; the other layouts rename
those keys as kohya/musubi-tuner write them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file

from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.cli.main import main as cli_main
from framepack_history.config.loras import parse_arg
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone
from framepack_history.jobs.admission import check_loras
from framepack_history.lora.adapters import STATE, adapter_bytes, apply
from tests.app_process import app_client
from tests.conftest import TINY_HUNYUAN, TINY_TOY

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "proj_out", "ff.net.0.proj", "ff.net.2"]
RANK = 4


def peft_lora(transformer: torch.nn.Module, seed: int, targets: list[str] = TARGETS) -> dict[str, torch.Tensor]:
    """A peft LoRA of ``transformer``: module name -> lora_A/lora_B weights (random, B non-zero)."""
    model = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets), copy.deepcopy(transformer))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}


def save_diffusers(sd: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({f"transformer.{k}": v for k, v in sd.items()}, str(path))
    return path


def save_kohya(sd: dict[str, torch.Tensor], path: Path, alpha_over_rank: float = 2.0) -> Path:
    """musubi-tuner's layout: ``lora_unet_`` + the module name with '.' -> '_', lora_down/lora_up and alpha."""
    out = {}
    for key, t in sd.items():
        module, part = key.rsplit(".lora_", 1)
        flat = "lora_unet_" + module.replace(".", "_")
        if part.startswith("A"):
            out[f"{flat}.lora_down.weight"] = t / alpha_over_rank  # the forward scales by alpha / rank
            out[f"{flat}.alpha"] = torch.tensor(float(RANK * alpha_over_rank))
        else:
            out[f"{flat}.lora_up.weight"] = t
    save_file(out, str(path))
    return path


def merged(transformer: torch.nn.Module, loras: list[tuple[dict[str, torch.Tensor], float]]) -> torch.nn.Module:
    """The DiT with ``W + sum(w * B @ A)`` written into its weights."""
    out = copy.deepcopy(transformer)
    with torch.no_grad():
        for sd, w in loras:
            for key, a in sd.items():
                if key.endswith("lora_A.weight"):
                    module = key[: -len(".lora_A.weight")]
                    out.get_submodule(module).weight += w * sd[f"{module}.lora_B.weight"] @ a
    return out


@pytest.fixture(scope="module")
def preset():
    return load_preset(TINY_HUNYUAN)


def pipeline(preset, transformer: torch.nn.Module | None = None) -> Pipeline:
    bb = load_backbone(preset.model)
    if transformer is not None:
        bb.transformer.load_state_dict(transformer.state_dict())
    return Pipeline(bb, build_encoder(preset.model, bb), preset)


def frames(pipe: Pipeline, loras=None, **kw) -> np.ndarray:
    req = GenerationRequest(**{"prompt": "a red circle", "seconds": 1.0, "seed": 3, "loras": loras, **kw})
    return np.concatenate([e.frames for e in pipe.run(req) if isinstance(e, SectionDone)])


@pytest.fixture(scope="module")
def base(preset):
    return load_backbone(preset.model).transformer


@pytest.fixture(scope="module")
def files(tmp_path_factory, base):
    root = tmp_path_factory.mktemp("loras")
    one, two = peft_lora(base, 1), peft_lora(base, 2, ["to_q", "to_v", "proj_out"])
    return {"one": one, "two": two, "one_path": save_diffusers(one, root / "one.safetensors"),
            "two_path": save_diffusers(two, root / "two.safetensors"),
            "one_kohya": save_kohya(one, root / "one_kohya.safetensors"), "root": root}


@pytest.fixture(scope="module")
def no_lora(preset):
    return frames(pipeline(preset))


# ------------------------------------------------------------------ equalities
def test_weight_zero_equals_no_lora(preset, files, no_lora):
    out = frames(pipeline(preset), [{"name": str(files["one_path"]), "weight": 0.0}])
    assert np.array_equal(out, no_lora)


def test_weight_one_equals_the_model_peft_merged(preset, files, base, no_lora):
    """peft's own merge_and_unload of the same adapter is the reference."""
    from peft.tuners.lora import LoraModel

    cfg = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS)
    model = LoraModel(copy.deepcopy(base), cfg, "default")
    missing = model.load_state_dict({f"model.{k.replace('.weight', '.default.weight')}": v
                                     for k, v in files["one"].items()}, strict=False)
    assert not [k for k in missing.unexpected_keys]
    reference = frames(pipeline(preset, model.merge_and_unload()))
    out = frames(pipeline(preset), [{"name": str(files["one_path"]), "weight": 1.0}])
    assert not np.array_equal(out, no_lora)  # the LoRA changes the video
    assert np.abs(out.astype(int) - reference.astype(int)).max() <= 1


def test_two_loras_add(preset, files, base):
    pipe = pipeline(preset)
    x, s = torch.randn(1, 16, 2, 8, 8), torch.tensor([0.6])
    with torch.no_grad():
        ref = merged(base, [(files["one"], 0.5), (files["two"], -0.7)])
        apply(pipe.backbone, [{"name": str(files["one_path"]), "weight": 0.5},
                              {"name": str(files["two_path"]), "weight": -0.7}])
        got = _predict(pipe.backbone, x, s)
        pipe.backbone.transformer.unload_lora()
        setattr(pipe.backbone.transformer, STATE, {})
        pipe.backbone.transformer.load_state_dict(ref.state_dict())
        want = _predict(pipe.backbone, x, s)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def _predict(bb, x, s):
    from framepack_history.backbones.base import Conditioning, Context

    cond = bb.encode_text("a red circle")
    cond = Conditioning({**cond.tensors, **bb.encode_image(torch.zeros(3, 64, 64)).tensors})
    return bb.predict(x, s, cond, Context(recent_latents=torch.zeros(1, 16, 3, 8, 8)), 10.0)


def test_kohya_musubi_layout_equals_the_peft_file(preset, files):
    pipe = pipeline(preset)
    x, s = torch.randn(1, 16, 2, 8, 8), torch.tensor([0.4])
    with torch.no_grad():
        apply(pipe.backbone, [{"name": str(files["one_path"]), "weight": 0.8}])
        want = _predict(pipe.backbone, x, s)
        apply(pipe.backbone, [{"name": str(files["one_kohya"]), "weight": 0.8}])
        got = _predict(pipe.backbone, x, s)
        assert len(getattr(pipe.backbone.transformer, STATE)) == 1  # the peft file's adapter was deleted
        apply(pipe.backbone, [])
        plain = _predict(pipe.backbone, x, s)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(plain, want, atol=1e-3)
    assert type(pipe.backbone.transformer.transformer_blocks[0].attn.to_q) is torch.nn.Linear  # adapter layers gone


def test_hunyuan_video_original_layout_converted_by_diffusers(preset, base, tmp_path):
    """musubi-tuner's HunyuanVideo LoRAs (fused img_attn_qkv, img_mlp) go through diffusers' converter."""
    g = torch.Generator().manual_seed(4)
    dim = base.transformer_blocks[0].attn.to_q.in_features
    ffn = base.transformer_blocks[0].ff.net[0].proj.out_features
    a, b = torch.randn(RANK, dim, generator=g), torch.randn(3 * dim, RANK, generator=g) * 0.2
    a2, b2 = torch.randn(RANK, dim, generator=g), torch.randn(ffn, RANK, generator=g) * 0.2
    original = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": a,
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": b,
                "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(float(RANK)),
                "lora_unet_double_blocks_0_img_mlp_fc1.lora_down.weight": a2,
                "lora_unet_double_blocks_0_img_mlp_fc1.lora_up.weight": b2}
    save_file(original, str(tmp_path / "hv.safetensors"))
    q, k, v = (t.contiguous() for t in b.chunk(3))
    same = {"transformer_blocks.0.attn.to_q": (a, q), "transformer_blocks.0.attn.to_k": (a, k),
            "transformer_blocks.0.attn.to_v": (a, v), "transformer_blocks.0.ff.net.0.proj": (a2, b2)}
    save_diffusers({f"{m}.lora_{p}.weight": t.clone() for m, (A, B) in same.items() for p, t in (("A", A), ("B", B))},
                   tmp_path / "same.safetensors")
    pipe = pipeline(preset)
    x, s = torch.randn(1, 16, 2, 8, 8), torch.tensor([0.5])
    with torch.no_grad():
        apply(pipe.backbone, [{"name": str(tmp_path / "hv.safetensors"), "weight": 1.0}])
        got = _predict(pipe.backbone, x, s)
        apply(pipe.backbone, [{"name": str(tmp_path / "same.safetensors"), "weight": 1.0}])
        want = _predict(pipe.backbone, x, s)
    assert torch.allclose(got, want, atol=1e-5)


# ------------------------------------------------------------------ bad files
@pytest.fixture
def bad(tmp_path, files):
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.")  # a pickle
    wrong = dict(files["one"])
    key = next(k for k in wrong if k.endswith("to_q.lora_A.weight"))
    wrong[key] = torch.randn(RANK, 7)
    unknown = {"transformer.not_a_layer.lora_A.weight": torch.randn(RANK, 32),
               "transformer.not_a_layer.lora_B.weight": torch.randn(32, RANK)}
    odd = {"transformer.transformer_blocks.0.attn.to_q.weight": torch.randn(32, 32), "lora_note": torch.zeros(1)}
    return {"pickled": pickled, "wrong": save_diffusers(wrong, tmp_path / "wrong_shape.safetensors"),
            "unknown": save_file(unknown, str(tmp_path / "unknown_layer.safetensors")) or tmp_path / "unknown_layer.safetensors",
            "odd": save_file(odd, str(tmp_path / "odd_keys.safetensors")) or tmp_path / "odd_keys.safetensors"}


@pytest.mark.parametrize("kind, says", [("pickled", "not a safetensors file"), ("wrong", "do not fit the layer"),
                                        ("unknown", "names no linear layer"), ("odd", "unknown key")])
def test_bad_files_are_named_at_submit(preset, bad, kind, says):
    req = GenerationRequest(prompt="x", seconds=0.5, loras=[{"name": str(bad[kind]), "weight": 1.0}])
    with pytest.raises(InputError, match=says) as err:
        check_loras(req, preset)
    assert err.value.field == "--lora" and bad[kind].name in err.value.message


def test_bad_lora_on_the_command_line_exits_2(bad, files, tmp_path, capsys):
    out = str(tmp_path / "v.mp4")
    assert cli_main(["generate", "--prompt", "x", "--preset", str(TINY_HUNYUAN), "--lora", str(bad["wrong"]), "--out", out, "--quiet"]) == 2
    assert "wrong_shape.safetensors" in capsys.readouterr().err
    assert cli_main(["generate", "--prompt", "x", "--preset", str(TINY_HUNYUAN), "--lora", f"{files['one_path']}:abc", "--out", out]) == 2
    assert cli_main(["generate", "--prompt", "x", "--preset", str(TINY_HUNYUAN), "--lora", "missing.safetensors", "--out", out]) == 2
    assert "missing.safetensors: no such LoRA file" in capsys.readouterr().err
    # the toy backbone refuses LoRAs, with a reason
    assert cli_main(["generate", "--prompt", "x", "--preset", str(TINY_TOY), "--lora", str(files["one_path"]), "--out", out]) == 2
    assert "the toy backbone takes no LoRAs" in capsys.readouterr().err
    assert not Path(out).exists()


def test_lora_arguments_parse():
    assert parse_arg("style.safetensors:0.75") == {"name": "style.safetensors", "weight": 0.75}
    assert parse_arg("C:/loras/x.safetensors") == {"name": "C:/loras/x.safetensors", "weight": 1.0}
    assert parse_arg("a:b:-0.5") == {"name": "a:b", "weight": -0.5}
    with pytest.raises(InputError, match="weight must be a number"):
        parse_arg("x.safetensors:99")


def test_loras_from_the_lora_folder_and_the_preset(preset, files, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("FPH_LORA_DIR", str(files["root"]))
    req = GenerationRequest(prompt="x", seconds=0.5)
    check_loras(req, replace(preset, loras=["one:0.5", "two.safetensors"]))
    assert [(e["name"], e["weight"], Path(e["path"]).name) for e in req.loras] == [
        ("one", 0.5, "one.safetensors"), ("two.safetensors", 1.0, "two.safetensors")]
    assert all(len(e["sha256"]) == 64 for e in req.loras)
    none = GenerationRequest(prompt="x", seconds=0.5, loras=[])  # an explicit empty list overrides the preset
    check_loras(none, replace(preset, loras=["one"]))
    assert none.loras == []


# ------------------------------------------------------------------ memory plans
from tests.memory.test_memory_strict import SECONDS, TILES, _tight, hub  # noqa: E402,F401  (hub is a fixture)


def test_one_lora_streamed_equals_resident_in_strict_mode(hub, tmp_path):
    """The rtx4070-12gb plan shape (streamed + resident blocks, strict ledger) with a LoRA on every block."""
    from framepack_history.lora.adapters import is_adapter

    preset, paths = hub
    resident = HunyuanFramepackBackbone.from_pretrained(**paths)
    resident.vae.enable_tiling(**TILES)
    path = save_diffusers(peft_lora(resident.transformer, 7), tmp_path / "streamed.safetensors")
    loras = [{"name": str(path), "weight": 0.9}]
    want = frames(Pipeline(resident, build_encoder(preset.model, resident), preset), loras, seconds=SECONDS)
    plain = frames(Pipeline(resident, build_encoder(preset.model, resident), preset), [], seconds=SECONDS)

    pipe = _tight(hub)  # strict: a module run with a weight off the device raises
    manager = pipe.memory
    got = frames(pipe, loras, seconds=SECONDS)
    assert np.array_equal(got, want) and not np.array_equal(got, plain)
    dit = pipe.backbone.transformer
    adapters = [(n, p) for n, p in dit.named_parameters() if is_adapter(n)]
    assert manager.adapter_bytes == adapter_bytes(dit) == sum(p.numel() * 4 for _, p in adapters) > 0
    assert all(manager.residency.is_resident(p) for _, p in adapters)  # resident, also in streamed blocks
    streamed = manager.streamer.order
    assert streamed and all(not g.on_device for g in (manager.streamer.groups[i] for i in streamed))
    ids = {id(t) for i in streamed for t in manager.streamer.groups[i].tensors}
    assert not ids & {id(p) for _, p in adapters}  # the streamer moves base weights only
    assert manager.fixed_bytes >= manager.adapter_bytes
    # the next run without LoRAs unloads them: same frames as the plain model, no adapter bytes left
    assert np.array_equal(frames(pipe, [], seconds=SECONDS), plain) and manager.adapter_bytes == 0


def test_planner_counts_adapter_bytes(preset):
    from framepack_history.memory.budget import Budget, GiB
    from framepack_history.memory.planner import plan

    budget = Budget(GiB, GiB, "cpu", "test")
    a, b = plan(preset, 1.0, budget=budget), plan(preset, 1.0, budget=budget, adapter_bytes=12345)
    for ra, rb in zip(a, b):
        if ra.phase in ("denoise", "vae_decode"):
            assert rb.device_peak_bytes - ra.device_peak_bytes == 12345


def test_page_plan_counts_the_picked_loras_as_applying_them_does(preset, files):
    """The plan before a job reads the LoRA files' headers: the bytes the adapters take once applied."""
    from framepack_history.jobs.plan_summary import lora_bytes, plan_lines

    bb = load_backbone(preset.model)
    apply(bb, [{"name": str(files["one_path"]), "weight": 1.0}, {"name": str(files["two_path"]), "weight": 0.5}])
    names = (str(files["one_path"]), str(files["two_path"]))
    assert lora_bytes(names, preset.hardware.dtype) == adapter_bytes(bb.transformer) > 0
    with_loras = plan_lines(str(TINY_HUNYUAN), None, 2, loras=names)
    mib = adapter_bytes(bb.transformer) / 2**20
    assert f"LoRAs: 2, {mib:.1f} MiB resident beside the DiT" in with_loras
    assert not any(line.startswith("LoRAs:") for line in plan_lines(str(TINY_HUNYUAN), None, 2))


def test_a_lora_header_without_shapes_is_an_input_error(tmp_path):
    """The plan reads LoRA headers: one whose tensors have no shape is refused by name, not a crash."""
    import json
    import struct

    from framepack_history.lora.files import adapter_numel

    path = tmp_path / "odd.safetensors"
    head = json.dumps({"x.lora_A.weight": 5}).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head)
    with pytest.raises(InputError, match="odd.safetensors: not a safetensors file"):
        adapter_numel(path)


# ------------------------------------------------------------------ jobs
def test_resume_restores_the_lora_set(preset, files, tmp_path):
    from framepack_history.errors import Cancelled
    from framepack_history.jobs.checkpoint import JobDir
    from framepack_history.jobs.render import render

    loras = [{"name": str(files["one_path"]), "weight": 0.7}, {"name": str(files["two_path"]), "weight": 0.3}]
    straight = frames(pipeline(preset), loras)
    req = GenerationRequest(prompt="a red circle", seconds=1.0, seed=3, loras=loras)
    check_loras(req, preset)
    job = JobDir(tmp_path / "job")
    job.create(req, preset, out=tmp_path / "v.mp4")
    done: list = []

    def cancel(i, info):
        if i == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        render(pipeline(preset), req, tmp_path / "v.mp4", job.root / "segments", on_event=done.append, on_step=cancel, job=job)
    fresh = pipeline(preset)  # a new process: no adapters on the DiT
    assert not getattr(fresh.backbone.transformer, STATE, {})
    info = job.info()
    assert [(e["weight"], e["sha256"]) for e in info.request.loras] == [(e["weight"], e["sha256"]) for e in req.loras]
    side = render(fresh, info.request, tmp_path / "v.mp4", job.root / "segments", on_event=done.append, job=job)
    got = np.concatenate([e.frames for e in done if isinstance(e, SectionDone)])
    assert np.array_equal(got, straight)
    assert side["loras"] == [{"name": e["name"], "sha256": e["sha256"], "weight": e["weight"]} for e in req.loras]


def test_worker_switches_loras_between_jobs_without_reloading(files, tmp_path):
    """none, LoRA, none, LoRA + another: one model load; equal sets give equal videos; sidecars record them."""
    import json

    from framepack_history.jobs.store import JobSpec
    from framepack_history.jobs.worker import Worker
    from tests.jobs.test_checkpoint import decoded
    from tests.jobs.test_jobs import wait

    w = Worker(tmp_path / "outputs", max_queue=8, preview_every_s=0.0).start()
    try:
        sets = [[], [{"name": str(files["one_path"]), "weight": 1.0}], [],
                [{"name": str(files["one_path"]), "weight": 1.0}, {"name": str(files["two_path"]), "weight": 0.5}],
                [{"name": str(files["one_path"]), "weight": 1.0}]]
        jobs = [w.submit(JobSpec(GenerationRequest(prompt="a red circle", seconds=1.0, seed=3, loras=s), str(TINY_HUNYUAN)))
                for s in sets]
        done = [wait(w, j.id) for j in jobs]
        assert [j.status for j in done] == ["done"] * 5, [j.message for j in done]
        assert w.loads == 1
        v = [decoded(j.video) for j in done]
        assert np.array_equal(v[0], v[2]) and np.array_equal(v[1], v[4])
        assert not np.array_equal(v[0], v[1]) and not np.array_equal(v[1], v[3])
        side = json.loads(done[3].sidecar.read_text())
        assert [(s["name"], s["weight"], len(s["sha256"])) for s in side["loras"]] == [
            (str(files["one_path"]), 1.0, 64), (str(files["two_path"]), 0.5, 64)]
    finally:
        w.stop(timeout=30)


def test_a_lora_file_changed_after_submit_fails_its_job_alone(files, tmp_path):
    from framepack_history.jobs.store import JobSpec
    from framepack_history.jobs.worker import Worker
    from tests.jobs.test_jobs import wait

    w = Worker(tmp_path / "outputs", max_queue=8, preview_every_s=0.0)  # not started: the jobs wait
    changed = tmp_path / "changing.safetensors"
    changed.write_bytes(files["one_path"].read_bytes())
    job = w.submit(JobSpec(GenerationRequest(prompt="x", seconds=0.5, loras=[{"name": str(changed)}]), str(TINY_HUNYUAN)))
    after = w.submit(JobSpec(GenerationRequest(prompt="x", seconds=0.5, loras=[]), str(TINY_HUNYUAN)))
    save_diffusers(files["two"], changed)  # another LoRA under the same name: its hash no longer matches
    w.start()
    try:
        failed, ok = wait(w, job.id), wait(w, after.id)
        assert failed.status == "failed" and "changing.safetensors" in failed.message and "changed" in failed.message
        assert ok.status == "done"
    finally:
        w.stop(timeout=30)


# ------------------------------------------------------------------ page and API
def test_page_slots_become_the_request_and_bad_files_are_a_page_message(files, bad, tmp_path, monkeypatch):
    import gradio as gr

    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.handlers import Handlers

    monkeypatch.setenv("FPH_LORA_DIR", str(files["root"]))
    w = Worker(tmp_path / "outputs", max_queue=4)  # not started: submitted jobs wait
    h = Handlers(w, str(TINY_HUNYUAN), temp_dir=tmp_path / "tmp")
    base = ["a red circle", None, None, 1, 3, str(TINY_HUNYUAN), None, None, None, None, None, None, None, None, None]  # .., max_history_tokens
    spec = h.spec(*base, "one.safetensors", 0.5, "", 1.0, str(files["two_path"]), -0.25)
    assert spec.request.loras == [{"name": "one.safetensors", "weight": 0.5}, {"name": str(files["two_path"]), "weight": -0.25}]
    assert h.spec(*base).request.loras is None  # no slot used: the preset's LoRAs
    job = h.submit(*base, "one.safetensors", 0.5)
    assert job.spec.request.loras[0]["sha256"] and job.spec.request.loras[0]["path"] == str(files["one_path"])
    with pytest.raises(gr.Error, match="wrong_shape.safetensors"):
        h.submit(*base, str(bad["wrong"]), 1.0)
    assert [c for c in h.lora_refresh()[0]["choices"]] == ["one.safetensors", "one_kohya.safetensors", "two.safetensors"]


@pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
def test_api_generate_with_a_lora_and_a_bad_one(files, bad, tmp_path_factory):
    """gradio_client against the real app: lora_1/lora_weight_1 reach the sidecar; a bad file is an error naming it."""
    import json

    with app_client(tmp_path_factory, "--preset", str(TINY_HUNYUAN)) as client:
        with pytest.raises(Exception, match="pickled.pt"):
            client.predict(prompt="a red circle", seconds=0.5, lora_1=str(bad["pickled"]), api_name="/generate")
        _, sidecar = client.predict(prompt="a red circle", seconds=0.5, seed=3, lora_1=str(files["one_path"]),
                                    lora_weight_1=0.6, api_name="/generate")
        side = json.loads(Path(sidecar).read_text())
        assert [(s["name"], s["weight"]) for s in side["loras"]] == [(str(files["one_path"]), 0.6)]
        assert len(side["loras"][0]["sha256"]) == 64


def test_preset_loras_are_validated_on_load(tmp_path):
    text = TINY_HUNYUAN.read_text()
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('loras = ["style.safetensors:0.5", "other"]\n' + text)
    bad.write_text('loras = ["style.safetensors:50"]\n' + text)
    assert load_preset(good).loras == ["style.safetensors:0.5", "other"]
    with pytest.raises(InputError, match=r"bad.toml: loras\[0\].*weight must be a number"):
        load_preset(bad)


def test_no_loras_flag_overrides_the_preset(files, tmp_path, monkeypatch):
    from framepack_history.cli.main import _request, build_parser

    args = build_parser().parse_args(["generate", "--prompt", "x", "--no-loras"])
    assert _request(args).loras == []
    args = build_parser().parse_args(["generate", "--prompt", "x", "--lora", "a.safetensors:0.2", "--lora", "b"])
    assert _request(args).loras == [{"name": "a.safetensors", "weight": 0.2}, {"name": "b", "weight": 1.0}]
    assert _request(build_parser().parse_args(["generate", "--prompt", "x"])).loras is None


def test_plan_command_counts_the_adapters(files, base, capsys):
    from framepack_history.lora.convert import nbytes

    assert cli_main(["plan", "--preset", str(TINY_HUNYUAN), "--seconds", "1", "--json"]) == 0
    import json

    without = json.loads(capsys.readouterr().out)
    args = ["plan", "--preset", str(TINY_HUNYUAN), "--seconds", "1", "--lora", str(files["one_path"]), "--lora",
            f"{files['two_path']}:0.5"]
    assert cli_main([*args, "--json"]) == 0
    with_ = json.loads(capsys.readouterr().out)
    expected = nbytes(files["one"], torch.float32) + nbytes(files["two"], torch.float32)
    assert [b["device_peak_bytes"] - a["device_peak_bytes"] for a, b in zip(without, with_) if a["phase"] == "denoise"] == \
        [expected] * 2
    assert cli_main(args) == 0 and f"LoRA adapters: {expected / 2**20:.1f} MiB" in capsys.readouterr().out
