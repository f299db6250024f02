"""Training data: video clips, their latents, and a step-indexed batch order.

Item formats
  * pixel items: ``{"video": float [3, F, H, W] in [-1, 1], "caption": str, ...}``
    (the toy world adds ``camera_x`` and ``seed``);
  * latent items: ``{"latents": [C, T, h, w], "caption": str}``.

A pixel dataset is either encoded on the fly (the trainer calls the
backbone's VAE on each batch) or once into a **latent cache**: safetensors
shards of ``shard_size`` clips, written atomically, so an interrupted
caching run resumes by skipping the shards already on disk. A folder made by
``prepare-data`` (:class:`PreparedDataset`) holds the latents together with
the text and start-image embeddings, so a step needs no encoder at all.

Captions may be timestamped storyboards (``"0s: camera pans right; 5s:
camera pans left"``); the stages pick the entry in force where they need it.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from framepack_history.backbones.base import Conditioning
from framepack_history.backbones.toyworld import ToyWorldDataset, WorldSpec
from framepack_history.device import torch_dtype
from framepack_history.errors import InputError
from framepack_history.fsio import atomic_save_tensors
from framepack_history.generation.video import fit_frame
from framepack_history.training.settings import find_path

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".avi")


# ----------------------------------------------------------------- pixels
class VideoFolderDataset(Dataset):
    """Videos under ``root`` (recursively); the first ``frames`` frames at ``fps``, fitted to ``width x height``.

    A sidecar ``name.txt`` holds the caption (a storyboard is fine). Clips
    shorter than ``frames`` repeat their last frame, so every item has the
    same shape and batches stack.
    """

    def __init__(self, root: str | Path, frames: int, width: int, height: int, fps: int) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError("data.root", f"no such folder: {str(root)!r}")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in VIDEO_EXTS)
        if not self.files:
            raise InputError("data.root", f"no videos ({', '.join(VIDEO_EXTS)}) under {root}")
        self.frames, self.width, self.height, self.fps = frames, width, height, fps

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import imageio_ffmpeg  # imageio_ffmpeg: only to find ffmpeg when media is read
        from PIL import Image  # PIL: only when an image is read or written

        path = self.files[i]
        gen = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", f"fps={self.fps}"])
        w, h = next(gen)["size"]
        frames: list[np.ndarray] = []
        for raw in gen:
            frames.append(np.asarray(fit_frame(Image.fromarray(np.frombuffer(raw, np.uint8).reshape(h, w, 3)), self.width, self.height)))
            if len(frames) == self.frames:
                break
        gen.close()
        if not frames:
            raise InputError("data.root", f"{path.name} has no decodable frames")
        frames += [frames[-1]] * (self.frames - len(frames))
        video = torch.from_numpy(np.stack(frames)).float().div(127.5).sub(1).permute(3, 0, 1, 2)
        side = path.with_suffix(".txt")
        caption = side.read_text(encoding="utf-8").strip() if side.is_file() else ""
        return {"video": video, "caption": caption, "name": path.stem}


SPEC_KEYS = ("views_wide", "pan_px_per_frame", "n_landmarks", "n_sprites")


def toyworld_dataset(cfg_data, width: int, height: int, fps: int, split: str | None = None) -> Dataset:
    """The project's toy world with this config's clip length and the preset's frame size and rate.

    ``data.options`` may set WorldSpec fields (views_wide, pan_px_per_frame,
    n_landmarks, n_sprites) and dataset fields (first, p_return).
    """

    if width != height:
        raise InputError("video.width", f"the toy world renders square views (got {width}x{height})")
    opts = dict(cfg_data.options)
    spec = WorldSpec(view=width, fps=fps, **{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in opts.items() if k in SPEC_KEYS})
    rest = {k: v for k, v in opts.items() if k not in SPEC_KEYS}
    split = split or cfg_data.split
    return ToyWorldDataset(split="eval" if split in ("eval", "heldout") else split, size=cfg_data.num_videos,
                           spec=spec, episode_seconds=cfg_data.frames / fps, **rest)


def pixel_dataset(cfg_data, width: int, height: int, fps: int, split: str | None = None) -> Dataset:
    """A pixel dataset from ``[data]`` (kind toyworld | folder)."""
    if cfg_data.kind == "toyworld":
        return toyworld_dataset(cfg_data, width, height, fps, split)
    if cfg_data.kind == "folder":

        return VideoFolderDataset(find_path(cfg_data.root), cfg_data.frames, width, height, fps)
    raise InputError("data.kind", f"must be toyworld, folder, cache or prepared (got {cfg_data.kind!r})")


# ----------------------------------------------------------- latent cache
def _shard(folder: Path, i: int) -> Path:
    return folder / f"shard_{i:05d}.safetensors"


def _public(value: Any) -> Any:
    """Drop bookkeeping keys (``_use_default_values`` and the like, whose order is not stable) at any depth."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


