"""Fetch the weight files a preset needs: sizes first, a disk check, progress, resume.

* :func:`make_plan` lists the files (one ``model_info`` call per repo) and
  what is already here; :func:`check_disk` refuses when they cannot fit.
* :func:`fetch` downloads each missing file into a partial file with a stable
  name (``blobs/<etag>.incomplete`` in the hub cache, ``FILE.incomplete``
  under ``--local-dir``) and continues it with an HTTP Range request after a
  cut connection or in a later run; the file's hash is checked before it is
  put in place. In the cache, ``hf_hub_download`` then links the finished
  blob into the snapshot, so every Hugging Face loader finds it.
* :class:`Downloader` runs one download at a time in a thread for the page.

No torch here: the page imports this module.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from framepack_history.config.presets import ModelSpec
from framepack_history.errors import DownloadError
from framepack_history.hub import files as hub

CHUNK = 1 << 20
HEADROOM = 256 * 1024**2  # bytes left free on the disk after a download
RETRIES = 3  # reconnects per file without progress before giving up (a later run resumes)


@dataclass
class RemoteFile:
    repo: str
    path: str
    size: int
    component: str
    done: bool = False  # already on this machine


@dataclass
class Plan:
    """What a preset needs from the hub, and where it goes."""

    files: list[RemoteFile]
    commits: dict[str, str]  # repo -> commit the listing came from
    target: Path  # the hub cache, or --local-dir
    local_dir: Path | None = None

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def todo(self) -> int:
        return sum(f.size for f in self.files if not f.done)


@dataclass
class Progress:
    """Where a download stands; ``on_progress`` receives it after every chunk."""

    total: int = 0  # bytes still to fetch when the download started
    done: int = 0
    file: str = ""
    file_size: int = 0
    file_done: int = 0
    files_total: int = 0
    files_done: int = 0
    started: float = field(default_factory=time.monotonic)


def human(n: float) -> str:
    """``24.6 GB`` (powers of 1000, as the hub shows sizes)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def cache_dir() -> Path:
    """The hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), as huggingface_hub resolves it."""
    from huggingface_hub import constants  # huggingface_hub: only when the hub is asked

    return Path(constants.HF_HUB_CACHE)


def _hub_components(spec: ModelSpec) -> list[hub.Component]:
    comps = [c for c in hub.components(spec) if c.is_hub]
    local = [c for c in hub.components(spec) if not c.is_hub and not hub.complete(hub.local_folder(c), c)]
    if local:
        raise DownloadError(hub.missing_message(spec, local))
    return comps


def _check_online(spec: ModelSpec, preset: str) -> None:
    if hub.offline():
        raise DownloadError(f"HF_HUB_OFFLINE=1 is set, so nothing is downloaded; unset it and run "
                            f"`{hub.download_command(preset)}` again. Missing: {_names(spec)}")
    if not hub.reachable():
        raise DownloadError(f"cannot reach {hub.endpoint()} (no network?). Missing: {_names(spec)}; "
                            f"run `{hub.download_command(preset)}` when this machine is online, "
                            "or copy the files into the Hugging Face cache")


def _names(spec: ModelSpec) -> str:
    gone = hub.missing(spec)
    return ", ".join(f"{c.name} ({c.source})" for c in gone) or "nothing"


def make_plan(spec: ModelSpec, preset: str, local_dir: str | Path | None = None) -> Plan:
    """List the files ``spec`` needs with their sizes (network: one call per repo)."""
    from huggingface_hub import HfApi  # huggingface_hub: only when the hub is asked
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError  # huggingface_hub: only when the hub is asked

    comps = _hub_components(spec)
    _check_online(spec, preset)
    api = HfApi(endpoint=hub.endpoint())
    files: list[RemoteFile] = []
    commits: dict[str, str] = {}
    target = Path(local_dir).expanduser().resolve() if local_dir else cache_dir()
    for repo in dict.fromkeys(c.source for c in comps):
        try:
            info = api.model_info(repo, files_metadata=True, timeout=30)
        except RepositoryNotFoundError:
            raise DownloadError(f"{repo} does not exist on {hub.endpoint()} (or needs a login: `hf auth login`)") from None
        except (HfHubHTTPError, OSError) as e:
            raise DownloadError(f"could not list {repo} on {hub.endpoint()}: {e}") from None
        commits[repo] = info.sha
        for c in (c for c in comps if c.source == repo):
            mine = [s for s in info.siblings or [] if c.wants(s.rfilename)]
            if not any(s.rfilename.rpartition("/")[2] == c.marker for s in mine):
                raise DownloadError(f"{repo} has no {c.subfolder + '/' if c.subfolder else ''}{c.marker}: "
                                    f"is it the repo the preset means?")
            for s in mine:
                size = s.size if s.size is not None else (s.lfs.size if s.lfs else 0)
                files.append(RemoteFile(repo, s.rfilename, int(size), c.name))
    plan = Plan(files, commits, target, Path(target) if local_dir else None)
    for f in plan.files:
        f.done = _present(plan, f)
    return plan


