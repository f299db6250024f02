"""The real app, started on a free port: in a subprocess for browser tests, or in this process with an API client."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.waiting import cpu_progress, until

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(preset: str, outputs: Path, log_path: Path, env: dict[str, str], stall_s: float | None = None,
                extra: tuple[str, ...] = ()) -> Iterator[str]:
    """``python app.py --preset PRESET [EXTRA...]`` until the block ends; yields its URL.

    The test fails if the app exits before it answers, or stops using the CPU for ``stall_s`` seconds
    (``tests.waiting.STALL_S``) without answering.
    """
    port = free_port()
    log = open(log_path, "w+")  # noqa: SIM115 (outlives this statement)
    proc = subprocess.Popen([sys.executable, "app.py", "--preset", preset, "--port", str(port), "--outputs", str(outputs), *extra],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def log_tail() -> str:
        log.flush()
        log.seek(0)
        return log.read()[-3000:]

    def answers() -> bool:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return True
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"app did not start:\n{log_tail()}")
            return False

    try:
        # a busy machine starts it slower: wait while it works (imports, model set-up), not for a fixed time
        until(answers, cpu_progress(proc.pid), lambda: f"app did not start:\n{log_tail()}", stall_s=stall_s,
              every=0.5, limit_s=600)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def app_client(tmp_path_factory: pytest.TempPathFactory, *argv: str) -> Iterator:
    """The app started in this process with ``argv`` (a free port, outputs in a temp folder) and a gradio client.

    The client carries the app's ``worker`` (tests follow its jobs' progress) and ``outputs`` (``/status``
    names files relative to it).
    """
    from gradio_client import Client

    from framepack_history import app

    outputs = tmp_path_factory.mktemp("api-outputs") / "outputs"
    with pytest.MonkeyPatch.context() as mp:  # start() points gradio at a temp folder of its own
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        args = app.prepare([*argv, "--port", str(free_port()), "--outputs", str(outputs)])
        demo, worker, url, _ = app.start(args)
        try:
            c = Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
            c.worker, c.outputs = worker, outputs
            yield c
        finally:
            demo.close()
            worker.stop(timeout=10)