@torch.no_grad()
def build_latent_cache(dataset: Dataset, folder: str | Path, encode: Callable[[torch.Tensor], torch.Tensor],
                       fingerprint: dict[str, Any], shard_size: int = 64, dtype: str = "float16",
                       batch: int = 4, rank: int = 0, world: int = 1, progress: bool = True) -> Path:
    """Encode every clip once; shards already written are skipped (resume), ranks split the shards.

    ``fingerprint`` (VAE config, clip geometry, data source) is stored in
    ``cache.json``; a cache built for something else is refused, not mixed.
    """
    from tqdm import tqdm  # tqdm: only for a progress bar on a terminal

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "cache.json"
    fp = _public(json.loads(json.dumps(fingerprint, default=str)))
    if meta.exists() and _public(json.loads(meta.read_text())) != fp:
        raise InputError("data.cache", f"{folder} was built for other data or another VAE; choose a new folder")
    if rank == 0 and not meta.exists():
        meta.write_text(json.dumps(fp, indent=2))
    n = len(dataset)
    shards = range(rank, math.ceil(n / shard_size), world)
    todo = [i for i in shards if not _shard(folder, i).exists()]
    for i in tqdm(todo, desc="latent cache", unit="shard", disable=not progress or not todo):
        tensors: dict[str, torch.Tensor] = {}
        captions: list[str] = []
        idx = list(range(i * shard_size, min(n, (i + 1) * shard_size)))
        for s in range(0, len(idx), batch):
            items = [dataset[j] for j in idx[s : s + batch]]
            lat = encode(torch.stack([it["video"] for it in items])).float().cpu()
            for j, it in enumerate(items):
                key = str(len(captions))
                tensors[key] = lat[j].to(torch_dtype(dtype)).contiguous()
                if "camera_x" in it:  # the toy world's camera track, for canvas positions
                    tensors[f"camera_x.{key}"] = torch.as_tensor(it["camera_x"]).long().contiguous()
                captions.append(it.get("caption", ""))
        # atomic: a half-written shard never looks finished
        atomic_save_tensors(_shard(folder, i), tensors, metadata={"captions": json.dumps(captions)})
    return folder


