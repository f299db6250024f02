"""``download --finishing NAME``: the finishing models' safetensors from a stand-in hub (tests/hub_standin.py), in process.

The stand-in serves tiny random-weight models under the known repos' ids, beside a pickle and a
README that must never be fetched; the file lands in the Hugging Face cache, where ``--model NAME``
finds it.
"""

from __future__ import annotations

import pytest

from framepack_history.cli.main import main
from framepack_history.hub import finishing_weights as fw
from framepack_history.hub.download import check_disk, fetch
from tests.hub_standin import HubStandIn, go_online
from tests.tiny_finishing import save_rife, save_srvgg

ANIME, RIFE = fw.KNOWN["realesr-animevideov3"].repo, fw.KNOWN["rife-4.26"].repo


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    (root / ANIME).mkdir(parents=True)
    save_srvgg(root / ANIME / "realesr-animevideov3.safetensors", 4)
    (root / ANIME / "realesr-animevideov3.pth").write_bytes(b"\x80\x04pickle" * 50)  # never fetched
    (root / ANIME / "README.md").write_text("tiny")
    (root / RIFE).mkdir(parents=True)
    save_rife(root / RIFE / "flownet.safetensors")
    return root


@pytest.fixture
def online(repos, tmp_path, monkeypatch):
    """This test only: the stand-in hub, a fresh cache, offline mode off."""
    with HubStandIn(repos) as hub:
        go_online(monkeypatch, hub.url, tmp_path / "cache")
        yield hub


def test_download_fetches_the_safetensors_and_the_name_then_finds_it(online, repos, capsys):
    with pytest.raises(Exception, match="not downloaded yet"):
        fw.resolve("realesr-animevideov3", "upscale")
    assert main(["download", "--finishing", "realesr-animevideov3", "--dry-run"]) == 0
    assert "get " in capsys.readouterr().out
    assert main(["download", "--finishing", "realesr-animevideov3", "rife-4.26", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "use it with --model realesr-animevideov3" in out and "use it with --model rife-4.26" in out
    path = fw.resolve("realesr-animevideov3", "upscale")
    assert path.read_bytes() == (repos / ANIME / "realesr-animevideov3.safetensors").read_bytes()
    assert fw.describe(path).arch == "srvgg" and fw.describe(fw.resolve("rife-4.26", "interpolate")).arch == "ifnet"
    # the page's scale follows a known upscaler's factor (the file's own), not an interpolator or a path
    assert fw.known_scale("realesr-animevideov3") == fw.describe(path).scale == 4
    assert all(fw.known_scale(n) == 4 for n, k in fw.KNOWN.items() if k.task == "upscale")
    assert fw.known_scale("rife-4.26") is None and fw.known_scale(str(path)) is None
    fetched = [p for m, p, _ in online.log if m == "GET" and "/resolve/" in p]
    assert not any(p.endswith((".pth", "README.md")) for p in fetched), fetched
    assert main(["download", "--finishing", "all", "--dry-run"]) == 1  # the other known repos are not on the stand-in
    assert main(["download", "--finishing", "rife-4.26", "--dry-run"]) == 0
    assert "have" in capsys.readouterr().out  # already here: nothing to get


def test_a_cut_download_resumes_with_a_range_and_progress_ends_at_the_total(online, repos):
    rel = "flownet.safetensors"
    online.cut[f"{RIFE}/{rel}"] = [1000]
    plan = fw.make_plan(["rife-4.26"])
    check_disk(plan)
    size = (repos / RIFE / rel).stat().st_size
    assert plan.todo == plan.total == size
    seen = []
    fetch(plan, lambda p: seen.append((p.done, p.files_done)))
    assert online.ranges("GET", RIFE, rel) == [None, "bytes=1000-"]
    assert seen[-1] == (size, 1) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert fw.cached("rife-4.26").read_bytes() == (repos / RIFE / rel).read_bytes()


def test_an_unknown_name_is_exit_status_2_and_offline_names_the_command(tmp_path, monkeypatch, capsys):
    assert main(["download", "--finishing", "esrgan-9000"]) == 2
    assert capsys.readouterr().err.startswith("error: --finishing: unknown finishing model esrgan-9000")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "--finishing", "rife-4.26"]) == 1
    assert "download --finishing rife-4.26" in capsys.readouterr().err
