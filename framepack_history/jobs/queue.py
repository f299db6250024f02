"""The worker's queue: job ids in FIFO order, a maximum size, cancelling what has not started.

No torch here: the page submits through it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from framepack_history.errors import InputError


class JobQueue:
    """Thread-safe FIFO of job ids; :meth:`take` blocks until there is one or the queue is closed."""

    def __init__(self, max_size: int = 16) -> None:
        self.max_size = max_size
        self._ids: deque[str] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._paused = False  # held: nothing is handed out, ids stay in order

    def check_room(self) -> None:
        """:class:`InputError` if a job could not be queued now (checked before slow validation)."""
        with self._cond:
            self._check_room()

    def _check_room(self) -> None:
        if len(self._ids) >= self.max_size:
            raise InputError("queue", f"is full ({len(self._ids)} jobs waiting); try again when one finishes")

    def put(self, job_id: str, admit: Callable[[], None] = lambda: None) -> None:
        """Queue ``job_id`` after ``admit()`` ran, both under the lock: a full queue admits nothing.

        ``admit`` records the job (its folder, the store) so that whoever takes it finds it.
        """
        with self._cond:
            self._check_room()
            admit()
            self._ids.append(job_id)
            self._cond.notify_all()

    def remove(self, job_id: str) -> bool:
        """Take a job out before it starts; ``False`` if it is not waiting (started, or unknown)."""
        with self._cond:
            if job_id not in self._ids:
                return False
            self._ids.remove(job_id)
            return True

    def take(self, timeout: float | None = None, or_paused: bool = False) -> str | None:
        """The oldest job id, waiting for one while the queue is held; ``None`` once it is closed.

        Also ``None`` after ``timeout`` s with nothing to take, and (``or_paused``) as soon as the queue
        is held: a taker that holds models then frees them (:meth:`closed` tells the cases apart).
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or (bool(self._ids) and not self._paused)
                                or (or_paused and self._paused), timeout)
            if self._closed or self._paused or not self._ids:
                return None
            return self._ids.popleft()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Hold the queue: no job is taken until :meth:`unpause`; waiting ids keep their order."""
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def unpause(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def ids(self) -> list[str]:
        with self._cond:
            return list(self._ids)

    def __contains__(self, job_id: str) -> bool:
        with self._cond:
            return job_id in self._ids

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake the taker with ``None``; waiting ids stay (the caller decides what becomes of them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
