"""The finishing models' weight files: which file a name means, where it is, and what model it holds (no torch).

A learned upscaler or interpolator is named by ``--model``: a known name (:data:`KNOWN`, fetched by
``python -m framepack_history download --finishing NAME`` into the Hugging Face cache) or a local
``.safetensors`` path. :func:`describe` reads the file's header by hand (8-byte length, JSON: no
tensor is read, nothing is unpickled) and tells the architecture and its sizes from the keys and
shapes: ESRGAN's RRDBNet in Real-ESRGAN's layout, SRVGGNetCompact, or RIFE's IFNet 4.x (the
modules of :mod:`framepack_history.backbones.finishing`). A pickle, a file that is not
safetensors, or keys the detected model does not have are refused with an
:class:`~framepack_history.errors.InputError` naming the field, before any job is queued.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framepack_history.errors import DownloadError, InputError
from framepack_history.hub import files as hub
from framepack_history.hub.download import Plan, RemoteFile, _present, cache_dir

#: suffixes of pickle-based checkpoints: never loaded (unpickling runs code)
PICKLES = (".pth", ".pt", ".ckpt", ".bin", ".pkl", ".pickle")


@dataclass(frozen=True)
class Known:
    """A model the ``download`` command can fetch: a hub repo that holds a safetensors copy of the released weights."""

    repo: str
    file: str | None  # None: the repo's only .safetensors file at its top level
    task: str  # "upscale" | "interpolate"
    about: str
    scale: int = 1  # an upscaler's factor (the page sets its scale from it); 1 for an interpolator


#: safetensors conversions of the released weights (the originals are pickles); the first of each task is its default
KNOWN: dict[str, Known] = {
    "realesr-animevideov3": Known("OzzyGT/RealESRGAN_anime_v3", None, "upscale",
                                  "SRVGGNetCompact 4x, 0.6 M parameters: made for video, fast", 4),
    "realesr-general-x4v3": Known("OzzyGT/RealESRGAN_general_x4v3", None, "upscale",
                                  "SRVGGNetCompact 4x, 1.2 M parameters: real-world footage", 4),
    "realesrgan-x4plus": Known("wkrettek/real-esrgan-models", "realesrgan_x4plus.safetensors", "upscale",
                               "RRDBNet 4x, 23 blocks, 67 MB: the classic, slow on video", 4),
    "realesrgan-x4plus-anime-6b": Known("wkrettek/real-esrgan-models", "realesrgan_x4plus_anime_6B.safetensors",
                                        "upscale", "RRDBNet 4x, 6 blocks: illustration and anime", 4),
    "rife-4.26": Known("OzzyGT/RIFE_v4_26", None, "interpolate", "RIFE IFNet 4.26 (the 4.25 layout)"),
}


def known_scale(name: str | None) -> int | None:
    """The factor of a known upscaler (None for a file path or another name: its header says, when it runs)."""
    k = KNOWN.get(str(name or ""))
    return k.scale if k is not None and k.task == "upscale" else None


DEFAULT_MODEL = {"upscale": "realesr-animevideov3", "interpolate": "rife-4.26"}
TASK_OF = {"rrdbnet": "upscale", "srvgg": "upscale", "ifnet": "interpolate"}
ARCH_NAMES = {"rrdbnet": "RRDBNet (ESRGAN)", "srvgg": "SRVGGNetCompact", "ifnet": "RIFE IFNet"}
#: modules the released RIFE files carry that only training uses
RIFE_TRAINING_ONLY = ("teacher.", "caltime.")
#: wrappers training code puts around the keys (DataParallel, BasicSR's EMA copy)
_PREFIXES = ("module.", "params_ema.", "params.")


@dataclass(frozen=True)
class ModelInfo:
    """What a weight file holds: the architecture, its constructor's sizes and how the keys map onto it."""

    path: Path
    arch: str  # rrdbnet | srvgg | ifnet
    config: dict[str, Any]  # the module's constructor arguments
    scale: int = 1  # the upscale factor (1 for RIFE)
    prefix: str = ""  # stripped from every key
    ignored: tuple[str, ...] = field(default_factory=tuple)  # keys present but unused (training-only)

    @property
    def task(self) -> str:
        return TASK_OF[self.arch]

    def summary(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{ARCH_NAMES[self.arch]} ({sizes})"


# ------------------------------------------------------------------ where
def command(name: str) -> str:
    return f"{hub.python()} -m framepack_history download --finishing {name}"


def cached(name: str, cache: str | Path | None = None) -> Path | None:
    """The file of known model ``name`` in the hub cache (its ``refs/main`` snapshot), if it was downloaded."""
    k = KNOWN[name]
    folder = Path(cache or cache_dir()) / f"models--{k.repo.replace('/', '--')}"
    try:
        commit = (folder / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snap = folder / "snapshots" / commit
    if k.file is not None:
        return snap / k.file if (snap / k.file).is_file() else None
    found = sorted(snap.glob("*.safetensors"))
    return found[0] if len(found) == 1 else None


def resolve(model: str, task: str, field_name: str = "--model") -> Path:
    """The weight file ``model`` names for ``task``: a known name (downloaded) or a ``.safetensors`` path."""
    model = str(model).strip()
    if model in KNOWN:
        if KNOWN[model].task != task:
            raise InputError(field_name, f"{model} is an {KNOWN[model].task} model, not one for {task}")
        path = cached(model)
        if path is None:
            why = " (HF_HUB_OFFLINE=1 is set: unset it to download)" if hub.offline() else ""
            raise InputError(field_name, f"{model} is not downloaded yet: get it with `{command(model)}`{why}")
        return path
    path = Path(model).expanduser()
    suffix = path.suffix.lower()
    if suffix in PICKLES:
        raise InputError(field_name, f"{path.name} is a pickle-based checkpoint, which is never loaded (safetensors "
                                     "only: convert it, or download a safetensors copy)")
    if suffix != ".safetensors":
        known = ", ".join(n for n, k in KNOWN.items() if k.task == task)
        raise InputError(field_name, f"{model!r} is neither a known model ({known}) nor a .safetensors file")
    if not path.is_file():
        raise InputError(field_name, f"{path}: no such file")
    return path.resolve()


# ------------------------------------------------------------------ what
def read_header(path: Path, field_name: str = "--model") -> dict[str, list[int]]:
    """Every tensor's shape, from the safetensors header alone (a file that is not safetensors is refused).

    safetensors' own reader checks the header; the numpy view needs no torch and reads no tensor data.
    """
    from safetensors import SafetensorError, safe_open  # safetensors: only when a weight file is read

    try:
        with safe_open(str(path), framework="numpy") as f:
            shapes = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except OSError as e:
        raise InputError(field_name, f"{path.name}: cannot read it ({e.strerror or e})") from None
    except (SafetensorError, ValueError) as e:
        raise InputError(field_name, f"{path.name} is not a safetensors file ({e})") from None
    if not shapes:
        raise InputError(field_name, f"{path.name} holds no tensors")
    return shapes


def _strip_prefix(shapes: dict[str, list[int]]) -> str:
    for p in _PREFIXES:
        if all(k.startswith(p) for k in shapes):
            return p
    return ""


def _rrdbnet(s: dict[str, list[int]], name: str, field_name: str) -> tuple[dict[str, Any], int, set[str]]:
    first, last = s["conv_first.weight"], s.get("conv_last.weight")
    if last is None or len(first) != 4 or len(last) != 4:
        raise InputError(field_name, f"{name}: conv_first without conv_last: not an RRDBNet in Real-ESRGAN's layout")
    feat, folded, out_ch = first[0], first[1], last[0]
    # the input is unshuffled 2x2 (2x model) or 4x4 (1x model) into channels before conv_first
    unshuffle = {1: 1, 4: 2, 16: 4}.get(folded // out_ch) if folded % out_ch == 0 else None
    if unshuffle is None:
        raise InputError(field_name, f"{name}: conv_first takes {folded} channels for {out_ch} out: no known scale")
    blocks = 1 + max((int(m.group(1)) for k in s if (m := re.match(r"body\.(\d+)\.", k))), default=-1)
    if blocks < 1 or "body.0.rdb1.conv1.weight" not in s:
        raise InputError(field_name, f"{name}: an RRDBNet without RRDB blocks (body.N.rdbK.convJ)")
    config = {"in_ch": folded // unshuffle**2, "out_ch": out_ch, "scale": 4 // unshuffle, "num_feat": feat,
              "num_block": blocks, "num_grow": s["body.0.rdb1.conv1.weight"][0]}
    convs = ["conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    convs += [f"body.{b}.rdb{r}.conv{c}" for b in range(blocks) for r in (1, 2, 3) for c in range(1, 6)]
    return config, 4 // unshuffle, {f"{c}.{p}" for c in convs for p in ("weight", "bias")}


def _srvgg(s: dict[str, list[int]], name: str, field_name: str) -> tuple[dict[str, Any], int, set[str]]:
    last = max(int(m.group(1)) for k in s if (m := re.match(r"body\.(\d+)\.", k)))
    if last < 2 or last % 2 or "body.1.weight" not in s:
        raise InputError(field_name, f"{name}: body.N layers that are not SRVGGNetCompact's (convs at even N, "
                                     "a PReLU after each; ReLU variants have no weights to tell them by)")
    in_ch, feat, out = s["body.0.weight"][1], s["body.0.weight"][0], s[f"body.{last}.weight"][0]
    scale = math.isqrt(out // in_ch) if out % in_ch == 0 else 0
    if scale < 1 or scale * scale * in_ch != out:
        raise InputError(field_name, f"{name}: its last conv makes {out} channels, not {in_ch} x a square scale")
    num_conv = (last - 2) // 2
    expected = {f"body.{i}.{p}" for i in range(0, last + 1, 2) for p in ("weight", "bias")}
    expected |= {f"body.{i}.weight" for i in range(1, last, 2)}  # PReLU: one slope per channel
    return {"in_ch": in_ch, "out_ch": in_ch, "num_feat": feat, "num_conv": num_conv, "scale": scale}, scale, expected


def _ifnet(s: dict[str, list[int]], name: str, field_name: str) -> tuple[dict[str, Any], int, set[str]]:
    if "encode.cnn0.weight" not in s or "encode.cnn3.weight" not in s:
        raise InputError(field_name, f"{name}: a RIFE IFNet without the 4.x feature head (encode.cnn0..cnn3); "
                                     "only Practical-RIFE 4.22-4.26 layouts are read")
    blocks = 1 + max(int(m.group(1)) for k in s if (m := re.match(r"block(\d+)\.", k)))
    widths = []
    for i in range(blocks):
        if f"block{i}.conv0.1.0.weight" not in s:
            raise InputError(field_name, f"{name}: block{i} lacks conv0.1 (not a RIFE 4.x IFBlock)")
        widths.append(s[f"block{i}.conv0.1.0.weight"][0])
    res = 1 + max(int(m.group(1)) for k in s if (m := re.match(r"block0\.convblock\.(\d+)\.", k)))
    hidden, head_ch = s["encode.cnn0.weight"][0], s["encode.cnn3.weight"][1]  # a transposed conv: [in, out, k, k]
    if s["block0.conv0.0.0.weight"][1] != 7 + 2 * head_ch:
        raise InputError(field_name, f"{name}: block0 takes {s['block0.conv0.0.0.weight'][1]} channels, not the "
                                     f"{7 + 2 * head_ch} of two images, their {head_ch}-channel features and t")
    expected = {f"encode.cnn{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    for i in range(blocks):
        expected |= {f"block{i}.conv0.{j}.0.{p}" for j in (0, 1) for p in ("weight", "bias")}
        expected |= {f"block{i}.lastconv.0.{p}" for p in ("weight", "bias")}
        expected |= {f"block{i}.convblock.{r}.{p}" for r in range(res) for p in ("conv.weight", "conv.bias", "beta")}
    return {"widths": tuple(widths), "head_hidden": hidden, "head_ch": head_ch, "resblocks": res}, 1, expected


def describe(path: str | Path, field_name: str = "--model") -> ModelInfo:
    """The model a safetensors file holds, told from its keys and shapes; unknown or missing keys are refused."""
    path = Path(path)
    raw = read_header(path, field_name)
    prefix = _strip_prefix(raw)
    s = {k[len(prefix):]: v for k, v in raw.items()}
    ignored: tuple[str, ...] = ()
    if "conv_first.weight" in s:
        arch, (config, scale, expected) = "rrdbnet", _rrdbnet(s, path.name, field_name)
    elif "body.0.weight" in s:
        arch, (config, scale, expected) = "srvgg", _srvgg(s, path.name, field_name)
    elif "block0.conv0.0.0.weight" in s:
        ignored = tuple(sorted(k for k in s if k.startswith(RIFE_TRAINING_ONLY)))
        arch, (config, scale, expected) = "ifnet", _ifnet(s, path.name, field_name)
    else:
        raise InputError(field_name, f"{path.name}: not an ESRGAN-family (RRDBNet, SRVGGNetCompact) or RIFE 4.x "
                                     f"weight file (keys such as {', '.join(sorted(s)[:3])})")
    unknown = sorted(set(s) - expected - set(ignored))
    if unknown:
        raise InputError(field_name, f"{path.name}: keys a {ARCH_NAMES[arch]} does not have: "
                                     f"{', '.join(unknown[:4])}{' …' if len(unknown) > 4 else ''} ({len(unknown)} in all)")
    if missing := sorted(expected - set(s)):
        raise InputError(field_name, f"{path.name}: a {ARCH_NAMES[arch]} without {', '.join(missing[:4])}"
                                     f"{' …' if len(missing) > 4 else ''} ({len(missing)} missing)")
    return ModelInfo(path, arch, config, scale, prefix, ignored)


# ------------------------------------------------------------------ fetching
def names_for(wanted: list[str]) -> list[str]:
    """The known names ``wanted`` asks for (``all``: every one); an unknown name is refused naming ``--finishing``."""
    names = list(KNOWN) if "all" in wanted else list(dict.fromkeys(wanted))
    if bad := [n for n in names if n not in KNOWN]:
        raise InputError("--finishing", f"unknown finishing model {', '.join(bad)}; known: {', '.join(KNOWN)} (or all)")
    return names


def make_plan(names: list[str], local_dir: str | Path | None = None) -> Plan:
    """The files of known models ``names`` with their sizes (one listing per repo), as the ``download`` plan."""
    from huggingface_hub import HfApi  # huggingface_hub: only when the hub is asked
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError  # huggingface_hub: only when the hub is asked

    if hub.offline():
        raise DownloadError(f"HF_HUB_OFFLINE=1 is set, so nothing is downloaded; unset it and run "
                            f"`{command(' '.join(names))}` again")
    if not hub.reachable():
        raise DownloadError(f"cannot reach {hub.endpoint()} (no network?); run `{command(' '.join(names))}` when this "
                            "machine is online, or give --model a local .safetensors file")
    api = HfApi(endpoint=hub.endpoint())
    target = Path(local_dir).expanduser().resolve() if local_dir else cache_dir()
    files: list[RemoteFile] = []
    commits: dict[str, str] = {}
    for name in names:
        k = KNOWN[name]
        try:
            info = api.model_info(k.repo, files_metadata=True, timeout=30)
        except RepositoryNotFoundError:
            raise DownloadError(f"{k.repo} does not exist on {hub.endpoint()}") from None
        except (HfHubHTTPError, OSError) as e:
            raise DownloadError(f"could not list {k.repo} on {hub.endpoint()}: {e}") from None
        commits[k.repo] = info.sha
        top = [s for s in info.siblings or [] if "/" not in s.rfilename and s.rfilename.endswith(".safetensors")]
        pick = [s for s in top if s.rfilename == k.file] if k.file else top
        if len(pick) != 1:
            raise DownloadError(f"{k.repo} holds {len(pick)} matching .safetensors files for {name}, not one "
                                f"({', '.join(s.rfilename for s in top) or 'none'})")
        s = pick[0]
        files.append(RemoteFile(k.repo, s.rfilename, int(s.size if s.size is not None else s.lfs.size), name))
    plan = Plan(files, commits, target, target if local_dir else None)
    for f in plan.files:
        f.done = _present(plan, f)
    return plan
