"""``/sweep``, ``/export_queue`` and ``/import_queue`` over HTTP; the page's sweep grid once every cell has ended."""

from __future__ import annotations

import json
import sys
import zipfile

import gradio as gr
import pytest

from framepack_history.ui.handlers import Handlers
from framepack_history.ui.sweep_actions import SweepActions
from tests.app_process import app_client
from tests.ui.test_app_api import ROOT, TINY

sys.path.insert(0, str(ROOT))  # app.py lives at the top level
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with app_client(tmp_path_factory, "--preset", TINY) as c:
        yield c


def finish(client, job_id: str):
    job = client.worker.store.get(job_id)
    while not job.terminal:
        job = client.worker.store.wait(job.id, job.version, 5.0)
    return job


def test_a_sweep_over_the_api_queues_its_cells_and_the_page_shows_their_grid(client):
    out = client.predict({"prompt": "camera pans left", "seconds": 0.5, "steps": 1}, "1, 2", "", "", api_name="/sweep")
    assert out["sweep"].startswith("sweep-") and [j["seed"] for j in out["jobs"]] == [1, 2]
    assert all(j["sweep"]["id"] == out["sweep"] for j in out["jobs"])
    jobs = [finish(client, j["id"]) for j in out["jobs"]]
    assert [j.status for j in jobs] == ["done", "done"]

    page = SweepActions(Handlers(client.worker, TINY, [TINY]))  # the page's grid, on the app's worker
    key, line, grid = page.grid(out["sweep"], None)
    assert line == f"Sweep {out['sweep']}: 2 of 2 finished."
    assert [caption for _, caption in grid["value"]] == ["seed=1", "seed=2"]
    assert grid["value"][0][0].shape == (32, 32, 3) and grid["columns"] == 2
    assert page.grid(out["sweep"], key) == (key, gr.skip(), gr.skip())  # unchanged: nothing is sent again


def test_the_pages_queue_sweep_names_its_own_field_and_queues_nothing_on_a_bad_cell(client):
    page = SweepActions(Handlers(client.worker, TINY, [TINY]))
    before = len(client.worker.store.jobs())
    with pytest.raises(gr.Error, match="Sweep X: guidance=500: --guidance") as e:
        page.page_sweep("camera pans left", None, None, 0.5, 0, TINY, 1, "", "guidance", "1, 500", None, "")
    assert e.value.title == "Can't queue this sweep"
    with pytest.raises(gr.Error, match="Sweep Y: pick an X setting too"):
        page.page_sweep("camera pans left", None, None, 0.5, 0, TINY, 1, "", None, "", "cache", "off")
    assert len(client.worker.store.jobs()) == before
    job_id, sweep_id, line = page.page_sweep("camera pans left", None, None, 0.5, 0, TINY, 1, "4", "guidance", "1, 2",
                                             None, "")
    jobs = [j for j in client.worker.store.jobs() if (j.spec.sweep or {}).get("id") == sweep_id]
    assert job_id == jobs[0].id and len(jobs) == 2 and line.startswith(f"Sweep {sweep_id}: 2 jobs queued")
    assert [(j.spec.request.guidance, j.spec.request.seed) for j in jobs] == [(1.0, 4), (2.0, 4)]
    for j in jobs:
        finish(client, j.id)


@pytest.mark.parametrize(("args", "words"), [
    (({"prompt": "p", "seconds": 0.5}, "", "guidance=1,500", ""), "sweep-x: guidance=500: --guidance: must be a number"),
    (({"prompt": "p", "seconds": 0.5}, "", "size=1,2", ""), "sweep-x: 'size' is not a request field"),
    (({"prompt": "p", "start_image": "/etc/passwd"}, "1,2", "", ""), "start_image: a sweep over the API takes no files"),
    (({"prompt": "p"}, "", "", ""), "sweep-seeds: give seeds or an x axis"),
])
def test_a_bad_sweep_is_refused_by_name_with_nothing_queued(client, args, words):
    before = len(client.worker.store.jobs())
    with pytest.raises(Exception, match=words):
        client.predict(*args, api_name="/sweep")
    assert len(client.worker.store.jobs()) == before


def test_export_then_import_over_the_api(client, tmp_path):
    from gradio_client import handle_file

    # three cells: the lane takes the first, the others are still queued when the queue is saved
    out = client.predict({"prompt": "camera pans right", "seconds": 0.5, "steps": 1}, "5, 6, 7", "", "", api_name="/sweep")
    path = client.predict(False, api_name="/export_queue")
    with zipfile.ZipFile(path) as z:
        saved = json.loads(z.read("queue.json"))
    queued_ids = [j["id"] for j in saved["jobs"]]
    assert queued_ids and set(queued_ids) <= {j["id"] for j in out["jobs"]}
    assert all(j["request"]["prompt"] == "camera pans right" and j["sweep"]["id"] == out["sweep"] for j in saved["jobs"])
    for j in out["jobs"]:
        finish(client, j["id"])

    imported = client.predict(handle_file(path), api_name="/import_queue")
    assert [j["seed"] for j in imported["jobs"]] == [j["request"]["seed"] for j in saved["jobs"]]
    assert all(finish(client, j["id"]).status == "done" for j in imported["jobs"])
    with pytest.raises(Exception, match="not a saved queue"):
        bad = tmp_path / "bad.zip"
        bad.write_bytes(b"not a zip")
        client.predict(handle_file(str(bad)), api_name="/import_queue")
