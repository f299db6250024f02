"""The lane policy alone, with stand-ins for the model cache and the store: no model, no thread of its own."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from framepack_history.jobs.lanes import LanePolicy
from framepack_history.jobs.queue import JobQueue


class _Models:
    """A model cache stand-in: loaded until cleared."""

    def __init__(self) -> None:
        self.loaded = True

    def clear(self) -> int:
        held, self.loaded = int(self.loaded), False
        return held


class _Store:
    def __init__(self, *statuses: str) -> None:
        self.statuses = list(statuses)

    def jobs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(id=f"job{i}", status=s) for i, s in enumerate(self.statuses)]


def _lane() -> SimpleNamespace:
    return SimpleNamespace(index=1, models=_Models(), unloads=0)


def test_an_idle_lane_unloads_once_and_frees_the_shared_extras_only_with_no_job_running():
    freed: list[int] = []
    store = _Store("running")
    queue = JobQueue()
    policy = LanePolicy(queue, store, unload_after_s=0.01, also_free=lambda: freed.append(1))
    lane = _lane()
    threading.Timer(0.3, queue.close).start()
    assert policy.take(lane) is None  # closed: the lane's thread would end
    assert lane.unloads == 1 and not lane.models.loaded and freed == []  # a job still runs: the extras stay
    store.statuses = ["done"]
    lane.models.loaded = True
    policy.unload(lane)
    assert lane.unloads == 2 and freed == [1]


def test_a_paused_queue_unloads_a_loaded_lane_at_once_and_says_so():
    queue, lane = JobQueue(), _lane()
    policy = LanePolicy(queue, _Store(), unload_after_s=0.0)  # 0: never on a timer, only when paused
    queue.put("a")
    queue.pause()
    assert policy.state([lane]) == "Queue paused · 1 waiting · freeing the device…"
    threading.Timer(0.2, queue.unpause).start()
    assert policy.take(lane) == "a"  # unloaded while held, then takes the job in order
    assert lane.unloads == 1 and not lane.models.loaded
    queue.pause()
    assert policy.state([lane]) == "Queue paused · 0 waiting · models unloaded"
    queue.unpause()
    assert policy.state([lane]) == "Queue running"
