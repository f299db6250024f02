"""A saved queue: export -> import gives equal requests and input files; anything not the manifest's format is refused."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.jobs.saved_queue import MANIFEST, exportable, import_queue, read_queue, write_queue
from framepack_history.jobs.store import JobSpec
from framepack_history.jobs.worker import Worker
from tests.jobs.test_jobs import TINY


def digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "outputs", max_queue=6, preview_every_s=0.0)  # not started: its jobs stay queued
    yield w
    w.stop(timeout=30)


@pytest.fixture
def saved(worker, tmp_path, start_image):
    """Two queued jobs (one with a start image and a keyframe) saved to one zip."""
    key = tmp_path / "door.png"
    key.write_bytes(start_image.read_bytes()[:])  # the same pixels under another name
    a = worker.submit(JobSpec(GenerationRequest(prompt="camera pans left", seconds=1.0, seed=3, steps=1,
                                                image=str(start_image),
                                                keyframes=[{"time": 0.5, "image": str(key)}]), TINY))
    b = worker.submit(JobSpec(GenerationRequest(prompt="camera pans right", seconds=0.5, guidance=2.0), TINY, "4x4x2"))
    path = write_queue(exportable(worker), tmp_path / "q" / "queue.zip")
    return worker, [a, b], path


def test_export_then_import_gives_equal_requests_and_input_files(saved, tmp_path):
    worker, jobs, path = saved
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read(MANIFEST))
        assert sorted(z.namelist()) == sorted([MANIFEST, "files/1/image.png", "files/1/keyframes_0.png"])
    assert [j["id"] for j in manifest["jobs"]] == [j.id for j in jobs]
    assert manifest["jobs"][1]["encoder_rate"] == "4x4x2"

    other = Worker(tmp_path / "elsewhere" / "outputs", max_queue=6, preview_every_s=0.0)  # another run of the app
    try:
        imported = import_queue(other, path, owner="ann")
        assert other.queued() == [j.id for j in imported] and len(imported) == 2
        for old, new in zip(jobs, imported, strict=True):
            a, b = old.spec.request.to_dict(), new.spec.request.to_dict()
            for name in ("image", "continue_video", "end_image"):  # the files: same bytes, in the new job's folder
                assert (a[name] is None) == (b[name] is None)
                if a[name]:
                    assert digest(a[name]) == digest(b[name]) and Path(b[name]).is_relative_to(new.folder)
                a.pop(name), b.pop(name)
            for ka, kb in zip(a.pop("keyframes") or [], b.pop("keyframes") or [], strict=True):
                assert digest(ka["image"]) == digest(kb["image"]) == kb["sha256"] and ka["time"] == kb["time"]
                assert kb["name"] == "keyframes_0.png" or kb["name"] == ka["name"]
            assert a == b
            assert (new.spec.preset, new.spec.encoder_rate, new.spec.owner) == (old.spec.preset, old.spec.encoder_rate, "ann")
    finally:
        other.stop(timeout=30)


def _rewrite(path: Path, out: Path, edit=None, extra: dict[str, bytes] | None = None) -> Path:
    """A copy of the saved queue ``path`` with its manifest edited and members added."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    if edit:
        edit(manifest)
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(MANIFEST, json.dumps(manifest))
        for n, data in {**members, **(extra or {})}.items():
            z.writestr(n, data)
    return out


def _slip(m):
    m["jobs"][0]["files"][0]["path"] = "files/../../evil.png"
    m["jobs"][0]["request"]["image"] = "files/../../evil.png"


@pytest.mark.parametrize(("edit", "extra", "needle"), [
    (lambda m: m["jobs"][0]["request"].update(sneaky=1), None, "unknown request field 'sneaky'"),
    (lambda m: m["jobs"][0].update(command="rm -rf /"), None, "unknown key 'command'"),
    (lambda m: m.update(format="pickle"), None, "format 'pickle'"),
    (_slip, None, "could leave the folder"),
    (None, {"../outside.txt": b"x"}, "could leave the folder"),
    (None, {"/etc/cron.d/x": b"x"}, "could leave the folder"),
    (None, {"files/1/extra.png": b"x"}, "the manifest does not list it"),
    (lambda m: m["jobs"][0]["files"][0].update(sha256="0" * 64), None, "SHA-256 differs"),
    (lambda m: m["jobs"][0]["files"].pop(), None, "names a file the archive does not carry"),
])
def test_anything_not_the_manifests_format_is_refused_and_nothing_is_queued(saved, tmp_path, edit, extra, needle):
    worker, jobs, path = saved
    bad = _rewrite(path, tmp_path / "bad.zip", edit, extra)
    before = worker.queued()
    with pytest.raises(InputError, match=needle) as e:
        import_queue(worker, bad)
    assert e.value.field == "queue file"
    assert worker.queued() == before
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "outside.txt").exists()


def test_a_pickle_or_a_stray_file_is_not_a_saved_queue(tmp_path):
    junk = tmp_path / "queue.zip"
    junk.write_bytes(b"\x80\x04\x95pickle")
    with pytest.raises(InputError, match="not a zip file"):
        read_queue(junk, tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("jobs.pkl", b"\x80\x04")
    with pytest.raises(InputError, match="has no queue.json"):
        read_queue(tmp_path / "empty.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_borrowed_history_is_named_by_job_id_and_must_be_one_the_importer_may_see(saved, tmp_path):
    worker, jobs, path = saved
    bad = _rewrite(path, tmp_path / "borrow.zip", lambda m: m["jobs"][1]["request"].update(borrow=jobs[0].id))
    seen = []
    with pytest.raises(InputError, match=f"job 2 .*no job with id '{jobs[0].id}'") as e:
        import_queue(worker, bad, owner="bob", visible=lambda owner: seen.append(owner) or owner == "bob")
    assert e.value.field == "--borrow" and seen == [None]  # the borrowed job's owner, asked of the importer's rules
    assert len(worker.queued()) == 2


def test_export_takes_only_the_queued_jobs_the_caller_may_see(worker):
    mine = worker.submit(JobSpec(GenerationRequest(prompt="camera pans left", seconds=0.5), TINY, owner="ann"))
    worker.submit(JobSpec(GenerationRequest(prompt="camera pans right", seconds=0.5), TINY, owner="bob"))
    assert [i for i, _ in exportable(worker, visible=lambda owner: owner == "ann")] == [mine.id]
    assert len(exportable(worker)) == 2
    with pytest.raises(InputError, match="no queued job to save"):
        write_queue(exportable(worker, visible=lambda owner: False), worker.outputs / "q.zip")
