"""The toy backbone: a small DiT, a small VAE and a word-level tokenizer.

Small enough to train on two CPU cores and to generate a section in well
under a second, yet with the same contract as the real backbone: a
patchifier the history encoder can share, 3D rotary positions given as
floats, and clean context tokens (history, window) that sit in front of the
noisy section and never reach the output.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from framepack_history.backbones.base import Backbone, Conditioning, Context, LatentGeometry, LatentRGB, StartFrame, place
from framepack_history.backbones.toyworld import World, WorldSpec, camera_moves, model_text, start_frame

# Words of the toy world's captions; anything else maps to <unk>.
DEFAULT_VOCAB = [
    "<pad>", "<unk>", "camera", "pans", "left", "right", "holds", "still", "a", "the", "and",
    "sprite", "sprites", "moves", "move", "leaves", "returns", "comes", "back", "enters", "red",
    "green", "blue", "yellow", "cyan", "magenta", "white", "orange", "circle", "square",
    "triangle", "fast", "slow", "world", "view", "scene",
]


class WordTokenizer:
    """Lower-cased words -> ids from a fixed vocabulary (0 = pad, 1 = unknown)."""

    def __init__(self, vocab: list[str], max_length: int = 16) -> None:
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length

    def __call__(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        words = re.findall(r"[a-z]+", text.lower())[: self.max_length]
        ids = [self.index.get(w, 1) for w in words]
        mask = [True] * len(ids) + [False] * (self.max_length - len(ids))
        ids = ids + [0] * (self.max_length - len(ids))
        return torch.tensor([ids]), torch.tensor([mask])

    def save(self, folder: Path) -> None:
        (folder / "tokenizer.json").write_text(json.dumps({"vocab": self.vocab, "max_length": self.max_length}))

    @classmethod
    def load(cls, folder: Path) -> "WordTokenizer":
        data = json.loads((folder / "tokenizer.json").read_text())
        return cls(data["vocab"], data["max_length"])


# ----------------------------------------------------------------------- VAE
class ToyVAE(ModelMixin, ConfigMixin):
    """Per-frame autoencoder; only space is downsampled.

    ``kind = "conv"``: a small learned convolutional autoencoder
    (``framepack_history train vae``). ``kind = "space_to_depth"``: no
    weights at all, each ``scale x scale`` pixel block becomes the channels
    of one latent pixel (``latent_channels = 3 * scale**2``). That one is
    lossless: the toy world is small enough to need no compression, and a
    learned VAE would cap the whole model's fidelity at its reconstruction
    PSNR (29 dB for the conv VAE at 4 channels).
    """

    @register_to_config
    def __init__(self, latent_channels: int = 8, spatial_scale: int = 4, width: int = 64, scaling_factor: float = 1.0,
                 kind: str = "conv"):
        super().__init__()
        if kind not in ("conv", "space_to_depth"):
            raise ValueError(f"ToyVAE kind must be 'conv' or 'space_to_depth', got {kind!r}")
        if kind == "space_to_depth":
            if latent_channels != 3 * spatial_scale**2:
                raise ValueError(f"a space_to_depth VAE has 3 * spatial_scale**2 = {3 * spatial_scale**2} "
                                 f"latent channels, got {latent_channels}")
            # No parameters: a non-persistent buffer gives ModelMixin a device and dtype.
            self.register_buffer("_dtype_anchor", torch.zeros(()), persistent=False)
            self.encoder = nn.PixelUnshuffle(spatial_scale)
            self.decoder = nn.PixelShuffle(spatial_scale)
            return
        n = int(round(math.log2(spatial_scale)))
        enc: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.SiLU()]
        for _ in range(n):
            enc += [nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
        enc += [nn.Conv2d(width, latent_channels, 3, padding=1)]
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(n):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        dec += [nn.Conv2d(width, 3, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def save_pretrained(self, save_directory: str | Path, **kw) -> None:
        super().save_pretrained(save_directory, **kw)
        weights = Path(save_directory) / "diffusion_pytorch_model.safetensors"
        if not weights.exists():  # space_to_depth has no weights; from_pretrained still wants the file
            from safetensors.torch import save_file  # safetensors: only when tensors are read or written

            save_file({}, str(weights))

    @staticmethod
    def _frames(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        b, c, t, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), b

    @staticmethod
    def _video(x: torch.Tensor, b: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        return x.reshape(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x, b = self._frames(pixels)
        return self._video(self.encoder(x), b) * self.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x, b = self._frames(latents / self.config.scaling_factor)
        return self._video(self.decoder(x), b)


# ----------------------------------------------------------------------- DiT
def rope_tables(pos: torch.Tensor, dims: tuple[int, int, int], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[..., N, head_dim]`` for float positions ``[..., N, 3]``; one band per axis."""
    cos, sin = [], []
    for axis, d in enumerate(dims):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=pos.device) / d)
        ang = pos[..., axis : axis + 1].float() * freqs  # [..., N, d/2]
        cos.append(ang.cos().repeat_interleave(2, -1))
        sin.append(ang.sin().repeat_interleave(2, -1))
    return torch.cat(cos, -1), torch.cat(sin, -1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x [B, H, N, Dh]``; tables ``[N, Dh]`` or per sample ``[B, N, Dh]``."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([-x2, x1], dim=-1).flatten(-2)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class _Block(nn.Module):
    """adaLN-zero transformer block over the joint token sequence."""

    #: diffusers' cache hooks may wrap it (it returns the hidden states alone; see ``step_cache``)
    _step_cache_block = True

    def __init__(self, dim: int, heads: int, rope_values: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.rope_values = rope_values
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads), nn.RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.mod = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)
        self.attention_backend = AttentionBackendName.NATIVE  # diffusers' dispatcher; see attention.py

    def forward(self, hidden_states: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # ``hidden_states``: the name diffusers' cache hooks look the block's input up by
        x = hidden_states
        s1, b1, g1, s2, b2, g2 = self.mod(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        b, n, d = x.shape
        h = self.norm1(x) * (1 + s1) + b1
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        # The dispatcher takes [B, N, H, Dh]; its native backend is the same SDPA call on the same strides.
        if self.rope_values:
            # Rotate values by their key's position and the result back by the query's, so a
            # value arrives turned by the *relative* offset (translation invariant). Why: a query
            # token can then read a different part of one history token depending on where it
            # sits inside that token's box; plain RoPE hands every query the same value vector.
            v = apply_rope(v, cos, sin)
        a = dispatch_attention_fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                  backend=self.attention_backend)
        if self.rope_values:
            a = apply_rope(a.transpose(1, 2), cos, -sin).transpose(1, 2)
        a = a.reshape(b, n, d)
        x = x + g1 * self.out(a)
        return x + g2 * self.mlp(self.norm2(x) * (1 + s2) + b2)


class ToyDiT(ModelMixin, ConfigMixin, CacheMixin):
    """Single-stream DiT: [text | history | window | noisy] tokens, output on noisy only."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        hidden_size: int = 128,
        depth: int = 4,
        heads: int = 4,
        vocab_size: int = len(DEFAULT_VOCAB),
        max_text_length: int = 16,
        rope_dims: tuple[int, int, int] = (8, 12, 12),
        rope_theta: float = 100.0,
        prediction_type: str = "velocity",
        canvas_positions: bool = False,
        rope_values: bool = False,
    ) -> None:
        super().__init__()
        if prediction_type not in ("velocity", "sample"):
            raise ValueError(f"prediction_type must be 'velocity' or 'sample', got {prediction_type!r}")
        if sum(rope_dims) != hidden_size // heads:
            raise ValueError(f"rope_dims {rope_dims} must sum to the head dim {hidden_size // heads}")
        d = hidden_size
        self.x_embedder = nn.Conv3d(in_channels, d, patch_size, stride=patch_size)
        self.text_embed = nn.Embedding(vocab_size, d)
        self.text_pos = nn.Parameter(torch.zeros(max_text_length, d))
        # Which kind of token this is: noisy section, raw window, history embedding.
        self.type_embed = nn.Parameter(torch.zeros(3, d))
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(_Block(d, heads, rope_values) for _ in range(depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.mod_out = nn.Linear(d, 2 * d)
        self.proj_out = nn.Linear(d, in_channels * math.prod(patch_size))
        nn.init.zeros_(self.mod_out.weight)
        nn.init.zeros_(self.mod_out.bias)
        self.gradient_checkpointing = False

    def set_backend(self, backend: str) -> None:
        """Attention kernel of every block (a diffusers dispatcher backend name; see ``attention.py``)."""
        for block in self.blocks:
            block.attention_backend = AttentionBackendName(backend)

    @staticmethod
    def _timestep_features(sigma: torch.Tensor) -> torch.Tensor:
        half = 128
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device) / half)
        ang = (sigma.float() * 1000.0)[:, None] * freqs[None]
        return torch.cat([ang.cos(), ang.sin()], dim=-1)

    def _grid_positions(self, t: int, h: int, w: int, t0: float, device: torch.device) -> torch.Tensor:
        ti = torch.arange(t, dtype=torch.float32, device=device) + t0
        hi = torch.arange(h, dtype=torch.float32, device=device)
        wi = torch.arange(w, dtype=torch.float32, device=device)
        return torch.stack(torch.meshgrid(ti, hi, wi, indexing="ij"), -1).reshape(-1, 3)

    def _shift_w(self, pos: torch.Tensor, shift: torch.Tensor, t: int, per_frame: int) -> torch.Tensor:
        """Add a per-frame offset (``[t]`` latent frames, or per sample ``[B, t]``) to the w position."""
        pt = self.config.patch_size[0]
        s = shift.to(pos.device, torch.float32)
        s = s.unflatten(-1, (-1, pt)).mean(-1) if pt > 1 else s  # one offset per token frame
        p = pos.unflatten(-2, (t, per_frame))  # [(B,) t, per_frame, 3]
        w = p[..., 2] + s[..., :, None]  # broadcasts a per-sample shift over shared positions and back
        out = torch.stack([p[..., 0].expand_as(w), p[..., 1].expand_as(w), w], dim=-1)
        return out.flatten(-3, -2)

    def embed_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> the text tokens the blocks read ``[B, L, D]`` (padding zeroed)."""
        text = self.text_embed(text_ids) + self.text_pos[: text_ids.shape[1]]
        return text * text_mask[..., None].to(text.dtype)

    def noisy_tokens(self, latent_shape: tuple[int, ...]) -> int:
        """Tokens of a noisy section ``[B, C, T, H, W]``: the last ones of the blocks' sequence."""
        pt, ph, pw = self.config.patch_size
        return (latent_shape[2] // pt) * (latent_shape[3] // ph) * (latent_shape[4] // pw)

    def _embed_latents(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        y = self.x_embedder(x)  # [B, D, t, h, w]
        return y.flatten(2).transpose(1, 2), tuple(y.shape[2:])

    def forward(
        self,
        hidden_states: torch.Tensor,
        sigma: torch.Tensor,
        text_ids: torch.Tensor | None,
        text_mask: torch.Tensor,
        history_tokens: torch.Tensor | None = None,
        history_positions: torch.Tensor | None = None,
        window_latents: torch.Tensor | None = None,
        window_t0: float = 0.0,
        target_t: torch.Tensor | None = None,
        target_w: torch.Tensor | None = None,
        window_w: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        keyframe_latents: torch.Tensor | None = None,
        keyframe_t: torch.Tensor | None = None,
        keyframe_w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noisy section; ``target_w``/``window_w`` move frames along the w axis (camera track).

        With ``canvas_positions`` the caller gives each frame's view offset, so
        a static landmark keeps one rotary position however the camera pans,
        and a revisited view lines up with its first visit in the history.
        ``keyframe_latents`` ``[B, C, K, H, W]``: clean latents the video must reach, read as window tokens
        (the window's type embedding: no parameters of their own) at their times ``keyframe_t`` (``[K]`` or
        ``[B, K]``, latent frames from the section's first) and moved by ``keyframe_w``; None = no keyframe
        (the sequence is exactly what it was without them).
        """
        b, c = hidden_states.shape[:2]
        dev = hidden_states.device
        noisy, (t, h, w) = self._embed_latents(hidden_states)
        seqs = [noisy + self.type_embed[0]]
        pos = [self._target_positions(t, h, w, target_t, target_w, dev)]
        if window_latents is not None and window_latents.shape[2] > 0:
            win, (tw, hw, ww) = self._embed_latents(window_latents.to(hidden_states.dtype))
            seqs.insert(0, win + self.type_embed[1])
            wpos = self._grid_positions(tw, hw, ww, window_t0 / self.config.patch_size[0], dev)
            pos.insert(0, wpos if window_w is None else self._shift_w(wpos, window_w, tw, hw * ww))
        if keyframe_latents is not None and keyframe_latents.shape[2] > 0:
            key, kpos = self._keyframe_tokens(keyframe_latents.to(hidden_states.dtype), keyframe_t, keyframe_w, dev)
            seqs.insert(0, key + self.type_embed[1])
            pos.insert(0, kpos)
        if history_tokens is not None and history_tokens.shape[1] > 0:
            seqs.insert(0, history_tokens.to(hidden_states.dtype).expand(b, -1, -1) + self.type_embed[2])
            pos.insert(0, history_positions.to(dev))
        # ``text_embeds``: the text tokens already embedded (a blend of two prompts, see ToyBackbone.blend_text)
        text = self.embed_text(text_ids, text_mask) if text_embeds is None else text_embeds.to(noisy.dtype)
        seqs.insert(0, text.expand(b, -1, -1))
        # Text tokens get position 0 on every axis: the identity rotation.
        pos.insert(0, torch.zeros(text.shape[1], 3, device=dev))
        x = torch.cat(seqs, dim=1)
        if any(p.dim() == 3 for p in pos):  # per-sample positions somewhere: give every group a batch axis
            pos = [p if p.dim() == 3 else p.expand(b, -1, -1) for p in pos]
        cos, sin = rope_tables(torch.cat(pos, dim=-2), tuple(self.config.rope_dims), self.config.rope_theta)

        pooled = (text * text_mask[..., None]).sum(1) / text_mask.sum(1, keepdim=True).clamp(min=1)
        cvec = self.t_embed(self._timestep_features(sigma).to(x.dtype)) + pooled.expand(b, -1)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, cvec, cos, sin, use_reentrant=False)
            else:
                x = block(x, cvec, cos, sin)
        return self._head(x[:, -noisy.shape[1] :], cvec, (b, c, t, h, w))  # context tokens never reach the output

    def _keyframe_tokens(self, latents: torch.Tensor, kt: torch.Tensor | None, kw: torch.Tensor | None,
                         dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Keyframe tokens ``[B, K*h*w, D]`` and their positions: each keyframe one token frame at its own time."""
        pt = self.config.patch_size[0]
        k = latents.shape[2]
        # One keyframe is one latent frame: repeated to fill a temporal patch (the toy's is 1: no copy).
        tokens, (tk, h, w) = self._embed_latents(latents.repeat_interleave(pt, 2) if pt > 1 else latents)
        times = torch.arange(k, dtype=torch.float32, device=dev) if kt is None else kt.to(dev, torch.float32)
        grid = self._grid_positions(tk, h, w, 0.0, dev).view(tk, h * w, 3)
        grid = grid.expand(*times.shape[:-1], tk, h * w, 3).clone()
        grid[..., 0] = times[..., None] / pt
        pos = grid.flatten(-3, -2)
        if kw is not None:
            pos = self._shift_w(pos, kw.repeat_interleave(pt, -1) if pt > 1 else kw, tk, h * w)
        return tokens, pos

    def _target_positions(self, t: int, h: int, w: int, target_t: torch.Tensor | None, target_w: torch.Tensor | None,
                          dev: torch.device) -> torch.Tensor:
        """Rotary positions of the noisy tokens: the ``t x h x w`` grid, at ``target_t``'s times and moved by ``target_w``."""
        pos = self._grid_positions(t, h, w, 0.0, dev)
        if target_t is not None:  # per-frame time positions (Stage I queries frames in the past)
            tt = target_t.to(dev, torch.float32) / self.config.patch_size[0]  # [T] or per sample [B, T]
            grid = pos.view(t, h * w, 3).expand(*tt.shape[:-1], t, h * w, 3).clone()
            grid[..., 0] = tt[..., None]
            pos = grid.flatten(-3, -2)
        if target_w is not None:
            pos = self._shift_w(pos, target_w, t, h * w)
        return pos

    def _head(self, x: torch.Tensor, cvec: torch.Tensor, shape: tuple[int, int, int, int, int]) -> torch.Tensor:
        """The noisy section's tokens ``[B, t*h*w, D]`` -> the prediction ``[B, C, T, H, W]`` (modulated norm, unpatchify)."""
        b, c, t, h, w = shape
        shift, scale = self.mod_out(F.silu(cvec)).unsqueeze(1).chunk(2, dim=-1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)
        pt, ph, pw = self.config.patch_size
        x = x.view(b, t, h, w, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, c, t * pt, h * ph, w * pw)


# ------------------------------------------------------------------- preview
@torch.no_grad()
def fit_latent_rgb(vae: ToyVAE, frames: torch.Tensor) -> LatentRGB:
    """Least-squares linear map from each latent pixel to its ``scale x scale`` block of decoded pixels.

    ``frames`` are ``[N, 3, H, W]`` in ``[-1, 1]``; the target is what the VAE
    decodes their latents to (the frame a preview stands in for). The
    space-to-depth VAE is itself such a map (a permutation of channels), so the
    fit finds it exactly; for a learned VAE it is the best linear stand-in for its decoder.
    """
    s = vae.config.spatial_scale
    latents = vae.encode(frames.to(vae.device, vae.dtype)[:, :, None])  # [N, C, 1, h, w]
    decoded = vae.decode(latents)[:, :, 0].float().clamp(-1, 1).cpu()
    latents = latents[:, :, 0].float().cpu()
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    y = F.pixel_unshuffle(decoded, s).permute(0, 2, 3, 1).reshape(-1, 3 * s * s)  # pixel_shuffle's order
    x1 = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    sol = torch.linalg.lstsq(x1, y.double(), driver="gelsd").solution  # [C + 1, 3 s^2]
    return LatentRGB(sol[:-1].T.float().contiguous(), sol[-1].float(), s, (-1.0, 1.0))


def toy_world_frames(n_worlds: int = 8, view: int = 16) -> torch.Tensor:
    """A few toy-world views (several worlds, camera places, sprite moments) as ``[N, 3, H, W]`` in ``[-1, 1]``."""
    spec, views = WorldSpec(view=view), []
    for seed in range(n_worlds):
        world = World(seed, spec)
        for k, x in enumerate(np.linspace(0, spec.max_x, 3).astype(int)):
            views.append(world.view_at(int(x), 3 * k))
    return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float() / 127.5 - 1


# ------------------------------------------------------------------ backbone
class ToyBackbone(Backbone):
    """Toy DiT + toy VAE + word tokenizer behind the backbone contract."""

    name = "toy"
    keyframes = True

    def __init__(self, dit: ToyDiT, vae: ToyVAE, tokenizer: WordTokenizer, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device, self.dtype = torch.device(device), dtype
        self.dit = place(dit, self.device, dtype).eval()
        self.vae = place(vae, self.device, dtype).eval()
        self.tokenizer = tokenizer
        self.geometry = LatentGeometry(
            latent_channels=vae.config.latent_channels,
            spatial_scale=vae.config.spatial_scale,
            temporal_scale=1,
            causal_first_frame=False,
            patch_size=tuple(dit.config.patch_size),
            hidden_size=dit.config.hidden_size,
        )
        # fitted once, here (not on meta: the memory planner builds backbones there): previews never touch the VAE
        self._latent_rgb = None if self.vae.device.type == "meta" else self._fit_latent_rgb()

    @classmethod
    def from_config(cls, dit: dict | None = None, vae: dict | None = None, seed: int = 0, **kw) -> "ToyBackbone":
        """Random weights from configs (tests, and the start of training)."""
        torch.manual_seed(seed)
        vae_m = ToyVAE(**(vae or {}))
        dit_cfg = {"in_channels": vae_m.config.latent_channels, **(dit or {})}
        dit_m = ToyDiT(**dit_cfg)
        return cls(dit_m, vae_m, WordTokenizer(DEFAULT_VOCAB[: dit_m.config.vocab_size], dit_m.config.max_text_length), **kw)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kw) -> "ToyBackbone":
        folder = Path(folder)
        return cls(
            ToyDiT.from_pretrained(folder / "transformer", use_safetensors=True),
            ToyVAE.from_pretrained(folder / "vae", use_safetensors=True),
            WordTokenizer.load(folder),
            **kw,
        )

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.dit.save_pretrained(folder / "transformer")
        self.vae.save_pretrained(folder / "vae")
        self.tokenizer.save(folder)

    @property
    def transformer(self) -> ToyDiT:
        return self.dit

    def patch_embedding(self) -> nn.Module:
        return self.dit.x_embedder

    def encode_text(self, prompt: str) -> Conditioning:
        ids, mask = self.tokenizer(model_text(prompt))  # a camera jump reads as a hold: the track carries it
        return Conditioning({"text_ids": ids.to(self.device), "text_mask": mask.to(self.device)})

    @torch.no_grad()
    def blend_text(self, a: Conditioning, b: Conditioning, weight: float) -> Conditioning:
        """The toy's conditioning is token ids: blend the embedded tokens (``text_embeds``), join the masks."""

        def embedded(c: Conditioning) -> Conditioning:
            if "text_embeds" in c.tensors:
                return c
            return Conditioning({"text_embeds": self.dit.embed_text(c.tensors["text_ids"], c.tensors["text_mask"]),
                                 "text_mask": c.tensors["text_mask"]})

        return super().blend_text(embedded(a), embedded(b), weight)

    def default_start(self, kind: str, seed: int, prompt: str, seconds: float, width: int, height: int) -> StartFrame | None:
        """Text-to-video starts in the toy world drawn from the seed, where its storyboard would start (``kind`` "world")."""
        if kind != "world":
            raise ValueError(f"the toy backbone starts from its world's first view ('world'), not {kind!r}")
        if width != height:
            return None
        return StartFrame(start_frame(seed, WorldSpec(view=width), storyboard=prompt, seconds=seconds))

    def latent_rgb(self) -> LatentRGB:
        """The least-squares map fitted on toy-world views (exact for the space-to-depth VAE)."""
        if self._latent_rgb is None:
            self._latent_rgb = self._fit_latent_rgb()
        return self._latent_rgb

    def _fit_latent_rgb(self) -> LatentRGB:
        return fit_latent_rgb(self.vae, toy_world_frames(view=max(16, 4 * self.geometry.spatial_scale)))

    def camera_steps(self, storyboard, first_frame: int, n: int, fps: int, width: int) -> torch.Tensor | None:
        """The toy world's camera moves per frame (its pan speed, a jump's half canvas), from the storyboard,
        in DiT token units (canvas-position DiTs only)."""
        if not self.dit.config.canvas_positions:
            return None
        unit = self.geometry.spatial_scale * self.geometry.patch_size[2]
        return torch.tensor([px / unit for px in camera_moves(storyboard, first_frame, n, fps, WorldSpec(view=width, fps=fps))])

    def frame_context(self, storyboard, first_frame: int, n: int, fps: int, width: int,
                      past: torch.Tensor) -> torch.Tensor | None:
        """The camera track: each frame's view offset (DiT token units), continuing the history's last one."""
        steps = self.camera_steps(storyboard, first_frame, n, fps, width)
        if steps is None:
            return None
        last = float(past[-1]) if len(past) else 0.0
        return last + torch.cumsum(steps.float(), 0)

    def vae_encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels.to(self.device, self.dtype))

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.device, self.dtype)).clamp(-1, 1)

    def predict(self, noisy: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, context: Context, guidance: float = 1.0) -> torch.Tensor:
        out = self.dit(
            noisy.to(self.dtype),
            sigma.to(self.device),
            cond.tensors.get("text_ids"),
            cond.tensors["text_mask"],
            history_tokens=context.history_tokens,
            history_positions=context.history_positions,
            window_latents=None if context.window_latents is None else context.window_latents.to(self.device),
            window_t0=context.window_t0,
            target_t=context.target_t,
            target_w=context.target_w,
            window_w=context.window_w,
            text_embeds=cond.tensors.get("text_embeds"),
            keyframe_latents=None if context.keyframe_latents is None else context.keyframe_latents.to(self.device),
            keyframe_t=context.keyframe_t,
            keyframe_w=context.keyframe_w,
        )
        if self.dit.config.prediction_type == "sample":
            # A clean-section predictor is easier to train small; the samplers
            # want velocity: with x_t = (1-s) x0 + s n, v = n - x0 = (x_t - x0) / s.
            s = sigma.to(out.dtype).clamp(min=1e-3).view(-1, 1, 1, 1, 1)
            return (noisy.to(out.dtype) - out) / s
        return out
