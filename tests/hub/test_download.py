"""``python -m framepack_history download`` against a stand-in hub on loopback (tests/hub_standin.py).

The stand-in serves the tiny HunyuanVideo-FramePack model saved in the hub's
layout (transformer at the repo root, the base repo with subfolders, the
Redux repo with image_encoder/ and feature_extractor/) plus files a preset
must never fetch. Every command runs in a real process with its own
``HF_ENDPOINT``/``HF_HOME``, so the test process's offline setting stays.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import waiting
from tests.hub_standin import BASE, F1, REDUX, HubStandIn, go_online, save_tiny_repos

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "tests" / "presets" / "tiny-hub.toml"
WEIGHTS = f"{F1}/diffusion_pytorch_model.safetensors"
NEVER = ("pytorch_model.bin", "transformer/", "image_embedder/", "README.md", "model_index.json", "notes.pt")


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    save_tiny_repos(root)
    return root


@pytest.fixture
def hub(repos):
    with HubStandIn(repos) as h:
        yield h


def wanted_files(root: Path) -> dict[str, Path]:
    """repo/path -> source file, for the files the tiny-hub preset needs."""
    out = {}
    for repo, subs in ((F1, [""]), (BASE, ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"]),
                       (REDUX, ["image_encoder", "feature_extractor"])):
        for sub in subs:
            for p in (root / repo / sub).iterdir():
                if p.is_file() and p.suffix in (".json", ".safetensors", ".txt"):
                    out[f"{repo}/{p.relative_to(root / repo).as_posix()}"] = p
    return out


def run(hub_url: str, hf_home: Path, *args: str, offline: bool = False) -> subprocess.CompletedProcess:
    """``python -m framepack_history ARGS`` against the stand-in hub, as long as it keeps working."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(hf_home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return waiting.run([sys.executable, "-m", "framepack_history", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=False)


def snapshot_file(hf_home: Path, repo: str, path: str) -> Path:
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = (folder / "refs" / "main").read_text()
    return folder / "snapshots" / commit / path


