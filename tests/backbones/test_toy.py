"""The toy backbone honours the backbone contract."""

from __future__ import annotations

import torch

from framepack_history.backbones.base import Context
from framepack_history.backbones.toy import ToyBackbone, ToyDiT, WordTokenizer

CFG = {"dit": {"hidden_size": 32, "depth": 1, "heads": 2, "rope_dims": [4, 6, 6]}, "vae": {"latent_channels": 4, "spatial_scale": 2, "width": 8}}


def make() -> ToyBackbone:
    return ToyBackbone.from_config(**CFG, seed=0)


def test_geometry_and_vae_shapes():
    bb = make()
    assert bb.geometry.latent_channels == 4 and bb.geometry.spatial_scale == 2
    px = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    lat = bb.vae_encode(px)
    assert lat.shape == (1, 4, 3, 8, 8)
    assert bb.vae_decode(lat).shape == px.shape


def test_context_tokens_never_reach_output_but_change_it():
    bb = make()
    x = torch.randn(1, 4, 2, 8, 8)
    cond = bb.encode_text("camera pans left")
    s = torch.tensor([0.7])
    plain = bb.predict(x, s, cond, Context())
    hist = torch.randn(1, 5, 32)
    pos = torch.tensor([[-1.0, 0.5, 0.5]] * 5)
    with_hist = bb.predict(x, s, cond, Context(history_tokens=hist, history_positions=pos))
    win = bb.predict(x, s, cond, Context(window_latents=torch.randn(1, 4, 2, 8, 8), window_t0=-2))
    assert plain.shape == with_hist.shape == win.shape == x.shape
    # adaLN-zero starts as identity; perturb so context can matter at all
    with torch.no_grad():
        for p in bb.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    a = bb.predict(x, s, cond, Context())
    b = bb.predict(x, s, cond, Context(history_tokens=hist, history_positions=pos))
    assert (a - b).abs().max() > 1e-4


def test_text_changes_prediction_and_tokenizer_pads():
    tok = WordTokenizer(["<pad>", "<unk>", "camera", "pans"], max_length=4)
    ids, mask = tok("Camera PANS wildly!")
    assert ids.tolist() == [[2, 3, 1, 0]] and mask.tolist() == [[True, True, True, False]]
    bb = make()
    with torch.no_grad():
        for p in bb.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, s = torch.randn(1, 4, 1, 8, 8), torch.tensor([0.5])
    a = bb.predict(x, s, bb.encode_text("camera pans left"), Context())
    b = bb.predict(x, s, bb.encode_text("camera holds"), Context())
    assert (a - b).abs().max() > 1e-5


def test_sample_prediction_converts_to_velocity():
    bb = ToyBackbone.from_config(dit={**CFG["dit"], "prediction_type": "sample"}, vae=CFG["vae"])
    x, s = torch.randn(1, 4, 1, 8, 8), torch.tensor([0.5])
    cond = bb.encode_text("a")
    x0 = bb.dit(x, s, cond.tensors["text_ids"], cond.tensors["text_mask"])
    v = bb.predict(x, s, cond, Context())
    torch.testing.assert_close(v, (x - x0) / 0.5)


def test_save_load_roundtrip(tmp_path):
    bb = make()
    bb.save_pretrained(tmp_path)
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    back = ToyBackbone.from_pretrained(tmp_path)
    x, s = torch.randn(1, 4, 1, 8, 8), torch.tensor([0.3])
    cond = bb.encode_text("camera holds")
    torch.testing.assert_close(back.predict(x, s, cond, Context()), bb.predict(x, s, cond, Context()))


def test_rope_dims_must_match_head_dim():
    import pytest

    with pytest.raises(ValueError, match="rope_dims"):
        ToyDiT(hidden_size=32, heads=2, rope_dims=(4, 4, 4))


def test_per_sample_query_positions_match_one_call_per_sample():
    """Stage I batches samples that query different history frames (target_t [B, T])."""
    bb = make()
    with torch.no_grad():
        for p in bb.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, s = torch.randn(2, 4, 2, 8, 8), torch.tensor([0.3, 0.8])
    cond = bb.encode_text("camera holds")
    cond2 = type(cond)({k: v.expand(2, *v.shape[1:]) for k, v in cond.tensors.items()})
    hist, pos = torch.randn(2, 3, 32), torch.tensor([[-4.5, 0.5, 0.5], [-2.5, 1.5, 0.5], [-0.5, 0.5, 1.5]])
    tt = torch.tensor([[-5.0, -2.0], [-3.0, -1.0]])
    both = bb.predict(x, s, cond2, Context(history_tokens=hist, history_positions=pos, target_t=tt))
    for i in range(2):
        one = bb.predict(x[i : i + 1], s[i : i + 1], cond, Context(history_tokens=hist[i : i + 1], history_positions=pos, target_t=tt[i]))
        torch.testing.assert_close(both[i : i + 1], one, atol=1e-5, rtol=1e-5)


