"""The page's memory controls: two text fields after the keyframe rows, read into the request as the API's are."""

from __future__ import annotations

import inspect

import pytest

from framepack_history.config.presets import load_preset
from framepack_history.errors import InputError
from tests.conftest import TINY_TOY

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
TINY = str(TINY_TOY)


def test_the_form_sends_memory_controls_and_borrow_last(tmp_path):
    import gradio as gr

    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.handlers import Handlers
    from framepack_history.ui.tabs.generate import build_form
    from framepack_history.ui.values import request_of

    h = Handlers(Worker(tmp_path / "outputs", jobs_dir=tmp_path / "jobs"), TINY, [TINY], temp_dir=tmp_path / "tmp")
    with gr.Blocks() as demo:
        form = build_form(demo, h, [(TINY, TINY)], TINY, load_preset(TINY))
    params = [n for n in inspect.signature(Handlers.spec).parameters if n != "self"]
    assert len(form.inputs) == len(params) and params[-2:] == ["memory", "borrow"]
    assert form.inputs[-2] is form.memory and form.inputs[-1] is form.borrow
    values = dict.fromkeys(params)
    values.update(prompt="camera pans right", seconds=4, memory="pin 0:1; forget 2-3s\ncut 1.5", borrow="")
    spec = h.spec(*values.values())
    assert spec.request.memory == [{"op": "pin", "start": 0.0, "end": 1.0}, {"op": "forget", "start": 2.0, "end": 3.0},
                                   {"op": "cut", "time": 1.5}]
    assert spec.request.borrow is None
    assert request_of({"prompt": "a", "memory": [{"op": "cut", "time": 2}], "borrow": "job-7"}).memory == [
        {"op": "cut", "time": 2}]
    with pytest.raises(InputError, match="'hold 3' : each entry is|each entry is pin START:END") as e:
        request_of({"prompt": "a", "memory": "hold 3"})
    assert e.value.field == "--memory"
