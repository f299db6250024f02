"""The learned finishing models at work: ESRGAN-family upscaling in tiles, RIFE interpolation by timestep.

:func:`load` builds the module a weight file holds (told apart by
:func:`framepack_history.hub.finishing_weights.describe`) and loads its safetensors strictly.
:func:`upscale_frames` runs an upscaler over frames in overlapping tiles whose size follows a memory
budget (:func:`tile_for`): each tile is run with ``overlap`` pixels of its neighbours around it and
only its own part of the output is kept, so no seam shows where the receptive field fits in the
overlap (exactly equal to the untiled result then). :func:`interpolate_frames` puts ``factor - 1``
RIFE frames at ``t = k / factor`` between neighbours and holds the last frame, so the duration is
kept at ``factor`` times the rate (as the blend of :mod:`.finishing`).

Imports torch: :mod:`.finishing` imports this only when a learned method runs (the worker's thread
or the CLI's process).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from framepack_history.backbones.finishing.rife import IFNet
from framepack_history.backbones.finishing.rrdbnet import RRDBNet
from framepack_history.backbones.finishing.srvgg import SRVGGNetCompact
from framepack_history.errors import InputError
from framepack_history.hub.finishing_weights import ModelInfo

ARCHS: dict[str, type[nn.Module]] = {"rrdbnet": RRDBNet, "srvgg": SRVGGNetCompact, "ifnet": IFNet}
#: context each tile gets from its neighbours (input pixels): above the receptive field of the compact
#: upscalers (SRVGGNetCompact's 18 convs), and where a deep RRDBNet's reach fades (Real-ESRGAN pads tiles by 10)
OVERLAP = 16
MIN_TILE = 32
#: what an unstated budget means: half the device memory free now, or this much host memory
HOST_BUDGET_GIB = 2.0


def pick_device(device: str | None) -> str:
    """``device``, or the first CUDA device when there is one, else the CPU."""
    if device:
        kind = str(device).split(":")[0]
        if kind not in ("cpu", "cuda", "mps"):
            raise InputError("--device", f"{device!r} is not a device (cpu, cuda, cuda:N, mps)")
        if kind == "cuda" and not torch.cuda.is_available() or kind == "mps" and not torch.backends.mps.is_available():
            raise InputError("--device", f"{device}: this machine has no such device")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str) -> torch.dtype:
    """Half precision on an accelerator (as Real-ESRGAN and RIFE run by default), float32 on the CPU."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.float16


