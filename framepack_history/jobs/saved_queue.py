"""A saved queue: jobs' requests and their input files in one zip, to run in another app or headless.

The file is a zip holding ``queue.json`` (the manifest: :data:`FORMAT`, and per job its preset, encoder rate,
request and the files it names) and each input file under ``files/`` (start images, videos to continue, end
images, keyframe images). Nothing is pickled. Reading one (:func:`read_queue`) refuses anything that is not
this format: an unknown key or request field, a path that is absolute or leaves the archive (zip slip), a
member the manifest does not list, a listed file that is missing or whose SHA-256 differs, or more bytes than
:data:`MAX_BYTES`. LoRA files are not carried: a request names them with their SHA-256, which must match
the file of that name on the machine that runs it.

No torch here: the page imports this.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import posixpath
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.fsio import atomic_path, file_sha256
from framepack_history.jobs.admission import admit_request
from framepack_history.jobs.store import Job, JobSpec

FORMAT = "framepack-history-queue"
VERSION = 1
MANIFEST = "queue.json"
#: the most the files of one saved queue may hold, unpacked (a zip bomb is refused before it fills a disk)
MAX_BYTES = 4 * 2**30
MAX_JOBS = 256
FIELD = "queue file"  # what an error about the file names
_TOP_KEYS = {"format", "version", "created", "jobs"}
_JOB_KEYS = {"id", "preset", "encoder_rate", "request", "files", "sweep"}
_FILE_KEYS = {"field", "path", "sha256", "name"}
_REQUEST_FIELDS = {f.name for f in dataclasses.fields(GenerationRequest)}
_SINGLE_FILES = ("image", "continue_video", "end_image")


@dataclass
class SavedJob:
    """One job of a saved queue: its spec (file paths pointing where the files were unpacked) and its old id."""

    id: str
    spec: JobSpec


# ------------------------------------------------------------------ writing
def exportable(worker: Any, unfinished: bool = False, visible: Any = None) -> list[tuple[str, JobSpec]]:
    """The jobs to save, in queue order: the queued ones; with ``unfinished`` also those running now and
    those a dead process left unfinished (they start again from the beginning where the file is run).

    ``visible(owner)``: whether the caller may see a job of ``owner`` (all when None).
    """
    may = visible or (lambda owner: True)
    by_id = {j.id: j for j in worker.store.jobs()}
    picked: list[tuple[str, JobSpec]] = []
    for job_id in worker.queued():
        job = by_id.get(job_id)
        if job is not None and _generation(job) and may(job.spec.owner):
            picked.append((job.id, job.spec))
    if unfinished:
        for job in by_id.values():
            if job.status == "running" and _generation(job) and may(job.spec.owner):
                picked.append((job.id, job.spec))
        for row in worker.interrupted():
            if not may(row.get("owner")):
                continue
            try:
                info = worker.job_dir(row["id"]).info()
            except InputError:
                continue
            picked.append((row["id"], JobSpec(info.request, info.preset_ref, info.encoder_rate, row.get("owner"),
                                              info.extra.get("sweep"))))
    return picked


def _generation(job: Job) -> bool:
    """A generation job (a finishing tool's job has sources, not a request to save)."""
    return type(job.spec) is JobSpec


def write_queue(jobs: list[tuple[str, JobSpec]], path: str | Path) -> Path:
    """Write ``jobs`` (id, spec) and their input files to the zip ``path`` (atomically); :class:`InputError` if none."""
    if not jobs:
        raise InputError("queue", "no queued job to save")
    entries, members = [], []
    for n, (job_id, spec) in enumerate(jobs, 1):
        request = copy.deepcopy(spec.request)
        files = []
        for field, src in _files_of(request):
            src_path = Path(src)
            if not src_path.is_file():
                raise InputError("job", f"{job_id}: its {field.replace('_', ' ')} {src_path.name} is gone")
            arc = f"files/{n}/{_safe_name(field)}{src_path.suffix.lower()}"
            files.append({"field": field, "path": arc, "sha256": file_sha256(src_path), "name": src_path.name})
            members.append((arc, src_path))
            _point(request, field, arc)
        data = request.to_dict()
        if data.get("borrow"):  # the borrowed job by its id: its folder is this server's
            data["borrow"] = Path(str(data["borrow"])).name
        if data.get("loras"):  # a path is this machine's: the file is found by name and checked by its hash
            data["loras"] = [{k: v for k, v in e.items() if k != "path"} for e in data["loras"]]
        entries.append({"id": job_id, "preset": spec.preset, "encoder_rate": spec.encoder_rate, "request": data,
                        "files": files, "sweep": spec.sweep})
    manifest = {"format": FORMAT, "version": VERSION, "created": time.time(), "jobs": entries}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, keep_suffix=True) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
        for arc, src_path in members:
            z.write(src_path, arc)
    return path


