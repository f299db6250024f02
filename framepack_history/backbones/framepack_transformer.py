"""diffusers' FramePack transformer with one extra input: history-encoder tokens.

The tokens are already in the DiT's hidden space (the history encoder's
output). They are prepended to the token sequence exactly like FramePack's
clean-latent context, with rotary tables computed from their float
``(t, h, w)`` positions, so they are attended to but never reach the output.
Subclassing keeps ``from_pretrained`` working on the FramePack-F1 weights and
keeps LoRA (``PeftAdapterMixin``) and group offloading as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from diffusers.models.attention_dispatch import AttentionBackendName
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.utils import apply_lora_scale

from framepack_history.backbones.attention import masked_form

__all__ = ["BackendAttnProcessor", "HistoryFramepackTransformer3DModel"]


class BackendAttnProcessor:
    """HunyuanVideo's attention processor with this model's own kernel choice (``set_backend``).

    Two copies of diffusers' processor, one per backend: calls without a mask
    (one sample, text padding cropped) take the chosen kernel, masked calls its
    varlen form, so flash-attn and SageAttention, which take no mask, still
    serve batches. The choice lives on the processor, not in diffusers'
    process-wide active backend.
    """

    def __init__(self, backend: str = "native") -> None:
        self.plain, self.masked = HunyuanVideoAttnProcessor2_0(), HunyuanVideoAttnProcessor2_0()
        self.set_backend(backend)

    def set_backend(self, backend: str) -> None:

        self.plain._attention_backend = AttentionBackendName(backend)
        self.masked._attention_backend = AttentionBackendName(masked_form(backend))

    @property
    def backend(self) -> str:
        return self.plain._attention_backend.value

    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None) -> torch.Tensor:
        proc = self.plain if attention_mask is None else self.masked
        return proc(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


class HistoryFramepackTransformer3DModel(HunyuanVideoFramepackTransformer3DModel):
    """FramePack transformer that also accepts history tokens ``[B, N, D]`` at float positions ``[N, 3]``.

    Same config and state dict as the parent, so ``from_pretrained`` on the
    FramePack-F1 weights, LoRA (``PeftAdapterMixin``) and diffusers caches keep working.
    """

    #: the output projection in float32 whatever the DiT's dtype (FramePack's demo sets its
    #: ``high_quality_fp32_output_for_inference``); off, the head runs as diffusers' does
    fp32_output: bool = False

    def set_backend(self, backend: str) -> None:
        """Run the blocks' attention through diffusers' ``backend`` (this model only; see ``attention.py``).

        (Not done in ``__init__``: ConfigMixin reads the config keys from its signature.)
        """
        for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
            if isinstance(block.attn.processor, BackendAttnProcessor):
                block.attn.processor.set_backend(backend)
            else:
                block.attn.set_processor(BackendAttnProcessor(backend))

    def history_rotary_emb(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables ``[N, head_dim]`` for float ``(t, h, w)`` token-grid positions.

        Same per-axis formula as ``self.rope`` (which evaluates it on an integer
        grid), so a token at an integer grid point gets exactly that grid row.
        """
        pos = positions.to(torch.float32)
        freqs = [
            get_1d_rotary_pos_embed(dim, pos[:, axis], self.rope.theta, use_real=True)
            for axis, dim in enumerate(self.rope.rope_dim)
        ]
        return torch.cat([f[0] for f in freqs], dim=1), torch.cat([f[1] for f in freqs], dim=1)

    def noisy_tokens(self, latent_shape: tuple[int, ...]) -> int:
        """Tokens of a noisy section ``[B, C, T, H, W]``: the last ones of the blocks' image sequence."""
        p, p_t = self.config.patch_size, self.config.patch_size_t
        return (latent_shape[2] // p_t) * (latent_shape[3] // p) * (latent_shape[4] // p)

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        indices_latents: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        latents_clean: torch.Tensor | None = None,
        indices_latents_clean: torch.Tensor | None = None,
        latents_history_2x: torch.Tensor | None = None,
        indices_latents_history_2x: torch.Tensor | None = None,
        latents_history_4x: torch.Tensor | None = None,
        indices_latents_history_4x: torch.Tensor | None = None,
        history_tokens: torch.Tensor | None = None,
        history_positions: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        more_branches: list[dict[str, Any]] | None = None,
    ) -> tuple[torch.Tensor, ...] | Transformer2DModelOutput:
        """The parent's forward plus ``history_tokens``/``history_positions``.

        Re-implemented rather than wrapped because the parent (diffusers 0.42.1)
        raises ``UnboundLocalError`` unless all three clean contexts are given,
        requires ``image_embeds`` and builds a 2-D default ``indices_latents``
        that its rotary grid cannot take. With the parent's inputs and no history
        tokens it performs the same operations in the same order.

        ``more_branches``: keyword arguments of further predictions of the same
        step (guidance's passes). Every block then runs each branch in turn, so
        a streamed block is on the device once for all of them, and the call
        returns one output per branch (a tuple). Each branch's operations are
        exactly those of a call of its own.
        """
        first = _Branch(self._embed(
            hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections, image_embeds,
            indices_latents, guidance, latents_clean, indices_latents_clean, latents_history_2x,
            indices_latents_history_2x, latents_history_4x, indices_latents_history_4x, history_tokens,
            history_positions))
        branches = [first] + [_Branch(self._embed(**{k: v for k, v in kw.items() if k != "return_dict"}))
                              for kw in more_branches or ()]
        checkpoint = torch.is_grad_enabled() and self.gradient_checkpointing
        # A block streamer reads this: the block stays on the device until every branch has run it.
        self.block_calls = len(branches)
        try:
            for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
                for br in branches:
                    args = (br.hidden, br.text, br.temb, br.mask, br.rotary)
                    if checkpoint:
                        br.hidden, br.text = self._gradient_checkpointing_func(block, *args)
                    else:
                        br.hidden, br.text = block(*args)
        finally:
            self.block_calls = 1
        outs = tuple(self._head(br) for br in branches)
        if more_branches is not None:
            return outs
        return Transformer2DModelOutput(sample=outs[0]) if return_dict else (outs[0],)

    def _embed(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
               image_embeds=None, indices_latents=None, guidance=None, latents_clean=None, indices_latents_clean=None,
               latents_history_2x=None, indices_latents_history_2x=None, latents_history_4x=None,
               indices_latents_history_4x=None, history_tokens=None, history_positions=None) -> dict[str, Any]:
        """Everything before the blocks: token sequence, text, time embedding, mask, rotary tables."""
        batch_size, _, num_frames, height, width = hidden_states.shape
        p, p_t = self.config.patch_size, self.config.patch_size_t
        post_t, post_h, post_w = num_frames // p_t, height // p, width // p
        device = hidden_states.device
        if indices_latents is None:
            indices_latents = torch.arange(post_t, device=device)

        hidden_states = self.x_embedder(hidden_states)
        rotary = self.rope(frame_indices=indices_latents, height=height, width=width, device=device)

        # FramePack's own clean context: embed and prepend only what was given.
        clean = (latents_clean, latents_history_2x, latents_history_4x)
        clean_idx = (indices_latents_clean, indices_latents_history_2x, indices_latents_history_4x)
        if any(x is not None for x in clean):
            hidden_states, rotary = self._prepend_clean(hidden_states, rotary, clean, clean_idx, height, width)

        # History tokens skip x_embedder (already hidden-space) and go in front of everything.
        if history_tokens is not None:
            hidden_states, rotary = self._prepend_history(hidden_states, rotary, history_tokens, history_positions)

        temb, _ = self.time_text_embed(timestep, pooled_projections, guidance)
        text, attention_mask = self._text(encoder_hidden_states, timestep, encoder_attention_mask, image_embeds,
                                          batch_size, hidden_states.shape[1], device)
        return dict(hidden=hidden_states, text=text, temb=temb, mask=attention_mask, rotary=rotary,
                    shape=(batch_size, post_t, post_h, post_w))

    def _prepend_clean(self, hidden_states: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], clean: tuple,
                       clean_idx: tuple, height: int, width: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """FramePack's clean latents (1x, 2x, 4x; any may be None) embedded and packed in front, with their rotary tables."""
        p, p_t = self.config.patch_size, self.config.patch_size_t
        device = hidden_states.device
        if self.clean_x_embedder is None:
            raise ValueError("this transformer has no clean-latent embedder (has_clean_x_embedder=False)")
        if (p, p_t) != (2, 1):  # its Conv3d kernels and rotary pooling are hard-coded for 1x2x2 patches
            raise ValueError("FramePack clean-latent context needs patch_size=2 and patch_size_t=1")
        if any(x is not None and i is None for x, i in zip(clean, clean_idx)):
            raise ValueError("every clean-latent input needs its frame indices")
        clean = self.clean_x_embedder(*clean)
        clean_rotary = [
            None if x is None else self.rope(frame_indices=i, height=height, width=width, device=device)
            for x, i in zip(clean, clean_idx)
        ]
        return self._pack_history_states(hidden_states, *clean, rotary, *clean_rotary, height // p, width // p)

    def _prepend_history(self, hidden_states: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                         history_tokens: torch.Tensor, history_positions: torch.Tensor | None,
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """History tokens ``[B, N, D]`` (already hidden-space) in front of everything, at their own positions."""
        if history_positions is None or history_positions.shape != (history_tokens.shape[1], 3):
            raise ValueError("history_positions must be [N, 3] for history_tokens [B, N, D]")
        cos, sin = self.history_rotary_emb(history_positions.to(hidden_states.device))
        tokens = history_tokens.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
        hidden_states = torch.cat([tokens, hidden_states], dim=1)
        return hidden_states, (torch.cat([cos, rotary[0]], dim=0), torch.cat([sin, rotary[1]], dim=0))

    def _text(self, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_attention_mask: torch.Tensor,
              image_embeds: torch.Tensor | None, batch_size: int, latent_len: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text (and image) tokens the blocks read, and the attention mask over ``latent_len`` tokens and them."""
        encoder_hidden_states = self.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
        if image_embeds is not None and self.image_projection is not None:
            image_tokens = self.image_projection(image_embeds)
            # Image tokens go before the text: the mask below assumes padding only at the end.
            encoder_hidden_states = torch.cat([image_tokens, encoder_hidden_states], dim=1)
            ones = encoder_attention_mask.new_ones((batch_size, image_tokens.shape[1]))
            encoder_attention_mask = torch.cat([ones, encoder_attention_mask], dim=1)

        # Same masking as the parent: crop text padding for B=1, boolean key mask otherwise.
        effective_cond_len = encoder_attention_mask.sum(dim=1, dtype=torch.int)
        if batch_size == 1:
            return encoder_hidden_states[:, : effective_cond_len[0]], None
        total = latent_len + encoder_hidden_states.shape[1]
        keys = torch.arange(total, device=device)[None, :]
        return encoder_hidden_states, (keys < (latent_len + effective_cond_len)[:, None])[:, None, None, :]

    def _head(self, br: _Branch) -> torch.Tensor:
        """The output head on the noisy section's tokens (context tokens were prepended: it is the tail)."""
        batch_size, post_t, post_h, post_w = br.shape
        p, p_t = self.config.patch_size, self.config.patch_size_t
        hidden_states = br.hidden[:, -post_t * post_h * post_w :]
        hidden_states = self.norm_out(hidden_states, br.temb)
        if self.fp32_output:
            hidden_states = self._proj_out_fp32(hidden_states)
        else:
            hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_size, post_t, post_h, post_w, -1, p_t, p, p)
        hidden_states = hidden_states.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return hidden_states

    def _proj_out_fp32(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The output projection in float32, as FramePack's ``high_quality_fp32_output_for_inference``.

        FramePack casts the normalised tokens to float32 and runs ``proj_out`` with its
        weights cast to float32. Here the weights are cast for this call only: the module
        keeps its stored dtype, so the memory manager's ledger and weight loading see what
        they placed. A cast from bfloat16 to float32 is exact, so the result is FramePack's
        bit for bit. A ``proj_out`` that is no plain ``Linear`` (a LoRA adapter wraps it)
        runs as it is, in its own dtype.
        """
        proj = self.proj_out
        if not isinstance(proj, torch.nn.Linear):
            return proj(hidden_states)
        bias = None if proj.bias is None else proj.bias.float()
        return torch.nn.functional.linear(hidden_states.float(), proj.weight.float(), bias)


class _Branch:
    """One prediction's state between blocks."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.hidden, self.text, self.temb = state["hidden"], state["text"], state["temb"]
        self.mask, self.rotary, self.shape = state["mask"], state["rotary"], state["shape"]
