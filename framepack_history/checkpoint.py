"""Job folders: a checkpoint after every finished section, resume, and out-of-memory recovery.

A job folder holds everything needed to finish a job after a crash, a kill
or a restart, each file written atomically (temp file + rename)::

    request.json                the request, the preset it named, encoder rate, output paths
    preset.json                 the preset as it was when the job started (resume uses this one)
    checkpoint.json             written last, so it is the commit point: status, next section,
                                seed, storyboard, segments so far, per-section timings, owner pid
    history-NNNNN.safetensors   history latents (host) + history embedding after NNNNN sections
    tensors-NNNNN.safetensors   start-image conditioning and the torch RNG state
    segments/                   one mp4 per finished section (the CLI; the app keeps them in outputs/)

Only the files ``checkpoint.json`` names are used; a section that was being
written when the process died is simply generated again. Every section's
noise comes from ``(seed, section index)``, so a resumed job is frame-identical
to one that was never interrupted.

No torch at import time: the page lists job folders through this module.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import GenerationRequest, InputError, Preset, preset_from_dict

if TYPE_CHECKING:
    from .pipeline import Generation, Pipeline

FORMAT = 1
REQUEST, PRESET, CHECKPOINT = "request.json", "preset.json", "checkpoint.json"
#: statuses of a job that has not finished and whose process may have died
UNFINISHED = ("queued", "running", "interrupted")
GiB = 1024**3


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(what, f"{path} is missing: not a job folder, or one from before checkpoints") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(what, f"{path.name} is unreadable ({type(e).__name__}); the job folder is damaged") from None
    if not isinstance(data, dict):
        raise InputError(what, f"{path.name} is not a JSON object; the job folder is damaged")
    return data


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


@dataclass
class Resumed:
    """Event: a job continues from its checkpoint (after a restart or an out-of-memory retry)."""

    sections_done: int
    total: int
    segments: list[Path]
    sections: list[dict]
    frames: int  # generated frames (context excluded)
    context_frames: int
    history_tokens: int


@dataclass
class JobInfo:
    """What ``request.json`` and ``preset.json`` say."""

    request: GenerationRequest
    preset: Preset
    preset_ref: str  # the name or .toml path the job asked for (display only)
    encoder_rate: str | None
    out: Path
    segments_dir: Path
    extra: dict = field(default_factory=dict)


class JobDir:
    """One job's folder: create it, checkpoint every section, restore the last checkpoint."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"JobDir({str(self.root)!r})"

    @property
    def id(self) -> str:
        return self.root.name

    def exists(self) -> bool:
        return (self.root / REQUEST).is_file()

    # ------------------------------------------------------------ creating
    def create(self, request: GenerationRequest, preset: Preset, *, out: str | Path, segments_dir: str | Path | None = None,
               preset_ref: str = "", encoder_rate: str | None = None, status: str = "queued", **extra: Any) -> None:
        """Write the request and the preset; the job has no sections yet."""
        self.root.mkdir(parents=True, exist_ok=True)
        seg = Path(segments_dir) if segments_dir is not None else self.root / "segments"
        _write_json(self.root / PRESET, preset.to_dict())
        _write_json(self.root / REQUEST, {
            "format": FORMAT, "request": request.to_dict(), "preset_ref": preset_ref or preset.path or preset.name,
            "encoder_rate": encoder_rate, "out": str(Path(out).resolve()), "segments_dir": str(seg.resolve()),
            "created": time.time(), **extra,
        })
        _write_json(self.root / CHECKPOINT, {
            "format": FORMAT, "status": status, "message": "", "seed": request.seed, "next_section": 0,
            "total_sections": None, "segments": [], "sections": [], "frames": 0, "context_frames": 0,
            "history_tokens": 0, "history": None, "tensors": None, "updated": time.time(), "owner": _owner(),
        })

    # ------------------------------------------------------------- reading
    def info(self) -> JobInfo:
        """The request and preset of this job (:class:`InputError` if the folder is not a job's)."""
        where = str(self.root)
        data = _read_json(self.root / REQUEST, where)
        if data.get("format") != FORMAT:
            raise InputError(where, f"job format {data.get('format')!r} is not {FORMAT}; resume it with the version that wrote it")
        try:
            request = GenerationRequest(**data["request"])
            preset = preset_from_dict(_read_json(self.root / PRESET, where), f"{where}/{PRESET}")
            out, seg = Path(data["out"]), Path(data["segments_dir"])
        except (KeyError, TypeError) as e:
            raise InputError(where, f"{REQUEST} lacks or garbles {e}; the job folder is damaged") from None
        known = {"format", "request", "preset_ref", "encoder_rate", "out", "segments_dir"}
        return JobInfo(request, preset, str(data.get("preset_ref") or preset.name), data.get("encoder_rate"), out, seg,
                       {k: v for k, v in data.items() if k not in known})

    def checkpoint(self) -> dict[str, Any]:
        return _read_json(self.root / CHECKPOINT, str(self.root))

    @property
    def status(self) -> str:
        return str(self.checkpoint().get("status", "?"))

    def owner_alive(self) -> bool:
        """Whether the process that last wrote this job is still running (on this machine)."""
        owner = self.checkpoint().get("owner") or {}
        if owner.get("host") != socket.gethostname():
            return False
        pid = owner.get("pid")
        return isinstance(pid, int) and pid != os.getpid() and pid_alive(pid)

    def interrupted(self) -> bool:
        """Unfinished, and nobody is working on it: resumable."""
        try:
            return self.status in UNFINISHED and not self.owner_alive()
        except InputError:
            return False

    # ------------------------------------------------------------- writing
    def set_status(self, status: str, message: str = "") -> None:
        """Record the job's state; a finished job drops its tensors (they only serve a resume)."""
        ck = self.checkpoint()
        ck.update(status=status, message=message, updated=time.time(), owner=_owner())
        if status == "done":
            for key in ("history", "tensors"):
                if ck.get(key):
                    (self.root / ck[key]).unlink(missing_ok=True)
                ck[key] = None
        _write_json(self.root / CHECKPOINT, ck)

    def save_section(self, gen: Generation, segments: list[Path], sections: list[dict], frames: int,
                     context_frames: int = 0) -> None:
        """Checkpoint ``gen`` after its last finished section (``next_section`` sections done).

        The segments must already be on disk. Tensors are written under new
        names first, then ``checkpoint.json`` switches to them, then the old
        ones go: a kill at any moment leaves one complete checkpoint.
        """
        import torch
        from safetensors.torch import save_file

        n = gen.next_section
        hist, tens = f"history-{n:05d}.safetensors", f"tensors-{n:05d}.safetensors"
        gen.history.save(self.root / hist)
        tensors = {f"cond.{k}": v.detach().to("cpu").contiguous() for k, v in gen.image_cond.tensors.items()}
        tensors["rng.cpu"] = torch.get_rng_state()
        tmp = self.root / (tens + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(self.root / tens)
        ck = self.checkpoint()
        ck.update(
            status="running", message="", seed=gen.request.seed, next_section=n, total_sections=gen.total_sections,
            storyboard=gen.storyboard, segments=[Path(s).name for s in segments], sections=list(sections), frames=frames,
            context_frames=context_frames, history_tokens=gen.history.num_tokens, history=hist, tensors=tens,
            rng={"noise": "section_noise(seed, section index)", "torch_cpu_state": f"{tens}:rng.cpu"},
            updated=time.time(), owner=_owner(),
        )
        _write_json(self.root / CHECKPOINT, ck)
        for old in [*self.root.glob("history-*.safetensors"), *self.root.glob("tensors-*.safetensors")]:
            if old.name not in (hist, tens):
                old.unlink(missing_ok=True)

    # ----------------------------------------------------------- restoring
    def restore(self, pipeline: Pipeline) -> tuple[Generation | None, Resumed]:
        """The generation as of the last checkpoint (``None`` before the first one) and what is on disk.

        ``pipeline`` must be built from this job's preset and encoder rate.
        """
        ck, info = self.checkpoint(), self.info()
        if not ck.get("history"):  # not one section started yet: the job starts from scratch
            return None, Resumed(0, 0, [], [], 0, 0, 0)
        segments = [info.segments_dir / name for name in ck.get("segments", [])]
        missing = [s for s in segments if not s.is_file()]
        if missing:
            raise InputError(str(self.root), f"segment {missing[0]} is missing; the finished sections cannot be joined")
        context = int(ck.get("context_frames", 0))
        resumed = Resumed(int(ck.get("next_section", 0)), int(ck.get("total_sections") or 0), segments,
                          list(ck.get("sections", [])), int(ck.get("frames", 0)) - context, context,
                          int(ck.get("history_tokens", 0)))
        import torch
        from safetensors.torch import load_file

        from .backbones.base import Conditioning
        from .history import HistoryState
        from .pipeline import Generation

        request = info.request
        board = request.validate(pipeline.preset)
        mode = pipeline.option(request, "history_mode")
        device = pipeline.backbone.device
        history = HistoryState(pipeline.encoder if mode == "encoder" else None, device)
        try:
            history.load(self.root / ck["history"])
            tensors = load_file(str(self.root / ck["tensors"]))
        except (OSError, ValueError, RuntimeError) as e:
            raise InputError(str(self.root), f"checkpoint tensors unreadable ({type(e).__name__}: {e})") from None
        cond = {k[len("cond."):]: v.to(device) for k, v in tensors.items() if k.startswith("cond.")}
        if "rng.cpu" in tensors:
            torch.set_rng_state(tensors["rng.cpu"])
        gen = Generation(request, board, int(ck["total_sections"]), history, int(ck["next_section"]), Conditioning(cond))
        return gen, resumed


def list_jobs(root: str | Path) -> list[JobDir]:
    """Job folders directly under ``root``, in the order they were created."""
    root = Path(root)
    if not root.is_dir():
        return []

    def created(job: JobDir) -> float:
        try:
            return float(json.loads((job.root / REQUEST).read_text(encoding="utf-8"))["created"])
        except (OSError, ValueError, KeyError, TypeError):
            return (job.root / CHECKPOINT).stat().st_mtime

    return sorted((JobDir(p) for p in root.iterdir() if (p / CHECKPOINT).is_file()), key=created)


def interrupted_jobs(root: str | Path, exclude: set[str] | frozenset[str] = frozenset()) -> list[JobDir]:
    """Unfinished jobs under ``root`` whose process is gone (what the page offers to resume)."""
    return [j for j in list_jobs(root) if j.id not in exclude and j.interrupted()]


# ---------------------------------------------------------- out of memory
class OutOfMemoryFailure(RuntimeError):
    """Out of memory again after the more conservative retry; the message names budget and peak."""


def is_out_of_memory(err: BaseException) -> bool:
    """torch's OutOfMemoryError, an accelerator's "out of memory" RuntimeError, or host MemoryError."""
    torch = sys.modules.get("torch")
    seen = 0
    while err is not None and seen < 4:  # also when wrapped by another exception
        if isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError)):
            return True
        if isinstance(err, RuntimeError) and "out of memory" in str(err).lower():
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def free_device_memory() -> None:
    """Hand cached blocks back; allocates nothing (call it after the failed frames are gone)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def more_conservative(pipeline: Pipeline) -> str:
    """Ask for a plan that needs less device memory; returns what changed (for the log and messages).

    The memory manager, when one is attached, changes its plan where the error struck
    (``more_conservative() -> str``: more blocks streamed, fewer in flight, a tiled decode);
    otherwise VAE tiling is the one lever a backbone offers.
    """
    memory = getattr(pipeline, "memory", None)
    step = getattr(memory, "more_conservative", None)
    if callable(step):
        change = step()
        if change:
            return change if isinstance(change, str) else "the memory manager switched to a more conservative plan"
    backbone = pipeline.backbone
    tiling = getattr(backbone, "enable_vae_tiling", None)
    if callable(tiling) and not getattr(backbone, "_oom_tiling", False):
        tiling()
        backbone._oom_tiling = True
        return "VAE tiling enabled"
    return "no more conservative plan is available"


def measured_peak(pipeline: Pipeline) -> str:
    """The highest memory this process used on the pipeline's device (host RSS on a CPU).

    With a memory manager, also the peak of weights its residency ledger saw on the device.
    """
    torch = sys.modules.get("torch")
    device = getattr(pipeline.backbone, "device", None)
    ledger = getattr(getattr(getattr(pipeline, "memory", None), "residency", None), "peak", None)
    weights = f", weights on the device at most {ledger / GiB:.3f} GiB" if isinstance(ledger, int) else ""
    if torch is not None and device is not None and getattr(device, "type", "") == "cuda" and torch.cuda.is_initialized():
        return f"measured peak {torch.cuda.max_memory_allocated(device) / GiB:.2f} GiB on {device}{weights}"
    try:
        import resource  # not on Windows

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    except ImportError:
        return f"no peak measurement on {device}{weights}"
    return f"measured peak {rss / GiB:.2f} GiB of host memory (device {device}){weights}"


def reset_peak(pipeline: Pipeline) -> None:
    torch = sys.modules.get("torch")
    device = getattr(pipeline.backbone, "device", None)
    if torch is not None and getattr(device, "type", "") == "cuda" and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats(device)


def budget_text(pipeline: Pipeline) -> str:
    """The device budget the job ran under, and where it came from."""
    plan = getattr(getattr(pipeline, "memory", None), "plan", None)
    budget = getattr(plan, "budget", None)
    if getattr(budget, "device_bytes", None):
        return f"budget {budget.device_bytes / GiB:.2f} GiB ({getattr(budget, 'source', 'plan')})"
    hw = pipeline.preset.hardware
    if hw.device_budget_gib:
        return f"budget {hw.device_budget_gib:g} GiB (preset hardware.device_budget_gib)"
    return "budget: whatever is free on the device (preset hardware.device_budget_gib = 0)"