def test_download_fetches_exactly_what_the_preset_needs_then_it_loads_and_generates(hub, repos, tmp_path):
    home = tmp_path / "hf"
    r = run(hub.url, home, "download", "--preset", str(PRESET))
    assert r.returncode == 0, r.stderr[-3000:]
    wanted = wanted_files(repos)
    total = sum(p.stat().st_size for p in wanted.values())
    from framepack_history.hub.download import human

    first = r.stdout.splitlines()[0]
    assert f"{len(wanted)} files in 3 repos, {human(total)} in all" in first, first
    for name, src in wanted.items():
        repo = "/".join(name.split("/")[:2])
        path = name[len(repo) + 1 :]
        assert snapshot_file(home, repo, path).read_bytes() == src.read_bytes(), name
    fetched = [p for m, p, _ in hub.log if m == "GET" and "/resolve/" in p]
    assert not [p for p in fetched if any(bad in p.split("/resolve/")[1] for bad in NEVER)], fetched
    assert "total" in r.stderr  # the progress bar
    assert not list((home / "hub").rglob("*.incomplete"))

    # A second run finds everything and fetches nothing.
    before = len(hub.log)
    r = run(hub.url, home, "download", "--preset", str(PRESET))
    assert r.returncode == 0 and "0 B to download" in r.stdout, r.stdout + r.stderr
    assert not [p for m, p, _ in hub.log[before:] if m == "GET" and "/resolve/" in p]

    # Offline, from the cache alone: the tiny model loads and generates a video.
    out = tmp_path / "v.mp4"
    r = run(hub.url, home, "generate", "--preset", str(PRESET), "--prompt", "a fox", "--seconds", "1", "--quiet",
            "--out", str(out), offline=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.is_file() and out.stat().st_size > 0


def test_a_cut_connection_resumes_with_a_range_request(hub, repos, tmp_path):
    hub.cut[WEIGHTS] = [1000]  # the first GET drops after 1000 bytes
    home = tmp_path / "hf"
    r = run(hub.url, home, "download", "--preset", str(PRESET), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert hub.ranges("GET", F1, "diffusion_pytorch_model.safetensors") == [None, "bytes=1000-"]
    got = snapshot_file(home, F1, "diffusion_pytorch_model.safetensors").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256((repos / WEIGHTS).read_bytes()).digest()


def test_an_interrupted_run_continues_in_the_next(hub, repos, tmp_path):
    hub.cut[WEIGHTS] = [700, 0, 0, 0, 0]  # 700 bytes, then the connection keeps dropping: the run gives up
    home = tmp_path / "hf"
    r = run(hub.url, home, "download", "--preset", str(PRESET), "--quiet")
    assert r.returncode == 1 and "run the same command again to resume" in r.stderr, r.stderr[-2000:]
    parts = list((home / "hub").rglob("*.incomplete"))
    assert len(parts) == 1 and parts[0].stat().st_size == 700
    r = run(hub.url, home, "download", "--preset", str(PRESET), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert hub.ranges("GET", F1, "diffusion_pytorch_model.safetensors")[-1] == "bytes=700-"
    assert snapshot_file(home, F1, "diffusion_pytorch_model.safetensors").read_bytes() == (repos / WEIGHTS).read_bytes()


def test_local_dir_and_its_preset(hub, repos, tmp_path):
    target = tmp_path / "weights"
    r = run(hub.url, tmp_path / "hf", "download", "--preset", str(PRESET), "--local-dir", str(target), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    for name, src in wanted_files(repos).items():
        assert (target / name).read_bytes() == src.read_bytes()
    assert not (tmp_path / "hf" / "hub").exists()  # nothing in the cache
    from framepack_history.config.presets import load_preset
    from framepack_history.hub.files import missing

    local = load_preset(target / "tiny-hub.toml")
    assert local.model.weights == str(target / F1) and missing(local.model) == []


def test_refuses_when_the_disk_is_too_small(hub, tmp_path):
    hub.fake_size[WEIGHTS] = 10**18  # an exabyte
    r = run(hub.url, tmp_path / "hf", "download", "--preset", str(PRESET))
    assert r.returncode == 1
    assert "not enough disk space" in r.stderr and "1000000.0 TB" in r.stderr and "is free" in r.stderr, r.stderr
    assert not [p for m, p, _ in hub.log if m == "GET" and "/resolve/" in p]


def test_offline_and_unreachable_name_what_is_missing_and_the_command(hub, tmp_path):
    cmd = f"python -m framepack_history download --preset {PRESET}"
    r = run(hub.url, tmp_path / "hf", "download", "--preset", str(PRESET), offline=True)
    assert r.returncode == 1 and "HF_HUB_OFFLINE=1 is set" in r.stderr and cmd in r.stderr
    assert "transformer (tiny/framepack-f1)" in r.stderr and "image_encoder (tiny/redux)" in r.stderr
    assert not hub.log  # not one request
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = run(dead, tmp_path / "hf", "download", "--preset", str(PRESET))
    assert r.returncode == 1 and f"cannot reach {dead}" in r.stderr and cmd in r.stderr, r.stderr
    # A job never downloads: it fails at once and names the command.
    r = run(hub.url, tmp_path / "hf", "generate", "--preset", str(PRESET), "--prompt", "a", "--seconds", "1")
    assert r.returncode == 2 and cmd in r.stderr and "tiny/hunyuanvideo" in r.stderr, r.stderr
    assert not [p for m, p, _ in hub.log if "/resolve/" in p]


def test_presets_without_hub_weights_need_nothing(tmp_path):
    r = run("http://127.0.0.1:9", tmp_path / "hf", "download", "--preset", "toy-cpu")
    assert r.returncode == 0 and "needs no download" in r.stdout


@pytest.fixture
def online(hub, tmp_path, monkeypatch):
    """This test only: the stand-in hub, a fresh cache, offline mode off."""
    go_online(monkeypatch, hub.url, tmp_path / "cache")
    return hub


def test_progress_reports_every_file_and_ends_at_the_total(online, repos, tmp_path):
    from framepack_history.config.presets import load_preset
    from framepack_history.hub.download import check_disk, fetch, make_plan
    from framepack_history.hub.files import missing

    spec = load_preset(PRESET).model
    plan = make_plan(spec, str(PRESET))
    check_disk(plan)
    wanted = wanted_files(repos)
    assert plan.todo == plan.total == sum(p.stat().st_size for p in wanted.values())
    seen = []
    fetch(plan, lambda p: seen.append((p.done, p.files_done, p.file, p.file_done, p.file_size)))
    assert [d for d, *_ in seen] == sorted(d for d, *_ in seen) and seen[-1][:2] == (plan.total, len(wanted))
    assert {f for _, _, f, _, _ in seen} == set(wanted)
    assert all(0 <= fd <= fs for *_, fd, fs in seen)
    assert missing(spec, cache_dir=str(tmp_path / "cache")) == []


def test_the_page_downloader_runs_in_its_own_thread(online, tmp_path):
    from framepack_history.config.presets import load_preset
    from framepack_history.errors import DownloadError
    from framepack_history.hub.download import Downloader

    spec = load_preset(PRESET).model
    d = Downloader()
    assert d.state("p").status == "idle"
    d.start(spec, "p")
    with pytest.raises(DownloadError, match="p is downloading"):  # a second preset waits for the first
        d.start(spec, "q")
    waiting.until(lambda: d.state("p").status != "running", lambda: (d.state("p").done, d.state("p").files_done),
                  lambda: str(d.state("p")), every=0.05)  # as long as it takes while bytes arrive
    s = d.state("p")
    assert s.status == "done" and s.done == s.total > 0 and s.files_done == s.files_total == 15, s
