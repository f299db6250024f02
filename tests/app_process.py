"""The real app in a subprocess, for browser tests: started on a free port, waited for, stopped."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(preset: str, outputs: Path, log_path: Path, env: dict[str, str], timeout_s: float = 90,
                extra: tuple[str, ...] = ()) -> Iterator[str]:
    """``python app.py --preset PRESET [EXTRA...]`` until the block ends; yields its URL (the test fails if it never answers)."""
    port = free_port()
    log = open(log_path, "w+")  # noqa: SIM115 (outlives this statement)
    proc = subprocess.Popen([sys.executable, "app.py", "--preset", preset, "--port", str(port), "--outputs", str(outputs), *extra],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout_s
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    pytest.fail(f"app did not start:\n{log.read()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
