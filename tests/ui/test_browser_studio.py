"""The shared studio in a real browser: each user's page shows only their own jobs; the Queue tab names the device."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.app_process import running_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
USERS = {"alice": "alice-pass", "bob": "bob-pass"}
pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and shutil.which("ffprobe")), reason="needs chromium and ffmpeg")


def logged_in(browser: Browser, url: str, user: str) -> Page:
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(USERS[user])
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#fph-progress")).to_be_visible()
    return page


def test_each_user_sees_only_their_own_jobs(tmp_path):
    from gradio_client import Client

    accounts = tmp_path / "auth.txt"
    accounts.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    extra = ("--auth", str(accounts), "--devices", "cpu,cpu")
    with running_app("tests/presets/tiny-toy.toml", tmp_path / "outputs", tmp_path / "app.log", env, extra=extra) as url:
        alice = Client(url, auth=("alice", USERS["alice"]), verbose=False, download_files=str(tmp_path / "dl"))
        alice.predict(prompt="alice's storyboard", seconds=0.5, seed=1, steps=1,  # the launch preset
                      api_name="/generate")
        job = alice.predict("", api_name="/status")["jobs"][0]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                mine = logged_in(browser, url, "alice")
                expect(mine.locator("#fph-progress code")).to_have_text(job["id"])  # re-attached to her job
                expect(mine.locator("#fph-queue")).to_contain_text(job["id"])
                expect(mine.locator("#fph-queue")).to_contain_text(f"cpu #{job['worker']}")
                theirs = logged_in(browser, url, "bob")
                expect(theirs.locator("#fph-progress")).to_contain_text("No job yet")
                theirs.wait_for_timeout(2500)  # the queue table refreshes on a 2 s timer
                expect(theirs.locator("#fph-queue")).to_contain_text("device")  # the table is there, without her job
                assert job["id"] not in theirs.locator("#fph-queue").inner_text()
                assert "alice's storyboard" not in theirs.content()
            finally:
                browser.close()
