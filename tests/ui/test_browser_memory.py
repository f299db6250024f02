"""The Memory tab in a real browser: pick a finished toy job and a time, see the recalled and the real frame and the PSNR."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.app_process import running_app  # noqa: E402
from tests.ui.test_browser import (  # noqa: E402,F401
    ARGS,
    ARTIFACTS,
    CHROMIUM,
    STALL_MS,
    pytestmark,
    start_job,
    status,
    until_finished,
)


def test_the_memory_tab_recalls_a_frame(tmp_path):
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with running_app("toy-cpu", tmp_path / "outputs", tmp_path / "app.log", env) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        job = start_job(page, "0s: camera pans right; 2s: camera pans left", seconds=4, steps=2)
        until_finished(page)  # as long as it takes, while sections and steps advance
        assert status(page) == "done"
        page.get_by_role("tab", name="Memory").click()
        page.locator("#fph-recall-job input").click()
        page.get_by_role("option", name=job).first.click()  # labelled by id, status and prompt
        at = page.get_by_label("number input for Time (s)")
        at.fill("1.5")
        at.press("Enter")
        page.get_by_role("button", name="Recall", exact=True).click()
        psnr = page.locator("#fph-recall-psnr")
        expect(psnr).to_contain_text("PSNR", timeout=STALL_MS)
        assert "latent frame 6" in psnr.inner_text()
        assert "memory: 0-" in psnr.inner_text() and "full detail" in psnr.inner_text()  # what the embedding keeps
        expect(page.locator("#fph-recalled img")).to_be_visible()
        expect(page.locator("#fph-real img")).to_be_visible()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator("#fph-memory").screenshot(path=str(ARTIFACTS / "memory-tab.png"))
        browser.close()
