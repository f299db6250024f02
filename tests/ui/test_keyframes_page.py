"""Keyframes on the page's handlers (rows of image, time, prompt), in ``/generate`` (keyframe_images with keyframe_times),
in Reuse settings (times and prompts back, never a path) and the preset's choice showing or hiding the list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framepack_history.config.presets import load_preset
from framepack_history.lora.files import sha256
from framepack_history.ui.plan import KEYFRAME_SLOTS, keyframe_updates
from tests.app_process import free_port
from tests.conftest import TINY_TOY

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
TINY = str(TINY_TOY)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``/generate`` on its own inputs with the tiny toy, a started worker, a client, and three images."""
    import gradio as gr
    from gradio_client import Client

    from framepack_history.jobs.worker import Worker
    from framepack_history.ui.api import generate_inputs
    from framepack_history.ui.handlers import Handlers

    root = tmp_path_factory.mktemp("keyframes-api")
    images = {}
    for i, name in enumerate(("start", "door", "garden")):
        Image.fromarray((np.random.default_rng(i).random((40, 56, 3)) * 255).astype(np.uint8)).save(root / f"{name}.png")
        images[name] = str(root / f"{name}.png")
    (root / "broken.png").write_bytes(b"no image here")
    images["broken"] = str(root / "broken.png")
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
        yield {"handlers": h, "worker": worker, "images": images,
               "client": Client(url, verbose=False, download_files=str(root / "downloads"))}
    finally:
        demo.close()
        worker.stop(timeout=10)


@pytest.fixture(scope="module")
def keyed(served) -> dict:
    """A job through ``/generate`` with two keyframes, one with its prompt as a storyboard entry: its sidecar."""
    from gradio_client import handle_file

    im = served["images"]
    _, sidecar = served["client"].predict(prompt="0s: camera pans left; 0.5s: camera holds", seconds=1.0, steps=1,
                                          preset=TINY, keyframe_images=[handle_file(im["door"]), handle_file(im["garden"])],
                                          keyframe_times=[0.5, 1.0], api_name="/generate")
    return {"path": sidecar, "data": json.loads(Path(sidecar).read_text())}


def test_generate_takes_keyframe_images_and_times(served, keyed):
    data, im = keyed["data"], served["images"]
    assert [(k["time"], k["file"], k["sha256"]) for k in data["keyframes"]] == [
        (0.5, "door.png", sha256(Path(im["door"]))), (1.0, "garden.png", sha256(Path(im["garden"])))]
    kept = [Path(k["image"]) for k in data["request"]["keyframes"]]
    assert [p.name for p in kept] == ["keyframe_0.png", "keyframe_1.png"]  # the uploads, kept in the job's folder
    assert kept[1].read_bytes() == Path(im["garden"]).read_bytes()


def test_generate_refuses_bad_keyframes_naming_them(served):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, im = served["client"], served["images"]
    base = {"prompt": "camera holds", "seconds": 1.0, "preset": TINY, "steps": 1, "api_name": "/generate"}
    with pytest.raises(AppError, match=r"keyframe: 2 keyframe image\(s\) and 1 time\(s\)"):
        client.predict(**base, keyframe_images=[handle_file(im["door"]), handle_file(im["garden"])], keyframe_times=[0.5])
    with pytest.raises(AppError, match=r"keyframe: keyframe at 1s \(\[broken.png\]\): broken.png is not a readable image"):
        client.predict(**base, keyframe_images=[handle_file(im["broken"])], keyframe_times="1")
    with pytest.raises(AppError, match=r"keyframe: keyframe at 3s \(\[door.png\]\) is outside the video \(0 to 1s\)"):
        client.predict(**base, keyframe_images=[handle_file(im["door"])], keyframe_times=[3])
    # a storyboard sent here names no server file: the images are uploads
    with pytest.raises(AppError, match=r"prompt: keyframe at 1s \(\[passwd.png\]\): here a storyboard names no files"):
        client.predict(**{**base, "prompt": "0s: a; 1s: [/etc/passwd.png] b"})


