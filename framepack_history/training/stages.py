"""Stage I/II set-up shared by both stages: conditioning, data, and the run itself.

:func:`run_stage` builds the backbone, the encoder and the stage's module,
the dataset (latent cache or on-the-fly VAE encoding), and hands them to the
shared loop in :mod:`.common`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from framepack_history.backbones.base import Backbone, Conditioning
from framepack_history.config.presets import Preset
from framepack_history.errors import InputError
from framepack_history.training.common import make_accelerator, run
from framepack_history.training.data import (
    LatentCacheDataset,
    PreparedConditions,
    PreparedDataset,
    build_latent_cache,
    pixel_dataset,
    step_batches,
)
from framepack_history.training.modeling import (
    FlowModule,
    build_backbone,
    build_encoder,
    channels_last_convs,
    contiguous_params,
    export_from_state,
    export_run,
    param_groups,
    prepare_transformer,
    rebind_transformer,
    stream_frozen_blocks,
    training_preset,
)
from framepack_history.training.settings import TrainConfig, find_path


class StageTask:
    """What Stage I and II give the shared loop besides their batches: optimizer groups and export."""

    def __init__(self, cfg: TrainConfig, module: FlowModule, fps: int) -> None:
        self.cfg, self.module, self.fps = cfg, module, fps
        self.text = TextCache(module.backbone)
        self.preset: Preset | None = None  # set by run_stage
        self._uses_image: bool | None = None
        self.prepared: PreparedConditions | None = None  # prepared data: embeddings read, never computed
        self.streamer = None  # stream_blocks: the TrainingStreamer moving the frozen DiT blocks

    def conditions(self, prompts: list[str], latents: torch.Tensor) -> list[Conditioning]:
        """Per sample: the prompt's embedding plus, for image-to-video backbones, the clip's first frame.

        Generation conditions every section on the start image (FramePack-F1:
        SigLIP embedding and clean anchor latents), so training does as well:
        the anchor is the clip's first latent itself (the start image's latent
        of a generation that made this clip), SigLIP sees its decoded frame.
        """
        if self.prepared is not None:
            return self.prepared.conditions(prompts, latents, self.cfg.image_condition)
        bb = self.module.backbone
        texts = [self.text([p]) for p in prompts]
        if self._uses_image is None:  # the toy has no image encoder: never decode for it
            self._uses_image = (self.cfg.image_condition and type(bb).encode_image is not Backbone.encode_image
                                and getattr(bb, "image_encoder", True) is not None)
        if not self._uses_image:
            return texts
        with torch.no_grad():
            first = bb.vae_decode(latents[:, :, :1]).float()  # [B, 3, 1, H, W] (or more for causal VAEs)
            images = [bb.encode_image(first[i, :, 0], latents[i : i + 1, :, :1]) for i in range(len(prompts))]
        return [Conditioning({**img.tensors, **txt.tensors}) for img, txt in zip(images, texts)]

    @property
    def guidance(self) -> float:
        """The DiT's distilled guidance as generation runs it (the preset's ``sampling.guidance``; F1: 10)."""
        return 1.0 if self.preset is None else float(self.preset.sampling.guidance)

    @staticmethod
    def batched(conds: list[Conditioning]) -> Conditioning:
        return Conditioning({k: torch.cat([c.tensors[k] for c in conds]) for k in conds[0].tensors})

    def param_groups(self) -> list[dict[str, Any]]:
        return param_groups(self.module, self.cfg)

    def after_prepare(self, module: FlowModule) -> None:
        rebind_transformer(module.backbone, module.transformer)

    def after_backward(self) -> None:
        """Streamed blocks: the first block, kept through its backward, leaves the device."""
        if self.streamer is not None:
            self.streamer.release()

    def export(self, out: Path, module: FlowModule) -> None:
        if self.streamer is not None:  # the LoRA merges into the frozen weights where they are: on the host
            self.streamer.finish()
        contiguous_params(module)  # channels-last conv weights (CPU training) are written contiguous
        export_run(out, module, self.preset, self.cfg)

    def export_state(self, out: Path, state: dict[str, torch.Tensor]) -> None:
        export_from_state(out, state, self.cfg, self.preset)


class TextCache:
    """Prompt -> conditioning, computed once per distinct prompt (text encoders are frozen)."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone, self.cache = backbone, {}

    def __call__(self, prompts: list[str]) -> Conditioning:
        for p in prompts:
            if p not in self.cache:
                with torch.no_grad():
                    self.cache[p] = self.backbone.encode_text(p)
        conds = [self.cache[p].tensors for p in prompts]
        return Conditioning({k: torch.cat([c[k] for c in conds]) for k in conds[0]})


@torch.no_grad()
def latents_of(items: dict[str, Any], backbone: Backbone) -> torch.Tensor:
    """Batch latents ``[B, C, T, h, w]`` (cached, or encoded now with the frozen VAE)."""
    if "latents" in items:
        return items["latents"].to(backbone.device, torch.float32)
    return backbone.vae_encode(items["video"].to(backbone.device)).float()


