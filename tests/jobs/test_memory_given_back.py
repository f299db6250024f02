"""Memory given back: per-job cleanup, the idle unload and the paused queue, on the tiny toy."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from framepack_history.generation import pipeline as pipeline_module
from framepack_history.jobs.worker import Worker
from tests.jobs.test_jobs import spec, wait


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "outputs", max_queue=16, preview_every_s=0.0).start()
    yield w
    w.stop(timeout=30)


def _until(what, message: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def test_each_job_leaves_no_generation_and_a_bounded_text_cache(worker, monkeypatch):
    monkeypatch.setattr(pipeline_module, "TEXT_CACHE_KEEP", 2)  # the bound, small enough to pass in a few jobs
    n = 4
    for i in range(n):  # a new prompt each time: a cache of every prompt ever would hold n
        job = wait(worker, worker.submit(spec(prompt=f"camera pans left {i}", seed=i)).id)
        assert job.status == "done", job.message
    _until(lambda: not any(j.status == "running" for j in worker.store.jobs()) and worker.queue.ids() == [], "jobs")
    pipes = list(worker.models._pipelines.values())
    _until(lambda: all(p.last_generation is None for p in pipes), "the last job's generation is still held")
    assert pipes and all(len(p._text_cache) == 2 for p in pipes)
    assert f"camera pans left {n - 1}" in pipes[0]._text_cache  # the newest prompt is the one kept
    assert worker.loads == 1  # the backbone stays between jobs
    jobs = worker.store.jobs()
    assert jobs[-1].preview is not None and all(j.preview is None for j in jobs[:-1])  # only the newest keeps pixels


def test_idle_unload_drops_the_models_and_the_next_job_loads_again(tmp_path):
    w = Worker(tmp_path / "outputs", max_queue=4, preview_every_s=0.0, unload_after_s=1.0).start()
    try:
        assert wait(w, w.submit(spec()).id).status == "done"
        backbone = weakref.ref(next(iter(w.models._backbones.values()))[0])
        _until(lambda: w.lanes[0].unloads == 1, "no idle unload after 1 s with an empty queue")
        assert not w.models.loaded and w.models._pipelines == {}
        gc.collect()
        assert backbone() is None  # nothing else holds the unloaded model: its memory is free
        time.sleep(0.5)
        assert w.lanes[0].unloads == 1  # nothing loaded: nothing to unload again
        assert wait(w, w.submit(spec(seed=3)).id).status == "done"
        assert w.loads == 2  # loaded again for the next job
    finally:
        w.stop(timeout=30)


def test_pause_holds_the_queue_frees_the_device_and_resume_keeps_the_order(worker):
    first = wait(worker, worker.submit(spec()).id)
    assert first.status == "done" and worker.models.loaded
    worker.pause_queue()
    _until(lambda: not worker.models.loaded, "the paused queue's lane kept its models")
    assert "paused" in worker.queue_state() and "models unloaded" in worker.queue_state()
    jobs = [worker.submit(spec(seed=i, prompt=f"camera pans left {i}")) for i in range(3)]
    time.sleep(0.4)
    assert [worker.store.get(j.id).status for j in jobs] == ["queued"] * 3
    assert worker.queued() == [j.id for j in jobs]
    worker.resume_queue()
    assert not worker.paused and worker.queue_state().startswith("Queue running")
    done = [wait(worker, j.id) for j in jobs]
    assert [j.status for j in done] == ["done"] * 3
    assert [j.started for j in done] == sorted(j.started for j in done)  # in the order they were queued
    assert worker.loads == 2


def test_pause_lets_the_running_job_finish(worker):
    job = worker.submit(spec(seconds=2, steps=4))
    wait(worker, job.id, lambda j: j.status == "running")
    nxt = worker.submit(spec())
    worker.pause_queue()
    assert "finishes first" in worker.queue_state() or worker.store.get(job.id).terminal
    assert wait(worker, job.id).status == "done"
    time.sleep(0.3)
    assert worker.store.get(nxt.id).status == "queued"
    worker.resume_queue()
    assert wait(worker, nxt.id).status == "done"
