"""The page in a real browser: sections stream into one growing player, cancel, reload re-attach.

Starts ``python app.py --preset tests/presets/tiny-toy.toml`` on a free port and
drives Debian's chromium through Playwright. Jobs are slowed down with many
denoising steps so that growth is observable on two CPU cores.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from tests.app_process import ROOT, running_app  # noqa: E402
from tests.waiting import STALL_S, until  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = ROOT / "tests" / "artifacts"
PLAYER = """() => { const v = document.querySelector('#fph-player video');
  return v ? {duration: isFinite(v.duration) ? v.duration : 0, ready: v.readyState} : {duration: 0, ready: 0}; }"""
STALL_MS = STALL_S * 1000  # what a wait for one page event allows (it ends when the event comes)
TERMINAL = ("done", "failed", "cancelled")

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and shutil.which("ffprobe")), reason="needs chromium and ffmpeg")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real app in a subprocess; yields its URL and outputs folder."""
    outputs = tmp_path_factory.mktemp("outputs")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with running_app("tests/presets/tiny-toy.toml", outputs, tmp_path_factory.mktemp("log") / "app.log", env) as url:
        yield url, outputs


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        pg.set_default_timeout(30_000)
        pg.goto(server[0])
        yield pg
        browser.close()


def start_job(page: Page, prompt: str, seconds: int, steps: int) -> str:
    """Fill the form, press Generate, return the new job's id (shown in the progress box)."""
    page.get_by_label("Prompt or storyboard").fill(prompt)
    seconds_box = page.get_by_label("number input for Length (seconds)")
    seconds_box.fill(str(seconds))
    seconds_box.press("Enter")
    adv = page.get_by_label("Steps")
    if not adv.is_visible():
        page.get_by_text("Advanced").click()
    adv.fill(str(steps))
    adv.press("Tab")
    code = page.locator("#fph-progress code")
    before = code.all_inner_texts()
    page.get_by_role("button", name="Generate", exact=True).click()

    def new_job() -> str | None:
        now = code.all_inner_texts()
        return now[0] if now and now != before else None

    return until(new_job, what="no new job appeared after Generate", every=0.1)


def status(page: Page) -> str:
    return page.locator("#fph-progress .fph-status").inner_text().strip().lower()


def progress(page: Page) -> tuple[str, ...]:
    """How far the job on the page has come: its status, section and step (not the ETA, which moves by itself)."""
    line = page.locator("#fph-progress").inner_text()
    return (status(page) if page.locator("#fph-progress .fph-status").count() else "",
            *re.findall(r"section \d+/\d+|step \d+/\d+", line))


def until_finished(page: Page, sample=None) -> str:
    """Wait while the page's job moves on, until it is done, failed or cancelled; returns that status.

    ``sample()`` (if given) runs at every look, and its value counts as progress too (a growing player).
    """
    seen: list = [None]

    def finished() -> str | None:
        seen[0] = sample() if sample else None
        st = status(page)
        return st if st in TERMINAL else None

    return until(finished, lambda: (progress(page), seen[0]), lambda: f"the job did not finish: {progress(page)}", every=0.25)


def test_first_screen_shows_the_idle_progress_and_the_plan(page):
    """Nothing to follow yet: the page's load events leave the idle message and the plan in place."""
    page.wait_for_timeout(3000)  # after the load events (attach, follow, preset defaults)
    expect(page.locator("#fph-progress")).to_contain_text("No job yet")
    expect(page.locator("#fph-plan")).to_contain_text("history tokens")


def test_bad_input_shows_a_message(page):
    page.get_by_label("Prompt or storyboard").fill("5s: a cat; 2s: a dog")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text("storyboard times must increase").first).to_be_visible(timeout=15_000)


def toy_world_image(path: Path) -> Path:
    """A frame of the toy world, enlarged, as a start image."""
    from PIL import Image

    from framepack_history.backbones.toyworld import start_frame

    Image.fromarray(start_frame(3)).resize((256, 256), Image.Resampling.NEAREST).save(path)
    return path


