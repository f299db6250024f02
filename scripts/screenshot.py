"""Take the README's screenshot: the real app on a preset, a toy storyboard, a few sections in.

    python scripts/screenshot.py [--preset toy-cpu] [--out docs/screenshot.png]
    python scripts/screenshot.py --studio --out docs/screenshot-studio.png   # LoRA pickers, a video extended from memory

Needs Debian's chromium and Playwright (installed by ``scripts/install.sh --test``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="toy-cpu")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    ap.add_argument("--prompt", default="0s: camera pans right; 6s: camera pans left; 12s: camera holds")
    ap.add_argument("--seconds", default="14")
    ap.add_argument("--studio", action="store_true", help="finish a short video, extend it from the Gallery, LoRAs open")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    outputs = ROOT / "outputs" / "screenshot"
    proc = subprocess.Popen([sys.executable, "app.py", "--preset", args.preset, "--port", str(port), "--outputs", str(outputs)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            if args.studio:
                studio(page, args.prompt)
            else:
                generate(page, args.prompt, args.seconds)
                page.locator("#fph-progress").get_by_text("section 9/").wait_for(timeout=120_000)
                page.evaluate("window.scrollTo(0, 0)")
                page.wait_for_timeout(1500)
                page.screenshot(path=args.out)
            if args.studio:
                page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"wrote {args.out}")


def generate(page, prompt: str, seconds: str) -> None:
    """Fill the prompt and length and press Generate."""
    page.get_by_label("Prompt or storyboard").fill(prompt)
    box = page.get_by_label("number input for Length (seconds)")
    box.fill(seconds)
    box.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()


def studio(page, prompt: str) -> None:
    """A 4 s video finished, then extended by 6 s from its saved history in the Gallery; the LoRA pickers open."""
    generate(page, prompt.split(";")[0], "4")
    page.locator("#fph-progress .fph-status.done").wait_for(timeout=120_000)
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#fph-extend").wait_for(timeout=10_000)
    page.locator("button.thumbnail-item").first.click()
    page.get_by_label("Extend with storyboard").fill(prompt)
    page.get_by_label("Seconds to add").fill("6")
    page.locator("#fph-extend").click()
    page.locator("#fph-progress").get_by_text("extends").wait_for(timeout=60_000)
    page.get_by_text("LoRAs", exact=True).first.click()
    page.locator("#fph-progress").get_by_text("section 8/").wait_for(timeout=120_000)
    page.wait_for_timeout(1500)


if __name__ == "__main__":
    main()
