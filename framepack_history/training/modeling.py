"""Models for training: backbone + history encoder, LoRA, the flow loss, export.

The trainable parts of a stage live in one :class:`FlowModule` (the DiT and
the encoder as submodules), so DDP/FSDP wrap, synchronise and checkpoint
them together; the backbone's ``predict`` calls the very same DiT object.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from framepack_history.backbones.base import Backbone, move_by_frame_context, place
from framepack_history.backbones.toy import ToyBackbone, ToyVAE
from framepack_history.config.presets import ModelSpec, Preset, build_dataclass, load_preset
from framepack_history.config.rates import parse_rate
from framepack_history.device import torch_dtype
from framepack_history.errors import InputError
from framepack_history.generation.loading import load_backbone
from framepack_history.history.encoder import HistoryEncoder
from framepack_history.history.layout import group_means
from framepack_history.history.merge import cap_groups
from framepack_history.memory.streaming import block_placement, load_safetensors
from framepack_history.training.capped import capped_history
from framepack_history.training.settings import TrainConfig, dump_toml, find_path
from framepack_history.training.streaming import TrainingStreamer, stream_blocks

# The DiT's attention and MLP linear layers (not embedders, norms or modulation).
LORA_TARGETS = {
    "toy": r".*blocks\.\d+\.(qkv|out|mlp\.0|mlp\.2)$",
    "hunyuan_framepack": (
        r".*transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
        r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)$"
    ),
}


class LargePatchifier(HistoryEncoder):
    """FramePack-style baseline: one learned conv whose kernel is the whole token box.

    Same token grid and positions as the history encoder at this rate; it
    starts as "average pool + the DiT's patchifier" (weights tiled from the
    DiT's patch embedding, as FramePack initialises its 2x/4x kernels).
    """

    @register_to_config
    def __init__(self, latent_channels: int = 16, hidden_size: int = 3072,
                 patch_size: tuple[int, int, int] = (1, 2, 2), rate: str = "4x4x2") -> None:
        nn.Module.__init__(self)
        rh, rw, rt = parse_rate(rate)
        pt, ph, pw = patch_size
        self.factor = (pt * rt, ph * rh, pw * rw)
        self.rate = (rh, rw, rt)
        self._lr_embed = ()
        self.proj = nn.Conv3d(latent_channels, hidden_size, self.factor, stride=self.factor)

    @torch.no_grad()
    def init_from(self, patch: nn.Module) -> None:
        """Spread each patch-kernel tap over the ``rate`` box it pools (then it equals pool + patchify)."""
        rh, rw, rt = self.rate
        w = patch.weight.detach().to(self.proj.weight.dtype)
        w = w.repeat_interleave(rt, 2).repeat_interleave(rh, 3).repeat_interleave(rw, 4)
        self.proj.weight.copy_(w / (rt * rh * rw))
        if patch.bias is not None:
            self.proj.bias.copy_(patch.bias.detach())

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.shape[2] == 0:
            _, gh, gw = self.grid(0, latents.shape[3], latents.shape[4])
            return latents.new_zeros(latents.shape[0], 0, gh, gw, self.config.hidden_size)
        return self.proj(self._pad(latents).to(self.dtype)).permute(0, 2, 3, 4, 1)


def anchor_dtype(encoder: HistoryEncoder) -> HistoryEncoder:
    """Give a parameter-less encoder (LR branch only) a dtype.

    diffusers' ``ModelMixin.dtype`` fails on a module without parameters or
    buffers; a non-persistent buffer fixes that without changing what is saved.
    """
    if not any(True for _ in encoder.parameters()) and not any(True for _ in encoder.buffers()):
        encoder.register_buffer("_dtype_anchor", torch.zeros(()), persistent=False)
    return encoder


def load_encoder(folder: str | Path) -> HistoryEncoder:
    """A saved history encoder or baseline, by the class named in its config."""
    folder = Path(folder)
    name = json.loads((folder / "config.json").read_text()).get("_class_name")
    cls = LargePatchifier if name == LargePatchifier.__name__ else HistoryEncoder
    return anchor_dtype(cls.from_pretrained(folder, use_safetensors=True))


# ------------------------------------------------------------------ build
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def training_preset(cfg: TrainConfig) -> Preset:
    """The config's preset with ``[model]`` overrides applied (validated)."""
    preset = load_preset(find_path(cfg.preset))
    if cfg.model:
        merged = _merge(dataclasses.asdict(preset.model), cfg.model)
        for key in ("weights", "encoder"):  # paths in a training config are relative to where it runs
            if merged.get(key) and cfg.model.get(key):
                merged[key] = str(find_path(merged[key]).resolve())
        preset.model = build_dataclass(ModelSpec, merged, "model")
    return preset


def build_backbone(cfg: TrainConfig, spec: ModelSpec, device: torch.device | str) -> Backbone:
    """The preset's backbone; for the toy, optionally with a trained VAE swapped in.

    A toy DiT loaded from weights takes ``canvas_positions`` and ``rope_values`` from
    the preset's ``[model.config.dit]`` when they are given there (switches with no
    weights of their own), so a view-position model can be finetuned into a
    canvas-position one, or one with rotary values.
    """
    bb = _build_backbone(cfg, spec, device)
    if spec.backbone != "toy":
        return bb
    dit, given = bb.transformer, spec.config.get("dit") or {}
    for key in ("canvas_positions", "rope_values"):
        if given.get(key) is not None and bool(given[key]) != bool(dit.config.get(key, False)):
            dit.register_to_config(**{key: bool(given[key])})
    for block in dit.blocks:
        block.rope_values = bool(dit.config.get("rope_values", False))
    return bb


def _build_backbone(cfg: TrainConfig, spec: ModelSpec, device: torch.device | str) -> Backbone:
    if cfg.vae_weights:
        if spec.backbone != "toy":
            raise InputError("vae_weights", "is for the toy backbone (real backbones bring their VAE)")

        folder = find_path(cfg.vae_weights)
        folder = folder / "vae" if (folder / "vae").is_dir() else folder
        vae = ToyVAE.from_pretrained(folder, use_safetensors=True)
        if spec.weights:
            bb = load_backbone(spec, device, cfg.weights_dtype)
            bb.vae = vae.to(bb.device).eval()
            return bb
        cfg_vae = {k: v for k, v in vae.config.items() if not k.startswith("_")}
        bb = ToyBackbone.from_config(dit=spec.config.get("dit"), vae=cfg_vae, seed=spec.seed, device=device,
                                     dtype=torch_dtype(cfg.weights_dtype))
        bb.vae = vae.to(bb.device).eval()
        return bb
    if cfg.stream_blocks and spec.backbone != "toy" and spec.weights:
        return _load_streamed(spec, device, cfg.weights_dtype, prepared=cfg.data.kind == "prepared")
    return load_backbone(spec, device, cfg.weights_dtype)


def _load_streamed(spec: ModelSpec, device: torch.device | str, dtype: str, prepared: bool) -> Backbone:
    """Real weights for a streamed run, never the whole backbone on the device, not even while loading.

    The backbone's offload mode builds the DiT on ``meta``, keeps the text and image encoders as loaders
    and the VAE on the host; the DiT's files then fill its stem on the device and its blocks in (pinned)
    host memory, as generation's memory manager loads them. With prepared data the encoders and the VAE
    never reach the device (they are dropped before the first step); otherwise they are loaded onto it now.
    """
    bb = load_backbone(spec, device, dtype, offload=True)
    dit = bb.transformer
    load_safetensors(dit, bb.weight_folders["transformer"], block_placement(dit, ()), bb.device, torch_dtype(dtype))
    if prepared:
        bb.loaders.clear()
    else:
        for name, build in list(bb.loaders.items()):
            setattr(bb, name, build())  # straight from the files to the device
        bb.loaders.clear()
        bb.vae = place(bb.vae, bb.device, bb.component_dtype).eval()
    return bb


def build_encoder(cfg: TrainConfig, spec: ModelSpec, backbone: Backbone) -> HistoryEncoder:
    """The encoder to train: loaded from ``model.encoder`` or fresh from ``[encoder]``."""
    geo = backbone.geometry
    if spec.encoder:
        enc = load_encoder(find_path(spec.encoder))
    else:
        torch.manual_seed(spec.seed + 1)
        if cfg.encoder.kind == "large_patchifier":
            enc = LargePatchifier(geo.latent_channels, geo.hidden_size, tuple(geo.patch_size), spec.encoder_rate)
            enc.init_from(backbone.patch_embedding())
        elif cfg.encoder.kind == "history":
            enc = HistoryEncoder(latent_channels=geo.latent_channels, hidden_size=geo.hidden_size,
                                 patch_size=tuple(geo.patch_size), rate=spec.encoder_rate,
                                 channels=tuple(spec.encoder_channels), use_lr_branch=cfg.encoder.use_lr_branch,
                                 use_hr_branch=cfg.encoder.use_hr_branch,
                                 use_box_branch=cfg.encoder.use_box_branch,
                                 context_groups=cfg.encoder.context_groups)
        else:
            raise InputError("encoder.kind", f"must be 'history' or 'large_patchifier' (got {cfg.encoder.kind!r})")
    enc = anchor_dtype(enc).to(backbone.device)
    if enc.dtype != torch.float32:  # trained in fp32; autocast handles mixed precision
        enc = enc.float()
    enc.set_patch_embedding(backbone.patch_embedding())
    return enc


def prepare_transformer(cfg: TrainConfig, backbone: Backbone) -> nn.Module:
    """Freeze what must not train; full finetuning (``lora_rank = 0``) or a fresh LoRA."""
    for module in (getattr(backbone, "vae", None), getattr(backbone, "text_encoder", None),
                   getattr(backbone, "text_encoder_2", None), getattr(backbone, "image_encoder", None)):
        if isinstance(module, nn.Module):
            module.requires_grad_(False)
    t = backbone.transformer
    if cfg.lora_rank == 0:
        t.requires_grad_(True)
        if t.dtype != torch.float32:
            raise InputError("weights_dtype", "full finetuning (lora_rank = 0) needs float32 (mixed precision comes from autocast)")
    else:
        from peft import LoraConfig, inject_adapter_in_model  # peft: only when LoRA layers are built

        t.requires_grad_(False)
        targets = cfg.lora_targets or LORA_TARGETS.get(backbone.name)
        if not targets:
            raise InputError("lora_targets", f"no default for backbone {backbone.name!r}; give a regex over module names")
        lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank, target_modules=targets,
                          init_lora_weights=True)
        inject_adapter_in_model(lcfg, t)
        t._lora_config = lcfg  # kept for export
        for n, p in t.named_parameters():
            if "lora_" in n:
                # adapters train in fp32 even on bf16 base weights, on the device even beside streamed (host) ones
                p.data = p.data.to(backbone.device, torch.float32)
    if cfg.gradient_checkpointing:
        if not getattr(t, "_supports_gradient_checkpointing", False):
            raise InputError("gradient_checkpointing", f"{type(t).__name__} does not support it")
        t.enable_gradient_checkpointing()
    return t


