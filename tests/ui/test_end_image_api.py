"""The end image on the page's handlers and in ``/generate``: taken on the original model's loop, refused elsewhere,
its strength restored by Reuse settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framepack_history.config.presets import load_preset
from framepack_history.ui.plan import KEYFRAME_SLOTS
from tests.app_process import free_port
from tests.backbones.tiny_framepack import save_image, save_tiny
from tests.conftest import TINY_TOY

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
SIZE = 64
KEYFRAME_OUTPUTS = 1 + 3 * KEYFRAME_SLOTS  # the keyframe list and its rows, after the end image's two (memory controls and borrow follow)
TOY = str(TINY_TOY)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``/generate`` on its own inputs, offering a tiny preset with ``model.loop = "inverted"`` and the tiny toy."""
    import gradio as gr
    from gradio_client import Client

    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.api import generate_inputs
    from framepack_history.ui.handlers import Handlers

    root = tmp_path_factory.mktemp("end-image-api")
    inverted = str(save_tiny(root, SIZE, 1, loop="inverted"))
    worker = Worker(root / "outputs", jobs_dir=root / "jobs").start()
    h = Handlers(worker, inverted, [inverted, TOY], temp_dir=root / "tmp")
    with gr.Blocks() as demo:
        files = [gr.File(visible=False, label="video"), gr.File(visible=False, label="sidecar")]
        gr.Button(visible=False).click(h.api_generate, generate_inputs(), files, api_name="generate",
                                       concurrency_limit=None, preprocess=False)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            allowed_paths=[str(root / "outputs")], quiet=True)
    try:
        yield {"handlers": h, "worker": worker, "inverted": inverted,
               "start": save_image(root / "start.png", SIZE, 0), "end": save_image(root / "end.png", SIZE, 1),
               "client": Client(url, verbose=False, download_files=str(root / "downloads"))}
    finally:
        demo.close()
        worker.stop(timeout=10)


@pytest.fixture(scope="module")
def ended(served) -> dict:
    """A job on the inverted preset with an end image at strength 0.5, through ``/generate``: its sidecar."""
    from gradio_client import handle_file

    _, sidecar = served["client"].predict(prompt="a fox", start_image=handle_file(served["start"]),
                                          end_image=handle_file(served["end"]), end_frame_strength=0.5, seconds=1.0,
                                          preset=served["inverted"], api_name="/generate")
    return {"path": sidecar, "data": json.loads(Path(sidecar).read_text())}


def test_generate_takes_an_end_image_on_the_original_models_loop(served, ended) -> None:
    request = ended["data"]["request"]
    assert request["end_frame_strength"] == 0.5
    kept = Path(request["end_image"])
    assert kept.name == "end_image.png"  # the upload, kept in the job's folder
    job = next(j for j in served["worker"].store.jobs() if j.spec.request.end_image)
    assert job.status == "done" and Path(job.spec.request.end_image).read_bytes() == Path(served["end"]).read_bytes()


def test_generate_refuses_an_end_image_on_the_toy_and_keeps_serving(served) -> None:
    from gradio_client import handle_file

    client = served["client"]
    with pytest.raises(Exception, match="needs the original model: presets framepack-original-12gb"):
        client.predict(prompt="camera holds", start_image=handle_file(served["start"]), end_image=handle_file(served["end"]),
                       seconds=0.5, preset=TOY, steps=1, api_name="/generate")
    video, _ = client.predict(prompt="camera holds", seconds=0.5, preset=TOY, steps=1, api_name="/generate")
    assert Path(video).stat().st_size > 0


def test_page_strength_counts_only_with_an_end_image(served) -> None:
    h = served["handlers"]
    # the page's slider always sends its value: without an end image it is no request field
    spec = h.spec("a fox", served["start"], None, 1.0, 0, served["inverted"], end_image=None, end_frame_strength=1.0)
    assert spec.request.end_image is None and spec.request.end_frame_strength is None
    spec = h.spec("a fox", served["start"], None, 1.0, 0, served["inverted"], end_image=served["end"],
                  end_frame_strength=0.25)
    assert spec.request.end_image == served["end"] and spec.request.end_frame_strength == 0.25


def test_reuse_settings_restores_the_end_frame_strength(served, ended) -> None:
    from framepack_history.ui.plan import end_image_updates
    from framepack_history.ui.reuse import form_values

    h = served["handlers"]
    values, notes = form_values(ended["path"], h.presets, h.default_preset)
    assert values["end_frame_strength"] == 0.5 and values["preset"] == served["inverted"]
    assert any("end image; upload it again" in n for n in notes)  # a sidecar's path is never served back
    image, strength = h.reuse_settings(None, ended["path"])[-4 - KEYFRAME_OUTPUTS:-2 - KEYFRAME_OUTPUTS]
    assert image["visible"] is True and "value" not in image  # the form keeps what the user uploaded
    assert strength["visible"] is True and strength["value"] == 0.5
    # a preset that refuses end images hides both and empties them
    image, strength = end_image_updates(load_preset(TOY))
    assert image["visible"] is False and image["value"] is None and strength["visible"] is False


def test_preset_defaults_show_the_end_image_on_the_original_models_loop_only(served) -> None:
    h = served["handlers"]
    ends = slice(-2 - KEYFRAME_OUTPUTS, -KEYFRAME_OUTPUTS)  # the keyframe list's updates come last
    assert [u["visible"] for u in h.preset_defaults(served["inverted"])[ends]] == [True, True]
    assert [u["visible"] for u in h.preset_defaults(TOY)[ends]] == [False, False]
