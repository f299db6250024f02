"""The HTTP API through gradio_client: generate, status, cancel, and bad input."""

from __future__ import annotations

import json
import re
import sys
from concurrent import futures
from pathlib import Path

import pytest

from tests import waiting
from tests.app_process import app_client
from tests.waiting import job_progress, until

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "presets" / "tiny-toy.toml")
sys.path.insert(0, str(ROOT))  # app.py lives at the top level
# gradio's own queue code trips pandas deprecations; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The app launched in this process on a free port, and a client for it."""
    with app_client(tmp_path_factory, "--preset", TINY, "--max-file-size", "1mb") as c:
        yield c


def generate(client, **kw):
    args = {"prompt": "camera pans left", "seconds": 1, "seed": 3, "preset": TINY, "steps": 2, **kw}
    return client.submit(api_name="/generate", **args)


def result(client, pending, what: str = "the job did not finish"):
    """``pending.result()`` once the request ends: as long as it takes while the worker's jobs move on."""
    until(lambda: futures.wait([pending], timeout=0.5).done, lambda: job_progress(client.worker.store.jobs()), what, every=0)
    return pending.result()


def test_generate_returns_a_playable_video_and_sidecar(client):
    from framepack_history.generation.video import count_frames

    video, sidecar = result(client, generate(client))
    assert Path(video).suffix == ".mp4" and count_frames(video) == 1 + 8  # the world's start frame, 2 sections of 4 frames
    data = json.loads(Path(sidecar).read_text())
    assert data["seed"] == 3 and data["request"]["steps"] == 2 and len(data["sections"]) == 2
    # the text-to-video start frame (the toy's default) and the size generated at are recorded
    assert data["request"]["start_frame"] == "world" and (data["request"]["width"], data["request"]["height"]) == (32, 32)

    everything = client.predict("", api_name="/status")
    job = everything["jobs"][0]
    assert job["status"] == "done" and everything["current"] == job["id"]
    one = client.predict(job["id"], api_name="/status")
    assert one["progress"]["sections_done"] == 2 and one["video"].endswith("video.mp4")


def test_generate_continues_an_uploaded_video(client, short_video):
    from gradio_client import handle_file

    from framepack_history.generation.video import count_frames

    video, _ = result(client, generate(client, continue_video=handle_file(str(short_video))))
    assert count_frames(video) == 8 + 8  # the 1 s clip, then 2 sections


def test_cancel_through_the_api(client):
    from gradio_client.exceptions import AppError

    pending = generate(client, seconds=20, steps=50)  # 40 sections

    def running() -> list:
        jobs = [j for j in client.predict("", api_name="/status")["jobs"] if j["status"] == "running"]
        return jobs if jobs and jobs[0]["progress"]["sections_done"] >= 1 else []

    jobs = until(running, lambda: job_progress(client.worker.store.jobs()), "the job never started", every=0.3)
    job_id = jobs[0]["id"]
    client.predict(job_id, api_name="/cancel")
    with pytest.raises(AppError, match="cancelled"):
        result(client, pending)
    assert client.predict(job_id, api_name="/status")["status"] == "cancelled"


def test_bad_input_is_a_clear_error_and_the_server_lives(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="storyboard times must increase"):
        generate(client, prompt="5s: a; 2s: b").result(timeout=30)
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(AppError, match="(?i)image"):
        generate(client, start_image=handle_file(str(bad))).result(timeout=30)
    with pytest.raises(AppError):
        generate(client, seconds=100_000).result(timeout=30)
    with pytest.raises(AppError, match="start-frame: 'green' is not offered by the toy backbone"):
        generate(client, start_frame="green").result(timeout=30)
    with pytest.raises(AppError, match="history-merge: must be one of similar, oldest"):
        generate(client, history_merge="newest").result(timeout=30)
    with pytest.raises(AppError, match="no job"):
        client.predict("no-such-job", api_name="/cancel")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 << 20))  # over the 1 MB cap of this server
    with pytest.raises(ValueError, match="maximum file size"):  # refused before it is sent
        generate(client, start_image=handle_file(str(big))).result(timeout=30)
    video, _ = result(client, generate(client, seconds=0.5))  # and the next job runs
    assert Path(video).is_file()


