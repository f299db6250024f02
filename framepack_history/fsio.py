"""Atomic, durable file writes: a temp file beside the target, fsync, rename, fsync of the folder.

Readers see the old file or the new one, never half of one, and after a
power cut a file that a later write names (``checkpoint.json`` naming tensor
chunks and segments) is really on disk: the data is fsynced before the rename
and the rename is fsynced (through the folder) before anything refers to it.

No torch at import time: the page writes JSON through this module.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """A file's SHA-256, read in 4 MiB blocks (what sidecars, saved queues and resumes compare)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(folder: str | Path) -> None:
    """Make renames and deletions in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows: folders cannot be opened; its renames are durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; nothing more can be done
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temp path to write ``path`` through; on success it is fsynced and renamed onto ``path``.

    ``keep_suffix`` names the temp file ``NAME.part.EXT`` instead of ``NAME.EXT.tmp``, for
    writers that pick the format from the extension (ffmpeg). A failed write leaves no temp file.
    """
    path = Path(path)
    tmp = path.with_name(path.stem + ".part" + path.suffix) if keep_suffix else path.with_name(path.name + ".tmp")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Indented JSON (anything else as ``str``), written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))


def atomic_save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file, written atomically (host tensors, contiguous)."""
    from safetensors.torch import save_file  # safetensors: only when tensors are read or written

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)