def test_page_rows_make_keyframes_and_storyboard_entries(served):
    import gradio as gr

    h, im = served["handlers"], served["images"]
    head = ("a fox", None, None, 2.0, 0, TINY)

    def rows(*given: tuple) -> dict:
        out = {}
        for i, (image, t, text) in enumerate(given, 1):
            out |= {f"keyframe_image_{i}": image, f"keyframe_time_{i}": t, f"keyframe_prompt_{i}": text}
        return out

    spec = h.spec(*head, **rows((im["door"], "1", "the door opens"), (None, "1.5s", "she walks in"), (im["start"], 0, ""),
                                (None, "", "")))
    r = spec.request
    assert r.prompt == "0s: a fox; 1s: the door opens; 1.5s: she walks in"  # a row without an image is an entry
    assert r.keyframes == [{"time": 1.0, "image": im["door"]}, {"time": 0.0, "image": im["start"]}]
    job = h.worker.submit(spec)
    assert job.spec.request.image.endswith("image.png") and [k["time"] for k in job.spec.request.keyframes] == [1.0]
    h.worker.cancel(job.id)
    with pytest.raises(gr.Error, match=r"Keyframes: keyframe 1 \(door.png\): give its time in seconds"):
        h.submit(*head, *([None] * 19), im["door"], "", "x", page=True)  # the page sends an empty time as ""
    with pytest.raises(gr.Error, match=r"Keyframes: keyframe 2: give its time in seconds"):
        h.submit(*head, *([None] * 19), None, "", "", None, "", "she turns", page=True)
    with pytest.raises(gr.Error, match=r"Keyframes: keyframe 1 \(door.png\): its time must be a number \(got 'soon'\)"):
        h.submit(*head, *([None] * 19), im["door"], "soon", "", page=True)
    assert len([n for n in __import__("inspect").signature(h.spec).parameters if n.startswith("keyframe_")]) == \
        3 * KEYFRAME_SLOTS


def test_reuse_settings_gives_back_times_and_prompts_never_paths(served, keyed):
    from framepack_history.ui.reuse import form_values

    h = served["handlers"]
    values, notes = form_values(keyed["path"], h.presets, h.default_preset)
    assert values["keyframes"] == [(0.5, "camera holds"), (1.0, "")]  # the 0.5 s entry moved into its row
    assert values["prompt"] == "0s: camera pans left"
    assert any("keyframes at 0.5s (door.png), 1s (garden.png)" in n and "upload the images again" in n for n in notes)
    updates = h.reuse_settings(None, keyed["path"])[-(3 + 3 * KEYFRAME_SLOTS):-2]  # then memory controls, borrow
    assert updates[0]["visible"] is True
    assert [u["value"] for u in updates[1::3]] == [None] * KEYFRAME_SLOTS  # no image path handed back
    assert [u["value"] for u in updates[2:7:3]] == ["0.5", "1"] and updates[3]["value"] == "camera holds"
    # resubmitted as it comes back (images uploaded again), the storyboard is the same
    again = h.spec(values["prompt"], None, None, 1.0, 0, TINY, keyframe_image_1=served["images"]["door"],
                   keyframe_time_1=0.5, keyframe_prompt_1="camera holds", keyframe_time_2=1.0, keyframe_prompt_2="")
    assert again.request.prompt == keyed["data"]["request"]["prompt"]


def test_an_f1_preset_refuses_keyframes_before_missing_weights(served):
    """On the page (and the API) as on the command line: the refusal names the original-model presets, even where the
    F1 weights are not downloaded."""
    import gradio as gr

    from framepack_history.ui.handlers import Handlers

    h = Handlers(served["worker"], TINY, [TINY, "rtx4090-24gb"])
    with pytest.raises(gr.Error, match=r"Keyframes: keyframe at 1s \(\[door.png\]\): keyframes need the original model: "
                                       r"presets framepack-original-12gb, framepack-original-24gb or framepack-original-80gb"):
        h.submit("a fox", None, None, 2.0, 0, "rtx4090-24gb", *([None] * 19), served["images"]["door"], "1", "", page=True)


def test_the_list_shows_only_where_the_preset_allows_keyframes():
    shown = keyframe_updates(load_preset(TINY))
    assert shown[0]["visible"] is True and all("value" not in u for u in shown[1:])  # the user's rows stay
    hidden = keyframe_updates(load_preset("rtx4090-24gb"))
    assert hidden[0]["visible"] is False and all(u["value"] in (None, "") for u in hidden[1:])  # and are emptied
    assert keyframe_updates(load_preset("framepack-original-24gb"))[0]["visible"] is True


def test_the_pages_reuse_buttons_fill_as_many_fields_as_reuse_settings_gives(served, keyed):
    """The Gallery's Reuse settings (button and upload) are wired to exactly the values the handler returns."""
    from framepack_history.ui.layout import build_app

    demo = build_app(served["worker"], TINY)
    wired = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "reuse_settings"]
    assert len(wired) == 2
    values = wired[0].fn(None, keyed["path"])
    assert all(len(f.outputs) == len(values) for f in wired)
    assert values[-2:] == ("", "")  # no memory controls, nothing borrowed
