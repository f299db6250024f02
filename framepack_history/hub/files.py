"""Which weight files a preset needs, and whether they are here: no network, no torch.

The one place that decides "offline" (:func:`offline`) and "the hub answers"
(:func:`reachable`); the loaders, the ``download`` command and the page all
ask here. A preset's hub components are listed once (:func:`components`), in
the layout ``HunyuanFramepackBackbone.from_pretrained`` reads.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from framepack_history.config.paths import WORKDIR, resolve_path
from framepack_history.config.presets import ModelSpec, available_presets, load_preset

#: what a component's folder may hold that we fetch: configs, tokenizers, safetensors (never .bin/.pt/.ckpt)
WANTED_SUFFIXES = (".json", ".safetensors", ".txt")
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Component:
    """One folder a backbone loads: ``source`` (hub id or local folder) + ``subfolder``."""

    name: str
    source: str
    subfolder: str
    marker: str  # the file that must exist: config.json, tokenizer_config.json, preprocessor_config.json

    @property
    def is_hub(self) -> bool:
        return is_hub_id(self.source)

    def wants(self, path: str) -> bool:
        """Whether ``path`` (relative to the repo) is one of this component's files."""
        folder, _, name = path.rpartition("/")
        return folder == self.subfolder and name.endswith(WANTED_SUFFIXES)


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}


def endpoint() -> str:
    """The hub's address (``HF_ENDPOINT``), read now."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all (one TCP connect, no retries)."""
    url = urlparse(endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def is_hub_id(source: str) -> bool:
    """``owner/name`` that is not a local path."""
    looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") > 1
    return not looks_like_path and not Path(source).expanduser().exists()


def components(spec: ModelSpec) -> list[Component]:
    """The folders ``spec`` loads weights from (none for the toy model or random weights)."""
    if spec.backbone != "hunyuan_framepack" or not spec.weights:
        return []
    base = resolve_path(spec.components.get("base", "hunyuanvideo-community/HunyuanVideo"))
    redux = resolve_path(spec.components.get("image_encoder", "lllyasviel/flux_redux_bfl"))
    cfg, tok = "config.json", "tokenizer_config.json"
    return [
        Component("transformer", resolve_path(spec.weights), "", cfg),
        Component("text_encoder", base, "text_encoder", cfg),
        Component("tokenizer", base, "tokenizer", tok),
        Component("text_encoder_2", base, "text_encoder_2", cfg),
        Component("tokenizer_2", base, "tokenizer_2", tok),
        Component("vae", base, "vae", cfg),
        Component("image_encoder", redux, "image_encoder", cfg),
        Component("feature_extractor", redux, "feature_extractor", "preprocessor_config.json"),
    ]


def local_folder(c: Component, cache_dir: str | None = None) -> Path | None:
    """Where ``c`` lies on disk (a local folder, or its snapshot in the hub cache), if anywhere."""
    if not c.is_hub:
        return Path(c.source).expanduser() / c.subfolder
    from huggingface_hub import try_to_load_from_cache  # huggingface_hub: only when the hub is asked

    cached = try_to_load_from_cache(c.source, f"{c.subfolder}/{c.marker}" if c.subfolder else c.marker, cache_dir=cache_dir)
    return Path(cached).parent if isinstance(cached, str) else None


def complete(folder: Path | None, c: Component) -> bool:
    """The marker is there and, for a model, its safetensors (every shard an index names)."""
    if folder is None or not (folder / c.marker).is_file():
        return False
    if c.marker != "config.json":
        return True
    for index in folder.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        return all((folder / s).is_file() for s in shards)
    return any(folder.glob("*.safetensors"))


def missing(spec: ModelSpec, cache_dir: str | None = None) -> list[Component]:
    """The components of ``spec`` that are not complete on this machine."""
    return [c for c in components(spec) if not complete(local_folder(c, cache_dir), c)]


def preset_ref(spec: ModelSpec) -> str:
    """A ``--preset`` value that names ``spec``: a preset of presets/ with the same sources, else a placeholder."""
    wanted = [(c.source, c.subfolder) for c in components(spec)]
    for name in available_presets():
        try:
            if [(c.source, c.subfolder) for c in components(load_preset(name).model)] == wanted:
                return name
        except Exception:  # an unreadable preset names nothing
            continue
    return "YOUR_PRESET.toml"


def python() -> str:
    """How to call this interpreter in a printed command: ``.venv/bin/python`` inside the project's environment."""

    # WORKDIR: installed, the package lies in site-packages while the user's .venv is in the folder they work in
    if Path(sys.prefix).resolve() != (WORKDIR / ".venv").resolve():
        return "python"
    exe = Path(sys.executable)
    return str(exe.relative_to(WORKDIR)) if exe.is_relative_to(WORKDIR) else str(exe)


def download_command(preset: str) -> str:
    return f"{python()} -m framepack_history download --preset {preset}"


def missing_message(spec: ModelSpec, gone: list[Component], preset: str | None = None) -> str:
    """What is missing and the command that gets it (the same words in the page and the CLI)."""
    ref = preset or preset_ref(spec)
    what = ", ".join(f"{c.name} ({c.source}{'/' + c.subfolder if c.subfolder else ''})" for c in gone)
    local = [c for c in gone if not c.is_hub]
    if local and len(local) == len(gone):
        return f"weights not found on this machine: {what}; point the preset at folders that hold them"
    why = " (HF_HUB_OFFLINE=1 is set: unset it to download)" if offline() else ""
    return (f"weights not downloaded yet: {what}; get them with `{download_command(ref)}` "
            f"or the page's Download button{why}")

