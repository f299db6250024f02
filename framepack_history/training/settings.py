"""Training configuration: dataclasses, a TOML file plus ``--key value`` overrides, checks.

Validation reuses the preset machinery, so a bad key is named in one line
(``stage1.omega_min: need 1 <= omega_min <= omega_max``), never a traceback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from framepack_history.config.paths import PACKAGE, ROOT, WORKDIR
from framepack_history.config.presets import HISTORY_MERGES, build_dataclass
from framepack_history.device import DTYPE_NAMES
from framepack_history.errors import InputError


@dataclass
class DataConfig:
    kind: str = "toyworld"  # toyworld | folder | cache | prepared
    root: str = ""  # folder: the videos; cache: a latent-cache folder; prepared: a `prepare-data` folder
    cache: str = ""  # latent cache to build/reuse ("" = encode on the fly)
    frames: int = 48  # pixel frames per training clip
    num_videos: int = 256  # toyworld: clips (worlds) in the split
    split: str = "train"  # toyworld: train | eval (held-out seeds)
    shard_size: int = 64  # clips per latent-cache shard
    cache_dtype: str = "float16"
    options: dict[str, Any] = field(default_factory=dict)  # toy world: views_wide, p_return, first, ...
    # prepared: which source videos (paths under the prepared VIDEOS_DIR, e.g. "a.mp4"); [] = all. A held-out
    # split trains with exclude_files = [...] and evaluates with files = [...], on the same folder.
    files: list[str] = field(default_factory=list)
    exclude_files: list[str] = field(default_factory=list)
    bucket: str = ""  # prepared: only clips of this size ("832x480"); needed when buckets mix and batch_size > 1


@dataclass
class EncoderConfig:
    kind: str = "history"  # history | large_patchifier (FramePack-style baseline)
    use_lr_branch: bool = True
    use_hr_branch: bool = True
    use_box_branch: bool = False  # + one linear map of each token box (contains the large patchifier)
    context_groups: int = 0  # the HR branch also reads this many groups before each one (causal; 0 = none)


@dataclass
class Stage1Config:
    omega_min: int = 1  # history frames queried per sample: a random count in [min, max]
    omega_max: int = 4
    omega_contiguous_p: float = 0.25  # chance that Omega is one contiguous run instead of scattered frames
    mask_noise_center: float = 0.2  # logit-normal noise level of the frames outside Omega
    mask_noise_std: float = 0.5  # std in logit space


@dataclass
class Stage2Config:
    freeze_encoder: bool = False  # ablation: the paper's "frozen phi"
    window_frames: int = 0  # tiny sliding window of raw latent frames next to the embedding
    p_window_mode: float = 0.0  # chance a step trains the sliding-window baseline instead (same weights)
    min_history_frames: int = 1  # latent frames of history at the earliest split
    # Chance that a step's split is drawn in proportion to how much of the target section shows canvas
    # that the history saw but the window does not (camera tracks only; else ignored). Applies to both
    # history modes alike, so the window baseline trains on the same sections.
    p_revisit_split: float = 0.0
    # Chance that a step trains Stage I's frame-query objective instead (same batch of clips): keeps the
    # embedding decodable and the DiT practised at reading past frames out of it.
    p_frame_query: float = 0.0
    # Chance that an encoder-mode step drops the add-on window: the history embedding alone must give the
    # section, so the DiT cannot lean on the raw window for what the embedding holds.
    p_no_window: float = 0.0
    # Chance that a step (next section or frame query) lays its history out as a job with
    # ``history.max_tokens`` does: a cap drawn from ``capped_tokens``, the merges replayed with ``merge``,
    # coarse groups at the true places of their frames. Teaches the DiT to read what a cap keeps.
    p_capped: float = 0.0
    capped_tokens: list[int] = field(default_factory=lambda: [40, 80, 160])
    merge: str = "similar"  # similar | oldest, as history.merge
    # Chance that a next-section step is given a keyframe: one clean latent of the clip at its true time after
    # the split (an offset shared by the batch, uniform in 0..keyframe_horizon latent frames, within the clip;
    # offsets inside the section teach the frame at the keyframe's time to copy it). Teaches the toy DiT to
    # lead the video to a keyframe (generation's request.keyframes).
    p_keyframe: float = 0.0
    keyframe_horizon: int = 48


@dataclass
class VaeConfig:
    frames_per_clip: int = 4  # random frames taken from each clip per step
    latent_reg: float = 1e-4  # keeps latents near unit scale
    latent_noise: float = 0.1  # decoder robustness to imperfect generated latents


@dataclass
class TrainConfig:
    stage: str = ""
    preset: str = "presets/toy-cpu.toml"  # model spec + video geometry
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's [model] table
    out: str = "outputs/train/run"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 4  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    encoder_lr: float = 0.0  # 0 = lr
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine
    lr_total_steps: int = 0  # cosine horizon; 0 = max_steps (fix it when a run will be extended)
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16
    weights_dtype: str = "float32"  # frozen base weights (bfloat16 saves memory under LoRA)
    gradient_checkpointing: bool = False
    # Frozen DiT blocks stay in (pinned) host memory and are copied to the device for their forward and again
    # for their recompute in backward (training/streaming.py): two blocks on the card instead of all of them.
    stream_blocks: bool = False
    lora_rank: int = 128  # 0 = full finetuning (the toy DiT has no pretraining)
    lora_alpha: float = 0.0  # 0 = rank
    lora_targets: str = ""  # regex over module names; "" = the backbone's attention/MLP linears
    ema_decay: float = 0.0  # 0 = no EMA
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10  # JSONL rows: the mean loss over this many steps
    resume: str = "auto"  # auto (latest in out/checkpoints) | "" (never) | a checkpoint folder
    num_workers: int = 0
    find_unused_parameters: bool = False  # DDP; switched on by itself when stage-2 window steps leave the encoder idle
    checksum_weights: bool = False  # write a per-rank checksum of the trainable weights at the end (DDP sanity check)
    loss_weighting: str = "auto"  # velocity (rectified flow) | x0 (= velocity loss * sigma^2) | auto (x0 for a DiT that predicts samples)
    sigma_mean: float = 0.0  # logit-normal sigma of the denoising target
    sigma_std: float = 1.0
    caption_dropout: float = 0.1  # empty caption sometimes, for classifier-free guidance
    image_condition: bool = True  # image-to-video backbones: condition on the clip's first frame, as generation does
    vae_weights: str = ""  # toy: a trained ToyVAE folder (from `train vae`)
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    vae: VaeConfig = field(default_factory=VaeConfig)


def parse_value(text: str) -> Any:
    """A CLI value as TOML (``3``, ``1e-4``, ``true``, ``[1, 2]``, ``"x"``), else the raw text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--a.b", "3", "--c=x"]`` -> ``{"a.b": 3, "c": "x"}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise InputError(arg, "expected --key value (dotted keys reach into tables, e.g. --stage1.omega_max 6)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise InputError(arg, "needs a value")
            value, i = args[i + 1], i + 1
        out[key.replace("-", "_")] = parse_value(value)
        i += 1
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"--{key}", f"{p} is not a table")
        node[leaf] = value
    return data


