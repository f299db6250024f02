"""Job folders: a checkpoint after every finished section, and resume.

A job folder holds everything needed to finish a job after a crash, a kill
or a restart::

    request.json                the request, the preset it named, encoder rate, output paths, and the
                                settings they resolve to (``config.fields.resolve``; a record: a
                                resume resolves them again from the request and preset.json)
    preset.json                 the preset as it was when the job started (resume uses this one)
    checkpoint.json             written last, so it is the commit point: status, next section,
                                seed, storyboard, owner pid, how many history chunks it covers
                                (a constant size: per-section records live in the chunks)
    cond.safetensors            start-image conditioning (written once, at the first checkpoint)
    history/chunk-NNNNN.safetensors
                                chunk 0 is the start state, then one per finished section: the
                                history's new latents, frame context and complete token groups,
                                the partial last token group as it is now (small; only the newest
                                counts), the torch RNG state, the video's noise generator state
                                (backbones that draw noise per video; only the newest counts), and
                                (metadata) the names of the new segments and the sections' timings
    segments/                   one mp4 per finished section (the CLI; the app keeps them in outputs/)

A checkpoint writes only what is new, so its cost does not grow with the
video. Order, so that a kill at any moment leaves one complete checkpoint:
the chunk is written to a temp name, fsynced and renamed (and its folder
fsynced); then ``checkpoint.json`` is replaced the same way, counting the chunks
it covers; only then do files that no checkpoint names go. A section that was
being written when the process died is simply generated again. Every
section's noise comes from ``(seed, section index)`` or, for a backbone that
draws noise per video (FramePack-F1, as FramePack's demo), from the video's one
generator, whose state the chunk keeps (``rng.noise``); either way a resumed
job is frame-identical to one that was never interrupted.

Folders of checkpoint format 1 (one ``history-NNNNN`` + ``tensors-NNNNN`` pair
rewritten whole each time) still resume; their next checkpoint converts them.

No torch at import time: the page lists job folders through this module.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepack_history.config.fields import Settings, resolve
from framepack_history.config.presets import Preset, preset_from_dict
from framepack_history.config.request import GenerationRequest
from framepack_history.device import RNG_LOCK
from framepack_history.errors import InputError
from framepack_history.fsio import atomic_save_tensors, atomic_write_json, fsync_dir

if TYPE_CHECKING:
    from framepack_history.generation.pipeline import Generation, Pipeline

FORMAT = 1  # request.json
#: ``request.json`` of a finishing tool's job (:mod:`.tools`): a record (owner, sources, output), with no history
TOOL_FORMAT = "tool"
CHECKPOINT_FORMAT = 2  # checkpoint.json: 1 = whole history rewritten per checkpoint, 2 = chunks
REQUEST, PRESET, CHECKPOINT = "request.json", "preset.json", "checkpoint.json"
COND, CHUNKS = "cond.safetensors", "history"
NOISE_STATE = "rng.noise"  # a chunk's tensor: the state of the video's noise generator after its section
#: statuses of a job that has not finished and whose process may have died
UNFINISHED = ("queued", "running", "interrupted")
GiB = 1024**3


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data)


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

    @property
    def settings(self) -> Settings:
        """The settings the job runs with: its request's, else its saved preset's (folders of any age)."""
        return resolve(self.request, self.preset)


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
            "settings": resolve(request, preset).to_dict(), "created": time.time(), **extra,
        })
        _write_json(self.root / CHECKPOINT, {
            "format": CHECKPOINT_FORMAT, "status": status, "message": "", "seed": request.seed, "next_section": 0,
            "total_sections": None, "frames": 0, "context_frames": 0,
            "history_tokens": 0, "chunks": 0, "cond": None, "updated": time.time(), "owner": _owner(),
        })

    # ------------------------------------------------------------- reading
    def info(self) -> JobInfo:
        """The request and preset of this job (:class:`InputError` if the folder is not a job's)."""
        where = str(self.root)
        data = _read_json(self.root / REQUEST, where)
        if data.get("format") == TOOL_FORMAT:
            raise InputError("job", f"{self.id} is a finishing tool's job ({data.get('tool')}): it has no history to "
                                    "resume, extend or steer")
        if data.get("format") != FORMAT:
            raise InputError(where, f"job format {data.get('format')!r} is not {FORMAT}; resume it with the version that wrote it")
        try:
            request = GenerationRequest(**data["request"])
            preset = preset_from_dict(_saved_preset(_read_json(self.root / PRESET, where)), f"{where}/{PRESET}")
            out, seg = Path(data["out"]), Path(data["segments_dir"])
        except (KeyError, TypeError) as e:
            raise InputError(where, f"{REQUEST} lacks or garbles {e}; the job folder is damaged") from None
        known = {"format", "request", "preset_ref", "encoder_rate", "out", "segments_dir", "settings"}
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
        """Record the job's state. A finished job keeps its history chunks: Extend continues from them."""
        ck = self.checkpoint()
        ck.update(status=status, message=message, updated=time.time(), owner=_owner())
        _write_json(self.root / CHECKPOINT, ck)

    def save_section(self, gen: Generation, segments: list[Path], sections: list[dict], frames: int,
                     context_frames: int = 0) -> int:
        """Checkpoint ``gen`` after its last finished section (``next_section`` sections done).

        The segments must already be on disk (fsynced). Writes what is new since
        the last checkpoint as one chunk (the history's new part, the new
        segments' names and section records), then ``checkpoint.json`` counting
        it, then removes files no checkpoint names. ``checkpoint.json`` keeps a
        constant size. Returns the bytes written.
        """
        ck = self.checkpoint()
        done = _progress_of(ck)
        h = gen.history
        if h.num_frames < done["history_frames"] or len(segments) < done["segments"] or len(sections) < done["sections"]:
            raise ValueError(f"{self.root}: the generation is not a continuation of its last checkpoint")
        written = 0
        cond = ck.get("cond") if ck.get("format") == CHECKPOINT_FORMAT else None
        if not cond:  # the start-image conditioning never changes within a job: written once
            cond = COND
            written += self._write_tensors(cond, {f"cond.{k}": v for k, v in gen.image_cond.tensors.items()})
        k = done["chunks"]
        meta = {"frames": str(h.num_frames), "groups": str(h.num_groups),
                "segments": json.dumps([Path(s).name for s in segments[done["segments"]:]]),
                "sections": json.dumps(list(sections[done["sections"]:]), default=str)}
        written += self._write_chunk(chunk_file(k), gen, (done["history_frames"], done["history_groups"]), meta)
        ck.update(
            format=CHECKPOINT_FORMAT, status="running", message="", seed=gen.request.seed, next_section=gen.next_section,
            total_sections=gen.total_sections, storyboard=gen.storyboard, frames=frames, context_frames=context_frames,
            history_tokens=h.num_tokens, chunks=k + 1, cond=cond, borrowed_frames=gen.borrowed_frames,
            progress={"history_frames": h.num_frames, "history_groups": h.num_groups, "segments": len(segments),
                      "sections": len(sections)},
            rng={"noise": "section_noise(seed, section index)" if gen.noise_generator is None else
                 f"one generator per video, seeded with the seed; its state: {chunk_file(k)}:{NOISE_STATE}",
                 "torch_cpu_state": f"{chunk_file(k)}:rng.cpu"},
            updated=time.time(), owner=_owner(),
        )
        _drop_format_1(ck)
        written += self._commit(ck)
        self._cleanup(ck)
        return written

    # The three steps of a checkpoint, apart so that tests can stop a process between them.
    def _write_chunk(self, name: str, gen: Generation, since: tuple[int, int], meta: dict[str, str]) -> int:
        """The history's new part, the RNG state and ``meta``, durable on disk under ``name``."""
        import torch  # torch: kept off the page's import path

        tensors = gen.history.chunk(*since)
        tensors["rng.cpu"] = torch.get_rng_state()
        if gen.noise_generator is not None:  # the noise of the sections still to come (uint8 state)
            tensors[NOISE_STATE] = gen.noise_generator.get_state()
        folder = self.root / CHUNKS
        if not folder.is_dir():
            folder.mkdir()
            fsync_dir(self.root)
        return self._write_tensors(name, tensors, meta)

    def _commit(self, ck: dict) -> int:
        """Replace ``checkpoint.json``: from here on, the new chunk is part of the job's state."""
        return atomic_write_json(self.root / CHECKPOINT, ck).stat().st_size

    def _cleanup(self, ck: dict) -> None:
        """Delete tensor files ``ck`` does not name (orphaned by a crash, format 1, temp files; all when done without an embedding)."""
        files, cond = tensor_files(ck, str(self.root))
        keep = {*files, cond}
        folder = self.root / CHUNKS
        stale = [*folder.glob("*")] if folder.is_dir() else []
        stale += [*self.root.glob("history-*.safetensors*"), *self.root.glob("tensors-*.safetensors*"),
                  *self.root.glob(COND + "*"), *self.root.glob("*.tmp")]  # a kill inside an atomic write
        for path in stale:
            if path.is_file() and path.relative_to(self.root).as_posix() not in keep:
                path.unlink(missing_ok=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def _write_tensors(self, name: str, tensors: dict, meta: dict[str, str] | None = None) -> int:
        host = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        return atomic_save_tensors(self.root / name, host, meta).stat().st_size

    # ----------------------------------------------------------- restoring
    def restore(self, pipeline: Pipeline) -> tuple[Generation | None, Resumed]:
        """The generation as of the last checkpoint (``None`` before the first one) and what is on disk.

        ``pipeline`` must be built from this job's preset and encoder rate.
        """
        ck, info = self.checkpoint(), self.info()
        files, cond_file = tensor_files(ck, str(self.root))
        if not files:  # not one section started yet: the job starts from scratch
            return None, Resumed(0, 0, [], [], 0, 0, 0)
        import torch  # torch: kept off the page's import path

        from framepack_history.backbones.base import Conditioning  # torch: kept off the page's import path
        from framepack_history.generation.pipeline import Generation  # torch: kept off the page's import path
        from framepack_history.history.state import HistoryState  # torch: kept off the page's import path

        try:
            chunks = [read_tensors(self.root / f) for f in files]
            cond_tensors, _ = read_tensors(self.root / cond_file)
        except (OSError, ValueError, RuntimeError) as e:
            raise InputError(str(self.root), f"checkpoint tensors unreadable ({type(e).__name__}: {e})") from None
        names, records = section_records(ck, [meta for _, meta in chunks])
        segments = [info.segments_dir / name for name in names]
        missing = [s for s in segments if not s.is_file()]
        if missing:
            raise InputError(str(self.root), f"segment {missing[0]} is missing; the finished sections cannot be joined")
        context = int(ck.get("context_frames", 0))
        resumed = Resumed(int(ck.get("next_section", 0)), int(ck.get("total_sections") or 0), segments, records,
                          int(ck.get("frames", 0)) - context, context, int(ck.get("history_tokens", 0)))
        request = info.request
        board = request.validate(pipeline.preset)
        settings = pipeline.settings(request)
        mode = settings.history_mode
        device = pipeline.backbone.device
        cap = pipeline.history_cap(request, _size(request, pipeline.preset)) if mode == "encoder" else 0
        history = HistoryState(pipeline.encoder if mode == "encoder" else None, device, max_tokens=cap,
                               merge=settings.history_merge)  # the rule the job started with
        # the memory controls before the chunks load, so the cap replays the merges the pins allowed
        frames = sum(int(t["latents"].shape[2]) for t, _ in chunks if "latents" in t)
        pipeline.steer_history(history, request, frames - int(ck["next_section"]) * pipeline.section_latent_frames)
        try:
            history.load_chunks([tensors for tensors, _ in chunks])
        except (ValueError, RuntimeError) as e:
            raise InputError(str(self.root), f"checkpoint history inconsistent ({e})") from None
        pipeline.prepare_memory(request, board, mode, cap, _size(request, pipeline.preset))  # the plan its start made
        cond = {k[len("cond."):]: v.to(device) for k, v in cond_tensors.items() if k.startswith("cond.")}
        rng = chunks[-1][0].get("rng.cpu", cond_tensors.get("rng.cpu"))  # format 1 kept it with the conditioning
        if rng is not None:

            with RNG_LOCK:  # another worker may be seeding a model load
                torch.set_rng_state(rng)
        gen = Generation(request, board, int(ck["total_sections"]), history, int(ck["next_section"]), Conditioning(cond))
        gen.borrowed_frames = int(ck.get("borrowed_frames", 0))
        noise = chunks[-1][0].get(NOISE_STATE)  # absent: per-section noise, or a job begun before the video's generator
        if noise is not None:
            gen.noise_generator = torch.Generator("cpu")
            gen.noise_generator.set_state(noise)
        return gen, resumed


def _saved_preset(data: dict[str, Any]) -> dict[str, Any]:
    """A job's saved preset; one written before ``history.merge`` existed capped by ``oldest``, the only rule then."""
    history = data.get("history")
    if isinstance(history, dict) and "merge" not in history:
        data = {**data, "history": {**history, "merge": "oldest"}}
    return data


def _size(request: GenerationRequest, preset: Preset) -> tuple[int, int]:
    """The size the job generates at: its request's (recorded by the start), else the preset's."""
    return (request.width, request.height) if request.width and request.height else (preset.video.width, preset.video.height)


def chunk_file(index: int) -> str:
    """The job-folder path of history chunk ``index`` (chunk 0: the start state, then one per section)."""
    return f"{CHUNKS}/chunk-{index:05d}.safetensors"


def _progress_of(ck: dict) -> dict[str, int]:
    """What the last checkpoint covers (all zero for format 1: its next checkpoint writes everything)."""
    zero = {"chunks": 0, "history_frames": 0, "history_groups": 0, "segments": 0, "sections": 0}
    if ck.get("format") != CHECKPOINT_FORMAT or not ck.get("chunks"):
        return zero
    return {**zero, **{k: int(v) for k, v in (ck.get("progress") or {}).items() if k in zero}, "chunks": int(ck["chunks"])}


def read_tensors(path: Path) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of a safetensors file."""
    from safetensors import safe_open  # safetensors: only when tensors are read or written

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def section_records(ck: dict, metas: list[dict[str, str]]) -> tuple[list[str], list[dict]]:
    """Segment names and section records: joined from the chunks (format 2) or listed in the json (format 1)."""
    if ck.get("format") != CHECKPOINT_FORMAT:
        return list(ck.get("segments", [])), list(ck.get("sections", []))
    names: list[str] = []
    records: list[dict] = []
    for meta in metas:
        names += json.loads(meta.get("segments", "[]"))
        records += json.loads(meta.get("sections", "[]"))
    return names, records


def _drop_format_1(ck: dict) -> None:
    for key in ("history", "tensors", "segments", "sections"):
        ck.pop(key, None)


def tensor_files(ck: dict, where: str) -> tuple[list[str], str | None]:
    """``(history files oldest first, conditioning file)`` that ``checkpoint.json`` names."""
    fmt = ck.get("format")
    if fmt == CHECKPOINT_FORMAT:
        files = [chunk_file(i) for i in range(int(ck.get("chunks") or 0))]
        if files and not ck.get("cond"):
            raise InputError(where, f"{CHECKPOINT} counts history chunks but names no conditioning file; the job folder is damaged")
        return files, ck.get("cond")
    if fmt == 1:  # one file with the whole history, one with conditioning + RNG
        return ([ck["history"]], ck.get("tensors")) if ck.get("history") else ([], None)
    raise InputError(where, f"checkpoint format {fmt!r} is not one this version reads (1 or {CHECKPOINT_FORMAT}); "
                            "resume it with the version that wrote it")


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