def test_the_page_never_imports_model_code():
    forbidden = re.compile(r"^\s*(import|from)\s+(torch|diffusers|framepack_history\.(backbones|history|memory|training|sampling"
                           r"|generation\.(?!video\b)))\b", re.MULTILINE)
    pages = sorted((ROOT / "framepack_history" / "ui").rglob("*.py"))
    assert len(pages) >= 5  # the page's modules are where this looks
    for path in pages:
        assert not forbidden.search(path.read_text()), path
    code = "import sys, app, framepack_history.ui, framepack_history.jobs.worker; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    out = waiting.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]  # models load in the worker, on first use


def test_recall_and_a_history_cap_through_the_api(client):
    """/generate with a history-token cap on the shipped toy, then /recall a past frame of it."""
    from gradio_client.exceptions import AppError
    from PIL import Image

    video, sidecar = result(client, generate(client, prompt="0s: camera pans right; 4s: camera pans left", seconds=14, preset="toy-cpu",
                                             encoder_rate="2x2x4", max_history_tokens=36, history_merge="oldest"))
    data = json.loads(Path(sidecar).read_text())
    assert data["request"]["max_history_tokens"] == 36 and data["request"]["history_merge"] == "oldest"
    assert [s["history_tokens"] for s in data["sections"]][-1] <= 36  # 4 tokens a second, capped
    job = client.predict("", api_name="/status")["jobs"][0]["id"]  # newest first
    recalled, real, info = client.predict(job, 2.0, None, api_name="/recall")
    assert Image.open(recalled).size == Image.open(real).size == (16, 16)
    assert info["latent_frame"] == 8 and info["time_reduction"] > 1 and info["history_tokens"] <= 36
    assert info["psnr"] > 12 and f"PSNR {info['psnr']:.2f} dB" in info["summary"]  # noise would be about 8 dB
    runs = info["layout"]  # what the embedding keeps, as runs of the video
    assert runs[0][0] == 0 and runs[-1][1] == info["seconds"] and all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
    assert next(k for a, b, k in runs if a <= 2.0 < b) == info["time_reduction"]
    with pytest.raises(AppError, match="must be a time in"):
        client.predict(job, 99.0, None, api_name="/recall")
    result(client, generate(client, seconds=0.5))  # the tiny test preset: no trained encoder
    tiny = client.predict("", api_name="/status")["jobs"][0]["id"]
    with pytest.raises(AppError, match="no trained history encoder"):
        client.predict(tiny, 0.0, None, api_name="/recall")
    with pytest.raises(AppError, match="no job"):
        client.predict("no-such-job", 0.0, None, api_name="/recall")


def test_pause_holds_a_job_queued_over_http_and_resume_runs_it(client):
    view = client.predict(api_name="/pause_queue")
    try:
        assert view["paused"] and view["state"].startswith("Queue paused")
        pending = generate(client, prompt="camera pans right while paused")
        until(lambda: [j for j in client.worker.store.jobs() if j.spec.request.prompt == "camera pans right while paused"],
              None, "the job was not queued", every=0.1, limit_s=60)
        waiting_job = next(j for j in client.worker.store.jobs() if j.spec.request.prompt == "camera pans right while paused")
        assert client.predict("", api_name="/status")["paused"]
        until(lambda: not client.worker.models.loaded, None, "the paused queue kept its models", every=0.1, limit_s=30)
        assert waiting_job.status == "queued"
    finally:
        assert not client.predict(api_name="/resume_queue")["paused"]
    video, _ = result(client, pending)
    assert Path(video).is_file() and waiting_job.status == "done"
