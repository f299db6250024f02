"""HunyuanVideo-FramePack backbone on tiny random-weight components (CPU, offline)."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel

from framepack_history.backbones.base import Conditioning, Context
from framepack_history.backbones.framepack_transformer import HistoryFramepackTransformer3DModel
from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.errors import WeightsNotFoundError


@pytest.fixture(scope="module")
def backbone() -> HunyuanFramepackBackbone:
    return HunyuanFramepackBackbone.tiny(seed=0)


@pytest.fixture(scope="module")
def cond(backbone: HunyuanFramepackBackbone) -> Conditioning:
    text = backbone.encode_text("a red fox runs through snow")
    image = backbone.encode_image(torch.rand(3, 64, 64) * 2 - 1)  # the latent size of _noisy()
    return Conditioning({**text.tensors, **image.tensors})


def _noisy(b: int = 1, t: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 16, t, 8, 8, generator=torch.Generator().manual_seed(seed))


def _grid(t0: float, t: int, h: int, w: int) -> torch.Tensor:
    axes = (t0 + torch.arange(t).float(), torch.arange(h).float(), torch.arange(w).float())
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def _dit_inputs(backbone: HunyuanFramepackBackbone, cond: Conditioning, b: int = 1) -> dict:
    c = cond.tensors
    rep = lambda x: x.expand(b, *x.shape[1:])  # noqa: E731
    mask = rep(c["prompt_attention_mask"]).clone()
    if b > 1:
        mask[1:, 5:] = 0  # different prompt lengths exercise the batched key mask
    return dict(
        hidden_states=_noisy(b),
        timestep=torch.full((b,), 700.0),
        encoder_hidden_states=rep(c["prompt_embeds"]),
        encoder_attention_mask=mask,
        pooled_projections=rep(c["pooled_prompt_embeds"]),
        image_embeds=rep(c["image_embeds"]),
        guidance=torch.full((b,), 6000.0),
        return_dict=False,
    )


def test_tiny_geometry_and_patch_embedding(backbone: HunyuanFramepackBackbone) -> None:
    g = backbone.geometry
    assert (g.latent_channels, g.spatial_scale, g.temporal_scale, g.causal_first_frame) == (16, 8, 4, True)
    assert g.patch_size == (1, 2, 2) and g.hidden_size == 32
    assert backbone.name == "hunyuan_framepack"
    assert isinstance(backbone.transformer, HistoryFramepackTransformer3DModel)
    out = backbone.patch_embedding()(torch.randn(1, 16, 3, 8, 8))
    assert out.shape == (1, 32, 3, 4, 4)


def test_encoders_and_vae_shapes(backbone: HunyuanFramepackBackbone, cond: Conditioning) -> None:
    c = cond.tensors
    assert c["prompt_embeds"].shape == (1, 256, 32) and c["prompt_attention_mask"].shape == (1, 256)
    assert 0 < int(c["prompt_attention_mask"].sum()) < 256  # template cropped, prompt kept, padding masked
    assert c["pooled_prompt_embeds"].shape == (1, 32) and c["image_embeds"].shape == (1, 16, 24)
    other = backbone.encode_text("a blue whale").tensors["prompt_embeds"]
    assert not torch.equal(other, c["prompt_embeds"])
    backbone.enable_vae_tiling()
    latents = backbone.vae_encode(torch.rand(1, 3, 9, 32, 32) * 2 - 1)
    assert latents.shape == (1, 16, backbone.geometry.latent_frames(9), 4, 4)
    pixels = backbone.vae_decode(latents)
    assert pixels.shape == (1, 3, 9, 32, 32) and pixels.abs().max() <= 1


def test_predict_without_context(backbone: HunyuanFramepackBackbone, cond: Conditioning) -> None:
    noisy = _noisy()
    v = backbone.predict(noisy, torch.tensor([0.6]), cond, Context(), guidance=6.0)
    assert v.shape == noisy.shape and v.dtype == noisy.dtype and torch.isfinite(v).all()
    text_only = Conditioning({k: t for k, t in cond.tensors.items() if k != "image_embeds"})
    assert torch.isfinite(backbone.predict(noisy, torch.tensor([0.6]), text_only, Context())).all()


def test_history_tokens_change_output_not_its_length(backbone: HunyuanFramepackBackbone, cond: Conditioning) -> None:
    noisy, sigma = _noisy(b=2), torch.tensor([0.6, 0.3])
    base = backbone.predict(noisy, sigma, cond, Context())
    positions = torch.tensor([[-4.5, 1.5, 1.5], [-4.5, 1.5, 3.5], [-2.0, 0.25, 2.0]])
    ctx = Context(history_tokens=torch.randn(1, 3, 32), history_positions=positions)
    v = backbone.predict(noisy, sigma, cond, ctx)
    assert v.shape == noisy.shape and torch.isfinite(v).all()
    assert not torch.allclose(v, base)
    # Same tokens further in the past: rotary positions matter.
    far = Context(history_tokens=ctx.history_tokens, history_positions=positions - torch.tensor([8.0, 0, 0]))
    assert not torch.allclose(backbone.predict(noisy, sigma, cond, far), v)


def test_window_latents_path(backbone: HunyuanFramepackBackbone, cond: Conditioning) -> None:
    noisy, sigma = _noisy(), torch.tensor([0.5])
    window = torch.randn(1, 16, 2, 8, 8)
    v = backbone.predict(noisy, sigma, cond, Context(window_latents=window, window_t0=-2.0))
    assert v.shape == noisy.shape and not torch.allclose(v, backbone.predict(noisy, sigma, cond, Context()))
    # A window is the same thing as its clean-embedded tokens placed on its token grid.
    tokens = backbone.transformer.clean_x_embedder.proj(window).flatten(2).transpose(1, 2)
    as_history = Context(history_tokens=tokens, history_positions=_grid(-2.0, 2, 4, 4))
    torch.testing.assert_close(backbone.predict(noisy, sigma, cond, as_history), v, atol=1e-5, rtol=1e-5)


def test_history_rotary_matches_grid_rope(backbone: HunyuanFramepackBackbone) -> None:
    tr = backbone.transformer
    cos, sin = tr.rope(frame_indices=torch.arange(-3, 2), height=8, width=6, device=torch.device("cpu"))
    hcos, hsin = tr.history_rotary_emb(_grid(-3.0, 5, 4, 3))
    assert torch.equal(hcos, cos) and torch.equal(hsin, sin)


def test_no_history_matches_parent_forward(backbone: HunyuanFramepackBackbone, cond: Conditioning) -> None:
    """With FramePack's own inputs (all three contexts, as its pipeline passes them) nothing changes."""
    tr = backbone.transformer
    parent = HunyuanVideoFramepackTransformer3DModel.from_config(tr.config).eval()
    parent.load_state_dict(tr.state_dict())
    g = torch.Generator().manual_seed(3)
    clean = dict(
        indices_latents=torch.arange(20, 23),
        latents_clean=torch.randn(2, 16, 2, 8, 8, generator=g),
        indices_latents_clean=torch.tensor([0, 19]),
        latents_history_2x=torch.randn(2, 16, 2, 8, 8, generator=g),
        indices_latents_history_2x=torch.tensor([17, 18]),
        latents_history_4x=torch.randn(2, 16, 16, 8, 8, generator=g),
        indices_latents_history_4x=torch.arange(1, 17),
    )
    for b in (1, 2):
        inputs = {**_dit_inputs(backbone, cond, b), **{k: v[:b] if v.dim() == 5 else v for k, v in clean.items()}}
        with torch.no_grad():
            assert torch.equal(tr(**inputs)[0], parent(**inputs)[0])


