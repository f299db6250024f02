"""Take the README's screenshot: the real app on a preset, a toy storyboard, a few sections in.

    python scripts/screenshot.py [--preset toy-cpu] [--out docs/screenshot.png]

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
            page.get_by_label("Prompt or storyboard").fill(args.prompt)
            box = page.get_by_label("number input for Length (seconds)")
            box.fill(args.seconds)
            box.press("Enter")
            page.get_by_role("button", name="Generate", exact=True).click()
            page.locator("#fph-progress").get_by_text("section 9/").wait_for(timeout=120_000)
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(1500)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
