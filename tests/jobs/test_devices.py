"""Several devices: one worker per device, all taking jobs from one queue in order (two simulated CPU devices)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.jobs.store import JobSpec
from framepack_history.jobs.worker import Worker
from tests.conftest import TINY_TOY
from tests.jobs.test_checkpoint import decoded
from tests.waiting import job_progress, until

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # app.py lives at the top level


def spec(seed: int, steps: int = 40, seconds: float = 2.0) -> JobSpec:
    return JobSpec(GenerationRequest(prompt="0s: camera pans right; 1s: camera pans left", seconds=seconds, seed=seed,
                                     steps=steps), str(TINY_TOY))


def wait_for(what, worker: Worker, every: float = 0.02):
    """Poll ``what()`` until it holds: as long as the worker's jobs move on (a step, a section)."""
    return until(what, lambda: job_progress(worker.store.jobs()), "timed out", every=every)


def test_two_workers_run_two_jobs_at_once_in_queue_order(tmp_path):
    from framepack_history.ui.handlers import Handlers

    worker = Worker(tmp_path / "outputs", max_queue=8, preview_every_s=0.0, devices=["cpu", "cpu"]).start()
    h = Handlers(worker, str(TINY_TOY), [str(TINY_TOY)], temp_dir=tmp_path / "tmp")
    try:
        first, second, third, fourth = (worker.submit(spec(s)) for s in (1, 2, 2, 3))  # second and third: the same request
        wait_for(lambda: first.status == second.status == "running" and first.progress.step > 0 and second.progress.step > 0,
                 worker)
        # two at once, one per worker; the rest wait in order
        assert {first.worker, second.worker} == {1, 2} and first.device == second.device == "cpu"
        assert third.status == fourth.status == "queued" and worker.queued() == [third.id, fourth.id]
        status = h.api_status("")
        assert sorted((d["worker"], d["device"]) for d in status["devices"]) == [(1, "cpu"), (2, "cpu")]
        assert {d["job"] for d in status["devices"]} == {first.id, second.id}
        assert {r[0]: r[-1] for r in h.queue_rows()}[first.id] == f"cpu #{first.worker}"
        # cancel still works: a waiting job at once, a running one at its next step, and its worker takes the next job
        assert worker.cancel(fourth.id).status == "cancelled"
        worker.cancel(first.id)
        for job in (first, second, third):
            wait_for(lambda job=job: job.terminal, worker)
        assert (first.status, second.status, third.status) == ("cancelled", "done", "done")
        assert third.worker == first.worker != second.worker and max(first.started, second.started) <= third.started
        # each worker has its own models, and they are the same weights: the same request gives the same frames
        lanes = worker.lanes
        assert all(lane.models.loads == 1 for lane in lanes)
        a, b = (next(iter(lane.models._pipelines.values())) for lane in lanes)
        assert a.backbone is not b.backbone
        for (name, p), (_, q) in zip(a.encoder.state_dict().items(), b.encoder.state_dict().items(), strict=True):
            assert torch.equal(p, q), name
        assert (decoded(second.video) == decoded(third.video)).all() and len(decoded(third.video)) == 1 + 16
    finally:
        worker.stop(timeout=30)


def test_stopped_jobs_resume_on_two_workers(tmp_path):
    outputs, jobs_dir = tmp_path / "outputs", tmp_path / "jobs"
    reference = Worker(outputs, max_queue=8, preview_every_s=0.0, jobs_dir=jobs_dir).start()
    try:
        want = reference.submit(spec(5, steps=20))
        wait_for(lambda: want.terminal, reference)
    finally:
        reference.stop(timeout=30)
    first = Worker(outputs, max_queue=8, preview_every_s=0.0, jobs_dir=jobs_dir, devices=["cpu", "cpu"]).start()
    jobs = [first.submit(spec(5, steps=20)), first.submit(spec(6, steps=20)), first.submit(spec(7, steps=20))]
    wait_for(lambda: all(j.progress.sections_done >= 1 for j in jobs[:2]), first)
    first.stop(timeout=30)  # two stopped mid-job, one never started: all three resumable
    again = Worker(outputs, max_queue=8, preview_every_s=0.0, jobs_dir=jobs_dir, devices=["cpu", "cpu"]).start()
    try:
        assert [r["id"] for r in again.interrupted()] == [j.id for j in jobs]
        resumed = [again.resume(j.id) for j in jobs]
        for job in resumed:
            wait_for(lambda job=job: job.terminal, again)
        assert [j.status for j in resumed] == ["done"] * 3 and {j.worker for j in resumed} == {1, 2}
        assert (decoded(resumed[0].video) == decoded(want.video)).all()  # frame-identical to an uninterrupted run
    finally:
        again.stop(timeout=30)


def test_devices_flag(capsys):
    import app

    assert app.prepare(["--devices", "cpu, cpu"]).devices == ["cpu", "cpu"]
    assert app.prepare([]).devices is None
    with pytest.raises(InputError, match="no CUDA device here|listed more than once"):
        app.prepare(["--devices", "cuda:0,cuda:0"])
    assert app.main(["--devices", "cpu,"]) == 2
    assert "--devices" in capsys.readouterr().err