def _files_of(request: GenerationRequest) -> list[tuple[str, str]]:
    """(field, path) of every input file the request names: ``image``, ..., ``keyframes.0``, ..."""
    out = [(name, getattr(request, name)) for name in _SINGLE_FILES if getattr(request, name)]
    out += [(f"keyframes.{i}", kf["image"]) for i, kf in enumerate(request.keyframes or ())]
    return out


def _point(request: GenerationRequest, field: str, path: str) -> None:
    """Set the file of ``field`` (as :func:`_files_of` names it) to ``path``."""
    if field.startswith("keyframes."):
        request.keyframes[int(field.split(".")[1])]["image"] = path
    else:
        setattr(request, field, path)


def _safe_name(field: str) -> str:
    return field.replace(".", "_")



# ------------------------------------------------------------------ reading
def read_queue(path: str | Path, dest: str | Path) -> list[SavedJob]:
    """Check the saved queue ``path`` and unpack its files into ``dest``; the jobs with paths into ``dest``.

    :class:`InputError` (naming the job and what is wrong) for anything that is not this format; nothing is
    unpacked then, as every check runs before the first file is written.
    """
    path, dest = Path(path), Path(dest)
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(FIELD, f"{path.name} is not a saved queue (not a zip file: {e})") from None
    with z:
        infos = {i.filename: i for i in z.infolist()}
        if MANIFEST not in infos:
            raise InputError(FIELD, f"{path.name} has no {MANIFEST}: not a saved queue")
        if infos[MANIFEST].file_size > 16 * 2**20:
            raise InputError(FIELD, f"{MANIFEST} is {infos[MANIFEST].file_size} bytes; not a saved queue")
        try:
            manifest = json.loads(z.read(MANIFEST).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise InputError(FIELD, f"{MANIFEST} is not JSON ({e})") from None
        jobs = _check_manifest(manifest)
        listed = {f["path"]: f for j in jobs for f in j["files"]}
        for name, info in infos.items():
            if name == MANIFEST:
                continue
            if name.endswith("/") and info.file_size == 0 and any(p.startswith(name) for p in listed):
                continue  # a folder entry some zip tools add
            _check_member(name)
            if name not in listed:
                raise InputError(FIELD, f"{name!r} is in the archive but the manifest does not list it")
        total = 0
        for name in listed:
            if name not in infos:
                raise InputError(FIELD, f"{name!r} is listed in the manifest but missing from the archive")
            total += infos[name].file_size
        if total > MAX_BYTES:
            raise InputError(FIELD, f"its files unpack to {total} bytes; the limit is {MAX_BYTES}")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for name, entry in listed.items():
            target = (root / name).resolve()
            if not target.is_relative_to(root):  # _check_member refused this already; kept as the last guard
                raise InputError(FIELD, f"{name!r} leaves the archive")
            _unpack(z, infos[name], target, entry["sha256"])
    return [_saved_job(j, root) for j in jobs]


def _check_manifest(manifest: Any) -> list[dict[str, Any]]:
    if not isinstance(manifest, dict):
        raise InputError(FIELD, f"{MANIFEST} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise InputError(FIELD, f"format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise InputError(FIELD, f"version {manifest.get('version')!r} is not {VERSION} (saved by another version?)")
    if unknown := set(manifest) - _TOP_KEYS:
        raise InputError(FIELD, f"unknown key {sorted(unknown)[0]!r} in {MANIFEST}")
    jobs = manifest.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise InputError(FIELD, "lists no jobs")
    if len(jobs) > MAX_JOBS:
        raise InputError(FIELD, f"lists {len(jobs)} jobs; at most {MAX_JOBS}")
    seen: set[str] = set()
    for n, job in enumerate(jobs, 1):
        where = f"job {n}"
        if not isinstance(job, dict):
            raise InputError(FIELD, f"{where} is not an object")
        if unknown := set(job) - _JOB_KEYS:
            raise InputError(FIELD, f"{where}: unknown key {sorted(unknown)[0]!r}")
        if not isinstance(job.get("preset"), str) or not job["preset"]:
            raise InputError(FIELD, f"{where}: no preset")
        if job.get("encoder_rate") is not None and not isinstance(job["encoder_rate"], str):
            raise InputError(FIELD, f"{where}: encoder_rate must be text")
        if not isinstance(job.get("id", ""), str) or job.get("sweep") is not None and not isinstance(job["sweep"], dict):
            raise InputError(FIELD, f"{where}: id must be text and sweep an object")
        request = job.get("request")
        if not isinstance(request, dict):
            raise InputError(FIELD, f"{where}: request must be an object")
        if unknown := set(request) - _REQUEST_FIELDS:
            raise InputError(FIELD, f"{where}: unknown request field {sorted(unknown)[0]!r}")
        files = job.get("files", [])
        if not isinstance(files, list):
            raise InputError(FIELD, f"{where}: files must be a list")
        named = _named_files(request, where)
        for f in files:
            if not isinstance(f, dict) or set(f) - _FILE_KEYS or not {"field", "path", "sha256"} <= set(f):
                raise InputError(FIELD, f"{where}: each file is {{field, path, sha256, name}} (got {f!r:.80})")
            _check_member(f["path"])
            if f["path"] in seen:
                raise InputError(FIELD, f"{where}: {f['path']!r} is listed twice")
            seen.add(f["path"])
            if not isinstance(f["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", f["sha256"]):
                raise InputError(FIELD, f"{where}: {f['path']!r} has no SHA-256")
            if named.get(f["field"]) != f["path"]:
                raise InputError(FIELD, f"{where}: file {f['path']!r} is not the request's {f['field']!r}")
        if set(named) != {f["field"] for f in files}:
            missing = sorted(set(named) - {f["field"] for f in files})[0]
            raise InputError(FIELD, f"{where}: the request's {missing} names a file the archive does not carry")
    return jobs


def _named_files(request: dict[str, Any], where: str) -> dict[str, str]:
    """The files a saved request names, by field; each must be an archive path (checked as members are)."""
    out = {}
    for name in _SINGLE_FILES:
        if request.get(name) is not None:
            out[name] = request[name]
    keyframes = request.get("keyframes")
    if keyframes is not None:
        if not isinstance(keyframes, list):
            raise InputError(FIELD, f"{where}: keyframes must be a list")
        for i, kf in enumerate(keyframes):
            if not isinstance(kf, dict) or "image" not in kf:
                raise InputError(FIELD, f"{where}: keyframe {i + 1} has no image")
            out[f"keyframes.{i}"] = kf["image"]
    for field, value in out.items():
        if not isinstance(value, str):
            raise InputError(FIELD, f"{where}: {field} must be a file in the archive")
        _check_member(value)
    return out


def _check_member(name: Any) -> None:
    """A relative POSIX path under ``files/`` with no ``..``, no drive and no backslash: nothing leaves the folder."""
    if not isinstance(name, str) or not name:
        raise InputError(FIELD, f"{name!r} is not a file name")
    norm = posixpath.normpath(name)
    if ("\\" in name or ":" in name or name.startswith("/") or norm != name or norm.startswith("..")
            or ".." in name.split("/") or not name.startswith("files/") or "\x00" in name):
        raise InputError(FIELD, f"{name!r} is not a path inside the archive's files/ (it could leave the folder)")


def _unpack(z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, sha256: str) -> None:
    """Copy one member to ``target``, counting its bytes (a lying header is caught) and checking its SHA-256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    written = 0
    with z.open(info) as src, open(target, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            written += len(block)
            if written > info.file_size:
                raise InputError(FIELD, f"{info.filename!r} holds more than its header says")
            h.update(block)
            dst.write(block)
    if h.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise InputError(FIELD, f"{info.filename!r}: its SHA-256 differs from the manifest's (damaged or altered)")


def _saved_job(job: dict[str, Any], root: Path) -> SavedJob:
    data = copy.deepcopy(job["request"])
    try:
        request = GenerationRequest(**data)
    except TypeError as e:
        raise InputError(FIELD, f"job {job.get('id') or '?'}: {e}") from None
    for f in job["files"]:
        _point(request, f["field"], str(root / f["path"]))
        if f["field"].startswith("keyframes."):
            kf = request.keyframes[int(f["field"].split(".")[1])]
            kf["sha256"] = f["sha256"]
            if f.get("name"):
                kf["name"] = kf.get("name") or f["name"]
    return SavedJob(str(job.get("id") or ""), JobSpec(request, job["preset"], job.get("encoder_rate"),
                                                      sweep=job.get("sweep")))


def import_queue(worker: Any, path: str | Path, owner: str | None = None,
                 visible: Callable[[str | None], bool] | None = None) -> list[Job]:
    """Queue the saved queue's jobs on ``worker`` (a :class:`~.worker.Worker`) in order; all or none.

    Every job is admitted before any is queued (a refusal names the job); a job the worker refuses after
    others were queued cancels those it queued. Inputs are unpacked under the worker's jobs folder and copied
    into each job's folder as a page upload is. A job that borrows a history names a job id, which must be one
    ``visible(its owner)`` allows (all when None).
    """
    free = worker.queue.max_size - len(worker.queue.ids())
    dest = _free(worker.jobs_dir / "imports" / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(path).stem[:40]}")
    try:  # each job copies its inputs into its own folder when queued: the unpacked files are not needed after
        return _queue_all(worker, read_queue(path, dest), free, owner, visible)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _queue_all(worker: Any, saved: list[SavedJob], free: int, owner: str | None,
               visible: Callable[[str | None], bool] | None) -> list[Job]:
    if len(saved) > free:
        raise InputError("queue", f"the saved queue has {len(saved)} jobs and the queue has room for {free}")
    for n, s in enumerate(saved, 1):
        try:
            if s.spec.request.borrow is not None:  # a job id, resolved by the worker as a client's is
                job_id = str(s.spec.request.borrow)
                if visible is not None and not visible(worker.owner_of(job_id)):
                    raise InputError("--borrow", f"no job with id {job_id!r}")
                worker._borrow_folder(s.spec.request)
            admit_request(copy.deepcopy(s.spec.request), load_preset(s.spec.preset), s.spec.encoder_rate)
        except InputError as e:
            raise InputError(e.field, f"job {n} ({s.id or 'no id'}): {e.message}") from None
    jobs: list[Job] = []
    try:
        for s in saved:
            s.spec.owner = owner
            jobs.append(worker.submit(s.spec))
    except InputError as e:
        for job in jobs:
            worker.cancel(job.id)
        raise InputError(e.field, f"job {len(jobs) + 1}: {e.message} (nothing of the saved queue was queued)") from None
    return jobs


def _free(path: Path) -> Path:
    k, found = 1, path
    while found.exists():
        k += 1
        found = path.with_name(f"{path.name}-{k}")
    return found

