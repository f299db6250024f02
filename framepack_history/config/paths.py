"""Where things are: the package's own files (presets, toy weights), and the folder for outputs and LoRAs.

Preset paths such as ``framepack_history/weights/toy`` are relative to :data:`ROOT`, the folder that holds
the package: a source checkout or ``site-packages`` alike. Outputs and LoRAs go under :data:`WORKDIR`:
the checkout when running from one, else the current folder (an installed package never writes into
``site-packages``).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
ROOT = PACKAGE.parent
PRESET_DIR = PACKAGE / "presets"


def _is_checkout(root: Path) -> bool:
    return (root / "pyproject.toml").is_file() and (root / "framepack_history").is_dir()


#: outputs/ and loras/ live here
WORKDIR = ROOT if _is_checkout(ROOT) else Path.cwd()


def resolve_path(value: str) -> str:
    """Paths in presets are relative to :data:`ROOT` (the folder holding the package); hub ids stay as they are."""
    if not value:
        return value
    candidate = ROOT / value
    return str(candidate) if candidate.exists() or value.startswith(("./", "framepack_history/")) else value


