"""HistoryEncoder: shapes, rates, positions, save/load, and append == re-encode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from framepack_history.config.rates import parse_rate
from framepack_history.history.encoder import HistoryEncoder
from framepack_history.history.state import HistoryState


def make_encoder(rate: str = "4x4x2", patch=(1, 2, 2), hidden: int = 32, **kw) -> HistoryEncoder:
    torch.manual_seed(0)
    enc = HistoryEncoder(latent_channels=4, hidden_size=hidden, patch_size=patch, rate=rate,
                         channels=(8, 16, 16, 32), attention_heads=2, **kw)
    # A stand-in DiT patchifier with the shape contract [B,C,T,H,W] -> [B,D,T',H',W'].
    embed = nn.Conv3d(4, hidden, patch, stride=patch)
    enc.set_patch_embedding(embed)
    if enc.config.use_hr_branch:
        with torch.no_grad():  # a non-zero gate, so the HR branch really contributes
            enc.hr_gate.fill_(0.5)
    return enc.eval()


@pytest.mark.parametrize("rate,expected", [("4x4x2", (4, 4, 2)), ("2x2x2", (2, 2, 2)), (" 2 x 4 x 1 ", (2, 4, 1))])
def test_parse_rate(rate, expected):
    assert parse_rate(rate) == expected


@pytest.mark.parametrize("bad", ["4x4", "axbxc", "0x4x2", "4x4x2x1", ""])
def test_parse_rate_rejects(bad):
    with pytest.raises(ValueError, match="rate"):
        parse_rate(bad)


@pytest.mark.parametrize("rate,grid", [("4x4x2", (3, 2, 2)), ("2x2x2", (3, 4, 4)), ("2x2x1", (6, 4, 4))])
def test_token_grid_follows_rate(rate, grid):
    enc = make_encoder(rate)
    out = enc(torch.randn(1, 4, 6, 16, 16))
    assert out.shape == (1, *grid, 32)
    raw = 6 * 8 * 8  # DiT tokens of the same latents with patch (1, 2, 2)
    rh, rw, rt = parse_rate(rate)
    assert raw / (grid[0] * grid[1] * grid[2]) == rh * rw * rt


def test_branches_sum_and_gate_starts_at_zero():
    torch.manual_seed(0)
    enc = HistoryEncoder(latent_channels=4, hidden_size=32, patch_size=(1, 2, 2), rate="2x2x2", channels=(8, 16, 16, 32), attention_heads=2)
    embed = nn.Conv3d(4, 32, (1, 2, 2), stride=(1, 2, 2))
    enc.set_patch_embedding(embed)
    x = torch.randn(1, 4, 4, 8, 8)
    assert torch.all(enc.hr_gate == 0)
    lr_only = embed(torch.nn.functional.avg_pool3d(x, (2, 2, 2))).permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(enc(x), lr_only)  # zero gate: the LR branch alone
    with torch.no_grad():
        enc.hr_gate.fill_(1.0)
    assert (enc(x) - lr_only).abs().max() > 1e-4


def test_positions_are_box_centres():
    enc = make_encoder("4x4x2")
    pos = enc.positions(2, 2, 3)
    assert pos.shape == (2, 2, 3, 3)
    # token (t=1, h=1, w=2) covers DiT tokens t 2..3, h 4..7, w 8..11
    assert pos[1, 1, 2].tolist() == [2.5, 5.5, 9.5]
    assert pos[0, 0, 0].tolist() == [0.5, 1.5, 1.5]


@pytest.mark.parametrize("rate", ["4x4x2", "2x2x2"])
@pytest.mark.parametrize("start,sections", [(0, [2, 2, 2]), (1, [3, 3, 3, 3]), (3, [1, 4, 5]), (2, [7, 1, 1, 2])])
def test_append_equals_reencode(rate, start, sections):
    """Appending section by section gives the tokens of encoding everything at once."""
    enc = make_encoder(rate)
    torch.manual_seed(1)
    total = start + sum(sections)
    latents = torch.randn(1, 4, total, 16, 16)
    state = HistoryState(enc)
    t = 0
    for n in ([start] if start else []) + sections:
        state.append(latents[:, :, t : t + n])
        t += n
        with torch.no_grad():
            full = enc(latents[:, :, :t])
        tokens, pos = state.tokens()
        assert tokens.shape == (1, full.shape[1] * full.shape[2] * full.shape[3], 32)
        assert (tokens - full.reshape(1, -1, 32)).abs().max().item() <= 1e-5
        assert pos.shape == (tokens.shape[1], 3)
    # history tokens sit in the past relative to the next section
    assert pos[:, 0].max() < 0
    assert state.num_frames == total


def test_append_encodes_only_new_frames():
    """The encoder sees at most one partial group of old frames per append."""
    enc = make_encoder("4x4x2")
    seen: list[int] = []
    enc.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[2]))
    state = HistoryState(enc)
    for _ in range(6):
        state.append(torch.randn(1, 4, 3, 16, 16))
    assert max(seen) <= 3 + 1  # 3 new frames + at most (group - 1) = 1 cached frame
    assert state.num_frames == 18


def test_save_load_roundtrip(tmp_path):
    enc = make_encoder("2x2x2")
    enc.save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "diffusion_pytorch_model.safetensors").is_file()
    back = HistoryEncoder.from_pretrained(tmp_path / "enc", use_safetensors=True).eval()
    back.set_patch_embedding(enc._lr_embed[0])
    x = torch.randn(1, 4, 4, 16, 16)
    torch.testing.assert_close(back(x), enc(x))
    assert back.config.rate == "2x2x2"
    # the shared patchifier is not part of the encoder's weights
    assert not any(k.startswith("_lr_embed") for k in back.state_dict())


def test_history_state_save_load(tmp_path):
    enc = make_encoder("4x4x2")
    state = HistoryState(enc)
    state.append(torch.randn(1, 4, 5, 16, 16))
    state.save(tmp_path / "h.safetensors")
    other = HistoryState(enc)
    other.load(tmp_path / "h.safetensors")
    a, b = state.tokens(), other.tokens()
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    new = torch.randn(1, 4, 3, 16, 16)
    state.append(new)
    other.append(new)
    torch.testing.assert_close(state.tokens()[0], other.tokens()[0])


def test_unbound_lr_branch_is_a_clear_error():
    enc = HistoryEncoder(latent_channels=4, hidden_size=32, patch_size=(1, 2, 2), rate="2x2x2", channels=(8, 16, 16, 32), attention_heads=2)
    with pytest.raises(RuntimeError, match="set_patch_embedding"):
        enc(torch.randn(1, 4, 2, 8, 8))


def test_lr_only_encoder_has_a_dtype_and_saves(tmp_path):
    enc = make_encoder("2x2x2", use_hr_branch=False)
    assert enc.dtype == torch.float32 and not list(enc.parameters())
    x = torch.randn(1, 4, 4, 16, 16)
    out = enc(x)
    enc.save_pretrained(tmp_path / "lr")
    back = HistoryEncoder.load(tmp_path / "lr")
    back.set_patch_embedding(enc._lr_embed[0])
    torch.testing.assert_close(back(x), out)


def test_history_camera_track_moves_token_groups_and_survives_save_load(tmp_path):
    enc = make_encoder("2x2x2")  # 2 latent frames per token group
    state = HistoryState(enc)
    state.append(torch.randn(1, 4, 1, 16, 16))  # a start frame: offset 0
    state.append(torch.randn(1, 4, 4, 16, 16), frame_context=torch.tensor([0.5, 1.0, 1.5, 2.0]))
    plain = HistoryState(enc)
    plain._chunks, plain._frames, plain._done, plain._tail = state._chunks, state._frames, state._done, state._tail
    plain._frame_context = [0.0] * 5
    (_, pos), (_, ref) = state.tokens(), plain.tokens()
    shift = (pos - ref)[:, 2].view(3, -1)  # 3 groups of 4x4 tokens: frames {0,1}, {2,3}, {4}
    torch.testing.assert_close(shift, torch.tensor([0.25, 1.25, 2.0])[:, None].expand(3, 16))
    torch.testing.assert_close((pos - ref)[:, :2], torch.zeros(48, 2))  # time and height untouched
    state.save(tmp_path / "h.safetensors")
    back = HistoryState(enc)
    back.load(tmp_path / "h.safetensors")
    torch.testing.assert_close(back.frame_context, state.frame_context)
    torch.testing.assert_close(back.tokens()[1], pos)
    with pytest.raises(ValueError, match="frame context has 2 values for 3 latent frames"):
        state.append(torch.randn(1, 4, 3, 16, 16), frame_context=torch.zeros(2))


# ------------------------------------------------------------- box branch
def test_old_config_loads_unchanged_and_gives_identical_outputs(tmp_path):
    """A config saved before ``use_box_branch`` existed loads without the branch, with the same weights and outputs."""
    import json
    import shutil

    from framepack_history.config.paths import ROOT

    shipped = ROOT / "framepack_history" / "weights" / "toy" / "history_encoder"
    saved = tmp_path / "history_encoder"  # the shipped encoder with its config as written before the option existed
    shutil.copytree(shipped, saved)
    config = json.loads((saved / "config.json").read_text())
    assert config.pop("use_box_branch", False) is False
    (saved / "config.json").write_text(json.dumps(config))
    old = HistoryEncoder.load(saved).eval()
    assert not hasattr(old, "box_proj") and not any(k.startswith("box_") for k in old.state_dict())
    cfg = {k: v for k, v in old.config.items() if not k.startswith("_") and k != "use_box_branch"}
    new = HistoryEncoder(**cfg, use_box_branch=False).eval()
    new.load_state_dict(old.state_dict(), strict=True)  # the same parameter set, nothing new
    embed = nn.Conv3d(cfg["latent_channels"], cfg["hidden_size"], tuple(cfg["patch_size"]), stride=tuple(cfg["patch_size"]))
    old.set_patch_embedding(embed)
    new.set_patch_embedding(embed)
    x = torch.randn(1, cfg["latent_channels"], 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(old(x), new(x))
    # and a fresh encoder with the option off draws exactly the weights it drew before the option existed
    a, b = make_encoder("2x2x2"), make_encoder("2x2x2", use_box_branch=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_box_branch_starts_at_zero_and_keeps_the_other_weights():
    plain, box = make_encoder("2x2x2"), make_encoder("2x2x2", use_box_branch=True)
    box.set_patch_embedding(plain._lr_embed[0])
    for k, v in plain.state_dict().items():  # built after the HR branch: same initial HR weights
        assert torch.equal(v, box.state_dict()[k]), k
    x = torch.randn(1, 4, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(box(x), plain(x))
        box.box_proj.weight.normal_()
        assert (box(x) - plain(x)).abs().max() > 1e-3


def test_box_branch_contains_the_large_patchifier():
    """LR + box can be set to equal any large patchifier exactly (HR gate at zero)."""
    from framepack_history.training.modeling import LargePatchifier

    torch.manual_seed(3)
    fp = LargePatchifier(latent_channels=4, hidden_size=32, patch_size=(1, 2, 2), rate="2x2x4")
    torch.nn.init.normal_(fp.proj.weight, std=0.1)
    enc = make_encoder("2x2x4", use_box_branch=True)
    embed = enc._lr_embed[0]
    with torch.no_grad():
        enc.hr_gate.zero_()
        lr_as_box = LargePatchifier(latent_channels=4, hidden_size=32, patch_size=(1, 2, 2), rate="2x2x4")
        lr_as_box.init_from(embed)  # the LR branch (pool + patchify) written as one box kernel
        enc.box_proj.weight.copy_(fp.proj.weight - lr_as_box.proj.weight)
        enc.box_proj.bias.copy_(fp.proj.bias - embed.bias)
        x = torch.randn(2, 4, 8, 16, 16)
        torch.testing.assert_close(enc(x), fp(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sections", [[2, 2, 2], [3, 5, 1, 7]])
def test_box_branch_append_equals_reencode(sections):
    enc = make_encoder("2x2x2", use_box_branch=True)
    with torch.no_grad():
        enc.box_proj.weight.normal_(std=0.1)
    latents = torch.randn(1, 4, sum(sections), 16, 16)
    state = HistoryState(enc)
    for i, n in enumerate(sections):
        state.append(latents[:, :, sum(sections[:i]) : sum(sections[: i + 1])])
    with torch.no_grad():
        full = enc(latents)
    assert (state.tokens()[0] - full.reshape(1, -1, 32)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("size", [(16, 16), (15, 14)])  # also a frame that is not whole token boxes
@pytest.mark.parametrize("sections", [[1, 4, 4, 5, 8], [9, 3, 10]])
def test_context_groups_are_causal_and_append_equals_reencode(sections, size):
    """With context_groups the HR branch reads the group before each one: appended sections get the
    whole history's tokens (given those frames as context), and no group depends on a later one."""
    enc = make_encoder("2x2x2", context_groups=1)
    assert enc.context_frames == enc.frames_per_group == 2  # one group: rate 2 x patch 1 in time
    with torch.no_grad():
        enc.hr_gate.normal_()
    latents = torch.randn(1, 4, sum(sections), *size)
    state = HistoryState(enc)
    for i, n in enumerate(sections):
        state.append(latents[:, :, sum(sections[:i]) : sum(sections[: i + 1])])
    with torch.no_grad():
        full = enc(latents)
        changed = latents.clone()
        changed[:, :, 12:] += 1.0  # frames 12 on: group 6 on
        later = enc(changed)
        alone = enc(latents[:, :, 8:])  # without context: the first frame stands in for it
    assert (state.tokens()[0] - full.reshape(1, -1, 32)).abs().max().item() <= 1e-5
    g = 12 // enc.frames_per_group
    assert torch.equal(later[:, :g], full[:, :g]) and not torch.allclose(later[:, g:], full[:, g:])
    first = 8 // enc.frames_per_group
    assert not torch.allclose(alone[:, :1], full[:, first : first + 1])  # the context is read
    with pytest.raises(ValueError, match="history-token cap needs an encoder without context_groups"):
        HistoryState(enc, max_tokens=64)


def test_a_cap_with_a_context_encoder_is_a_clear_input_error(toy_pipeline):
    """A job asking for a cap on an encoder that codes groups against the previous one is refused by name."""
    from framepack_history.config.request import GenerationRequest
    from framepack_history.errors import InputError
    from framepack_history.generation.pipeline import Pipeline

    enc = make_encoder("2x2x2", context_groups=1)
    pipe = Pipeline(toy_pipeline.backbone, enc, toy_pipeline.preset)
    with pytest.raises(InputError, match="context_groups.*a cap needs one that codes groups alone"):
        pipe.history_cap(GenerationRequest(prompt="camera holds", max_history_tokens=400), (32, 32))
    assert pipe.history_cap(GenerationRequest(prompt="camera holds", max_history_tokens=0), (32, 32)) == 0