def load(info: ModelInfo, device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The module of ``info`` with its weights (strictly: a missing key or a wrong shape is an :class:`InputError`)."""
    state = load_file(str(info.path), device="cpu")  # safetensors: no pickle
    state = {k[len(info.prefix):]: v for k, v in state.items()}
    for k in info.ignored:
        state.pop(k, None)
    model = ARCHS[info.arch](**info.config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # a shape that the keys did not show
        raise InputError("--model", f"{info.path.name} does not fit {info.summary()}: {str(e).splitlines()[-1].strip()}") from None
    return model.eval().requires_grad_(False).to(device, dtype)


# ------------------------------------------------------------------ budget and tiles
def budget_bytes(device: str, budget_gib: float = 0.0) -> int:
    """What a tile may use: ``budget_gib`` when set (the preset's), else half the accelerator's free memory or
    :data:`HOST_BUDGET_GIB` on the CPU."""
    if budget_gib and budget_gib > 0:
        return int(budget_gib * 1024**3)
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return free // 2
    return int(HOST_BUDGET_GIB * 1024**3)


def bytes_per_pixel(info: ModelInfo, elem: int) -> int:
    """Activation bytes per input pixel at the peak of one forward pass, a deliberately round estimate.

    RRDBNet: the dense block's concatenation (num_feat + 4 growths) and its copies at the trunk's size,
    then three num_feat maps at four times each side (conv_up2, conv_hr, their activation).
    SRVGGNetCompact: three num_feat maps at the input's size, then the output and the nearest base.
    """
    c = info.config
    if info.arch == "rrdbnet":
        trunk = 1 / (4 // info.scale) ** 2  # a 2x model runs its trunk on 2x2-folded pixels
        elems = trunk * (3 * c["num_feat"] + 5 * c["num_grow"]) + trunk * 16 * 3 * c["num_feat"]
    else:
        elems = 3 * c["num_feat"] + 3 * info.scale**2 * c["out_ch"]
    return int(math.ceil(elems * elem * 1.5))  # 1.5: the allocator's slack and the input's copies


def tile_for(info: ModelInfo, budget: int, elem: int, overlap: int = OVERLAP) -> int:
    """The largest tile side (input pixels, overlap not counted) whose padded tile fits ``budget``."""
    side = math.isqrt(max(0, budget // bytes_per_pixel(info, elem))) - 2 * overlap
    align = _align(info)
    return max(MIN_TILE, side // align * align)


def _align(info: ModelInfo) -> int:
    """Tiles start on multiples of this: a 2x RRDBNet folds 2x2 pixels into channels first."""
    return 4 // info.scale if info.arch == "rrdbnet" else 1


def upscale_tiled(model: nn.Module, x: torch.Tensor, scale: int, tile: int, overlap: int = OVERLAP) -> torch.Tensor:
    """``model(x)`` computed tile by tile: each ``tile`` x ``tile`` piece runs with ``overlap`` pixels of context
    on every side (clipped at the image's edges) and only its own part of the output is kept."""
    h, w = x.shape[-2:]
    if tile >= h and tile >= w:
        return model(x)
    out = x.new_empty(x.shape[0], x.shape[1], h * scale, w * scale)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0, py1, px1 = max(y0 - overlap, 0), max(x0 - overlap, 0), min(y1 + overlap, h), min(x1 + overlap, w)
            piece = model(x[..., py0:py1, px0:px1])
            out[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] = piece[
                ..., (y0 - py0) * scale:(y1 - py0) * scale, (x0 - px0) * scale:(x1 - px0) * scale]
    return out


def _to_tensor(frame: np.ndarray, device: str, dtype: torch.dtype) -> torch.Tensor:
    # a copy: decoded frames are read-only views of ffmpeg's buffer
    return torch.from_numpy(np.array(frame, dtype=np.uint8)).to(device).permute(2, 0, 1)[None].to(dtype) / 255.0


def _to_frame(x: torch.Tensor) -> np.ndarray:
    return (x[0].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.inference_mode()
def upscale_frames(frames: Iterable[np.ndarray], info: ModelInfo, device: str | None = None, budget_gib: float = 0.0,
                   tile: int | None = None, overlap: int = OVERLAP) -> Iterator[np.ndarray]:
    """Each ``uint8 [H, W, 3]`` frame ``info.scale`` times larger, in tiles sized to the budget (or ``tile``)."""
    device = pick_device(device)
    dtype = compute_dtype(device)
    model = load(info, device, dtype)
    elem = torch.finfo(dtype).bits // 8
    tile = tile or tile_for(info, budget_bytes(device, budget_gib), elem, overlap)
    align = _align(info)
    overlap = -(-overlap // align) * align
    for frame in frames:
        x = _to_tensor(frame, device, dtype)
        h, w = x.shape[-2:]
        ph, pw = -h % align, -w % align  # a 2x RRDBNet needs even sides: reflect, then crop (as Real-ESRGAN)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        y = upscale_tiled(model, x, info.scale, tile, overlap)
        yield _to_frame(y[..., :h * info.scale, :w * info.scale])


@torch.inference_mode()
def interpolate_frames(frames: Iterable[np.ndarray], info: ModelInfo, factor: int,
                       device: str | None = None) -> Iterator[np.ndarray]:
    """Frames with ``factor - 1`` RIFE frames between neighbours (at ``t = k / factor``); the last frame is held."""
    device = pick_device(device)
    dtype = compute_dtype(device)
    model = load(info, device, dtype)
    assert isinstance(model, IFNet)
    prev = None  # (frame, padded tensor, features)
    for frame in frames:
        x = _to_tensor(frame, device, dtype)
        h, w = x.shape[-2:]
        m = model.multiple
        x = F.pad(x, (0, -w % m, 0, -h % m))  # zeros on the right and bottom, as Practical-RIFE pads
        cur = (np.asarray(frame, dtype=np.uint8), x, model.features(x))
        if prev is not None:
            yield prev[0]
            for k in range(1, factor):
                t = torch.full_like(x[:, :1], k / factor)
                yield _to_frame(model.between(prev[1], x, prev[2], cur[2], t)[..., :h, :w])
        prev = cur
    if prev is not None:
        for _ in range(factor):
            yield prev[0]
