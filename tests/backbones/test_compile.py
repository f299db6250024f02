"""``hardware.compile``: each DiT block's forward compiled, the streaming hooks left eager around it.

Inductor compiles for minutes on two CPU cores, so correctness is tested with
``aot_eager`` (dynamo's graph capture and AOTAutograd's functionalisation, run
eagerly): what the compiled graph computes must equal the eager blocks.
"""

from __future__ import annotations

import copy

import torch

from framepack_history.backbones.speed import compile_blocks
from framepack_history.backbones.toy import ToyDiT
from framepack_history.config.presets import load_preset
from framepack_history.generation.loading import load_backbone
from framepack_history.memory.streaming import BlockStreamer, Residency
from tests.conftest import TINY_HUNYUAN


def test_compiled_toy_blocks_equal_eager() -> None:
    torch.manual_seed(0)
    dit = ToyDiT(in_channels=12, hidden_size=64, depth=2, heads=2, rope_dims=(8, 12, 12)).eval()
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(1, 12, 2, 8, 8, generator=g), torch.tensor([0.4]), torch.tensor([[2, 3, 4, 0]]),
            torch.tensor([[True, True, True, False]]))
    kw = dict(history_tokens=torch.randn(1, 6, 64, generator=g), history_positions=torch.rand(6, 3, generator=g))
    with torch.no_grad():
        ref = dit(*args, **kw)
        assert compile_blocks(dit, "aot_eager") == 2
        out = dit(*args, **kw)
    assert all(hasattr(b, "_eager_forward") and b.forward is not b._eager_forward for b in dit.blocks)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_compiled_blocks_stream_correctly() -> None:
    preset = load_preset(TINY_HUNYUAN)
    preset.model.config.update({"num_layers": 2, "num_single_layers": 3})
    bb = load_backbone(preset.model)
    text = bb.encode_text("a fox").tensors
    g = torch.Generator().manual_seed(2)
    kw = dict(hidden_states=torch.randn(1, 16, 2, 8, 8, generator=g), timestep=torch.tensor([700.0]),
              encoder_hidden_states=text["prompt_embeds"], encoder_attention_mask=text["prompt_attention_mask"],
              pooled_projections=text["pooled_prompt_embeds"], guidance=torch.tensor([6000.0]),
              history_tokens=torch.randn(1, 5, 32, generator=g), history_positions=torch.rand(5, 3, generator=g),
              return_dict=False)
    dit = copy.deepcopy(bb.transformer)
    with torch.no_grad():
        ref = dit(**kw)[0]
    streamer = BlockStreamer(dit, resident=[0, 3], residency=Residency("cpu"))
    compile_blocks(dit, "aot_eager")
    with torch.no_grad():
        before = streamer.copied_bytes
        out = dit(**kw)[0]
        again = dit(**kw)[0]  # weights swapped in and out again under the same graphs
    assert streamer.copied_bytes - before >= streamer.streamed_bytes  # the hooks still streamed
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(out, again)