def _present(plan: Plan, f: RemoteFile) -> bool:
    if plan.local_dir is not None:
        dest = plan.local_dir / f.repo / f.path
        return dest.is_file() and dest.stat().st_size == f.size
    from huggingface_hub import try_to_load_from_cache  # huggingface_hub: only when the hub is asked

    return isinstance(try_to_load_from_cache(f.repo, f.path, cache_dir=str(plan.target), revision=plan.commits[f.repo]), str)


def free_space(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk(plan: Plan) -> None:
    """Refuse before the first byte when the files cannot fit."""
    free = free_space(plan.target)
    if plan.todo + HEADROOM > free:
        raise DownloadError(
            f"not enough disk space in {plan.target}: the download needs {human(plan.todo)} "
            f"(+{human(HEADROOM)} to spare) and {human(free)} is free; free some space, or download elsewhere "
            "with --local-dir DIR (or set HF_HOME to a larger disk)")


# ------------------------------------------------------------------ fetching
def _verify(path: Path, etag: str, size: int) -> bool:
    """Size, then the hash the hub names the file by: sha256 (LFS) or the git blob sha1; other etags pass."""
    if path.stat().st_size != size:
        return False
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        h = hashlib.sha256()
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        h = hashlib.sha1(f"blob {size}\0".encode())
    else:
        return True
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * CHUNK):
            h.update(chunk)
    return h.hexdigest() == etag


def _fetch_bytes(url: str, part: Path, size: int, headers: dict[str, str], on_bytes: Callable[[int], None],
                 cancel: threading.Event | None = None) -> None:
    """Fill ``part`` up to ``size`` bytes, continuing from what it holds (HTTP Range); reconnects on a cut."""
    part.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            on_bytes(-have)
            have = 0
        if have == size:
            return
        req = urllib.request.Request(url, headers={**headers, **({"Range": f"bytes={have}-"} if have else {})})
        got = 0
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                if have and r.status != 206:  # the server ignored the range: start over
                    part.unlink()
                    on_bytes(-have)
                    have = 0
                with open(part, "ab") as out:
                    while chunk := r.read(CHUNK):
                        out.write(chunk)
                        got += len(chunk)
                        on_bytes(len(chunk))
                        if cancel is not None and cancel.is_set():
                            raise DownloadError("cancelled; run the download again to continue where it stopped")
        except urllib.error.HTTPError as e:
            if e.code not in (408, 429, 500, 502, 503, 504):
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            failures += 1
            err: Exception = e
        except (OSError, http.client.HTTPException) as e:  # a cut connection, a timeout, a reset
            failures = 0 if got else failures + 1
            err = e
        else:
            if have + got < size:
                failures = 0 if got else failures + 1
                err = ConnectionError("the connection closed early")
            else:
                continue
        if failures > RETRIES:
            raise DownloadError(f"download of {part.name} interrupted ({err}); "
                                f"{human(part.stat().st_size if part.exists() else 0)} of {human(size)} kept: "
                                "run the same command again to resume")
        time.sleep(min(0.5 * 2**failures, 8))


def _auth_headers(url: str) -> dict[str, str]:
    """The hub's headers (token, user agent), without the token for a host other than the hub's."""
    from huggingface_hub.utils import build_hf_headers  # huggingface_hub: only when the hub is asked

    headers = dict(build_hf_headers())
    if urlparse(url).hostname != urlparse(hub.endpoint()).hostname:
        headers.pop("authorization", None)
        headers.pop("Authorization", None)
    headers["Accept-Encoding"] = "identity"
    return headers