def channels_last_convs(module: nn.Module) -> int:
    """Store every 3D convolution weight channels-last (``channels_last_3d``), in place; returns how many.

    Why: oneDNN then runs those convolutions (the history encoder's HR branch, the patchifiers) channels-last,
    forward and backward, about a quarter faster on the CPU for the toy's shapes (benchmarks/train_speed.py).
    The values are the same; only their layout changes (checkpoints and exports store them contiguous).
    """
    n = 0
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 5 and not p.is_contiguous(memory_format=torch.channels_last_3d):
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
                n += 1
    return n


def contiguous_params(module: nn.Module) -> None:
    """Every parameter back to the contiguous layout (safetensors writes only contiguous tensors)."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.is_contiguous():
                p.data = p.data.contiguous()


def stream_frozen_blocks(cfg: TrainConfig, backbone: Backbone) -> TrainingStreamer | None:
    """``stream_blocks``: the prepared DiT's frozen blocks streamed through the device (after :func:`prepare_transformer`)."""
    if not cfg.stream_blocks:
        return None
    if backbone.name != "hunyuan_framepack":
        raise InputError("stream_blocks", f"is for the hunyuan_framepack backbone (got {backbone.name!r}, "
                                          "which stays on the device)")
    return stream_blocks(backbone.transformer, backbone.device)


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base weight and drop the adapter wrappers (in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # peft: only when LoRA layers are built

    for name, child in list(module.named_modules()):
        if isinstance(child, BaseTunerLayer):
            child.merge()
            parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            setattr(parent, name.rsplit(".", 1)[-1], child.get_base_layer())
    return module


# ------------------------------------------------------------- the module
class FlowModule(nn.Module):
    """DiT + history encoder as one trainable module; ``forward(batch)`` returns the loss (stages subclass it)."""

    def __init__(self, backbone: Backbone, encoder: HistoryEncoder | None, cfg: TrainConfig) -> None:
        super().__init__()
        self.transformer = backbone.transformer
        self.encoder = encoder
        self._refs = (backbone, cfg)  # a tuple: not registered as submodules

    @property
    def backbone(self) -> Backbone:
        return self._refs[0]

    @property
    def cfg(self) -> TrainConfig:
        return self._refs[1]

    def history(self, latents: torch.Tensor, track: torch.Tensor | None = None, cap: int = 0,
                layout_from: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, N, D]`` and positions ``[N, 3]`` (``[B, N, 3]`` with a camera track ``[B, T]``).

        Same convention as :meth:`HistoryState.tokens`: encoder positions with
        time shifted by minus the history length (in token-grid units), and
        each token group moved along w by its frames' mean camera offset.
        ``cap > 0``: the layout a job with ``history.max_tokens = cap`` holds
        (:mod:`.capped`; merges decided on ``layout_from``, default ``latents``).
        """

        if cap > 0:
            return self._capped(latents, track, cap, layout_from)

        grid = self.encoder(latents)
        b, t, h, w, d = grid.shape
        pos = self.encoder.positions(t, h, w).to(latents.device)
        pos[..., 0] -= latents.shape[2] / self.encoder.config.patch_size[0]
        if track is not None:
            pos = pos.expand(b, t, h, w, 3).clone()
            move_by_frame_context(pos, group_means(track, self.encoder.frames_per_group))
            return grid.reshape(b, t * h * w, d), pos.reshape(b, -1, 3)
        return grid.reshape(b, t * h * w, d), pos.reshape(-1, 3)

    def _capped(self, latents: torch.Tensor, track: torch.Tensor | None, cap: int,
                layout_from: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:

        _, h, w = self.encoder.grid(1, *latents.shape[3:])
        try:  # generation refuses such a cap: never train on layouts it cannot hold
            budget = cap_groups(cap, h * w)
        except ValueError as e:
            raise InputError("stage2.capped_tokens", str(e)) from None
        tokens, pos = capped_history(self.encoder, latents, track, budget, self.cfg.stage2.merge, layout_from)
        if track is None and bool((pos == pos[:1]).all()):
            pos = pos[0]  # one layout for the batch: the shared ``[N, 3]`` every backbone takes
        elif pos.dim() == 3 and self.backbone.name != "toy":  # only the toy DiT reads per-sample positions
            raise InputError("batch_size", "capped histories laid out per sample (stage2.merge 'similar') need "
                                           "batch_size 1 on this backbone, or stage2.merge 'oldest'")
        return tokens, pos

    def flow_loss(self, pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample rectified-flow loss: ``|v - (noise - x0)|^2``, optionally x0-weighted."""
        err = (pred.float() - (noise - x0).float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))
        if self.loss_weighting == "x0":  # = |x0_pred - x0|^2, since x0 = x_t - sigma * v
            err = err * sigma.float().view(-1).pow(2)
        return err

    @property
    def loss_weighting(self) -> str:
        """``auto``: x0 weighting for a DiT that predicts the clean sample.

        Its velocity ``(x_t - x0_pred) / sigma`` blows x0 errors up by
        ``1 / sigma``; weighting by ``sigma^2`` turns the loss back into
        the x0 error it actually makes.
        """
        w = self.cfg.loss_weighting
        if w == "auto":
            cfg = getattr(self.transformer, "config", None)
            w = "x0" if getattr(cfg, "prediction_type", "velocity") == "sample" else "velocity"
        return w


