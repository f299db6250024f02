"""Safe sharing: loopback by default, no exposure without --auth, only outputs/ served, uploads capped."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest

from tests.app_process import free_port

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "presets" / "tiny-toy.toml")
sys.path.insert(0, str(ROOT))  # app.py lives at the top level
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
USER, PASSWORD = "artist", "s3cret-pass"


@pytest.mark.parametrize("argv,needle", [
    (["--share"], "--share makes a public link"),
    (["--server-name", "0.0.0.0"], "0.0.0.0 exposes the page"),
    (["--server-name", "192.168.1.20"], "192.168.1.20 exposes the page"),
])
def test_exposing_the_page_needs_auth(argv, needle, capsys):
    import app

    assert app.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--auth" in err and needle in err, err


def test_loopback_by_default_and_auth_allows_exposure():
    import app

    args = app.prepare([])
    assert args.server_name == "127.0.0.1" and not args.share
    assert app.prepare(["--server-name", "0.0.0.0", "--auth", f"{USER}:{PASSWORD}"]).auth == [(USER, PASSWORD)]
    assert all(app.is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"))
    assert not any(app.is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org"))


def test_weights_load_from_safetensors_only():
    """No pickle: torch.load only with weights_only=True; model loaders ask for safetensors."""
    for path in (ROOT / "framepack_history").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), f"{path}: {m.group(0)}"
        assert not re.search(r"^\s*(import|from) (pickle|dill|joblib)\b", text, re.MULTILINE), path
    for rel in ("history/encoder.py", "backbones/toy.py", "backbones/hunyuan_framepack.py"):
        assert "use_safetensors" in (ROOT / "framepack_history" / rel).read_text(), rel


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app with --auth, a finished job, and its folders."""
    from gradio_client import Client

    import app

    outputs = tmp_path_factory.mktemp("exposure") / "outputs"
    args = app.prepare(["--preset", TINY, "--port", str(free_port()), "--outputs", str(outputs), "--max-file-size", "1mb",
                        "--auth", f"{USER}:{PASSWORD}"])
    demo, worker, url, _ = app.start(args)
    try:
        client = Client(url, auth=(USER, PASSWORD), verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))
        client.predict(prompt="camera holds", seconds=0.5, seed=1, preset=TINY, steps=1, api_name="/generate")
        job = worker.store.jobs()[-1]
        yield {"url": url, "worker": worker, "job": job, "client": client}
    finally:
        demo.close()
        worker.stop(timeout=10)


def _login(url: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30)
    r = http.post("/login", data={"username": USER, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return http


def test_unauthenticated_requests_are_refused(served):
    from gradio_client import Client

    url, video = served["url"], served["job"].video
    anon = httpx.Client(base_url=url, timeout=30)
    assert anon.get(f"/gradio_api/file={video}").status_code in (401, 403)
    assert anon.post("/gradio_api/call/status", json={"data": [""]}).status_code in (401, 403)
    assert anon.post("/login", data={"username": USER, "password": "wrong"}).status_code in (400, 401)
    with pytest.raises(ValueError, match="(?i)login|auth|credentials"):
        Client(url, verbose=False)  # no credentials, no API
    assert _login(url).get(f"/gradio_api/file={video}").status_code == 200


def test_only_outputs_are_served(served):
    http = _login(served["url"])
    job, worker = served["job"], served["worker"]
    state = worker.jobs_dir / job.id
    assert (state / "checkpoint.json").is_file()
    assert http.get(f"/gradio_api/file={job.video}").status_code == 200  # outputs/ is served
    refused = [ROOT / "README.md", Path("/etc/passwd"), state / "checkpoint.json", state / "request.json",
               ROOT / "framepack_history" / "presets" / "toy-cpu.toml", ROOT / "framepack_history" / "config" / "presets.py"]
    for path in refused:
        assert path.exists(), path
        r = http.get(f"/gradio_api/file={path}")
        assert r.status_code == 403, (path, r.status_code)
    assert http.get(f"/gradio_api/file={job.folder}/../../../README.md").status_code in (403, 404)


def test_server_paths_are_not_inputs_and_uploads_are_capped(served, tmp_path):
    http = _login(served["url"])
    # a client naming a server file instead of uploading one is refused before any handler runs
    data = ["a", {"path": str(ROOT / "docs" / "screenshot.png"), "meta": {"_type": "gradio.FileData"}},
            None, 0.5, 1, TINY, 1, None, None, None, None, None, None, None]
    data += [None] * 15  # history cap, three LoRA slots with their weights, step cache, cap merge rule, end image, its
    # strength, keyframe images, their times, memory controls, the job to borrow from
    event = http.post("/gradio_api/call/generate", json={"data": data}).json()["event_id"]
    body = http.get(f"/gradio_api/call/generate/{event}").text
    assert "event: error" in body and "not uploaded by a user" in body
    # the same for a keyframe image
    keyed = ["a", None, *data[2:-4], [{"path": str(ROOT / "docs" / "screenshot.png"), "meta": {"_type": "gradio.FileData"}}], [1],
             None, None]
    event = http.post("/gradio_api/call/generate", json={"data": keyed}).json()["event_id"]
    body = http.get(f"/gradio_api/call/generate/{event}").text
    assert "event: error" in body and "not uploaded by a user" in body
    # the upload cap holds on the server, not only in the client
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 << 20))
    with big.open("rb") as f:
        r = http.post("/gradio_api/upload", files={"files": ("big.png", f, "image/png")})
    assert r.status_code == 413, (r.status_code, r.text[:200])