def track_of(items: dict[str, Any], backbone: Backbone) -> torch.Tensor | None:
    """Camera track ``[B, T]`` in DiT token units for canvas-position backbones, else None."""
    cfg = getattr(backbone.transformer, "config", None)
    if not getattr(cfg, "canvas_positions", False):
        return None
    if "camera_x" not in items:
        raise InputError("data", "canvas_positions needs clips with a camera track (the toy world's camera_x); "
                                 "rebuild the latent cache into a new folder")
    geo = backbone.geometry
    if geo.temporal_scale != 1:
        raise InputError("model", "canvas_positions needs a VAE without temporal compression")
    px = torch.as_tensor(items["camera_x"]).float()
    return (px / (geo.spatial_scale * geo.patch_size[2])).to(backbone.device)


def training_dataset(cfg: TrainConfig, preset: Preset, backbone: Backbone, accelerator):
    """Latent items from a cache, or pixel items encoded on the fly (``data.cache = ""``)."""
    v = preset.video
    if cfg.data.kind == "cache":
        return LatentCacheDataset(find_path(cfg.data.root))
    if cfg.data.kind == "prepared":
        data = PreparedDataset(find_path(cfg.data.root), cfg.data.files, cfg.data.exclude_files, cfg.data.bucket)
        made = {k: data.settings.get(k) for k in ("backbone", "fps")}
        if made != {"backbone": backbone.name, "fps": v.fps}:
            raise InputError("data.root", f"{cfg.data.root} was prepared for {made}, not for this preset "
                                          f"({backbone.name} at {v.fps} fps)")
        return data
    pixels = pixel_dataset(cfg.data, v.width, v.height, v.fps)
    if not cfg.data.cache:
        return pixels
    vae = getattr(backbone, "vae", None)
    fingerprint = {
        "backbone": backbone.name, "weights": preset.model.weights,
        "vae": dict(vae.config) if vae is not None and hasattr(vae, "config") else None,
        "vae_weights": cfg.vae_weights, "data": dataclasses.asdict(cfg.data) | {"cache": None},
        "width": v.width, "height": v.height, "fps": v.fps,
    }
    folder = find_path(cfg.data.cache)
    if hasattr(backbone, "enable_vae_tiling"):
        backbone.enable_vae_tiling()  # long high-resolution clips: tiles keep the VAE's memory bounded
    build_latent_cache(pixels, folder, backbone.vae_encode, fingerprint, cfg.data.shard_size, cfg.data.cache_dtype,
                       rank=accelerator.process_index, world=accelerator.num_processes,
                       progress=accelerator.is_local_main_process)
    accelerator.wait_for_everyone()
    return LatentCacheDataset(folder)


def drop_encoders(backbone: Backbone) -> None:
    """Prepared data brings its embeddings: free the text and image encoders (and a real backbone's VAE).

    The toy keeps its small VAE, which its export saves beside the DiT.
    """
    names = ["text_encoder", "text_encoder_2", "image_encoder"] + ([] if backbone.name == "toy" else ["vae"])
    for name in names:
        if getattr(backbone, name, None) is not None:
            setattr(backbone, name, None)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_stage(cfg: TrainConfig, module_cls: type, task_cls: type) -> Path:
    """Shared set-up of Stage I and II: models, data, then the common loop."""
    accelerator = make_accelerator(cfg)
    if cfg.stream_blocks and accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
        raise InputError("stream_blocks", "FSDP and DeepSpeed shard the frozen blocks themselves: stream them on "
                                          "one GPU or under DDP (each process streams its own)")
    preset = training_preset(cfg)
    backbone = build_backbone(cfg, preset.model, accelerator.device)
    encoder = build_encoder(cfg, preset.model, backbone)
    prepare_transformer(cfg, backbone)
    streamer = stream_frozen_blocks(cfg, backbone)
    encoder.train().requires_grad_(not (cfg.stage == "stage2" and cfg.stage2.freeze_encoder))
    if cfg.lora_rank == 0:
        # Full finetuning: the LR branch shares the DiT's patchifier, which trains with the DiT.
        backbone.patch_embedding().requires_grad_(True)
    module = module_cls(backbone, encoder, cfg)
    if accelerator.device.type == "cpu":
        channels_last_convs(module)  # before the optimizer exists: its states take the same layout
    if streamer is not None:  # DDP must neither broadcast host-held frozen weights nor check their device
        module._ddp_params_and_buffers_to_ignore = streamer.frozen_names("transformer.")
    task = task_cls(cfg, module, preset.video.fps)
    task.preset = preset
    task.streamer = streamer
    dataset = training_dataset(cfg, preset, backbone, accelerator)
    if isinstance(dataset, PreparedDataset):
        task.prepared = dataset.conditions(backbone.device)
        drop_encoders(backbone)
    batches = step_batches(dataset, cfg.batch_size, cfg.seed, cfg.grad_accum, cfg.max_steps, cfg.num_workers,
                           accelerator.num_processes)
    return run(cfg, accelerator, task, batches)
