"""A worker's lanes, and when a lane gives its device back: the pause and idle-unload policy.

A :class:`Lane` is one worker thread and what it owns: a device, its model cache and its runner.
:class:`LanePolicy` decides when a lane takes its next job and what it frees while it has none. A lane
that holds models waits at most ``unload_after_s`` for a job (app.py's ``--unload-after``; 0 = never
unload) and stops waiting at once when the queue is paused (:meth:`~.queue.JobQueue.pause`: nothing is
taken, the order is kept); it then drops its whole model cache and frees the device
(:meth:`~.model_cache.ModelCache.clear`) and, while no job runs anywhere, what the worker shares besides
(its memory inspector's model). A lane that holds nothing waits for a job with no time limit. What a
lane drops after every job is the cache's own business (:meth:`~.model_cache.ModelCache.end_job`).

No torch here: the page imports the worker, and the worker this.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from framepack_history.jobs.model_cache import ModelCache
from framepack_history.jobs.queue import JobQueue
from framepack_history.jobs.runner import JobRunner
from framepack_history.jobs.store import JobStore

log = logging.getLogger(__name__)


class Lane:
    """One worker thread and what it owns: a device, its model cache (models, memory manager) and a runner."""

    def __init__(self, index: int, device: str | None, runner_for: Callable[[ModelCache, str | None], JobRunner],
                 max_models: int) -> None:
        self.index = index  # 1, 2, ... (what the Queue tab shows beside the device)
        self.device = device  # None: each job runs where its preset says
        self.models = ModelCache(max_models)  # touched only by this lane's thread
        self.runner = runner_for(self.models, device)
        self.thread: threading.Thread | None = None
        self.unloads = 0  # how many times this lane gave its models back while idle or paused


class LanePolicy:
    """When the lanes sharing ``queue`` take a job, and when they give their models and memory back.

    ``also_free`` runs when a lane unloads while no job of ``store`` is running: what the worker keeps
    besides the lanes' caches (it must not be freed under a running job).
    """

    def __init__(self, queue: JobQueue, store: JobStore, unload_after_s: float = 0.0,
                 also_free: Callable[[], None] = lambda: None) -> None:
        self.queue = queue
        self.store = store
        #: seconds with nothing to take after which a lane unloads its models (0 = never; app.py's --unload-after)
        self.unload_after_s = float(unload_after_s)
        self.also_free = also_free

    def take(self, lane: Lane) -> str | None:
        """The next job id for ``lane``; unloads its models while there is none (idle long enough, or paused).

        ``None`` once the queue is closed: the lane's thread ends.
        """
        while True:
            loaded = lane.models.loaded
            wait = self.unload_after_s if loaded and self.unload_after_s > 0 else None
            job_id = self.queue.take(wait, or_paused=loaded)
            if job_id is not None or self.queue.closed:
                return job_id
            if loaded:
                self.unload(lane)

    def unload(self, lane: Lane) -> None:
        """Nothing to take for ``unload_after_s`` (or the queue is held): give the lane's models and memory back."""
        held = lane.models.clear()
        lane.unloads += 1
        if not any(j.status == "running" for j in self.store.jobs()):
            self.also_free()
        log.info("worker %s: %s; unloaded %d model(s)", lane.index, "queue paused" if self.queue.paused else
                 f"idle for {self.unload_after_s:g} s", held)

    def state(self, lanes: list[Lane]) -> str:
        """One line for the Queue tab: whether the queue is held, what still runs and whether the models are loaded."""
        waiting = len(self.queue.ids())
        if not self.queue.paused:
            return f"Queue running · {waiting} waiting" if waiting else "Queue running"
        running = [j.id for j in self.store.jobs() if j.status == "running"]
        then = (f"{', '.join(running)} finishes first, then the device is freed" if running
                else "models unloaded" if not any(lane.models.loaded for lane in lanes) else "freeing the device…")
        return f"Queue paused · {waiting} waiting · {then}"
