"""The Sweep accordion in a real browser: two seeds queued from the form, then the grid of their last frames, captioned."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.app_process import running_app  # noqa: E402
from tests.ui.test_browser import ARGS, CHROMIUM, STALL_MS  # noqa: E402

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and shutil.which("ffprobe")), reason="needs chromium and ffmpeg")


def test_queue_a_seed_sweep_and_see_its_grid(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("sweep") / "outputs"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with running_app("tests/presets/tiny-toy.toml", outputs, tmp_path_factory.mktemp("log") / "app.log", env) as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.get_by_label("Prompt or storyboard").fill("camera pans left")
        page.locator("#fph-sweep").get_by_text("Sweep: several seeds").click()
        page.locator("#fph-sweep-seeds textarea").fill("1, 2")
        page.locator("#fph-sweep-queue").click()
        expect(page.locator("#fph-sweep-status")).to_contain_text("2 jobs queued")
        expect(page.locator("#fph-sweep-status")).to_contain_text("2 of 2 finished", timeout=STALL_MS)
        grid = page.locator("#fph-sweep-grid")
        expect(grid.locator(".thumbnail-item")).to_have_count(2, timeout=STALL_MS)
        expect(grid).to_contain_text("seed=1")
        expect(grid).to_contain_text("seed=2")
        browser.close()