def fetch_file(plan: Plan, f: RemoteFile, on_bytes: Callable[[int], None], cancel: threading.Event | None = None) -> Path:
    """Download one file of ``plan`` with resume; returns its final path."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url  # huggingface_hub: only when the hub is asked

    url = hf_hub_url(f.repo, f.path, revision=plan.commits[f.repo], endpoint=hub.endpoint())
    try:
        meta = get_hf_file_metadata(url, endpoint=hub.endpoint())
    except Exception as e:  # noqa: BLE001 (network and HTTP errors alike)
        raise DownloadError(f"{f.repo}/{f.path}: {e}") from None
    etag = meta.etag or ""
    size = meta.size if meta.size is not None else f.size
    if plan.local_dir is not None:
        dest = plan.local_dir / f.repo / f.path
        part = dest.with_name(dest.name + ".incomplete")
    else:
        from huggingface_hub.file_download import repo_folder_name  # huggingface_hub: only when the hub is asked

        dest = plan.target / repo_folder_name(repo_id=f.repo, repo_type="model") / "blobs" / etag
        part = dest.with_name(etag + ".incomplete")
    if not dest.is_file():
        lock = _Lock(part.with_name(part.name + ".lock"))
        with lock:
            _fetch_bytes(meta.location or url, part, size, _auth_headers(meta.location or url), on_bytes, cancel)
            if not _verify(part, etag, size):
                part.unlink()
                raise DownloadError(f"{f.repo}/{f.path}: the downloaded bytes do not match the hub's hash; "
                                    "the partial file was removed, run the command again")
            os.replace(part, dest)
    if plan.local_dir is not None:
        return dest
    # The blob is in place: this links it into snapshots/<commit>/ and records refs/main, downloading nothing.
    return Path(hf_hub_download(f.repo, f.path, cache_dir=str(plan.target), endpoint=hub.endpoint()))


class _Lock:
    """One process per partial file (the page and the CLI may both be asked)."""

    def __init__(self, path: Path) -> None:
        from filelock import FileLock, Timeout  # filelock: only while a download runs

        self._lock, self._timeout, self.path = FileLock(str(path)), Timeout, path

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except self._timeout:
            raise DownloadError(f"{self.path.stem} is being downloaded by another process") from None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def fetch(plan: Plan, on_progress: Callable[[Progress], None] | None = None,
          cancel: threading.Event | None = None) -> Progress:
    """Download every file of ``plan`` that is not here yet (call :func:`check_disk` first)."""
    todo = [f for f in plan.files if not f.done]
    prog = Progress(total=sum(f.size for f in todo), files_total=len(todo))
    for f in todo:
        prog.file, prog.file_size, prog.file_done = f"{f.repo}/{f.path}", f.size, 0

        def on_bytes(n: int) -> None:
            prog.done += n
            prog.file_done += n
            if on_progress is not None:
                on_progress(prog)

        fetch_file(plan, f, on_bytes, cancel)
        prog.done += f.size - prog.file_done  # a file found complete (another process) counts as done
        prog.file_done = f.size
        f.done = True
        prog.files_done += 1
        if on_progress is not None:
            on_progress(prog)
    return prog


def local_preset(preset_path: str | Path, plan: Plan) -> Path:
    """A copy of the preset that reads its weights from ``plan.local_dir`` (written beside them)."""
    text = Path(preset_path).read_text(encoding="utf-8")
    for repo in plan.commits:
        text = text.replace(f'"{repo}"', f'"{(plan.local_dir / repo).as_posix()}"')
    out = plan.local_dir / Path(preset_path).name
    out.write_text(text, encoding="utf-8")
    return out


# ------------------------------------------------------------------ the page
@dataclass
class DownloadState:
    """What the page shows for one preset's download."""

    status: str = "idle"  # idle | running | done | failed
    done: int = 0
    total: int = 0
    file: str = ""
    files_done: int = 0
    files_total: int = 0
    message: str = ""


class Downloader:
    """One download at a time, in its own thread; the page starts it and polls :meth:`state`.

    Not the worker: a download moves bytes to the disk and never touches the device.
    """

    PLAN_TTL_S = 300.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, DownloadState] = {}
        self._plans: dict[tuple[str, str], tuple[float, Plan]] = {}
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

    def plan(self, spec: ModelSpec, preset: str, fresh: bool = False) -> Plan:
        """The preset's file list and sizes (cached a few minutes: the page asks on every preset change)."""
        key = (preset, str(cache_dir()))
        with self._lock:
            hit = self._plans.get(key)
        if hit and not fresh and time.monotonic() - hit[0] < self.PLAN_TTL_S:
            return hit[1]
        plan = make_plan(spec, preset)
        with self._lock:
            self._plans[key] = (time.monotonic(), plan)
        return plan

    def state(self, preset: str) -> DownloadState:
        with self._lock:
            s = self._states.get(preset) or DownloadState()
            return DownloadState(**vars(s))

    def busy(self) -> str | None:
        """The preset being downloaded, if any."""
        with self._lock:
            return next((p for p, s in self._states.items() if s.status == "running"), None)

    def start(self, spec: ModelSpec, preset: str) -> DownloadState:
        """Start downloading ``preset``'s missing files; a second preset waits for the first."""
        with self._lock:
            running = next((p for p, s in self._states.items() if s.status == "running"), None)
            if running == preset:
                return DownloadState(**vars(self._states[preset]))
            if running is not None:
                raise DownloadError(f"{running} is downloading; wait for it to finish")
            self._states[preset] = DownloadState(status="running", message="listing files")
            self._cancel.clear()
            self._thread = threading.Thread(target=self._run, args=(spec, preset), name="framepack-download", daemon=True)
            self._thread.start()
        return self.state(preset)

    def cancel(self) -> None:
        self._cancel.set()

    def _set(self, preset: str, **changes: object) -> None:
        with self._lock:
            s = self._states.setdefault(preset, DownloadState())
            for k, v in changes.items():
                setattr(s, k, v)

    def _run(self, spec: ModelSpec, preset: str) -> None:
        try:
            plan = self.plan(spec, preset, fresh=True)
            check_disk(plan)
            self._set(preset, total=plan.todo, files_total=sum(not f.done for f in plan.files), message="")

            def on_progress(p: Progress) -> None:
                self._set(preset, done=p.done, file=p.file, files_done=p.files_done)

            fetch(plan, on_progress, self._cancel)
        except DownloadError as e:
            self._set(preset, status="failed", message=str(e))
        except Exception as e:  # noqa: BLE001 (the page must hear about anything)
            self._set(preset, status="failed", message=f"{type(e).__name__}: {e}")
        else:
            self._set(preset, status="done", message="")
