"""Sweeps: expansion (seeds, XY cells and labels), refusal before anything is queued, cells through the worker and the grid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.jobs.store import JobSpec
from framepack_history.jobs.sweep import (
    expand,
    grid,
    grid_image,
    make_sweep,
    parse_axis_arg,
    submit_sweep,
    sweep_jobs,
)
from framepack_history.jobs.worker import Worker
from tests.jobs.test_jobs import TINY, wait


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "outputs", max_queue=6, preview_every_s=0.0)
    yield w
    w.stop(timeout=30)


def test_seeds_expand_to_one_cell_each_in_order():
    sweep = make_sweep("3, 1, 2")
    cells = expand(GenerationRequest(prompt="camera pans left", seed=9, guidance=2.0), sweep)
    assert [c.request.seed for c in cells] == [3, 1, 2]
    assert [c.caption for c in cells] == ["seed=3", "seed=1", "seed=2"]
    assert [(c.row, c.col) for c in cells] == [(0, 0), (0, 1), (0, 2)]
    assert all(c.request.guidance == 2.0 and c.request.prompt == "camera pans left" for c in cells)


def test_an_xy_grid_has_every_cell_labelled_x_fastest():
    sweep = make_sweep(None, parse_axis_arg("guidance=1,3", "x"), parse_axis_arg("cache=off,fast", "y"))
    base = GenerationRequest(prompt="p")
    cells = expand(base, sweep)
    assert [(c.request.guidance, c.request.cache) for c in cells] == [(1.0, "off"), (3.0, "off"), (1.0, "fast"), (3.0, "fast")]
    assert [c.caption for c in cells] == ["guidance=1 · cache=off", "guidance=3 · cache=off",
                                          "guidance=1 · cache=fast", "guidance=3 · cache=fast"]
    assert [(c.row, c.col) for c in cells] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert base.guidance is None and base.cache is None  # the base request is left alone
    # seeds with an X axis: the seeds are the rows; flags and field names both name a field
    cells = expand(base, make_sweep("1,2", parse_axis_arg("history=encoder,window", "x")))
    assert [(c.request.history_mode, c.request.seed) for c in cells] == [("encoder", 1), ("window", 1), ("encoder", 2),
                                                                         ("window", 2)]
    # a LoRA-weight axis weighs every LoRA of the request
    cells = expand(GenerationRequest(prompt="p", loras=[{"name": "a.safetensors", "weight": 1.0}]),
                   make_sweep(None, parse_axis_arg("lora_weight=0.5,1", "x")))
    assert [c.request.loras[0]["weight"] for c in cells] == [0.5, 1.0] and cells[0].caption == "lora_weight=0.5"


@pytest.mark.parametrize(("x", "y", "seeds", "field", "needle"), [
    ("bogus=1,2", None, None, "--sweep-x", "'bogus' is not a request field"),
    ("image=a.png", None, None, "--sweep-x", "cannot be swept"),
    ("guidance=1,x", None, None, "--sweep-x", "guidance='x': must be a number"),
    ("guidance=1,1", None, None, "--sweep-x", "given twice"),
    ("guidance", None, None, "--sweep-x", "write FIELD=V1,V2"),
    ("guidance=1", "guidance=2", None, "--sweep-y", "on two axes"),
    ("guidance=1", "cache=off", "1,2", "--sweep-seeds", "at most two axes"),
    ("steps=" + ",".join(map(str, range(1, 10))), "seed=" + ",".join(map(str, range(10))), None, "--sweep-y", "at most 64"),
])
def test_a_bad_axis_is_refused_by_name(x, y, seeds, field, needle):
    with pytest.raises(InputError, match=needle) as e:
        make_sweep(seeds, parse_axis_arg(x, "x"), parse_axis_arg(y, "y") if y else None)
    assert e.value.field == field


def test_a_bad_cell_refuses_the_whole_sweep_naming_its_axis_and_value_with_nothing_queued(worker):
    sweep = make_sweep(None, parse_axis_arg("guidance=1,3", "x"), parse_axis_arg("cache=off,sometimes", "y"))
    with pytest.raises(InputError) as e:
        submit_sweep(worker, JobSpec(GenerationRequest(prompt="camera pans left", seconds=0.5), TINY), sweep)
    assert e.value.field == "--sweep-y"
    assert e.value.message.startswith("guidance=1 · cache=sometimes: --cache:")
    assert worker.store.jobs() == [] and worker.queued() == []
    assert not worker.jobs_dir.exists() or not any(worker.jobs_dir.iterdir())
    # more cells than the queue has room for: refused before anything is queued
    with pytest.raises(InputError, match="room for 6") as e:
        submit_sweep(worker, JobSpec(GenerationRequest(prompt="p", seconds=0.5), TINY), make_sweep("1,2,3,4,5,6,7"))
    assert e.value.field == "queue" and worker.store.jobs() == []


def test_sweep_jobs_run_through_the_worker_and_the_grid_is_built(worker):
    sweep = make_sweep("1, 2", parse_axis_arg("steps=1,2", "x"))
    jobs = submit_sweep(worker, JobSpec(GenerationRequest(prompt="camera pans left", seconds=0.5), TINY), sweep)
    assert len(jobs) == 4 and worker.queued() == [j.id for j in jobs]
    sweep_id = jobs[0].spec.sweep["id"]
    assert {j.spec.sweep["id"] for j in jobs} == {sweep_id}
    # recorded in each job's folder with its labels
    record = json.loads((worker.jobs_dir / jobs[3].id / "request.json").read_text())
    assert record["sweep"]["labels"] == {"steps": 2, "seed": 2} and record["sweep"]["caption"] == "steps=2 · seed=2"
    assert record["request"]["steps"] == 2 and record["request"]["seed"] == 2
    assert jobs[1].snapshot()["sweep"]["index"] == 1
    worker.start()
    for j in jobs:
        assert wait(worker, j.id).status == "done", j.message
    found = sweep_jobs(worker.store, sweep_id)
    assert [j.id for j in found] == [j.id for j in jobs]
    cells = grid(found)
    assert [c for _, c in cells] == ["steps=1 · seed=1", "steps=2 · seed=1", "steps=1 · seed=2", "steps=2 · seed=2"]
    frames = [f for f, _ in cells]
    assert all(f is not None and f.shape == (32, 32, 3) for f in frames)
    assert not np.array_equal(frames[0], frames[2])  # another seed, another video
    image = grid_image(cells, cols=2)
    assert image.shape == (2 * 34, 2 * 34, 3)
    assert np.array_equal(image[34:66, 34:66], frames[3])
