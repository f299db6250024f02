"""Pause / Resume queue through the page's handlers and the API's: who may, and what it answers."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from framepack_history.errors import InputError
from framepack_history.jobs.studio import Studio
from framepack_history.jobs.worker import Worker
from framepack_history.ui.handlers import Handlers
from tests.jobs.test_jobs import TINY


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "outputs", max_queue=4, preview_every_s=0.0).start()
    yield w
    w.stop(timeout=30)


def as_user(name: str | None):
    return SimpleNamespace(username=name)


def test_only_an_admin_pauses_a_shared_studio(worker, tmp_path):
    h = Handlers(worker, TINY, studio=Studio(frozenset({"ann", "bob"}), frozenset({"ann"})), temp_dir=tmp_path)
    with pytest.raises(gr.Error, match="only an admin"):
        h.api_pause_queue(as_user("bob"))
    assert not worker.paused
    view = h.api_pause_queue(as_user("ann"))
    assert view["paused"] and worker.paused and "paused" in view["state"]
    assert h.api_status("", as_user("bob"))["paused"]  # everyone sees that the queue is held
    with pytest.raises(gr.Error, match="only an admin"):
        h.api_resume_queue(as_user("bob"))
    assert not h.api_resume_queue(as_user("ann"))["paused"] and not worker.paused


def test_the_local_user_pauses_and_the_buttons_swap(worker, tmp_path):
    h = Handlers(worker, TINY, temp_dir=tmp_path)
    state, pause, resume = h.pause_click(as_user(None))
    assert state.startswith("Queue paused") and pause["visible"] is False and resume["visible"] is True
    state, pause, resume = h.resume_queue_click(as_user(None))
    assert state.startswith("Queue running") and pause["visible"] is True and resume["visible"] is False


def test_unload_after_is_minutes_checked_by_name():
    import app

    assert app.prepare([]).unload_after == 0  # never, unless asked
    assert app.prepare(["--unload-after", "0.5"]).unload_after == 0.5
    for bad in ("-1", "nan"):
        with pytest.raises(InputError, match="minutes"):
            app.prepare(["--unload-after", bad])
    assert "--unload-after" in app.build_parser().format_help()
