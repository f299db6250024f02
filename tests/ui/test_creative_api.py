"""The HTTP API of creative control: /steer a running job, /extend a finished one, reuse a sidecar's settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.app_process import app_client
from tests.ui.test_app_api import ROOT, TINY, result
from tests.waiting import job_progress, until

sys.path.insert(0, str(ROOT))  # app.py lives at the top level
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
OLD, NEW = "camera pans left", "0s: camera holds; 1s~1s: camera pans right"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with app_client(tmp_path_factory, "--preset", TINY) as c:
        yield c


def generate(client, **kw):
    args = {"prompt": OLD, "seconds": 3, "seed": 3, "preset": TINY, "steps": 40, **kw}
    return client.submit(api_name="/generate", **args)


def moving(client):
    """How far the app's jobs have come (a wait lasts while this changes)."""
    return lambda: job_progress(client.worker.store.jobs())


def wait_for(client, job_id: str, ok, what: str) -> dict:
    seen = [None]

    def look() -> dict | None:
        seen[0] = client.predict(job_id, api_name="/status")
        return seen[0] if ok(seen[0]) else None

    return until(look, moving(client), lambda: f"{what}: {seen[0]['status']} {seen[0]['progress']}")


def running_job(client) -> dict:
    def running() -> dict | None:
        jobs = [j for j in client.predict("", api_name="/status")["jobs"] if j["status"] == "running"]
        return jobs[0] if jobs and jobs[0]["progress"]["sections_done"] >= 1 else None

    return until(running, moving(client), "the job never started")


def test_steer_mid_job_changes_later_sections_only(client):
    from gradio_client.exceptions import AppError

    pending = generate(client)  # 6 sections
    job = running_job(client)
    with pytest.raises(AppError, match="storyboard times must increase"):  # checked as a new job's storyboard
        client.predict(job["id"], "5s: a; 2s: b", api_name="/steer")
    with pytest.raises(AppError, match="blends until 3s, past the next entry at 2s"):
        client.predict(job["id"], "0s: a; 1s~2s: b; 2s: c", api_name="/steer")
    with pytest.raises(AppError, match="no job"):
        client.predict("no-such-job", NEW, api_name="/steer")
    posted = client.predict(job["id"], NEW, api_name="/steer")
    assert posted["steer_pending"] == NEW
    done_then = posted["progress"]["sections_done"]
    _, sidecar = result(client, pending)
    data = json.loads(Path(sidecar).read_text())
    (steer,) = data["steers"]
    k = steer["section"]
    assert steer["prompt"] == NEW and done_then <= k < 6, (done_then, k)
    prompts = [s["prompt"] for s in data["sections"]]
    # earlier sections kept the old prompt; later ones follow the new storyboard (1.5 s: halfway into its blend)
    expected = [OLD] * k + ["camera holds", "camera holds", "camera holds", "camera pans right", "camera pans right",
                            "camera pans right"][k:]
    assert prompts == expected
    assert all(s.get("blend") == 0.5 for s in data["sections"] if s["index"] == 3 and k <= 3)
    after = client.predict(job["id"], api_name="/status")
    assert after["status"] == "done" and after["steers"][0]["section"] == k
    with pytest.raises(AppError, match="only a queued or running job can be steered"):
        client.predict(job["id"], NEW, api_name="/steer")


def test_cancel_and_resume_keeps_the_steer(client):
    generate(client, seconds=4)  # 8 sections
    job = running_job(client)
    client.predict(job["id"], NEW, api_name="/steer")
    steered = wait_for(client, job["id"], lambda j: j["steers"] and j["progress"]["sections_done"] > j["steers"][0]["section"],
                       "the edit never took effect")
    k = steered["steers"][0]["section"]
    client.predict(job["id"], api_name="/cancel")
    stopped = wait_for(client, job["id"], lambda j: j["status"] == "cancelled", "never cancelled")
    assert stopped["progress"]["sections_done"] < 8, "the job finished before it could be cancelled"
    client.predict(job["id"], api_name="/resume")
    done = wait_for(client, job["id"], lambda j: j["status"] == "done", "the resumed job never finished")
    data = json.loads((client.outputs / done["sidecar"]).read_text())
    assert data["resumed_from_section"] >= k + 1 and [s["section"] for s in data["steers"]] == [k]
    board = ["camera holds"] * 3 + ["camera pans right"] * 5
    assert [s["prompt"] for s in data["sections"]] == [OLD] * k + board[k:]


def test_extend_a_finished_job_through_the_api(client):
    from gradio_client.exceptions import AppError

    from framepack_history.generation.video import read_video

    video, _ = result(client, generate(client, seconds=1, steps=2))
    everything = client.predict("", api_name="/status")
    old = client.predict(everything["current"], api_name="/status")  # the newest job: this one
    assert old["status"] == "done" and old["seconds"] == 1
    with pytest.raises(AppError, match="no job folder"):
        client.predict("no-such-job", NEW, 1, api_name="/extend")
    with pytest.raises(AppError, match="how much to add must be a number > 0"):
        client.predict(old["id"], NEW, 0, api_name="/extend")
    new = client.predict(old["id"], "0s: camera holds", 1, api_name="/extend")
    assert new["id"] != old["id"] and new["seconds"] == 2
    done = wait_for(client, new["id"], lambda j: j["status"] in ("done", "failed", "cancelled"), "never finished")
    assert done["status"] == "done", done["message"]
    data = json.loads((client.outputs / done["sidecar"]).read_text())
    assert [s["prompt"] for s in data["sections"]] == [OLD] * 2 + ["camera holds"] * 2
    before, after = read_video(video, 32, 32, 8, 100), read_video(client.outputs / done["video"], 32, 32, 8, 100)
    assert len(after) == len(before) + 8 and np.array_equal(after[: len(before)], before)  # it starts with the old video
    assert data["request"]["seed"] == 3 and data["encoder_rate"] == old["encoder_rate"]
