"""scripts/install.sh refuses a Python older than 3.11 before it installs or creates anything.

It runs on a copy of the files it reads, laid out like the repository, so the checkout's .venv is never
touched; PATH holds only what the refusal needs, plus apt-get/apt-cache/sudo stand-ins that record any call,
so no test can reach apt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python310() -> str | None:
    """A Python 3.10 that runs: ``python3.10`` on PATH, or one pyenv keeps (its shim on PATH runs only where
    3.10 is the selected version)."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    for candidate in (shutil.which("python3.10"), *sorted(map(str, pyenv.glob("versions/3.10*/bin/python3.10")))):
        if not candidate:
            continue
        r = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10), sys.executable)"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.startswith("True "):
            return r.stdout.split(" ", 1)[1].strip()
    return None


PY310 = _python310()
pytestmark = pytest.mark.skipif(PY310 is None, reason="no Python 3.10 on this machine (python3.10 on PATH or in pyenv)")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """scripts/install.sh and the requirements files, where install.sh expects them."""
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "install.sh", tmp_path / "repo" / "scripts" / "install.sh")
    for req in ROOT.glob("requirements*.txt"):
        shutil.copy2(req, tmp_path / "repo" / req.name)
    return tmp_path / "repo"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH of its own: the few tools the script calls first, and stand-ins for apt and sudo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "cat", "id", "env"):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    for tool in ("apt-get", "apt-cache", "sudo"):  # a call would leave a mark; the refusal must come first
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "$0 $*" >> "{tmp_path / "apt-called"}"\nexit 1\n')
        stub.chmod(0o755)
    return bin_dir


def _install(repo: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    bash = shutil.which("bash")
    assert bash
    return subprocess.run([bash, str(repo / "scripts" / "install.sh")], cwd=repo, capture_output=True, text=True,
                          env={"PATH": str(bin_dir), "HOME": str(repo.parent), **env}, timeout=60)


def _assert_refused(r: subprocess.CompletedProcess, repo: Path) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Python 3.11 or newer" in r.stderr and "python3.11" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 4, r.stderr  # the one message, nothing before it
    assert not (repo / ".venv").exists()
    assert not (repo.parent / "apt-called").exists(), (repo.parent / "apt-called").read_text()


def test_refuses_an_explicit_python_310(repo: Path, bin_dir: Path) -> None:
    r = _install(repo, bin_dir, PYTHON=PY310)
    _assert_refused(r, repo)
    assert f"PYTHON={PY310} is 3.10" in r.stderr


def test_refuses_when_only_python_310_exists_and_apt_has_no_311(repo: Path, bin_dir: Path) -> None:
    """python3 is 3.10 (Ubuntu 22.04's) and apt offers nothing: stop, saying how to get 3.11."""
    (bin_dir / "python3").symlink_to(PY310)
    for tool in ("apt-get", "apt-cache"):  # no apt at all: apt-cache cannot be asked
        (bin_dir / tool).unlink()
    r = _install(repo, bin_dir)
    _assert_refused(r, repo)
    assert "python3 here is 3.10" in r.stderr
