"""A shared studio (--auth): each user sees, cancels, resumes and downloads only their own jobs; admins see all.

Handler-level tests with gradio Request objects (no server), then the real app with two users through
gradio_client and plain HTTP (the file route).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import gradio as gr
import httpx
import pytest

from framepack_history.jobs.studio import Studio, client_view, scrub
from framepack_history.jobs.worker import Worker
from tests.app_process import free_port
from tests.conftest import TINY_TOY

ROOT = Path(__file__).resolve().parents[2]
TINY = str(TINY_TOY)
sys.path.insert(0, str(ROOT))  # app.py lives at the top level
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
USERS = {"alice": "alice-pass", "bob": "bob-pass", "root": "root-pass"}
ALICE, BOB, ROOT_USER = (gr.Request(username=u) for u in USERS)


def values(prompt: str, image: str | None = None) -> list:
    """The page's inputs: prompt, image, video, seconds, seed, preset, steps, guidance, shift, rate, history, window,
    history guidance, start frame."""
    return [prompt, image, None, 0.5, 1, TINY, 1, None, None, None, None, None, None, None]


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(gr.Error) as err:
        fn(*args, **kw)
    return str(err.value.message)


def handlers(worker: Worker, tmp_path: Path):
    from framepack_history.ui.handlers import Handlers

    studio = Studio.from_auth(list(USERS.items()), ["root"])
    return Handlers(worker, TINY, [TINY], temp_dir=tmp_path / "tmp", studio=studio)


def test_policy_and_scrubbing():
    studio = Studio.from_auth(list(USERS.items()), ["root"])
    assert studio.may_see("alice", "alice") and not studio.may_see("alice", "bob") and not studio.may_see("alice", None)
    assert studio.may_see("root", "bob") and studio.may_see("root", None) and not studio.may_see(None, "alice")
    alone = Studio.from_auth([("me", "pw")])  # one user: nobody to hide from, and older videos stay visible
    assert alone.may_see("me", None)
    assert Studio().may_see(None, "alice") and not Studio().shared  # no --auth: everything, as before
    assert scrub("no job folder 'x' in /srv/app/jobs; see /srv/app/jobs/x/request.json") == "no job folder 'x' in jobs; see request.json"
    assert scrub("rate 2x2x4, 1/16 of the tokens, lllyasviel/FramePack_F1") == "rate 2x2x4, 1/16 of the tokens, lllyasviel/FramePack_F1"


def test_users_see_and_act_on_their_own_jobs_only(tmp_path):
    outputs = tmp_path / "outputs"
    worker = Worker(outputs, max_queue=8, jobs_dir=tmp_path / "jobs")  # not started: jobs stay queued
    h = handlers(worker, tmp_path)
    a = h.generate_click(*values("alice's secret storyboard"), request=ALICE)
    b = h.generate_click(*values("bob's secret storyboard"), request=BOB)
    b2 = h.generate_click(*values("bob's second storyboard"), request=BOB)
    assert worker.owner_of(a) == "alice" and json.loads((tmp_path / "jobs" / a / "request.json").read_text())["owner"] == "alice"

    # /status: own jobs only, no other user's prompt, no absolute path anywhere
    status = h.api_status("", request=ALICE)
    text = json.dumps(status)
    assert [j["id"] for j in status["jobs"]] == [a] and status["queued"] == [a] and status["current"] == a
    assert "bob's" not in text and str(tmp_path) not in text and b not in text
    assert status["jobs"][0]["folder"] == f"{Path(status['jobs'][0]['folder']).parent.name}/{a}"  # relative to outputs/
    assert [j["id"] for j in h.api_status("", request=ROOT_USER)["jobs"]] == [b2, b, a]  # the admin sees all

    # another user's job reads exactly as a job that does not exist, for every way of naming it
    unknown = "000000-abcdef"
    for fn in (h.api_status, h.api_cancel, h.api_resume, h.cancel_click, h.resume_click):
        assert error_of(fn, b, request=ALICE) == error_of(fn, unknown, request=ALICE).replace(unknown, b)
        assert "no job with id" in error_of(fn, b, request=ALICE)
    assert list(h.follow(b, request=ALICE)) == [(gr.skip(),) * 5] and worker.store.get(b).status == "queued"  # leaves the page
    assert h.attach(request=ALICE) == a and h.attach(request=BOB) == b2

    # the Queue tab: rows, the job picker and the interrupted list are per user
    assert [r[0] for r in h.queue_rows(request=BOB)] == [b2, b]
    _, rows, picker, _ = h.refresh(None, request=ALICE)
    assert [r[0] for r in rows] == [a] and [v for _, v in picker["choices"]] == [a]
    assert picker["choices"][0][0].startswith(f"{a} · queued · alice's secret")  # id, status, prompt
    assert h.api_cancel(b, request=ROOT_USER)["status"] == "cancelled"  # the admin may cancel anyone's
    assert h.api_cancel(a, request=ALICE)["status"] == "cancelled"

    # errors name no server folder (a missing start image; the admin resuming a job that does not exist)
    missing = tmp_path / "uploads" / "missing.png"
    for message in (error_of(h.generate_click, *values("x", str(missing)), request=ALICE),
                    error_of(h.api_resume, unknown, request=ROOT_USER)):
        assert str(tmp_path) not in message and not any(w.startswith("/") for w in message.split()), message

    # ownership survives a restart: the interrupted job is offered to its owner (and the admin) only
    worker.stop(timeout=5)
    again = Worker(outputs, max_queue=8, jobs_dir=tmp_path / "jobs")
    h2 = handlers(again, tmp_path)
    assert [r["id"] for r in h2.interrupted(request=BOB)] == [b2] and h2.interrupted(request=ALICE) == []
    assert "folder" not in h2.interrupted(request=BOB)
    choices, box = h2.interrupted_choices(request=ALICE)
    assert choices["choices"] == [] and not box["visible"]
    assert [r["id"] for r in h2.api_status("", request=ROOT_USER)["interrupted"]] == [b2]
    assert "no job with id" in error_of(h2.api_resume, b2, request=ALICE)
    resumed = h2.api_resume(b2, request=BOB)
    assert resumed["status"] == "queued" and resumed["owner"] == "bob" and again.owner_of(b2) == "bob"
    assert [j["id"] for j in h2.api_status("", request=BOB)["jobs"]] == [b2] and h2.api_status("", request=ALICE)["jobs"] == []


def test_gallery_and_files_follow_the_owner(tmp_path):
    outputs = tmp_path / "outputs"
    worker = Worker(outputs, max_queue=8, jobs_dir=tmp_path / "jobs")
    h = handlers(worker, tmp_path)
    ids = {u: h.generate_click(*values(f"{u}'s video"), request=gr.Request(username=u)) for u in ("alice", "bob")}
    for user, job_id in ids.items():  # what a finished job leaves in outputs/
        folder = worker.store.get(job_id).folder
        folder.mkdir(parents=True)
        (folder / "video.mp4").write_bytes(b"mp4")
        (folder / "video.json").write_text(json.dumps({"request": {"prompt": f"{user}'s video"}}))
    (outputs / "stray.mp4").write_bytes(b"mp4")  # not a job's: the admin's alone
    assert [c for _, c in h.gallery(request=ALICE)] == ["alice's video"]
    assert sorted(c for _, c in h.gallery(request=ROOT_USER)) == ["alice's video", "bob's video"]
    assert worker.owner_of_file(worker.store.get(ids["bob"]).folder / "video.mp4") == "bob"
    assert worker.owner_of_file(outputs / "stray.mp4") is None and worker.owner_of_file(tmp_path / "elsewhere.mp4") is None
    worker.stop(timeout=5)


def test_no_auth_behaves_as_one_local_user(tmp_path):
    from framepack_history.ui.handlers import Handlers

    worker = Worker(tmp_path / "outputs", max_queue=8, jobs_dir=tmp_path / "jobs")
    h = Handlers(worker, TINY, [TINY], temp_dir=tmp_path / "tmp")
    a = h.generate_click(*values("one"), request=gr.Request())
    assert h.api_status(a, request=gr.Request())["owner"] is None and h.attach(request=gr.Request()) == a
    assert h.api_cancel(a, request=gr.Request())["status"] == "cancelled"
    message = error_of(h.api_resume, "000000-abcdef", request=gr.Request())
    assert "no job folder" in message  # the local user keeps the full message
    view = client_view(worker.store.get(a).snapshot(), worker.outputs, h.studio)
    assert not view["folder"].startswith("/")  # /status never names server folders
    worker.stop(timeout=5)


# ------------------------------------------------------------------ the real app
@pytest.fixture(scope="module")
def studio_app(tmp_path_factory):
    """The app with three accounts (root the admin), and a finished job of alice's."""
    from gradio_client import Client

    import app

    base = tmp_path_factory.mktemp("studio")
    accounts = base / "auth.txt"
    accounts.write_text("# the studio\n" + "".join(f"{u}:{p}\n" for u, p in USERS.items()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(base / "gradio"))
        args = app.prepare(["--preset", TINY, "--port", str(free_port()), "--outputs", str(base / "outputs"),
                            "--auth", str(accounts), "--admin", "root"])
        demo, worker, url, _ = app.start(args)
        try:
            clients = {u: Client(url, auth=(u, p), verbose=False, download_files=str(base / f"dl-{u}")) for u, p in USERS.items()}
            clients["alice"].predict(prompt="alice's secret", seconds=0.5, seed=1, preset=TINY, steps=1, api_name="/generate")
            yield {"url": url, "worker": worker, "job": worker.store.jobs()[-1], "clients": clients, "base": base}
        finally:
            demo.close()
            worker.stop(timeout=10)


def login(url: str, user: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30)
    assert http.post("/login", data={"username": user, "password": USERS[user]}).status_code == 200
    return http


def test_api_keeps_users_apart(studio_app):
    from gradio_client.exceptions import AppError

    job, clients, base = studio_app["job"], studio_app["clients"], studio_app["base"]
    assert job.spec.owner == "alice"
    mine = clients["alice"].predict("", api_name="/status")
    assert [j["id"] for j in mine["jobs"]] == [job.id] and mine["jobs"][0]["video"].endswith(f"{job.id}/video.mp4")
    theirs = clients["bob"].predict("", api_name="/status")
    assert theirs["jobs"] == [] and theirs["current"] is None and "alice's secret" not in json.dumps(theirs)
    assert str(base) not in json.dumps(mine)
    for api in ("/status", "/cancel", "/resume"):
        with pytest.raises(AppError, match="no job with id"):
            clients["bob"].predict(job.id, api_name=api)
    assert [j["id"] for j in clients["root"].predict("", api_name="/status")["jobs"]] == [job.id]
    assert [d["device"] for d in mine["devices"]] == [None]  # one worker, on the preset's device


def test_files_are_served_to_their_owner_only(studio_app):
    job, url = studio_app["job"], studio_app["url"]
    for target in (job.video, job.sidecar, job.segments[0]):
        assert login(url, "alice").get(f"/gradio_api/file={target}").status_code == 200
        assert login(url, "root").get(f"/gradio_api/file={target}").status_code == 200
        refused = login(url, "bob").get(f"/gradio_api/file={target}")
        assert refused.status_code == 403 and str(job.folder) not in refused.text
    bob = login(url, "bob")
    missing = bob.get(f"/gradio_api/file={job.folder}/nothing.mp4")
    assert missing.status_code == 403  # another user's file reads as a missing one
    # other spellings of the same file: relative to the server's working folder (gradio resolves those), and with ..
    # (dots percent-encoded: clients drop dot segments, the server decodes them)
    spellings = [os.path.relpath(job.video), f"{job.folder}/../{job.folder.name}/video.mp4"]
    for spelling in (s.replace("..", "%2E%2E") for s in spellings):
        assert login(url, "alice").get(f"/gradio_api/file={spelling}").status_code == 200, spelling
        assert bob.get(f"/gradio_api/file={spelling}").status_code == 403, spelling


def test_admin_flag_is_checked(capsys):
    import app

    assert app.prepare(["--auth", "ana:pw", "--admin", "ana"]).admin == ["ana"]
    for argv, needle in ((["--admin", "ana"], "needs --auth"), (["--auth", "ana:pw", "--admin", "bo"], "'bo' is not a user of --auth")):
        assert app.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--admin" in err and needle in err, err


def test_the_first_screen_shows_no_server_folders_to_a_shared_studio(tmp_path, monkeypatch):
    """The weights panel names where downloads go: the local user sees the folder, a shared studio's users do not."""
    from types import SimpleNamespace

    from framepack_history.hub import files as hub
    from framepack_history.ui import weights as ui_weights

    target = tmp_path / "srv" / "huggingface" / "hub"
    target.mkdir(parents=True)
    downloads = SimpleNamespace(
        state=lambda ref: SimpleNamespace(status="failed", message=f"disk full at {target}/models--x/blobs"),
        plan=lambda model, ref: SimpleNamespace(todo=1 << 30, files=[SimpleNamespace(done=False)], commits=["abc123"],
                                                target=target))
    monkeypatch.setattr(ui_weights.hub, "missing", lambda model: hub.components(model))  # nothing downloaded
    preset = "tests/presets/tiny-hub.toml"
    local, _ = ui_weights.WeightsPanel(downloads).view(preset)
    shared, _ = ui_weights.WeightsPanel(downloads, Studio.from_auth(list(USERS.items()))).view(preset)
    assert str(target) in local and "disk full at" in local
    assert str(tmp_path) not in shared and "free in `hub`" in shared and "disk full at blobs" in shared
    assert "1.1 GB to fetch" in shared and "press **Download**" in shared
    # the progress bar's failure message: scrubbed before it is escaped (an escaped quote hides the path)
    state = SimpleNamespace(status="failed", message=f"PermissionError: '{target}/models--x/abc'", done=0, total=0,
                            file="", files_done=0, files_total=0)
    bar = ui_weights.progress_html(state, Studio.from_auth(list(USERS.items())).say)
    assert str(tmp_path) not in bar and "abc" in bar
    assert str(target) in ui_weights.progress_html(state)
    bad, _ = ui_weights.WeightsPanel(downloads, Studio.from_auth(list(USERS.items()))).view(str(tmp_path / "nope.toml"))
    assert str(tmp_path) not in bad and "nope.toml" in bad


def test_cancelling_an_ended_job_says_so(tmp_path, monkeypatch):
    """Queue tab: "Cancel job" on a finished job says it has ended instead of claiming to cancel it."""
    from framepack_history.ui import handlers as ui_handlers

    said = []
    monkeypatch.setattr(ui_handlers.gr, "Info", said.append)
    worker = Worker(tmp_path / "outputs", jobs_dir=tmp_path / "jobs")
    h = handlers(worker, tmp_path)
    job_id = h.generate_click(*values("a"), request=ALICE)
    worker.store.update(worker.store.get(job_id), status="done")
    h.cancel_picked(job_id, request=ALICE)
    assert said == [f"Job {job_id} has already ended (done); nothing to cancel."]
    assert worker.store.get(job_id).status == "done"
    assert "no job with id" in error_of(h.cancel_picked, job_id, request=BOB)  # another user's job stays hidden
    queued = h.generate_click(*values("b"), request=ALICE)
    h.cancel_picked(queued, request=ALICE)
    assert said[-1] == f"Cancelling job {queued}." and worker.store.get(queued).status == "cancelled"


def test_the_memory_tabs_slider_spans_what_a_cancelled_job_made(tmp_path):
    from framepack_history.ui.memory_tab import MemoryTab

    worker = Worker(tmp_path / "outputs", jobs_dir=tmp_path / "jobs")
    h = handlers(worker, tmp_path)
    job_id = h.generate_click(*values("a")[:3], 20, *values("a")[4:], request=ALICE)
    job = worker.store.get(job_id)
    job.progress.sections_total, job.progress.sections_done = 80, 20
    assert MemoryTab(h).recall_job(job_id, ALICE)["maximum"] == 20  # not ended: the whole request
    worker.store.update(job, status="cancelled")
    assert MemoryTab(h).recall_job(job_id, ALICE)["maximum"] == 5  # 20 of 80 sections made
    assert MemoryTab(h).recall_job(job_id, BOB) == gr.skip()  # another user's job: nothing about it


def test_page_errors_name_the_pages_fields_and_the_api_keeps_the_request_fields(tmp_path):
    worker = Worker(tmp_path / "outputs", jobs_dir=tmp_path / "jobs")
    h = handlers(worker, tmp_path)
    page = error_of(h.generate_click, "5s: a; 2s: b", *values("x")[1:], request=ALICE)
    assert page.startswith("Prompt or storyboard: storyboard times must increase"), page
    capped = [*values("x"), 5]  # history-token cap 5: below the least
    assert error_of(h.generate_click, *capped, request=ALICE).startswith("History-token cap: 5 is below the least cap")
    api = error_of(h.api_generate, "5s: a; 2s: b", None, None, 0.5, 1, TINY, request=ALICE)
    assert api.startswith("prompt: storyboard times must increase"), api
    assert worker.queued() == []
