"""Jobs and the server-side job store.

A :class:`Job` is everything a page (or an API client) needs to show a
generation: status, progress, the latest preview, the finished segments and,
at the end, the video and its sidecar. The :class:`JobStore` keeps jobs on
the server, keyed by id, so a reloaded page or a second tab re-attaches to
the same state; every change bumps a version and wakes whoever waits for one.

No torch here: the page imports this.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError

TERMINAL = ("done", "cancelled", "failed")
STATUSES = ("queued", "running", *TERMINAL)


@dataclass
class JobSpec:
    """What to run: a request, the preset (name or .toml path) and an encoder rate."""

    request: GenerationRequest
    preset: str = "toy-cpu"
    encoder_rate: str | None = None  # None = the preset's
    owner: str | None = None  # the logged-in user who queued it (None without --auth)
    #: a sweep's cell (:mod:`.sweep`): its sweep id, index, labels and caption; None for a job of its own
    sweep: dict[str, Any] | None = None


@dataclass
class Progress:
    sections_done: int = 0
    sections_total: int = 0
    section: int = 0  # index of the section being denoised
    step: int = 0
    steps: int = 0
    frames: int = 0  # generated frames so far (context frames excluded)
    history_tokens: int = 0
    eta_s: float | None = None
    s_per_frame: float | None = None


@dataclass
class Job:
    id: str
    spec: JobSpec
    folder: Path
    created: float = field(default_factory=time.time)
    status: str = "queued"
    message: str = ""
    progress: Progress = field(default_factory=Progress)
    preview: np.ndarray | None = None  # uint8 [H, W, 3]
    preview_version: int = 0
    segments: list[Path] = field(default_factory=list)
    video: Path | None = None
    sidecar: Path | None = None
    started: float | None = None
    finished: float | None = None
    timings: dict[str, float] = field(default_factory=dict)  # load_s, first_segment_s (from start)
    device: str | None = None  # where it runs (or ran): set when a worker takes it
    worker: int | None = None  # which worker (1, 2, ...) took it
    version: int = 0
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    #: a storyboard edit posted by a page, taken by the worker before its next section (see .steering)
    steer_pending: str | None = None
    #: set by the worker as it starts the last section: no later section would follow an edit
    steer_closed: bool = False
    #: the edits that took effect: ``{"section", "prompt", "time"}``
    steers: list[dict] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view (the ``status`` API and the page read this)."""
        req = self.spec.request
        return {
            "id": self.id,
            "status": self.status,
            "message": self.message,
            "prompt": req.prompt,
            "seconds": req.seconds,
            "seed": req.seed,
            "preset": self.spec.preset,
            "encoder_rate": self.spec.encoder_rate,
            "progress": dataclasses.asdict(self.progress),
            "segments": [str(p) for p in self.segments],
            "video": str(self.video) if self.video else None,
            "sidecar": str(self.sidecar) if self.sidecar else None,
            "folder": str(self.folder),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "timings": dict(self.timings),
            "version": self.version,
            "owner": self.spec.owner,
            "device": self.device,
            "worker": self.worker,
            "steers": [dict(s) for s in self.steers],
            "steer_pending": self.steer_pending,
            "sweep": dict(self.spec.sweep) if self.spec.sweep else None,
        }


class JobStore:
    """All jobs of this server, by id; thread-safe; change notifications."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._cond = threading.Condition()
        self.version = 0  # bumps on any change of any job

    def add(self, job: Job) -> Job:
        with self._cond:
            self._jobs[job.id] = job
            self._bump(job)
        return job

    def get(self, job_id: str) -> Job:
        with self._cond:
            job = self._jobs.get(job_id)
        if job is None:
            raise InputError("job", f"no job with id {job_id!r}")
        return job

    def jobs(self) -> list[Job]:
        """All jobs, oldest first."""
        with self._cond:
            return list(self._jobs.values())

    def current(self) -> Job | None:
        """The job a fresh page should show: the running one, else the newest."""
        jobs = self.jobs()
        running = [j for j in jobs if j.status == "running"]
        return running[0] if running else (jobs[-1] if jobs else None)

    def update(self, job: Job, **changes: Any) -> None:
        """Change fields of ``job`` atomically and wake every waiter."""
        with self._cond:
            for key, value in changes.items():
                setattr(job, key, value)
            self._bump(job)

    def mutate(self, job: Job, fn: Callable[[Job], None], notify: bool = True) -> None:
        """Run ``fn(job)`` under the store's lock (for nested fields), then notify.

        ``notify=False`` records the change without waking anyone: per-step
        progress would otherwise wake every page hundreds of times a second.
        """
        with self._cond:
            fn(job)
            if notify:
                self._bump(job)

    def _bump(self, job: Job) -> None:
        job.version += 1
        self.version += 1
        self._cond.notify_all()

    def wait(self, job_id: str, seen_version: int, timeout: float) -> Job:
        """Block until the job's version passes ``seen_version`` (or ``timeout`` s)."""
        job = self.get(job_id)
        with self._cond:
            self._cond.wait_for(lambda: job.version > seen_version, timeout)
        return job

    def wait_any(self, seen_version: int, timeout: float) -> int:
        """Block until any job changes; return the store's version."""
        with self._cond:
            self._cond.wait_for(lambda: self.version > seen_version, timeout)
            return self.version


def new_job_id() -> str:
    """Sortable and short: ``HHMMSS-xxxxxx``."""
    return f"{dt.datetime.now():%H%M%S}-{secrets.token_hex(3)}"
