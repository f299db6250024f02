"""The page's first screen and Download button in a real browser, against the stand-in hub.

``python app.py --preset tests/presets/tiny-hub.toml`` starts with an empty
Hugging Face cache and network access to the stand-in (no HF_HUB_OFFLINE).
The first screen names the preset, the missing weights and their size;
Generate is refused with the download command; Download fetches them with
progress; then the same Generate makes a video.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.app_process import running_app
from tests.hub_standin import F1, HubStandIn, save_tiny_repos
from tests.ui.test_browser import ARGS, CHROMIUM, PLAYER, STALL_MS, until_finished
from tests.waiting import until

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs chromium")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    save_tiny_repos(root)
    home = tmp_path_factory.mktemp("hf")
    with HubStandIn(root) as hub:
        hub.cut[f"{F1}/diffusion_pytorch_model.safetensors"] = [4096]  # one cut connection on the way
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
        env.update(GRADIO_ANALYTICS_ENABLED="False", HF_ENDPOINT=hub.url, HF_HOME=str(home), OMP_NUM_THREADS="1")
        with running_app("tests/presets/tiny-hub.toml", tmp_path_factory.mktemp("outputs"),
                         tmp_path_factory.mktemp("log") / "app.log", env) as url:
            yield url, hub, home


def test_first_screen_download_button_then_a_video(app):
    url, hub, home = app
    from framepack_history.hub.download import human

    wanted = sum(row["size"] for repo in ("tiny/framepack-f1", "tiny/hunyuanvideo", "tiny/redux")
                 for row in hub.info(repo)["siblings"]
                 if row["rfilename"].endswith((".json", ".safetensors", ".txt")) and "transformer/" not in row["rfilename"]
                 and "image_embedder/" not in row["rfilename"] and row["rfilename"] != "model_index.json")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        first = page.locator("#fph-weights")
        expect(first).to_contain_text("Preset tiny-hub runs on the CPU")
        expect(first).to_contain_text("not downloaded")
        expect(first).to_contain_text(f"{human(wanted)} to fetch", timeout=STALL_MS)
        command = re.compile(r"python -m framepack_history download --preset \S*tests/presets/tiny-hub\.toml")
        expect(first).to_contain_text(command)
        button = page.locator("#fph-download")
        expect(button).to_be_visible()

        # Generate before the weights are here: refused at once, naming the command; nothing is fetched.
        page.get_by_label("Prompt or storyboard").fill("a fox in the snow")
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.get_by_text("weights not downloaded yet").first).to_be_visible(timeout=STALL_MS)
        assert not [p for m, p, _ in hub.log if m == "GET" and "/resolve/" in p]

        button.click()
        progress = page.locator("#fph-download-progress")
        until(lambda: re.search("download (finished|stopped)", progress.inner_text()), progress.inner_text,  # bytes move on
              lambda: f"the download did not finish: {progress.inner_text()}")
        expect(progress).to_contain_text("download finished")
        expect(progress).to_contain_text(f"{human(wanted)} / {human(wanted)}")
        expect(first).to_contain_text("Weights: downloaded")
        expect(button).to_be_hidden()
        assert hub.ranges("GET", F1, "diffusion_pytorch_model.safetensors") == [None, "bytes=4096-"]
        assert (home / "hub" / "models--tiny--framepack-f1" / "refs" / "main").is_file()

        page.get_by_role("button", name="Generate", exact=True).click()
        status = page.locator("#fph-progress .fph-status")
        expect(status).to_be_visible(timeout=STALL_MS)  # the job is on the page ...
        until_finished(page)  # ... and runs as long as it takes, while sections and steps advance
        assert status.inner_text().strip().lower() == "done", page.locator("#fph-progress").inner_text()
        page.wait_for_function("() => { const v = document.querySelector('#fph-player video'); return v && v.duration > 0; }",
                               timeout=STALL_MS)
        assert page.evaluate(PLAYER)["duration"] > 0
        browser.close()
