"""The Tools tab in a real browser: pick a video in the Gallery, interpolate it, the stage follows the new job."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from framepack_history.generation.video import count_frames, write_segment  # noqa: E402
from tests.app_process import running_app  # noqa: E402
from tests.ui.test_browser import ARGS, CHROMIUM, STALL_MS  # noqa: E402

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and shutil.which("ffprobe")), reason="needs chromium and ffmpeg")


def finished_video(outputs, job_id: str):
    """A finished job as the Gallery lists it: ``outputs/DATE/ID/video.mp4`` with its sidecar and its job folder."""
    folder = outputs / dt.date.today().isoformat() / job_id
    folder.mkdir(parents=True)
    video = write_segment(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), folder / "video.mp4", 4)
    (folder / "video.json").write_text(json.dumps({"request": {"prompt": "camera pans left"}, "seconds": 1.0}))
    jobs = outputs.resolve().parent / "jobs" / job_id
    jobs.mkdir(parents=True)
    (jobs / "request.json").write_text(json.dumps({"format": "tool", "tool": "export", "out": str(video.resolve())}))
    return video


def test_interpolate_the_gallery_pick(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("tools") / "outputs"
    video = finished_video(outputs, "101010-abcdef")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with running_app("tests/presets/tiny-toy.toml", outputs, tmp_path_factory.mktemp("log") / "app.log", env) as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.get_by_role("tab", name="Gallery").click()
        page.locator(".thumbnail-item").first.click(timeout=STALL_MS)
        page.get_by_role("tab", name="Tools").click()
        page.locator("#fph-tool").get_by_text("interpolate", exact=True).click()
        expect(page.get_by_text("Factor (frame rate)")).to_be_visible()
        page.locator("#fph-run-tool").click()
        expect(page.locator("#fph-progress .fph-status")).to_have_text("done", ignore_case=True, timeout=STALL_MS)
        job_id = page.locator("#fph-progress code").inner_text()
        browser.close()
    made = outputs / dt.date.today().isoformat() / job_id / "video.mp4"
    assert count_frames(made) == 8 and count_frames(video) == 4
    assert json.loads(made.with_suffix(".json").read_text())["sources"][0]["job"] == "101010-abcdef"