def encoder_params(module: FlowModule) -> list[nn.Parameter]:
    return [p for p in module.encoder.parameters() if p.requires_grad] if module.encoder is not None else []


def param_groups(module: FlowModule, cfg: TrainConfig) -> list[dict[str, Any]]:
    """DiT (or LoRA) parameters and encoder parameters, each with its learning rate."""
    enc = {id(p) for p in encoder_params(module)}
    dit = [p for p in module.transformer.parameters() if p.requires_grad and id(p) not in enc]
    groups = [{"params": dit, "lr": cfg.lr}]
    if enc:
        groups.append({"params": encoder_params(module), "lr": cfg.encoder_lr or cfg.lr})
    return [g for g in groups if g["params"]]


# ------------------------------------------------------------------ export
def export_run(out: Path, module: FlowModule, preset: Preset, cfg: TrainConfig) -> None:
    """Write the app-loadable folder: transformer (+ vae, tokenizer for the toy), history_encoder, preset.toml."""
    from safetensors.torch import save_file  # safetensors: only when tensors are read or written

    bb, t = module.backbone, module.transformer
    if cfg.lora_rank > 0:
        from peft.utils import get_peft_model_state_dict  # peft: only when LoRA layers are built

        lora_dir = out / "transformer_lora"
        lora_dir.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(t).items()}
        save_file(sd, str(lora_dir / "adapter_model.safetensors"))
        t._lora_config.save_pretrained(str(lora_dir))
        merge_lora(t)
    if getattr(t, "gradient_checkpointing", False) and hasattr(t, "disable_gradient_checkpointing"):
        t.disable_gradient_checkpointing()
    t.save_pretrained(out / "transformer", safe_serialization=True)
    if bb.name == "toy":
        bb.vae.save_pretrained(out / "vae", safe_serialization=True)
        bb.tokenizer.save(out)
    if module.encoder is not None:
        enc_dir = out / "history_encoder"
        module.encoder.save_pretrained(enc_dir, safe_serialization=True)
        if not (enc_dir / "diffusion_pytorch_model.safetensors").exists():  # LR branch only: no weights of its own
            save_file({}, str(enc_dir / "diffusion_pytorch_model.safetensors"))
    write_preset(out, preset, has_encoder=module.encoder is not None)


