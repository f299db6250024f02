"""A job's settings are resolved once (``config.fields.resolve``) and recorded: job folder, sidecar, Reuse settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from framepack_history.config.fields import FIELDS, resolve
from framepack_history.config.request import GenerationRequest
from framepack_history.jobs.checkpoint import JobDir
from framepack_history.jobs.render import render
from tests.jobs.test_checkpoint import STORYBOARD, CrashingJobDir, _Crash, decoded


def test_a_job_folder_records_its_settings_and_an_older_folder_still_resumes(toy_pipeline, tmp_path):
    """request.json holds the resolved settings; a folder written before them reads and resumes the same."""
    request = GenerationRequest(prompt=STORYBOARD, seconds=3, seed=5, steps=2, history_merge="oldest")
    render(toy_pipeline, request, tmp_path / "straight.mp4", tmp_path / "seg-a")
    job = CrashingJobDir(tmp_path / "job", "before_commit", section=3)
    job.create(request, toy_pipeline.preset, out=tmp_path / "resumed.mp4")
    saved = json.loads((job.root / "request.json").read_text())
    want = resolve(request, toy_pipeline.preset)
    assert saved["settings"] == want.to_dict() and saved["settings"]["steps"] == 2
    assert saved["settings"]["history_mode"] == toy_pipeline.preset.history.mode
    with pytest.raises(_Crash):
        render(toy_pipeline, request, tmp_path / "resumed.mp4", job.root / "segments", job=job)

    del saved["settings"]  # as a folder written before settings were recorded
    (job.root / "request.json").write_text(json.dumps(saved))
    info = JobDir(job.root).info()
    assert info.settings == want and "settings" not in info.extra
    render(toy_pipeline, info.request, tmp_path / "resumed.mp4", job.root / "segments", job=JobDir(job.root))
    assert np.array_equal(decoded(tmp_path / "resumed.mp4"), decoded(tmp_path / "straight.mp4"))


def test_the_sidecar_says_which_settings_ran(toy_pipeline, tmp_path):
    request = GenerationRequest(prompt="camera holds", seconds=1, seed=2, steps=2, max_history_tokens=160)
    data = render(toy_pipeline, request, tmp_path / "v.mp4", tmp_path / "seg")
    settings = data["settings"]
    assert settings == resolve(request, toy_pipeline.preset).to_dict()
    assert settings["steps"] == 2 and settings["max_history_tokens"] == 160
    assert settings["guidance"] == toy_pipeline.preset.sampling.guidance
    assert set(settings["from_request"]) == {"steps", "max_history_tokens", "loras"}  # LoRAs: resolved (none) by the run
    assert json.loads((tmp_path / "v.json").read_text())["settings"] == settings


def test_reuse_settings_fills_the_form_from_the_table(toy_pipeline, tmp_path):
    """Every form field of the table is restored: the request's, else the preset's, as a job resolves them."""
    from framepack_history.ui.reuse import form_values
    from tests.conftest import TINY_TOY

    request = GenerationRequest(prompt="camera pans left", seconds=1, seed=4, shift=2.5, cache="fast")
    render(toy_pipeline, request, tmp_path / "v.mp4", tmp_path / "seg")
    values, _ = form_values(tmp_path / "v.json", [str(TINY_TOY)], str(TINY_TOY))
    settings = resolve(request, toy_pipeline.preset)
    assert set(values) == {row.form for row in FIELDS if row.form} | {"preset", "encoder_rate"}
    for row in FIELDS:
        # keyframes: rows of time and prompt, never a path (test_keyframes_page); memory controls as the page's text
        # and a borrowed job by its id (test_memory_controls)
        if row.form and row.kind not in ("keyframes", "memory") and row.name != "borrow":
            assert values[row.form] == getattr(settings if row.preset else request, row.name), row.name
    assert values["keyframes"] == [] and values["memory"] == "" and values["borrow"] == ""
    assert values["shift"] == 2.5 and values["cache"] == "fast" and values["steps"] == toy_pipeline.preset.sampling.steps
