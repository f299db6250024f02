"""``run-queue FILE``: a saved queue run headless with progress and a summary, resumable after a kill; and
``generate --sweep-*`` refusing a bad cell before anything runs."""

from __future__ import annotations

import json
import zipfile

import pytest

from framepack_history.cli.main import main
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.video import count_frames
from framepack_history.jobs import render as render_module
from framepack_history.jobs.saved_queue import MANIFEST, exportable, write_queue
from framepack_history.jobs.store import JobSpec
from framepack_history.jobs.worker import Worker
from tests.jobs.test_jobs import TINY


@pytest.fixture
def queue_file(tmp_path):
    """Three jobs: two tiny ones (the second of two sections) and one the run refuses (too long for the preset)."""
    w = Worker(tmp_path / "app" / "outputs", max_queue=6, preview_every_s=0.0)
    try:
        for prompt, seconds in (("camera pans left", 0.5), ("camera pans right", 1.0), ("camera moves up", 0.5)):
            w.submit(JobSpec(GenerationRequest(prompt=prompt, seconds=seconds, steps=1), TINY))
        path = write_queue(exportable(w), tmp_path / "saved.zip")
    finally:
        w.stop(timeout=30)
    with zipfile.ZipFile(path) as z:  # the third asks for more than the preset's 20 s: refused when it is reached
        manifest = json.loads(z.read(MANIFEST))
    manifest["jobs"][2]["request"]["seconds"] = 99.0
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MANIFEST, json.dumps(manifest))
    return path


def test_run_queue_resumes_after_a_kill_skipping_the_finished_job(queue_file, tmp_path, monkeypatch, capsys):
    real = render_module.render
    runs = []

    def killed_in_the_second_job(pipeline, request, out, segments_dir, on_event=None, **kw):
        runs.append(request.prompt)
        if len(runs) < 2:
            return real(pipeline, request, out, segments_dir, on_event=on_event, **kw)

        def stop_after_a_section(ev):
            on_event(ev)
            if type(ev).__name__ == "SectionDone":
                raise KeyboardInterrupt  # as a kill would, after the section's checkpoint

        return real(pipeline, request, out, segments_dir, on_event=stop_after_a_section, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(render_module, "render", killed_in_the_second_job)
    assert main(["run-queue", str(queue_file), "--out", str(out)]) == 130
    first = capsys.readouterr()
    assert "[1/3]" in first.out and "done ->" in first.out and "interrupted" in first.err
    state = json.loads((out / "run-queue.json").read_text())
    assert list(state["jobs"]) == ["1"] and state["jobs"]["1"]["status"] == "done"

    runs.clear()
    monkeypatch.setattr(render_module, "render", lambda *a, **kw: (runs.append(a[1].prompt), real(*a, **kw))[1])
    assert main(["run-queue", str(queue_file), "--out", str(out)]) == 1  # the third job fails
    second = capsys.readouterr().out
    assert runs == ["camera pans right"]  # the finished job is skipped, the bad one never renders
    assert "[1/3]" in second and "finished in an earlier run" in second
    assert "resuming after section 1 of 2" in second
    assert "summary: 2 done, 1 failed" in second
    assert "--seconds: 99 s is over the preset's limit" in second
    state = json.loads((out / "run-queue.json").read_text())
    assert [state["jobs"][k]["status"] for k in ("1", "2", "3")] == ["done", "done", "failed"]
    video = state["jobs"]["2"]["video"]  # both sections of the resumed job: 4 frames more than the one-section job
    assert len(json.loads(open(video[:-4] + ".json").read())["sections"]) == 2
    assert count_frames(video) == count_frames(state["jobs"]["1"]["video"]) + 4


@pytest.mark.parametrize(("args", "needle"), [
    (["--sweep-x", "guidance=1,300"], "error: --sweep-x: guidance=300: --guidance: must be a number in [0, 100]"),
    (["--sweep-x", "cache=off,slow", "--sweep-y", "steps=1,2"], "error: --sweep-x: cache=slow · steps=1: --cache:"),
    (["--sweep-x", "colour=1,2"], "error: --sweep-x: 'colour' is not a request field"),
    (["--sweep-seeds", "1,x"], "error: --sweep-seeds: seed='x': must be a number"),
])
def test_a_cli_sweep_with_a_bad_cell_exits_2_before_anything_runs(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(render_module, "render", lambda *a, **kw: pytest.fail("a refused sweep ran a cell"))
    code = main(["generate", "--preset", TINY, "--prompt", "camera pans left", "--seconds", "0.5",
                 "--out", str(tmp_path / "s.mp4"), *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("s*.mp4"))


def test_a_cli_seed_sweep_writes_one_video_per_cell_and_the_grid(tmp_path, capsys):
    from PIL import Image

    code = main(["generate", "--preset", TINY, "--prompt", "camera pans left", "--seconds", "0.5", "--steps", "1",
                 "--quiet", "--out", str(tmp_path / "s.mp4"), "--sweep-seeds", "1,2"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("s-*.mp4")) == ["s-seed=1.mp4", "s-seed=2.mp4"]
    grid = json.loads((tmp_path / "s-grid.json").read_text())
    assert [c["caption"] for c in grid["cells"]] == ["seed=1", "seed=2"] and grid["columns"] == 2
    assert json.loads((tmp_path / "s-seed=2.json").read_text())["request"]["seed"] == 2
    width, height = Image.open(tmp_path / "s-grid.png").size
    assert width > height > 0  # two frames side by side