class LatentCacheDataset(Dataset):
    """Items ``{"latents", "caption"}`` (and ``camera_x`` for the toy world) read lazily from the shards."""

    def __init__(self, folder: str | Path) -> None:
        from safetensors import safe_open  # safetensors: only when tensors are read or written

        self.folder = Path(folder)
        self.shards = sorted(self.folder.glob("shard_*.safetensors"))
        if not self.shards:
            raise InputError("data.cache", f"no latent shards in {folder}")
        self.index: list[tuple[int, str, str]] = []
        for s, path in enumerate(self.shards):
            with safe_open(str(path), "pt") as f:
                caps = json.loads(f.metadata()["captions"])
            self.index += [(s, str(j), c) for j, c in enumerate(caps)]
        # Open shards (memory-mapped) and their key sets, per process: reopening a shard for every item
        # (header parse, mmap, key listing) was most of the read time (benchmarks/train_speed.py --render).
        self._open: dict[int, tuple[Any, set[str]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """A DataLoader worker (or a pickled copy) opens its own handles."""
        return {**self.__dict__, "_open": {}}

    def _shard(self, s: int) -> tuple[Any, set[str]]:
        from safetensors import safe_open  # safetensors: only when tensors are read or written

        if s not in self._open:
            f = safe_open(str(self.shards[s]), "pt")
            self._open[s] = (f, set(f.keys()))
        return self._open[s]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, key, caption = self.index[i]
        f, keys = self._shard(s)
        item = {"latents": f.get_tensor(key).float(), "caption": caption}
        if f"camera_x.{key}" in keys:
            item["camera_x"] = f.get_tensor(f"camera_x.{key}")
        return item


# -------------------------------------------------------- prepared folders
def first_latent_key(latents: torch.Tensor, dtype: torch.dtype) -> str:
    """A clip's identity for its start-image conditioning: the digest of its first latent frame ``[C, h, w]``.

    The stages hand :meth:`StageTask.conditions` the clip's latents; the first
    one, cast back to the dtype it was stored in, is bit-for-bit the stored one.
    """
    first = latents[:, 0].detach().to("cpu", dtype).contiguous()
    return hashlib.sha1(first.view(torch.uint8).numpy().tobytes() + str(tuple(first.shape)).encode()).hexdigest()


class PreparedConditions:
    """The text and start-image embeddings of a prepared folder, looked up instead of computed.

    Text by prompt (every storyboard entry and the empty prompt were
    embedded by ``prepare-data``); the start image by the clip's first latent.
    """

    def __init__(self, texts: dict[str, dict[str, torch.Tensor]], images: PreparedDataset,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        self.texts, self.images, self.dtype, self.device = texts, images, dtype, device

    def text(self, prompt: str) -> Conditioning:
        if prompt not in self.texts:
            raise InputError("data.root", f"prompt {prompt[:60]!r} was not prepared: run prepare-data again on this folder")
        return Conditioning({k: v.to(self.device) for k, v in self.texts[prompt].items()})

    def conditions(self, prompts: list[str], latents: torch.Tensor, image: bool) -> list[Conditioning]:
        """Per sample: the prompt's embedding plus, when ``image`` and the clip has one, its start image's."""
        out = []
        for i, p in enumerate(prompts):
            cond = self.text(p).tensors
            extra = self.images.image(first_latent_key(latents[i], self.dtype)) if image else None
            if extra is not None:
                # the anchor latent is the clip's own first latent, as generation's start image gives it
                cond = {**{k: v.to(self.device) for k, v in extra.items()},
                        "start_latents": latents[i : i + 1, :, :1].to(self.device, torch.float32), **cond}
            elif image and self.images.starts:
                raise InputError("data.root", "a clip's first latent matches no prepared start image")
            out.append(Conditioning(cond))
        return out


class PreparedDataset(Dataset):
    """Latent items ``{"latents", "caption"}`` of a ``prepare-data`` folder (``[data] kind = "prepared"``).

    ``files`` / ``exclude_files`` select source videos (a held-out split on
    one folder), ``bucket`` (``"WxH"``) one frame size. Items are the
    selection's longest clips (the prepared clip length), so batches stack; the
    shorter clip of a video shorter than one clip is left out, and counted in
    ``short`` (prepare such videos with a smaller ``--clip-seconds``).
    """

    def __init__(self, root: str | Path, files: list[str] | None = None, exclude_files: list[str] | None = None,
                 bucket: str = "") -> None:
        from safetensors import safe_open  # safetensors: only when tensors are read or written

        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise InputError("data.root", f"{root} is not a prepare-data folder (no manifest.json): "
                                          "run `python -m framepack_history prepare-data VIDEOS_DIR --preset P --out DIR`")
        info = json.loads(manifest.read_text())
        ok = {rel: e for rel, e in info["files"].items() if e.get("status") == "ok"}
        for key, names in (("data.files", files or []), ("data.exclude_files", exclude_files or [])):
            unknown = [n for n in names if n not in info["files"]]
            if unknown:
                raise InputError(key, f"{unknown[0]!r} is not a prepared file of {root} (have: {', '.join(sorted(ok))})")
        chosen = [rel for rel in sorted(ok) if (not files or rel in files) and rel not in (exclude_files or [])]
        self.settings = info.get("settings", {})
        self.index: list[tuple[Path, str, str, str]] = []  # shard, clip key, caption, source
        #: first-latent key -> (shard, clip key) of the clips with a start image; read when a step asks
        self.starts: dict[str, tuple[Path, str]] = {}
        shapes: dict[tuple[int, ...], int] = {}
        lengths: list[int] = []
        self.dtype = torch_dtype(self.settings.get("latent_dtype", "float32"))
        for rel in chosen:
            shard = self.root / "clips" / ok[rel]["shard"]
            with safe_open(str(shard), "pt") as f:
                meta = f.metadata()
                if bucket and f"{meta['width']}x{meta['height']}" != bucket:
                    continue
                keys = set(f.keys())
                firsts = json.loads(meta.get("first_latents", "[]"))  # written by prepare-data; else read the slice
                for j, caption in enumerate(json.loads(meta["captions"])):
                    lat = f.get_slice(f"latents.{j}")
                    shape = tuple(lat.get_shape())
                    shapes[shape[:1] + shape[2:]] = max(shapes.get(shape[:1] + shape[2:], shape[1]), shape[1])
                    lengths.append(shape[1])
                    if any(k.startswith(f"cond.{j}.") for k in keys):
                        first = firsts[j] if firsts else first_latent_key(lat[:, :1], self.dtype)
                        self.starts[first] = (shard, str(j))
                    self.index.append((shard, str(j), caption, rel))
        if not self.index:
            raise InputError("data.root", f"no prepared clips in {root} for this selection"
                                          + (f" (bucket {bucket})" if bucket else ""))
        if len(shapes) > 1:
            sizes = sorted({f"{m['width']}x{m['height']}" for m in self._sizes(chosen, ok)})
            raise InputError("data.bucket", f"{root} holds clips of {len(shapes)} frame sizes ({', '.join(sizes)}); "
                                            "set data.bucket to one of them (or prepare them into separate folders)")
        self.frames = max(lengths)  # latent frames every item has
        keep = [i for i, t in enumerate(lengths) if t == self.frames]
        self.short = len(lengths) - len(keep)
        self.index = [self.index[i] for i in keep]
        if self.short:
            print(f"data: {self.short} clips shorter than {self.frames} latent frames left out (videos shorter than one "
                  f"clip; prepare them with a smaller --clip-seconds into another folder)", file=sys.stderr)

    def _sizes(self, chosen: list[str], ok: dict[str, Any]) -> list[dict[str, int]]:
        return [dict(zip(("width", "height"), ok[rel].get("size", [0, 0]))) for rel in chosen]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from safetensors import safe_open  # safetensors: only when tensors are read or written

        shard, key, caption, source = self.index[i]
        with safe_open(str(shard), "pt") as f:
            lat = f.get_tensor(f"latents.{key}")
        return {"latents": lat.float(), "caption": caption, "source": source}

    def text_table(self) -> dict[str, dict[str, torch.Tensor]]:
        """Prompt -> its prepared text conditioning tensors."""
        from safetensors import safe_open  # safetensors: only when tensors are read or written

        path = self.root / "texts.safetensors"
        if not path.is_file():
            raise InputError("data.root", f"{self.root} has no text embeddings: run prepare-data again to finish it")
        with safe_open(str(path), "pt") as f:
            prompts = json.loads(f.metadata()["prompts"])
            table: dict[str, dict[str, torch.Tensor]] = {q: {} for q in prompts}
            for k in f.keys():
                i, name = k.split(".", 1)
                table[prompts[int(i)]][name] = f.get_tensor(k)
        return table

    def image(self, key: str) -> dict[str, torch.Tensor] | None:
        """The start-image conditioning of the clip whose first latent has this key, or None."""
        from safetensors import safe_open  # safetensors: only when tensors are read or written

        if key not in self.starts:
            return None
        shard, j = self.starts[key]
        with safe_open(str(shard), "pt") as f:
            return {k.split(".", 2)[2]: f.get_tensor(k) for k in f.keys() if k.startswith(f"cond.{j}.")}

    def conditions(self, device: torch.device | str) -> PreparedConditions:
        return PreparedConditions(self.text_table(), self, self.dtype, device)


# ------------------------------------------------------------ batch order
class StepBatchSampler(Sampler[list[int]]):
    """Index batches in an order fixed by ``(seed, epoch)``; starts at any micro-step (resume).

    Micro-step ``m`` of rank ``r`` takes positions ``(m*world + r)*batch ...``
    of the concatenated per-epoch permutations, so ranks never share a clip
    within a step and a resumed run sees exactly the batches it would have.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1) -> None:
        if n < batch * world:
            raise InputError("batch_size", f"{batch} x {world} processes is more than the {n} clips in the dataset")
        self.n, self.batch, self.seed, self.start, self.stop, self.rank, self.world = n, batch, seed, start, stop, rank, world
        self._perm: dict[int, torch.Tensor] = {}

    def _at(self, pos: int) -> int:
        epoch, off = divmod(pos, self.n)
        if epoch not in self._perm:
            self._perm = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))}
        return int(self._perm[epoch][off])

    def __iter__(self) -> Iterator[list[int]]:
        for m in range(self.start, self.stop):
            base = (m * self.world + self.rank) * self.batch
            yield [self._at(base + j) for j in range(self.batch)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape; keep everything else as lists."""
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def step_batches(dataset: Dataset, batch: int, seed: int, grad_accum: int, max_steps: int,
                 num_workers: int = 0, world: int = 1) -> Callable[[int, int], Iterator[dict[str, Any]]]:
    """``fn(start_step, rank)`` -> an iterator of collated micro-batches from that step on."""

    def fn(start_step: int, rank: int) -> Iterator[dict[str, Any]]:
        sampler = StepBatchSampler(len(dataset), batch, seed, start_step * grad_accum, max_steps * grad_accum, rank, world)
        return iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                               persistent_workers=False))

    return fn
