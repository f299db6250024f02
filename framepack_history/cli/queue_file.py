"""``run-queue FILE``: a saved queue (:mod:`framepack_history.jobs.saved_queue`) run headless, in order.

Each job gets a job folder under the run's folder (``--out``, default ``FILE`` without its suffix plus ``.run``)
and checkpoints every section there; ``run-queue.json`` in that folder records each job's outcome after it
ends. Run again after a kill, the same command skips the finished jobs and resumes the unfinished one from
its last finished section; failed jobs are tried again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from framepack_history.config.fields import resolve
from framepack_history.config.presets import Preset, load_preset
from framepack_history.errors import InputError, OutOfMemoryFailure, WeightsNotFoundError
from framepack_history.fsio import atomic_write_json
from framepack_history.jobs.admission import admit_request, check_kept_keyframes, keep_inputs
from framepack_history.jobs.checkpoint import JobDir, Resumed
from framepack_history.jobs.saved_queue import read_queue

STATE = "run-queue.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run-queue", help="run a saved queue (the Queue tab's Export) headless, resumable",
                       description="Run every job of a saved queue in order, with progress lines and a summary. "
                                   "Run the same command again after a kill: finished jobs are skipped and the "
                                   "unfinished one resumes from its last finished section.")
    r.add_argument("file", metavar="FILE", help="the saved queue (.zip)")
    r.add_argument("--out", help="the run's folder: job folders, videos and run-queue.json (default: FILE.run beside it)")
    r.add_argument("--device", help="override the presets' device (cpu, cuda, cuda:1 ...)")
    r.add_argument("--quiet", action="store_true", help="no per-section progress lines")


def run(args: argparse.Namespace) -> int:
    from framepack_history.generation.loading import check_device  # torch: kept off the page's import path

    src = Path(args.file)
    if not src.is_file():
        raise InputError("FILE", f"{args.file} is not a file")
    out = Path(args.out) if args.out else src.with_name(src.stem + ".run")
    if out.exists() and not out.is_dir():
        raise InputError("--out", f"{out} is a file, not a folder")
    device = str(check_device(args.device, "--device")) if args.device else None
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    state_path = out / STATE
    state = _read_state(state_path, digest)
    saved = read_queue(src, out / "inputs")  # checked (format, paths, hashes) before anything runs
    total = len(saved)
    print(f"{src.name}: {total} job{'s' * (total != 1)}; run folder {out}", flush=True)
    pipelines: dict[Any, Any] = {}
    for n, job in enumerate(saved, 1):
        key = str(n)
        name = f"[{n}/{total}] {job.id or 'job'}"
        done = state["jobs"].get(key, {})
        if done.get("status") == "done" and Path(done.get("video", "")).is_file():
            print(f"{name}: finished in an earlier run ({done['video']})", flush=True)
            continue
        started = time.monotonic()
        try:
            video = _run_one(job, n, out, device, pipelines, name, args.quiet)
            result = {"id": job.id, "status": "done", "video": str(video), "seconds": round(time.monotonic() - started, 2)}
            print(f"{name}: done -> {video}", flush=True)
        except KeyboardInterrupt:
            print(f"\n{name}: interrupted; run the same command again to go on from its last finished section",
                  file=sys.stderr)
            return 130
        except InputError as e:
            result = {"id": job.id, "status": "failed", "message": f"{e.field}: {e.message}"}
        except (OutOfMemoryFailure, WeightsNotFoundError) as e:
            result = {"id": job.id, "status": "failed", "message": str(e)}
        except Exception as e:  # one bad job must not stop the queue; its job folder says "failed" too
            result = {"id": job.id, "status": "failed", "message": f"{type(e).__name__}: {e}"}
        if result["status"] == "failed":
            print(f"{name}: failed: {result['message']}", flush=True)
        state["jobs"][key] = result
        atomic_write_json(state_path, state)
    return _summary(state, total)


def _read_state(path: Path, digest: str) -> dict[str, Any]:
    """The run so far (a fresh one when there is none); a run of another queue file is refused."""
    if not path.is_file():
        return {"queue_sha256": digest, "jobs": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError("--out", f"{path} is unreadable ({type(e).__name__}); give another --out") from None
    if not isinstance(state, dict) or state.get("queue_sha256") != digest or not isinstance(state.get("jobs"), dict):
        raise InputError("--out", f"{path.parent} holds the run of another queue file; give another --out")
    return state


def _run_one(job: Any, n: int, out: Path, device: str | None, pipelines: dict, name: str, quiet: bool) -> Path:
    """One job in its own job folder: resumed from its checkpoint when it has one, else admitted and started."""
    from framepack_history.jobs.render import render  # torch: kept off the page's import path

    jd = JobDir(out / f"job-{n:02d}")
    if jd.exists():
        info = jd.info()
        if jd.status == "done" and info.out.is_file():
            return info.out
        if jd.owner_alive():
            raise InputError("job", f"{jd.root} is being run by another process")
        check_kept_keyframes(info.request, "job")
        request, preset, rate, video, ref = info.request, info.preset, info.encoder_rate, info.out, info.preset_ref
    else:
        spec = job.spec
        preset, request, rate, ref = load_preset(spec.preset), spec.request, spec.encoder_rate, spec.preset
        admit_request(request, preset, rate)
        video = out / f"{n:02d}-{job.id or 'job'}.mp4"
        keep_inputs(request, jd.root / "inputs")
        jd.create(request, preset, out=video, preset_ref=ref, encoder_rate=rate, status="running")
    if device:
        preset.hardware.device = device
    pipeline = _pipeline(pipelines, preset, request, rate)

    def on_event(ev: Any) -> None:
        if quiet:
            return
        if isinstance(ev, Resumed) and ev.sections_done:
            print(f"{name}: resuming after section {ev.sections_done} of {ev.total}", flush=True)
        elif type(ev).__name__ == "SectionDone":
            print(f"{name}: section {ev.index + 1}/{ev.total} ({ev.history_tokens} history tokens)", flush=True)

    video.parent.mkdir(parents=True, exist_ok=True)
    render(pipeline, request, video, jd.info().segments_dir, on_event=on_event, job=jd)
    return video


def _pipeline(cache: dict, preset: Preset, request: Any, rate: str | None) -> Any:
    """A pipeline per preset, rate and history mode, kept for the next job that needs the same."""
    from framepack_history.generation.loading import build_encoder, load_for_device  # torch: kept off the page's import path
    from framepack_history.generation.pipeline import Pipeline  # torch: kept off the page's import path

    mode = resolve(request, preset).history_mode
    key = (repr(preset.to_dict()), rate, mode)
    if key not in cache:
        cache.clear()  # one model at a time: the next job's may not fit beside it
        try:
            backbone, memory = load_for_device(preset)
        except WeightsNotFoundError as e:
            raise InputError("preset", str(e)) from None
        encoder = build_encoder(preset.model, backbone, rate) if mode == "encoder" else None
        cache[key] = Pipeline(backbone, encoder, preset, memory=memory)
    return cache[key]


def _summary(state: dict[str, Any], total: int) -> int:
    """Print each job's outcome; exit status 0 when every job is done, else 1."""
    rows = [state["jobs"].get(str(n), {"status": "not run"}) for n in range(1, total + 1)]
    done = sum(r["status"] == "done" for r in rows)
    failed = [(n, r) for n, r in enumerate(rows, 1) if r["status"] != "done"]
    print(f"summary: {done} done, {len(failed)} failed")
    for n, r in enumerate(rows, 1):
        what = r.get("video") if r["status"] == "done" else r.get("message", "")
        print(f"  {n:>3} {r.get('id') or 'job'}: {r['status']}  {what}")
    return 0 if not failed else 1