def test_space_to_depth_vae_is_lossless_and_round_trips(tmp_path):
    import pytest

    from framepack_history.backbones.toy import ToyVAE

    bb = ToyBackbone.from_config(dit=CFG["dit"], vae={"kind": "space_to_depth", "latent_channels": 12, "spatial_scale": 2})
    assert bb.geometry.latent_channels == 12 and bb.dit.config.in_channels == 12
    px = (torch.randint(0, 256, (1, 3, 3, 16, 16)).float() / 127.5 - 1)
    lat = bb.vae_encode(px)
    assert lat.shape == (1, 12, 3, 8, 8)
    torch.testing.assert_close(bb.vae_decode(lat), px, rtol=0, atol=0)
    bb.save_pretrained(tmp_path)
    back = ToyBackbone.from_pretrained(tmp_path)
    assert back.vae.config.kind == "space_to_depth" and not list(back.vae.parameters())
    torch.testing.assert_close(back.vae_encode(px), lat)
    with pytest.raises(ValueError, match="3 \\* spatial_scale\\*\\*2 = 12"):
        ToyVAE(kind="space_to_depth", latent_channels=4, spatial_scale=2)
    with pytest.raises(ValueError, match="kind must be"):
        ToyVAE(kind="vqgan")


# ------------------------------------------------------------------ keyframes
def perturbed() -> ToyBackbone:
    bb = make()
    with torch.no_grad():  # adaLN-zero starts as identity: perturb so context tokens matter at all
        for p in bb.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return bb


def block_input_lengths(bb: ToyBackbone, run) -> list[int]:
    seen: list[int] = []
    handle = bb.dit.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_the_dit_reads_keyframes_at_their_time_and_place():
    bb = perturbed()
    x, s = torch.randn(1, 4, 2, 8, 8), torch.tensor([0.6])
    cond = bb.encode_text("camera pans right")
    key = torch.randn(1, 4, 1, 8, 8)

    def predict(**kw) -> torch.Tensor:
        return bb.predict(x, s, cond, Context(window_latents=torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0)),
                                              window_t0=-2.0, **kw))

    none = predict()
    base = predict(keyframe_latents=key, keyframe_t=torch.tensor([6.0]))
    assert (base - none).abs().max() > 1e-4  # a keyframe changes the prediction
    assert (predict(keyframe_latents=key * 0.5, keyframe_t=torch.tensor([6.0])) - base).abs().max() > 1e-4  # its content
    assert (predict(keyframe_latents=key, keyframe_t=torch.tensor([1.0])) - base).abs().max() > 1e-4  # its time
    assert (predict(keyframe_latents=key, keyframe_t=torch.tensor([6.0]), keyframe_w=torch.tensor([3.0])) - base).abs().max() > 1e-4
    # An empty keyframe tensor is no keyframe: nothing joins the sequence.
    assert torch.equal(predict(keyframe_latents=key[:, :, :0], keyframe_t=torch.zeros(0)), none)
    # Per-sample times and places ([B, K]) are one call per sample.
    x2, key2 = torch.cat([x, x]), torch.randn(2, 4, 1, 8, 8)
    cond2 = type(cond)({k: v.expand(2, *v.shape[1:]) for k, v in cond.tensors.items()})
    kt, kw = torch.tensor([[3.0], [9.0]]), torch.tensor([[1.0], [-2.0]])
    both = bb.predict(x2, s.expand(2), cond2, Context(keyframe_latents=key2, keyframe_t=kt, keyframe_w=kw))
    for i in range(2):
        one = bb.predict(x, s, cond, Context(keyframe_latents=key2[i : i + 1], keyframe_t=kt[i], keyframe_w=kw[i]))
        torch.testing.assert_close(both[i : i + 1], one, atol=1e-5, rtol=1e-5)


def test_without_keyframes_the_sequence_is_what_it_was_and_no_parameter_is_new():
    """No keyframe: text, history, window and noisy tokens alone, so the shipped weights give what they gave."""
    from framepack_history.config.paths import PACKAGE

    bb = perturbed()
    x, s, cond = torch.randn(1, 4, 2, 8, 8), torch.tensor([0.6]), bb.encode_text("camera holds")
    hist, pos = torch.randn(1, 5, 32), torch.tensor([[-1.0, 0.5, 0.5]] * 5)
    ctx = Context(history_tokens=hist, history_positions=pos, window_latents=torch.randn(1, 4, 2, 8, 8), window_t0=-2.0)
    text, noisy, window = 16, 2 * 4 * 4, 2 * 4 * 4
    assert block_input_lengths(bb, lambda: bb.predict(x, s, cond, ctx)) == [text + 5 + window + noisy]
    keyed = Context(**{**ctx.__dict__, "keyframe_latents": torch.randn(1, 4, 2, 8, 8), "keyframe_t": torch.tensor([4.0, 8.0])})
    assert block_input_lengths(bb, lambda: bb.predict(x, s, cond, keyed)) == [text + 5 + window + 2 * 16 + noisy]
    # The shipped toy loads with every weight it has and none missing (keyframes use the window's type embedding).
    shipped = ToyBackbone.from_pretrained(PACKAGE / "weights" / "toy")
    assert sum(p.numel() for p in shipped.dit.parameters()) == 1_289_520 and shipped.keyframes
