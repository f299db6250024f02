"""A stand-in for the Hugging Face hub's HTTP API on loopback, serving repos from a folder.

Only what ``huggingface_hub`` calls for ``model_info(files_metadata=True)``,
``get_hf_file_metadata`` and ``hf_hub_download``, plus our own Range GETs:

* ``GET /api/models/OWNER/NAME[/revision/REV]``: id, sha, siblings with sizes
  (``lfs`` with sha256 for safetensors, as the hub stores them);
* ``HEAD|GET /OWNER/NAME/resolve/REV/PATH``: ``X-Repo-Commit``, ``ETag`` (git blob
  sha1, or ``X-Linked-Etag`` sha256 for LFS files), ``Content-Length``, and
  ``Range: bytes=N-`` answered with 206.

Knobs for tests: ``cut[path] = [n1, n2, ...]`` makes the next GETs of a file
send n1, then n2 ... bytes and drop the connection; ``fake_size[path]``
reports another size in the listing. ``log`` records every request.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

#: the repos of tests/presets/tiny-hub.toml
F1, BASE, REDUX = "tiny/framepack-f1", "tiny/hunyuanvideo", "tiny/redux"


def save_tiny_repos(root: Path) -> None:
    """The tiny model's components in hub layout, plus decoys that no preset needs."""
    from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone

    bb = HunyuanFramepackBackbone.tiny(seed=3)
    bb.transformer.save_pretrained(root / F1)
    for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"):
        getattr(bb, name).save_pretrained(root / BASE / name)
    bb.image_encoder.save_pretrained(root / REDUX / "image_encoder")
    bb.feature_extractor.save_pretrained(root / REDUX / "feature_extractor")
    # decoys: pickles, another model's folder, docs
    (root / BASE / "text_encoder" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle" * 100)
    bb.transformer.save_pretrained(root / BASE / "transformer")
    (root / BASE / "model_index.json").write_text("{}")
    (root / REDUX / "image_embedder").mkdir()
    (root / REDUX / "image_embedder" / "config.json").write_text("{}")
    (root / F1 / "README.md").write_text("tiny")
    (root / F1 / "notes.pt").write_bytes(b"\x80\x04" * 10)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn:
    """``with HubStandIn(root) as hub: hub.url`` serves ``root/OWNER/NAME/...``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cut: dict[str, list[int]] = {}
        self.fake_size: dict[str, int] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ repo data
    def files(self, repo: str) -> list[Path]:
        base = self.root / repo
        return sorted(p for p in base.rglob("*") if p.is_file())

    def commit(self, repo: str) -> str:
        h = hashlib.sha1()
        for p in self.files(repo):
            h.update(str(p.relative_to(self.root / repo)).encode() + p.read_bytes())
        return h.hexdigest()

    def info(self, repo: str) -> dict:
        siblings = []
        for p in self.files(repo):
            rel = p.relative_to(self.root / repo).as_posix()
            data = p.read_bytes()
            size = self.fake_size.get(f"{repo}/{rel}", len(data))
            row = {"rfilename": rel, "size": size, "blobId": git_blob_sha1(data)}
            if rel.endswith(".safetensors"):
                row["lfs"] = {"size": size, "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(row)
        return {"id": repo, "modelId": repo, "sha": self.commit(repo), "private": False, "siblings": siblings}

    def ranges(self, method: str, repo: str, path: str) -> list[str | None]:
        """The Range header of every ``method`` request for ``repo``'s file ``path``, in order."""
        with self._lock:
            return [rng for m, p, rng in self.log
                    if m == method and p.startswith(f"/{repo}/resolve/") and p.split("/", 5)[-1] == path]

    # -------------------------------------------------------------- handler
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send_json(self, code: int, data: dict) -> None:
                body = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self._serve(body=True)

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                with hub._lock:
                    hub.log.append((self.command, path, self.headers.get("Range")))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo = "/".join(parts[2:4])
                    return self._send_json(200, hub.info(repo)) if (hub.root / repo).is_dir() else self._not_found()
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, rel = "/".join(parts[:2]), "/".join(parts[4:])
                    return self._file(repo, rel, body)
                self._not_found()

            def _file(self, repo: str, rel: str, body: bool) -> None:
                p = hub.root / repo / rel
                if not p.is_file():
                    return self._not_found()
                data = p.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", hub.commit(repo))
                if rel.endswith(".safetensors"):
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", f'"{git_blob_sha1(data)}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                with hub._lock:
                    cuts = hub.cut.get(f"{repo}/{rel}")
                    n = cuts.pop(0) if cuts else None
                if n is None:
                    self.wfile.write(data[start:])
                    return
                self.wfile.write(data[start:start + n])  # then drop the connection mid-file
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

        return Handler


def go_online(monkeypatch, url: str, cache: Path) -> None:
    """For one test: huggingface_hub talks to the stand-in at ``url`` with a fresh cache, offline mode off.

    huggingface_hub reads its offline flag and cache folder at import, so its constants are set too (undone by
    ``monkeypatch`` after the test).
    """
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
