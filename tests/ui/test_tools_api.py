"""``/tool`` over HTTP: an uploaded video, then a finished job picked by id; bad input refused by name."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from framepack_history.generation.finishing import inspect_video
from framepack_history.generation.video import count_frames, write_segment
from tests.app_process import app_client
from tests.ui.test_app_api import ROOT, TINY

sys.path.insert(0, str(ROOT))  # app.py lives at the top level
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with app_client(tmp_path_factory, "--preset", TINY) as c:
        yield c


def test_tool_on_an_upload_then_on_the_finished_job(client, tmp_path):
    from gradio_client import handle_file

    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    src = write_segment(frames, tmp_path / "mine.mp4", fps=4)
    view, video = client.predict("upscale", None, [handle_file(str(src))], {"scale": 2, "method": "bicubic"}, True,
                                 api_name="/tool")
    assert view["status"] == "done" and view["tool"]["name"] == "upscale"
    assert view["tool"]["settings"] == {"scale": 2, "method": "bicubic"} and view["tool"]["sources"] == ["mine.mp4"]
    assert inspect_video(video).size == (64, 64) and count_frames(video) == 4
    assert not view["folder"].startswith("/")  # relative to outputs/, as /status shows jobs

    # a Gallery pick: the finished job's id; queued and followed through /status
    queued, none = client.predict("interpolate", view["id"], None, {"factor": 2}, False, api_name="/tool")
    assert none is None and queued["status"] in ("queued", "running", "done")
    job = client.worker.store.get(queued["id"])
    while not job.terminal:
        job = client.worker.store.wait(job.id, job.version, 5.0)
    status = client.predict(queued["id"], api_name="/status")
    assert status["status"] == "done", status["message"]
    assert count_frames(client.outputs / status["video"]) == 8


@pytest.mark.parametrize(("args", "words"), [
    (("upscale", None, "UPLOAD", {"scale": 3}), "scale: must be 2 or 4"),
    (("upscale", None, "UPLOAD", {"method": "x4.pth"}), "method: x4.pth is a pickle"),
    (("upscale", None, "UPLOAD", {"scael": 2}), "settings: upscale has no setting 'scael'"),
    (("upscale", None, "UPLOAD", {"scale": 4, "method": "esrgan", "model": "x4.pth"}), "model: x4.pth is a pickle"),
    (("interpolate", None, "UPLOAD", {"method": "rife", "model": "rife-4.26"}), "model: rife-4.26 is not downloaded yet"),
    (("interpolate", "no-such-job", None, {}), "job: no"),
    (("join", None, "UPLOAD", {}), "input: join needs at least two videos"),
])
def test_bad_input_is_refused_before_queueing(client, tmp_path, args, words):
    from gradio_client import handle_file

    src = write_segment(np.zeros((3, 32, 32, 3), np.uint8), tmp_path / "a.mp4", fps=4)
    before = len(client.worker.store.jobs())
    files = [handle_file(str(src))] if args[2] == "UPLOAD" else None
    with pytest.raises(Exception, match=words):
        client.predict(args[0], args[1], files, args[3], False, api_name="/tool")
    assert len(client.worker.store.jobs()) == before


def test_the_tools_tab_runs_on_the_gallery_pick(tmp_path):
    import gradio as gr

    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.handlers import Handlers
    from framepack_history.ui.tools_api import ToolsApi

    worker = Worker(tmp_path / "outputs", preview_every_s=0.0).start()
    try:
        src = write_segment(np.zeros((3, 32, 32, 3), np.uint8) + 60, tmp_path / "a.mp4", fps=4)
        first = worker.submit_tool("loop", {"mode": "pingpong"}, files=[str(src)])
        while not first.terminal:
            worker.store.wait(first.id, first.version, 5.0)
        h = Handlers(worker, TINY, [TINY])
        (picked, caption), = h.gallery()
        assert "loop mode=pingpong" in caption
        tools = ToolsApi(h)
        # every tool's settings, in PAGE_FIELDS order: loop's mode, fade_frames; export's format, quality;
        # upscale's scale, method, model; interpolate's factor, method, model (a model only read for esrgan/rife)
        values = ("pingpong", 8.0, "h264", None, 2, "bicubic", "realesr-animevideov3", 4, "blend", "rife-4.26")
        job_id, box = tools.page_tool(picked, "interpolate", "", *values)
        assert job_id in box and "plan" not in box
        job = worker.store.get(job_id)
        while not job.terminal:
            job = worker.store.wait(job_id, job.version, 5.0)
        assert job.status == "done", job.message
        assert count_frames(job.video) == 4 * 4 and job.segments == [job.video]  # the stage's player plays it
        assert h.plan_md(job).startswith("**interpolate**")
        with pytest.raises(gr.Error, match="pick a video in the Gallery first"):
            tools.page_tool(None, "upscale", "", *values)
        with pytest.raises(gr.Error, match="join needs at least two videos"):
            tools.page_tool(picked, "join", "", *values)
    finally:
        worker.stop(timeout=10)