def test_sections_stream_into_one_growing_player(page, server, tmp_path):
    page.locator("#fph-image input[type=file]").set_input_files(str(toy_world_image(tmp_path / "start.png")))
    expect(page.locator("#fph-image img").first).to_be_visible()
    # 4 sections, ~1 s each here: three growths of the player to see while it runs
    job = start_job(page, "0s: camera pans right; 1s: camera holds", seconds=2, steps=200)
    samples = []  # (status, duration, readyState) while the job runs

    def sample() -> float:
        info = page.evaluate(PLAYER)
        samples.append((status(page), info["duration"], info["ready"]))
        return info["duration"]

    until_finished(page, sample)  # as long as it takes, while sections and steps advance
    sample()
    assert samples[-1][0] == "done", samples[-5:]
    running = [(d, r) for st, d, r in samples if st == "running"]
    playable = [d for d, r in running if d > 0 and r >= 2]
    assert playable, f"the first section never played while the job ran: {running[-5:]}"
    durations = sorted({round(d, 2) for d, _ in running if d > 0})
    assert len(durations) >= 2, f"the player did not grow while the job ran: {durations}"
    # once done, the player holds the whole video (the start frame and 4 sections of 0.5 s)
    expect(page.locator("#fph-progress")).to_contain_text("section 4/4")
    whole = "() => { const v = document.querySelector('#fph-player video'); return !!(v && v.duration >= 1.9); }"
    until(lambda: page.evaluate(whole), lambda: page.evaluate(PLAYER), "the player never held the whole video")
    assert (server[1]).glob(f"*/{job}/video.mp4")
    # a screenshot of the finished page at a desktop size: Advanced folded, scrolled to the top
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.get_by_text("Advanced").click()
    page.evaluate("window.scrollTo(0, 0)")
    queue = page.locator("#fph-queue")  # the queue table refreshes on a 2 s timer: wait for the finished job in it
    until(lambda: job in (text := queue.inner_text()) and "done" in text, what="the queue table never listed the job")
    page.screenshot(path=str(ARTIFACTS / "app-full.png"), full_page=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"))


def test_reload_reattaches_then_cancel(page, server):
    job = start_job(page, "camera pans left", seconds=20, steps=150)  # 40 sections: long enough to reload
    until(lambda: "section 2/" in page.locator("#fph-progress").inner_text(), lambda: progress(page),
          lambda: f"the job never reached its second section: {progress(page)}")
    page.reload()
    # the fresh page finds the running job by itself and replays what is finished
    expect(page.locator("#fph-progress code")).to_have_text(job, timeout=STALL_MS)
    assert status(page) == "running"
    page.wait_for_function("() => { const v = document.querySelector('#fph-player video'); return v && v.duration > 0; }",
                           timeout=STALL_MS)
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#fph-progress .fph-status")).to_have_text("cancelled", ignore_case=True, timeout=STALL_MS)
    # the server lives on: the API still answers and the finished sections are kept
    with urllib.request.urlopen(server[0], timeout=5) as r:
        assert r.status == 200
    folder = next(server[1].glob(f"*/{job}"))
    assert (folder / "video.mp4").is_file() and (folder / "video.json").is_file()


def test_the_plan_follows_the_typed_cap_and_merge_rule(page):
    """Advanced settings: a typed history-token cap and the merge rule reach the memory plan shown."""
    cap = page.locator("#fph-history-cap input")
    if not cap.is_visible():
        page.get_by_text("Advanced").click()
    plan = page.locator("#fph-plan")
    expect(plan).to_contain_text("history tokens", timeout=STALL_MS)
    page.wait_for_timeout(1500)  # the page's load events set the preset's defaults: type after them
    cap.fill("144")
    cap.press("Enter")  # the plan re-plans when the cap is submitted (or the field is left)
    expect(plan).to_contain_text("capped at 144 (similar)", timeout=STALL_MS)
    page.locator("#fph-history-merge").get_by_test_id("oldest-radio-label").click()
    expect(plan).to_contain_text("capped at 144 (oldest)", timeout=STALL_MS)
    cap.fill("0")
    page.locator("#fph-plan").click()  # leaving the field re-plans too
    expect(plan).not_to_contain_text("capped at", timeout=STALL_MS)


def test_a_keyframe_rows_prompt_needs_its_time(page):
    """The Keyframes list (shown for the toy): a row left without a time sends none, so it is refused by name, not
    taken as 0 s (a number field would send 0)."""
    page.locator("#fph-keyframes").get_by_text("Keyframes").first.click()
    prompt = page.locator("#fph-keyframe-prompt-2 input, #fph-keyframe-prompt-2 textarea").first
    expect(page.locator("#fph-keyframe-time-2 input, #fph-keyframe-time-2 textarea").first).to_have_value("")
    page.get_by_label("Prompt or storyboard").fill("camera pans left")
    prompt.fill("camera holds")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text("Keyframes: keyframe 2: give its time in seconds").first).to_be_visible(timeout=15_000)
    prompt.fill("")
