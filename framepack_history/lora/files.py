"""LoRA files: where they are, what a request says about them, and a cheap check of the file itself.

No torch here (the page imports it). Only safetensors files are read, never a pickle: the
header is parsed by hand (8-byte length, JSON), so a file that is not safetensors fails
before any tensor is touched.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from framepack_history.config.loras import MAX_LORAS, MAX_WEIGHT, check_entries, check_entry, parse_arg  # noqa: F401  (the syntax lives in config)
from framepack_history.config.paths import WORKDIR
from framepack_history.errors import InputError
from framepack_history.fsio import file_sha256

#: the folder LoRA names are looked up in (FramePack-Studio's ``loras/``); FPH_LORA_DIR overrides it
LORA_DIR = Path(os.environ.get("FPH_LORA_DIR") or WORKDIR / "loras")
_HEADER_LIMIT = 100 << 20  # safetensors caps its header at 100 MB
_hashes: dict[tuple[str, int, int], str] = {}


def lora_dir() -> Path:
    return Path(os.environ.get("FPH_LORA_DIR") or LORA_DIR)


def available() -> list[str]:
    """``*.safetensors`` names under the LoRA folder (sub-folders included), sorted."""
    root = lora_dir()
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.safetensors") if p.is_file())


def locate(name: str, field: str = "--lora") -> Path:
    """A LoRA by path, or by name inside the LoRA folder (``.safetensors`` may be left out)."""
    given = Path(name).expanduser()
    root = lora_dir()
    for candidate in (given, root / name, root / f"{name}.safetensors"):
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(field, f"{name}: no such LoRA file (give a path, or put it in {root})")


def sha256(path: Path) -> str:
    """The file's SHA-256, remembered per (path, size, modification time)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = file_sha256(path)
    return _hashes[key]


def header(path: Path, field: str = "--lora") -> dict[str, Any]:
    """The safetensors header (tensor name -> dtype, shape, offsets); an :class:`InputError` if it is not one."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 2 <= n <= min(_HEADER_LIMIT, path.stat().st_size - 8):
                raise ValueError("bad header length")
            data = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("header is not a table")
    except (ValueError, UnicodeDecodeError, struct.error):
        raise InputError(field, f"{path.name}: not a safetensors file (only .safetensors LoRAs are read; "
                                "pickled .pt/.ckpt files are never loaded)") from None
    except OSError as e:
        raise InputError(field, f"{path.name}: could not be read ({e.strerror or e})") from None
    data.pop("__metadata__", None)
    if not data:
        raise InputError(field, f"{path.name}: holds no tensors")
    if not any("lora" in k for k in data):
        raise InputError(field, f"{path.name}: holds no LoRA weights (no key names lora_A/lora_B or lora_down/lora_up; "
                                f"first key {next(iter(data))!r})")
    return data


def adapter_numel(path: Path, field: str = "--lora") -> int:
    """How many numbers the file's LoRA weights hold, from its header alone (no tensor is read)."""
    total = 0
    for key, entry in header(path, field).items():
        if "lora" not in key:
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise InputError(field, f"{path.name}: not a safetensors file (tensor {key!r} has no shape)")
        total += math.prod(shape)
    return total


def resolve(entry: dict[str, Any], field: str = "--lora") -> dict[str, Any]:
    """``entry`` with its file's ``path`` and ``sha256`` (checked against a recorded hash, as on resume)."""
    entry = check_entry(entry, field)
    path = Path(entry["path"]) if entry.get("path") else locate(entry["name"], field)
    if not path.is_file():
        raise InputError(field, f"{entry['name']}: the LoRA file {path} is gone")
    header(path, field)
    digest = sha256(path)
    if entry.get("sha256") and entry["sha256"] != digest:
        raise InputError(field, f"{entry['name']}: {path} changed since the job started "
                                f"(sha256 {digest[:12]}…, recorded {entry['sha256'][:12]}…)")
    return {"name": entry["name"], "weight": entry["weight"], "path": str(path), "sha256": digest}


def requested(request_loras: list | None, preset_loras: list[str]) -> list[dict[str, Any]]:
    """The request's LoRAs, or the preset's (``FILE[:WEIGHT]`` strings) when the request leaves them unset."""
    if request_loras is not None:
        return [check_entry(e) for e in request_loras]
    return [parse_arg(s, "loras") for s in preset_loras]


def sidecar_entries(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """What a video's sidecar says of its LoRAs: name, sha256, weight."""
    return [{"name": e["name"], "sha256": e.get("sha256"), "weight": e["weight"]} for e in entries or []]
