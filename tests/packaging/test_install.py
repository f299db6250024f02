"""A non-editable install works away from the checkout: the wheel holds every file of the package (presets,
backbone and training configs, the toy weights), and ``generate --preset toy-cpu`` run from another folder
imports the installed copy and writes under that folder's ``outputs/``.

Offline and quick: the wheel is built from a copy of the source with this environment's setuptools
(``--no-build-isolation``, ``--no-index``) and installed with ``--no-deps --target`` into a folder put on
``PYTHONPATH``; the dependencies (torch, diffusers, ...) are the running environment's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "framepack_history"


def _pip(*args: str, cwd: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", *args, "--no-index", "--quiet", "--disable-pip-version-check"],
                       cwd=cwd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"pip {args[0]} failed:\n{r.stdout}\n{r.stderr}"


def _package_files(src: Path) -> set[str]:
    """Every file of the package under ``src``, as the wheel names it."""
    return {p.relative_to(src).as_posix() for p in (src / PACKAGE.name).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the wheel is built from: an in-tree build would leave build/ in the checkout (a stale
    build/lib could hide a file missing from the package data), and the copy is what the wheel must match."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(PACKAGE, src / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "requirements.txt"):  # requirements.txt: the dynamic dependencies
        shutil.copy2(ROOT / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools (requirements-dev.txt)")
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(source), cwd=source)
    (whl,) = out.glob("framepack_history-*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a folder of its own (``--target``), as a non-editable install lays it out."""
    site = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--no-compile", "--target", str(site), str(wheel), cwd=site)
    return site


def test_wheel_holds_every_package_file(source: Path, wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_package_files(source) - names)
    assert not missing, f"files of the package left out of the wheel (package-data in pyproject.toml): {missing}"
    # the data a toy-cpu run reads, named so a glob that silently matches nothing still fails here
    for name in ("presets/toy-cpu.toml", "backbones/configs/framepack_f1_transformer.json",
                 "training/configs/toy_stage1.toml", "weights/toy/MODEL_CARD.md",
                 "weights/toy/transformer/diffusion_pytorch_model.safetensors",
                 "weights/toy/history_encoder/config.json", "weights/toy/vae/config.json"):
        assert f"framepack_history/{name}" in names
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "framepack-history = framepack_history.cli.main:main" in zipfile.ZipFile(wheel).read(meta).decode()


def test_installed_generate_writes_under_the_working_folder(site: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    # One process reports where the package came from, then runs the CLI as `python -m framepack_history` does.
    code = ("import sys, framepack_history, framepack_history.config.paths as paths; "
            "print('package:', framepack_history.__file__); print('workdir:', paths.WORKDIR); "
            "from framepack_history.cli.main import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "generate", "--preset", "toy-cpu", "--seconds", "1",
                        "--prompt", "camera pans right", "--quiet"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines() if line.startswith(("package: ", "workdir: ")))
    assert Path(lines["package"]).resolve().is_relative_to(site.resolve()), f"imported from the checkout: {lines}"
    assert Path(lines["workdir"]).resolve() == work.resolve()
    videos = list((work / "outputs").rglob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0, r.stdout + r.stderr
    assert videos[0].with_suffix(".json").is_file()
    assert not (site / "outputs").exists() and not list(site.rglob("*.mp4")), "wrote into the installed package"


def test_installed_training_config_finds_its_preset(site: Path, tmp_path: Path) -> None:
    """A shipped training config, named relative to the package, loads from another folder with its preset."""
    code = ("from framepack_history.config.presets import load_preset; "
            "from framepack_history.training.settings import TrainConfig, find_path, load_config; "
            "cfg = load_config(TrainConfig, 'framepack_history/training/configs/toy_stage1.toml'); "
            "print(load_preset(find_path(cfg.preset)).path); print(find_path(cfg.data.cache))")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    preset, cache = (Path(line) for line in r.stdout.splitlines()[-2:])
    assert preset.resolve() == (site / "framepack_history" / "presets" / "toy-cpu.toml").resolve()
    assert cache.resolve().is_relative_to(tmp_path.resolve())  # a cache to build goes to the working folder
