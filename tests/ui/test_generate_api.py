"""``/generate`` takes named parameters (from the field table), in any order, independent of the page's widgets."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from framepack_history.config.fields import FIELDS
from framepack_history.config.presets import load_preset
from tests.app_process import free_port
from tests.conftest import TINY_TOY

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
TINY = str(TINY_TOY)
#: /generate's parameters before the table, in their positional order (HTTP clients may send them by position)
OLD_PARAMETERS = ["prompt", "start_image", "continue_video", "seconds", "seed", "preset", "steps", "guidance", "shift",
                  "encoder_rate", "history_mode", "window_frames", "history_guidance", "start_frame", "max_history_tokens",
                  "lora_1", "lora_weight_1", "lora_2", "lora_weight_2", "lora_3", "lora_weight_3", "cache", "history_merge"]
#: appended since, in the table's order
NEW_PARAMETERS = ["end_image", "end_frame_strength", "keyframe_images", "keyframe_times", "memory", "borrow"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A page with only ``/generate`` (its own inputs, no page widgets), a started worker, and a client."""
    import gradio as gr
    from gradio_client import Client

    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.api import generate_inputs
    from framepack_history.ui.handlers import Handlers

    root = tmp_path_factory.mktemp("generate-api")
    worker = Worker(root / "outputs", jobs_dir=root / "jobs").start()
    h = Handlers(worker, TINY, [TINY, "toy-cpu"], temp_dir=root / "tmp")
    with gr.Blocks() as demo:
        files = [gr.File(visible=False, label="video"), gr.File(visible=False, label="sidecar")]
        gr.Button(visible=False).click(h.api_generate, generate_inputs(), files, api_name="generate",
                                       concurrency_limit=None, preprocess=False)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            allowed_paths=[str(root / "outputs")], quiet=True)
    try:
        yield {"demo": demo, "client": Client(url, verbose=False, download_files=str(root / "downloads"))}
    finally:
        demo.close()
        worker.stop(timeout=10)


def test_the_parameters_are_the_tables_in_their_old_order():
    from framepack_history.ui.api import ApiHandlers

    params = [n for n in inspect.signature(ApiHandlers.api_generate).parameters if n not in ("self", "request")]
    assert params == OLD_PARAMETERS + NEW_PARAMETERS
    assert {row.api for row in FIELDS if row.api} <= set(params)
    assert [n for n in params if n in {row.api for row in FIELDS}] == [row.api for row in FIELDS if row.api]


def test_the_endpoint_documents_its_own_inputs(served):
    info = served["demo"].get_api_info()["named_endpoints"]["/generate"]["parameters"]
    assert [p["parameter_name"] for p in info] == OLD_PARAMETERS + NEW_PARAMETERS
    assert all(p["parameter_has_default"] for p in info)  # every setting left out is the preset's
    by_name = {p["parameter_name"]: p for p in info}
    assert by_name["history_merge"]["label"] == "Cap merges" and by_name["max_history_tokens"]["label"] == "History-token cap"
    assert by_name["seconds"]["parameter_default"] == 5.0 and by_name["steps"]["parameter_default"] is None


def _sidecar(client, **named) -> dict:
    _, sidecar = client.predict(api_name="/generate", **named)
    return json.loads(Path(sidecar).read_text())


def test_named_parameters_in_any_order_make_the_same_request(served):
    client = served["client"]
    named = {"prompt": "camera holds", "seconds": 0.5, "seed": 4, "preset": TINY, "steps": 1, "history_merge": "oldest",
             "max_history_tokens": 0, "cache": "off"}
    first = _sidecar(client, **named)
    second = _sidecar(client, **dict(reversed(list(named.items()))))
    assert first["request"] == second["request"] and first["settings"] == second["settings"]
    assert first["request"]["history_merge"] == "oldest" and first["request"]["seed"] == 4
    preset = load_preset(TINY)  # what was left out is the preset's
    assert first["request"]["guidance"] is None and first["settings"]["guidance"] == preset.sampling.guidance
    assert first["settings"]["history_mode"] == preset.history.mode


def test_errors_name_the_requests_fields(served):
    from gradio_client.exceptions import AppError

    client = served["client"]
    base = {"prompt": "camera holds", "seconds": 0.5, "preset": TINY, "steps": 1}
    with pytest.raises(AppError, match="history-merge: must be one of similar, oldest"):
        client.predict(api_name="/generate", **{**base, "history_merge": "newest"})
    with pytest.raises(AppError, match="max-history-tokens: must be a whole number"):
        client.predict(api_name="/generate", **{**base, "max_history_tokens": 2.5})
