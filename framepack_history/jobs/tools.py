"""Finishing tools as jobs: loop, join, export, upscale and interpolate a finished video on the worker.

A tool job is a :class:`ToolSpec` (a :class:`~.store.JobSpec` whose request only describes it, so the
queue, the store and the page list it like any job) that the lane runs in queue order with the
generation jobs (:meth:`~.worker.Worker.submit_tool`; :class:`~.runner.JobRunner` hands it to
:func:`run_tool`). It loads no backbone. Its inputs are finished jobs' videos (read, never written)
or uploads copied into its folder; its output goes to ``outputs/DATE/ID/video.EXT`` with the
sidecar ``video.json`` (:func:`tool_sidecar`: the tool, its settings, each source's job, file and
SHA-256, and a learned method's model file and SHA-256). Bad settings or inputs are refused before
queueing, naming the field. A learned method (``esrgan``, ``rife``) runs its model on the lane's
device (else the job's preset's), tiled to the preset's memory budget, and gives the device back
when it ends.

No torch here: the page imports this.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.device import free_device_memory
from framepack_history.errors import Cancelled, InputError
from framepack_history.fsio import atomic_write_json, file_sha256
from framepack_history.generation.finishing import (  # the constants: what the page offers (it imports no generation)
    FORMATS,
    INTERPOLATE_METHODS,
    LEARNED,
    LOOP_MODES,
    SETTINGS,
    TOOLS,
    UPSCALE_METHODS,
    check,
    finish,
    inspect_video,
    output_suffix,
)
from framepack_history.hub.finishing_weights import KNOWN
from framepack_history.jobs.checkpoint import REQUEST, TOOL_FORMAT, JobDir
from framepack_history.jobs.store import Job, JobSpec, JobStore

__all__ = ["FORMATS", "INTERPOLATE_METHODS", "KNOWN", "LEARNED", "LOOP_MODES", "SETTINGS", "TOOLS", "UPSCALE_METHODS",
           "ToolSpec", "model_names", "where_it_runs", "finished_video", "run_tool", "tool_sidecar", "tool_spec"]

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1


@dataclass
class ToolSpec(JobSpec):
    """A finishing tool to run: which, its settings (checked), and its sources in order.

    ``sources``: ``{"file": PATH}`` with ``"job": ID`` when the file is a finished job's video.
    ``request`` holds only a description (its prompt) and the length, for the queue and the page.
    """

    tool: str = "upscale"
    settings: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def inputs(self) -> list[str]:
        return [s["file"] for s in self.sources]


def describe(tool: str, settings: dict[str, Any], sources: list[dict[str, Any]]) -> str:
    """One line for the queue: ``upscale scale=2 method=bicubic · 101010-abcdef``."""
    names = ", ".join(s.get("job") or s.get("name") or Path(s["file"]).name for s in sources)
    return " ".join([tool, *(f"{k}={v}" for k, v in settings.items())]) + f" · {names}"


def model_names(method: str) -> list[str]:
    """The known models a learned ``method`` may name (the page's choices; a ``.safetensors`` path is accepted too)."""
    return [name for name, k in KNOWN.items() if k.task == LEARNED.get(method)]


def tool_spec(tool: str, sources: list[dict[str, Any]], settings: dict[str, Any], owner: str | None = None,
              field_name: str = "input", preset: str | None = None) -> ToolSpec:
    """A checked :class:`ToolSpec` (:class:`InputError` naming the field otherwise); reads only the inputs' headers."""
    if not sources:
        raise InputError(field_name, "no video to work on: pick a finished job or upload a video")
    checked = check(tool, [s["file"] for s in sources], dict(settings or {}), field_name)
    seconds = sum(_seconds(s["file"]) for s in sources)
    request = GenerationRequest(prompt=describe(tool, checked, sources), seconds=round(seconds, 3))
    spec = ToolSpec(request, owner=owner, tool=tool, settings=checked, sources=[dict(s) for s in sources])
    if preset:  # the preset whose device and memory budget a learned method runs with
        spec.preset = preset
    return spec


def _seconds(path: str) -> float:
    info = inspect_video(path)
    return info.frames / info.fps


def finished_video(store: JobStore, job_dir: JobDir, job_id: str) -> Path:
    """The video of finished job ``job_id`` (a generation or a tool): :class:`InputError` if it has none yet."""
    for job in store.jobs():
        if job.id == job_id:
            if job.status != "done" or job.video is None:
                raise InputError("job", f"{job_id} is {job.status}; only a finished job's video can be worked on")
            return Path(job.video)
    try:
        data = _read(job_dir.root / REQUEST)
        out = Path(data["out"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError("job", f"no finished job with id {job_id!r}") from None
    if not out.is_file():
        raise InputError("job", f"{job_id} has no finished video ({out.name} is missing)")
    return out


def _read(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data


def keep_uploads(spec: ToolSpec, folder: Path) -> None:
    """Copy uploaded sources into the job's folder (upload caches are emptied, jobs are not)."""
    for i, src in enumerate(spec.sources):
        if src.get("job"):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / f"input_{i}{Path(src['file']).suffix.lower()}"
        shutil.copyfile(src["file"], dst)
        src.setdefault("name", Path(src["file"]).name)  # the file as the user named it
        src["file"] = str(dst)


def write_record(jd: JobDir, spec: ToolSpec, out: Path, folder: Path) -> None:
    """The job folder's record: owner, tool, sources and output (``Worker.owner_of`` reads the owner after a restart)."""
    jd.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(jd.root / REQUEST, {
        "format": TOOL_FORMAT, "tool": spec.tool, "settings": spec.settings, "sources": spec.sources,
        "out": str(out.resolve()), "folder": str(folder), "owner": spec.owner, "created": time.time(),
    })


def output_of(job: Job) -> Path:
    """Where a tool job writes its video."""
    spec = job.spec
    assert isinstance(spec, ToolSpec)
    return job.folder / f"video{output_suffix(spec.tool, spec.settings)}"



def tool_sidecar(tool: str, settings: dict[str, Any], sources: list[dict[str, Any]], result: dict[str, Any],
                 seconds_s: float | None = None) -> dict[str, Any]:
    """What a tool's ``.json`` sidecar holds: the tool, its settings, each source (job, file, SHA-256) and the result."""
    data = {"format": SIDECAR_FORMAT, "tool": tool, "settings": dict(settings),
            "sources": [{"job": s.get("job"), "file": str(s["file"]), **({"name": s["name"]} if s.get("name") else {}),
                         "sha256": s.get("sha256") or file_sha256(s["file"])} for s in sources],
            "video": result.get("output"), "created": time.time()}
    for key in ("size", "fps", "frames", "model"):
        if key in result:
            data[key] = result[key]
    if data.get("fps") and data.get("frames"):
        data["seconds"] = round(data["frames"] / data["fps"], 3)
    if seconds_s is not None:
        data["took_s"] = round(seconds_s, 3)
    return data


def where_it_runs(spec: ToolSpec, device: str | None) -> tuple[str | None, float]:
    """The device a learned method runs on (the lane's, else the preset's) and its memory budget in GiB
    (the preset's ``device_budget_gib`` on an accelerator, ``host_budget_gib`` on the CPU; 0: from what is free)."""
    try:
        hw = load_preset(spec.preset).hardware
    except InputError:  # a preset gone since the job was queued: the lane's device, the free memory
        return device, 0.0
    device = device or hw.device
    return device, hw.host_budget_gib if str(device).startswith("cpu") else hw.device_budget_gib


def run_tool(store: JobStore, job: Job, every_s: float = 0.5, device: str | None = None) -> None:
    """Run tool job ``job`` on this (worker) thread to its end; every outcome is recorded in the store, none raises.

    ``device``: the lane's (None: the job's preset's); only a learned method uses it.
    """
    spec = job.spec
    assert isinstance(spec, ToolSpec)
    out = output_of(job)
    t0 = time.perf_counter()
    last = [float("-inf")]

    def on_progress(done: int, total: int) -> None:
        if job.cancel_requested.is_set():
            raise Cancelled()
        now = time.perf_counter()
        wake = now - last[0] >= every_s or done >= total  # progress wakes every page: throttled

        def change(j: Job) -> None:
            p = j.progress
            p.step, p.steps, p.frames = done, total, done
            p.s_per_frame = (now - t0) / max(1, done)
            p.eta_s = p.s_per_frame * max(0, total - done)

        if wake:
            last[0] = now
        store.mutate(job, change, notify=wake)

    def start(j: Job) -> None:
        j.message = f"{spec.tool}…"
        j.progress.sections_total, j.progress.sections_done = 1, 0

    store.mutate(job, start)
    try:
        if job.cancel_requested.is_set():
            raise Cancelled()
        sources = [dict(s, sha256=file_sha256(s["file"])) for s in spec.sources]  # what the tool read, as it read it
        learned = spec.settings.get("method") in LEARNED
        where, budget = where_it_runs(spec, device) if learned else (None, 0.0)
        if learned:
            store.mutate(job, lambda j: setattr(j, "device", where))
        result = finish(spec.tool, spec.inputs, out, spec.settings, on_progress, device=where, budget_gib=budget)
        sidecar = out.with_name("video.json")
        atomic_write_json(sidecar, tool_sidecar(spec.tool, spec.settings, sources, result, time.perf_counter() - t0))
    except Cancelled:
        store.update(job, status="cancelled", message=f"{spec.tool} cancelled; nothing was written", finished=time.time())
    except InputError as e:  # an input gone or changed since it was queued
        store.update(job, status="failed", message=str(e), finished=time.time())
    except Exception as e:  # ffmpeg failed, or a bug: this job fails, the worker lives
        log.exception("tool job %s failed", job.id)
        store.update(job, status="failed", message=f"{type(e).__name__}: {e}", finished=time.time())
    else:
        def done(j: Job) -> None:
            j.progress.sections_done = 1
            j.status, j.video, j.sidecar, j.message, j.finished = "done", out, sidecar, "", time.time()
            if out.suffix == ".mp4":  # the page's player plays segments: the result is the one
                j.segments = [out]

        store.mutate(job, done)
    finally:
        if spec.settings.get("method") in LEARNED:  # the model went with finish(): give its memory back
            free_device_memory()