def load_config(cls: type, path: str | Path | None, overrides: dict[str, Any] | None = None) -> Any:
    """Read a TOML config, apply overrides, validate into ``cls`` (errors name the field)."""
    data: dict[str, Any] = {}
    if path:
        p = find_path(path)  # the shipped configs work from any folder, installed or not
        if not p.is_file():
            raise InputError("--config", f"no such file: {str(path)!r}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise InputError("--config", f"{p.name} is not valid TOML: {e}") from None
    apply_overrides(data, overrides or {})
    try:
        return build_dataclass(cls, data, "")
    except InputError as e:
        raise InputError("--config", f"{e.field} {e.message}") from None


def _need(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise InputError(key, message)


def check_train_config(cfg: TrainConfig) -> TrainConfig:
    """Checks types alone cannot express, before anything heavy loads; errors name the key."""
    _need(cfg.stage in ("vae", "stage1", "stage2"), "stage", f"must be vae, stage1 or stage2 (got {cfg.stage!r})")
    for key, val, lo in (("max_steps", cfg.max_steps, 0), ("batch_size", cfg.batch_size, 1), ("grad_accum", cfg.grad_accum, 1),
                         ("save_every", cfg.save_every, 1), ("lora_rank", cfg.lora_rank, 0), ("warmup_steps", cfg.warmup_steps, 0),
                         ("num_workers", cfg.num_workers, 0), ("data.frames", cfg.data.frames, 1),
                         ("data.num_videos", cfg.data.num_videos, 1), ("stage2.window_frames", cfg.stage2.window_frames, 0),
                         ("stage2.min_history_frames", cfg.stage2.min_history_frames, 1),
                         ("stage2.keyframe_horizon", cfg.stage2.keyframe_horizon, 0)):
        _need(val >= lo, key, f"must be >= {lo} (got {val})")
    choices = {"mixed_precision": (cfg.mixed_precision, ("no", "bf16", "fp16")),
               "weights_dtype": (cfg.weights_dtype, DTYPE_NAMES),
               "lr_schedule": (cfg.lr_schedule, ("constant", "cosine")),
               "loss_weighting": (cfg.loss_weighting, ("auto", "velocity", "x0")),
               "encoder.kind": (cfg.encoder.kind, ("history", "large_patchifier")),
               "data.kind": (cfg.data.kind, ("toyworld", "folder", "cache", "prepared") if cfg.stage != "vae"
                             else ("toyworld", "folder")),
               "data.cache_dtype": (cfg.data.cache_dtype, DTYPE_NAMES)}
    for key, (val, ok) in choices.items():
        _need(val in ok, key, f"must be one of {', '.join(ok)} (got {val!r})")
    for key, p in (("caption_dropout", cfg.caption_dropout), ("stage1.omega_contiguous_p", cfg.stage1.omega_contiguous_p),
                   ("stage2.p_window_mode", cfg.stage2.p_window_mode),
                   ("stage2.p_revisit_split", cfg.stage2.p_revisit_split),
                   ("stage2.p_frame_query", cfg.stage2.p_frame_query), ("stage2.p_capped", cfg.stage2.p_capped),
                   ("stage2.p_no_window", cfg.stage2.p_no_window), ("stage2.p_keyframe", cfg.stage2.p_keyframe),
                   ("ema_decay", cfg.ema_decay)):
        _need(0.0 <= p <= 1.0, key, f"must be in [0, 1] (got {p})")
    _need(0.0 < cfg.stage1.mask_noise_center < 1.0, "stage1.mask_noise_center", "must be in (0, 1)")
    _need(1 <= cfg.stage1.omega_min <= cfg.stage1.omega_max, "stage1.omega_min",
          f"need 1 <= omega_min <= omega_max (got {cfg.stage1.omega_min}, {cfg.stage1.omega_max})")
    _need(cfg.encoder.use_lr_branch or cfg.encoder.use_hr_branch or cfg.encoder.use_box_branch, "encoder",
          "needs at least one branch")
    _need(cfg.encoder.context_groups >= 0, "encoder.context_groups", f"must be >= 0 (got {cfg.encoder.context_groups})")
    _need(not (cfg.encoder.context_groups and cfg.stage2.p_capped), "encoder.context_groups",
          "capped histories (stage2.p_capped) need an encoder without context groups")
    if cfg.stream_blocks:
        _need(cfg.stage in ("stage1", "stage2"), "stream_blocks", f"streams the DiT of stage1 and stage2 (got {cfg.stage!r})")
        _need(cfg.gradient_checkpointing, "stream_blocks",
              "needs gradient_checkpointing = true: without it autograd keeps every block's weights for the backward")
        _need(cfg.lora_rank > 0, "stream_blocks", "streams frozen blocks: it needs LoRA (lora_rank > 0), not full finetuning")
    _need(cfg.lr > 0, "lr", f"must be > 0 (got {cfg.lr})")
    _need(bool(cfg.stage2.capped_tokens) and all(isinstance(c, int) and c > 0 for c in cfg.stage2.capped_tokens),
          "stage2.capped_tokens", f"must be a list of positive token caps (got {cfg.stage2.capped_tokens!r})")
    _need(cfg.stage2.merge in HISTORY_MERGES, "stage2.merge",
          f"must be one of {', '.join(HISTORY_MERGES)} (got {cfg.stage2.merge!r})")
    return cfg


def find_path(value: str | Path) -> Path:
    """``value`` where it exists: as given (absolute, or relative to the working directory), else a file the
    package ships (relative to :data:`ROOT`, or to the package itself: configs say ``presets/toy-cpu.toml``);
    a path that exists nowhere yet (a cache to build) goes under :data:`WORKDIR`, never into site-packages."""

    p = Path(value)
    if p.is_absolute() or p.exists():
        return p
    for base in (ROOT, PACKAGE):
        if (base / p).exists():
            return base / p
    return WORKDIR / p


def dump_toml(data: dict[str, Any]) -> str:
    """A minimal TOML writer for flat-ish configs (scalars, lists, nested tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines: list[str] = []

    def table(d: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items() if v is not None)
        for k, v in d.items():
            if isinstance(v, dict):
                table(v, f"{prefix}.{k}" if prefix else k)

    table(data, "")
    return "\n".join(lines).lstrip() + "\n"


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    return _SAFE.sub("-", text).strip("-") or "run"
