"""What a request must pass before it is queued: its history-token cap, and its LoRAs (found, safetensors,
made for this DiT), checked before any weights load.

The DiT is the preset's on the ``meta`` device (no weights; the memory planner's copy), so a wrong
shape or an unknown layer is reported at once, naming the file, instead of when the job starts.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from framepack_history.config.fields import resolve
from framepack_history.config.memory import check_memory
from framepack_history.config.presets import Preset
from framepack_history.config.request import GenerationRequest, keyframe_field, keyframe_name
from framepack_history.config.storyboard import split_cuts, split_keyframes
from framepack_history.errors import InputError
from framepack_history.generation.buckets import choose_size, source_size
from framepack_history.generation.segments import segments
from framepack_history.generation.video import read_image
from framepack_history.jobs.borrow import check_borrow
from framepack_history.lora import files


def check_loras(request: GenerationRequest, preset: Preset, field: str = "--lora") -> int:
    """Resolve ``request.loras`` (the preset's when unset) to entries with path and sha256, or raise.

    Returns the device bytes their adapters take in the preset's dtype (what the memory plan counts).
    """
    entries = [files.resolve(e, field) for e in files.requested(request.loras, preset.loras)]
    if entries and preset.model.backbone != "hunyuan_framepack":
        raise InputError(field, f"the {preset.model.backbone} backbone takes no LoRAs "
                                "(they are made for HunyuanVideo/FramePack)")
    total = 0
    if entries:
        from framepack_history.lora import convert  # torch: kept off the page's import path
        from framepack_history.memory.components import meta_components  # torch: kept off the page's import path

        comps = meta_components(preset)
        seen = set()
        for e in entries:
            sd = convert.to_diffusers(convert.read(e["path"], field), comps.backbone.transformer, e["name"], field)
            if e["sha256"] not in seen:  # the same file twice is one adapter
                seen.add(e["sha256"])
                total += convert.nbytes(sd, comps.dtype)
    request.loras = entries
    return total


def check_cap(request: GenerationRequest, preset: Preset, rate: str | None = None) -> None:
    """A history-token cap too small for the video is refused when the job is submitted, not when it starts.

    The request's own cap: a preset's is checked when the job starts, naming the preset key.
    """
    cap = request.max_history_tokens
    if not cap or resolve(request, preset).history_mode != "encoder":
        return
    from framepack_history.history.budget import group_tokens  # torch: kept off the page's import path
    from framepack_history.history.merge import require_cap  # torch: kept off the page's import path

    size = (request.width, request.height) if request.width and request.height else None
    require_cap(cap, group_tokens(preset, rate, size), size or (preset.video.width, preset.video.height),
                "--max-history-tokens")


def check_pins(request: GenerationRequest, preset: Preset, rate: str | None = None) -> None:
    """Pins the history-token cap can keep: they never merge, so what they hold (with a merged run on each side and
    the recent half the cap keeps at full detail) must fit the cap's groups. Refused naming the largest pin."""
    settings = resolve(request, preset)
    plan = check_memory(request.memory, request.seconds, preset, settings.history_mode)
    cap = int(settings.max_history_tokens or 0)
    if not plan.pins or not cap or settings.history_mode != "encoder":
        return
    from framepack_history.history.budget import group_tokens, groups_per_second  # torch: kept off the page's import path
    from framepack_history.history.merge import cap_groups  # torch: kept off the page's import path

    size = (request.width, request.height) if request.width and request.height else None
    try:
        budget = cap_groups(cap, group_tokens(preset, rate, size))
    except ValueError:  # a cap below the least: its own check names it (check_cap, or when the job starts)
        return
    per_second = groups_per_second(preset, rate)
    held = sum(math.ceil((b - a) * per_second) + 1 for a, b in plan.pins) + len(plan.pins) + 1
    if held > budget // 2:
        a, b = max(plan.pins, key=lambda p: p[1] - p[0])
        where = "--max-history-tokens" if request.max_history_tokens is not None else "history.max_tokens"
        raise InputError("--pin", f"pin {a:g}s-{b:g}s: the pins hold up to {held} token groups that never merge; the "
                                  f"cap ({where} {cap}) keeps {budget}, half of them for recent history: pin less "
                                  "or raise the cap")


def least_cap(preset: Preset) -> int:
    """The smallest history-token cap a job of ``preset`` may use (configs on the ``meta`` device)."""
    from framepack_history.history.budget import least_cap as least  # torch: kept off the page's import path

    return least(preset)


def admit_request(request: GenerationRequest, preset: Preset, encoder_rate: str | None = None,
                  fields: tuple[str, str] = ("start image", "video to continue"),
                  rate_field: str = "encoder rate") -> list[tuple[float, str]]:
    """The one admission of a request, for the page, the API and the CLI; raises :class:`InputError`.

    Checks the fields (no file read), the encoder rate, the start image or continued video (read now,
    so a bad file fails before anything is queued; the size it gets is recorded), the LoRAs (resolved
    with their hashes) and the history-token cap. ``fields`` names the two inputs as the caller shows
    them. Returns the parsed storyboard.
    """
    board = request.validate(preset)
    if preset.model.loop == "inverted":  # keyframes cut its video into whole-section segments: none may be empty
        segments(request, preset.video.sections(request.seconds), preset.video)
    rates = [preset.model.encoder_rate] if preset.model.encoder else preset.model.encoder_rates
    if encoder_rate is not None and encoder_rate not in rates:
        raise InputError(rate_field, f"{encoder_rate!r} is not offered by {preset.name} (choices: {', '.join(rates)})")
    check_inputs(request, preset, fields)
    check_cap(request, preset, encoder_rate)
    check_pins(request, preset, encoder_rate)
    check_borrow(request, preset, encoder_rate)  # finished, visible to this caller (the worker resolved its id), alike
    return board


def check_inputs(request: GenerationRequest, preset: Preset, fields: tuple[str, str] = ("start image", "video to continue")) -> None:
    """Read the start image / probe the video now, so a bad file fails at submit; record the size it gets."""
    source = source_size(request, fields)
    if request.width is None or request.height is None:
        request.width, request.height = choose_size(preset, source, fields[1] if request.continue_video else fields[0])

    if request.end_image:  # read now too: a bad end image fails at submit, not after the video's end is made
        read_image(request.end_image, None, None, field="--end-image")
    check_keyframes(request)
    check_loras(request, preset)  # found, safetensors, fits the DiT: recorded with their hashes


def check_keyframes(request: GenerationRequest) -> None:
    """Read every keyframe image now (a bad one fails at submit, naming its entry) and record its SHA-256."""
    for kf in request.keyframes or ():
        try:
            read_image(kf["image"], None, None, field=keyframe_field(request, kf))
        except InputError as e:
            raise InputError(e.field, f"{keyframe_name(kf)}: {e.message}") from None
        kf["sha256"] = files.sha256(Path(kf["image"]))


def refuse_new_keyframes(prompt: str, what: str) -> None:
    """A storyboard edit or an extension names no new keyframe images: they were read, hashed and kept at submit."""
    _, images = split_keyframes(prompt)
    if images:
        raise InputError("--prompt", f"{images[0][2]}: {what} cannot add keyframes (a job's keyframes are read and "
                                     "kept when it is queued, and stay as they were); queue a new job with them")


def refuse_new_cuts(prompt: str, what: str) -> None:
    """A storyboard edit or an extension adds no ``[cut]``: a job's memory controls are set when it is queued."""
    _, cuts = split_cuts(prompt)
    if cuts:
        raise InputError("--prompt", f"storyboard entry at {cuts[0]:g}s: {what} cannot add a cut (a job's memory "
                                     "controls are set when it is queued); queue a new job with it")


def check_kept_keyframes(request: GenerationRequest, field: str = "job") -> None:
    """A job about to resume still has its keyframes' copies, unchanged (their SHA-256): else its frames would differ."""
    for kf in request.keyframes or ():
        path = Path(kf["image"])
        if not path.is_file():
            raise InputError(field, f"{keyframe_name(kf)}: its copy {path} is gone from the job folder")
        if kf.get("sha256") and files.sha256(path) != kf["sha256"]:
            raise InputError(field, f"{keyframe_name(kf)}: its copy {path.name} in the job folder has changed since the "
                                    "job was queued (SHA-256 differs); resuming would not make the same video")


def keep_inputs(request: GenerationRequest, folder: Path) -> None:
    """Copy uploads into the job folder: upload caches are emptied, jobs are not (keyframes: keyframe_0.png, ...)."""
    for name in ("image", "continue_video", "end_image"):
        src = getattr(request, name)
        if src:
            folder.mkdir(parents=True, exist_ok=True)
            dst = folder / f"{name}{Path(src).suffix.lower()}"
            shutil.copyfile(src, dst)
            setattr(request, name, str(dst))
    for i, kf in enumerate(request.keyframes or ()):
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / f"keyframe_{i}{Path(kf['image']).suffix.lower()}"
        shutil.copyfile(kf["image"], dst)
        kf.setdefault("name", Path(kf["image"]).name)  # the file as the user named it: the sidecar's and Reuse's
        kf["image"] = str(dst)