def test_predict_time_layout(backbone: HunyuanFramepackBackbone, cond: Conditioning) -> None:
    """Section t=0 sits at F1's trained frame index (20); context keeps its relative time.

    The offset matters: text/image tokens carry no RoPE, so a global time shift changes the output.
    """
    cond = Conditioning({k: v for k, v in cond.tensors.items() if k != "start_latents"})  # no anchor here
    noisy, window, tokens = _noisy(), torch.randn(1, 16, 2, 8, 8), torch.randn(1, 2, 32)
    positions = torch.tensor([[-5.5, 1.5, 1.5], [-3.0, 0.0, 3.0]])
    ctx = Context(history_tokens=tokens, history_positions=positions, window_latents=window, window_t0=-2.0)
    v = backbone.predict(noisy, torch.tensor([0.5]), cond, ctx, guidance=6.0)
    inputs = {**_dit_inputs(backbone, cond), "hidden_states": noisy, "timestep": torch.tensor([500.0])}
    tr, off = backbone.transformer, backbone.rope_time_offset
    assert off == 20.0
    with torch.no_grad():
        direct = [
            tr(**inputs, indices_latents=torch.arange(3) + shift, latents_clean=window,
               indices_latents_clean=torch.tensor([-2.0, -1.0]) + shift, history_tokens=tokens,
               history_positions=positions + torch.tensor([shift, 0, 0]))[0]
            for shift in (off, 0.0)
        ]
    torch.testing.assert_close(v, direct[0], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(direct[0], direct[1], atol=1e-4)
    # Frame queries inside the history (Context.target_t) move the noisy section's time positions.
    query = Context(history_tokens=tokens, history_positions=positions, target_t=torch.tensor([-6.0, -5.0, -4.0]))
    with torch.no_grad():
        expected = tr(**inputs, indices_latents=torch.tensor([-6.0, -5.0, -4.0]) + off, history_tokens=tokens,
                      history_positions=positions + torch.tensor([off, 0, 0]))[0]
    torch.testing.assert_close(backbone.predict(noisy, torch.tensor([0.5]), cond, query, guidance=6.0), expected)


def test_gradients_reach_history_tokens_with_checkpointing_and_lora(cond: Conditioning) -> None:
    from peft import LoraConfig

    bb = HunyuanFramepackBackbone.tiny(seed=1)
    bb.transformer.enable_gradient_checkpointing()
    bb.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v"]))
    tokens = torch.randn(1, 2, 32, requires_grad=True)
    ctx = Context(history_tokens=tokens, history_positions=torch.tensor([[-1.0, 0.5, 0.5], [-2.0, 2.0, 1.0]]))
    bb.predict(_noisy(), torch.tensor([0.4]), cond, ctx).square().mean().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_save_and_load_roundtrip(backbone: HunyuanFramepackBackbone, cond: Conditioning, tmp_path) -> None:
    tr = backbone.transformer
    tr.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    loaded = HistoryFramepackTransformer3DModel.from_pretrained(tmp_path / "transformer", use_safetensors=True).eval()
    assert type(loaded) is HistoryFramepackTransformer3DModel
    inputs = {
        **_dit_inputs(backbone, cond),
        "history_tokens": torch.randn(1, 2, 32),
        "history_positions": torch.tensor([[-1.0, 0, 0], [-2.0, 1, 1]]),
    }
    with torch.no_grad():
        # Identical weights; loaded (memory-mapped) tensors may take other CPU kernel paths, hence a tolerance.
        torch.testing.assert_close(loaded(**inputs)[0], tr(**inputs)[0], atol=1e-5, rtol=1e-5)
    # The plain diffusers class still reads what the subclass wrote (same config and state dict).
    plain = HunyuanVideoFramepackTransformer3DModel.from_pretrained(tmp_path / "transformer")
    assert type(plain) is HunyuanVideoFramepackTransformer3DModel


def test_from_config_on_meta_device(backbone: HunyuanFramepackBackbone) -> None:
    from accelerate import init_empty_weights

    with init_empty_weights():
        meta = HistoryFramepackTransformer3DModel.from_config(backbone.transformer.config)
    assert all(p.is_meta for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in backbone.transformer.parameters())


def test_from_pretrained_local_folders(backbone: HunyuanFramepackBackbone, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base, redux = tmp_path / "base", tmp_path / "redux"
    backbone.transformer.save_pretrained(tmp_path / "f1")
    for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"):
        getattr(backbone, name).save_pretrained(base / name)
    backbone.image_encoder.save_pretrained(redux / "image_encoder")
    backbone.feature_extractor.save_pretrained(redux / "feature_extractor")
    loaded = HunyuanFramepackBackbone.from_pretrained(str(tmp_path / "f1"), str(base), str(redux), dtype=torch.float32)
    assert loaded.geometry == backbone.geometry
    loaded.prompt_template = backbone.prompt_template  # the tiny byte tokenizer has its own crop
    for key, value in loaded.encode_text("a red fox runs through snow").tensors.items():
        assert torch.equal(value, backbone.encode_text("a red fox runs through snow").tensors[key])


def test_missing_weights_offline_fail_fast(tmp_path, monkeypatch) -> None:
    from framepack_history import errors

    assert WeightsNotFoundError is errors.WeightsNotFoundError  # the class the CLI catches
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spent = [0.0]  # in the failing loads alone: building and saving the tiny model below is not what is timed

    @contextlib.contextmanager
    def fails(error: type[Exception], match: str):
        start = time.monotonic()
        with pytest.raises(error, match=match):
            yield
        spent[0] += time.monotonic() - start

    with fails(WeightsNotFoundError, "transformer.*download them or point to a local folder"):
        HunyuanFramepackBackbone.from_pretrained(transformer=str(tmp_path / "nope"))
    with fails(FileNotFoundError, "transformer.*not in the local Hugging Face cache.*download them"):
        HunyuanFramepackBackbone.from_pretrained(cache_dir=str(tmp_path / "empty_cache"))
    # A present transformer (local folder, or hub id in the cache) names the next missing component.
    tiny = HunyuanFramepackBackbone.tiny().transformer
    tiny.save_pretrained(tmp_path / "f1")
    with fails(WeightsNotFoundError, "text_encoder"):
        HunyuanFramepackBackbone.from_pretrained(str(tmp_path / "f1"), base=str(tmp_path / "base"))
    repo = tmp_path / "cache" / "models--me--f1"
    tiny.save_pretrained(repo / "snapshots" / "abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    with fails(WeightsNotFoundError, "text_encoder: 'me/base'.*not in the local Hugging Face cache"):
        HunyuanFramepackBackbone.from_pretrained("me/f1", base="me/base", cache_dir=str(tmp_path / "cache"))
    assert spent[0] < 10, spent  # well under a second here: no retries, no waiting on a hub that is not there


def test_start_image_anchor_is_a_clean_latent_at_index_0(backbone: HunyuanFramepackBackbone, cond: Conditioning) -> None:
    """FramePack-F1 always saw the start image at frame index 0: the anchor must reach the DiT."""
    assert cond.tensors["start_latents"].shape == (1, 16, 1, 8, 8)
    x, s = _noisy(), torch.tensor([0.6])
    with_anchor = backbone.predict(x, s, cond, Context())
    without = backbone.predict(x, s, Conditioning({k: v for k, v in cond.tensors.items() if k != "start_latents"}), Context())
    assert with_anchor.shape == x.shape and (with_anchor - without).abs().max() > 0
    bad = Conditioning({**cond.tensors, "start_latents": torch.zeros(1, 16, 1, 4, 4)})
    with pytest.raises(ValueError, match="start image"):
        backbone.predict(x, s, bad, Context())