def export_from_state(out: Path, state: dict[str, torch.Tensor], cfg: TrainConfig, preset: Preset) -> None:
    """FSDP/DeepSpeed: rebuild the models on the CPU, load the gathered full state dict, export."""
    bb = build_backbone(cfg, preset.model, "cpu")
    enc = build_encoder(cfg, preset.model, bb)
    prepare_transformer(cfg, bb)
    module = FlowModule(bb, enc, cfg)
    missing, unexpected = module.load_state_dict({k: v.to("cpu") for k, v in state.items()}, strict=False)
    if unexpected or any(p.requires_grad for n, p in module.named_parameters() if n in set(missing)):
        raise RuntimeError(f"gathered state does not fit the rebuilt model: {(unexpected or missing)[:3]}")
    export_run(out, module, preset, cfg)


def rebind_transformer(backbone: Backbone, module: nn.Module) -> None:
    """Point the backbone at the DiT as prepared (FSDP may have wrapped it), so ``predict`` goes through it."""
    old = backbone.transformer
    if module is not old:
        for name, value in vars(backbone).items():
            if value is old:
                setattr(backbone, name, module)


def write_preset(out: Path, preset: Preset, has_encoder: bool) -> Path:
    """``out/preset.toml``: the training preset pointing at the exported weights."""
    data = preset.to_dict()
    data.pop("path", None)
    data["name"] = out.name
    data["description"] = f"trained weights in {out.resolve()}"
    m = data["model"]
    m["weights"] = str(out.resolve()) if m["backbone"] == "toy" else str((out / "transformer").resolve())
    m["encoder"] = str((out / "history_encoder").resolve()) if has_encoder else ""
    if has_encoder:
        cfg = json.loads((out / "history_encoder" / "config.json").read_text())
        m["encoder_rate"] = cfg.get("rate", m["encoder_rate"])
        m["encoder_rates"] = list(dict.fromkeys([m["encoder_rate"], *m["encoder_rates"]]))
    path = out / "preset.toml"
    path.write_text(dump_toml(data))
    return path
