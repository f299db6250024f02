"""The Gallery tab's events: pick a finished video, extend it from its saved history, or reuse its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from framepack_history.config.presets import load_preset
from framepack_history.errors import InputError
from framepack_history.ui.context import PageContext
from framepack_history.ui.plan import end_image_updates, keyframe_updates, start_frame_update
from framepack_history.ui.progress import progress_html
from framepack_history.ui.reuse import form_values
from framepack_history.ui.values import _num, _path


class GalleryActions(PageContext):
    """Page events on the videos in outputs/ that this user may see (:meth:`PageContext.gallery`)."""

    def gallery_pick(self, evt: gr.SelectData, request: gr.Request | None = None) -> str:
        """The video picked in the Gallery (its path in outputs/, by its place in this user's listing)."""
        items = self.gallery(request)
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return items[index][0] if isinstance(index, int) and 0 <= index < len(items) else ""

    def job_of_video(self, video: str | None) -> str:
        """The job id of a video in outputs/ (``outputs/DATE/JOB/video.mp4``)."""
        if not video:
            raise InputError("video", "pick a video in the Gallery first")
        job_id = Path(video).parent.name
        try:
            if self.worker.job_dir(job_id).exists():
                return job_id
        except InputError:
            pass
        raise InputError("video", f"{Path(video).name} was not made by a job of this app (no job folder {job_id!r}); "
                                  "continue it with 'Video to continue' instead")

    def extend_click(self, video: str | None, prompt: Any, seconds: Any, request: gr.Request | None = None) -> tuple[str, str]:
        """Extend: continue the picked finished video from its saved history; follow the new job here."""
        try:
            job_id = self.own(self.job_of_video(video), request)
            secs = _num(seconds, "seconds to add")
            job = self.worker.extend(job_id, str(prompt or "").strip() or None, 5.0 if secs is None else secs,
                                     owner=self.user(request))
        except InputError as e:
            raise self._error(e, "Can't extend this video") from None
        return job.id, progress_html(job)

    def reuse_settings(self, video: str | None, upload: Any = None) -> tuple:
        """Reuse settings: the picked video's sidecar (or an uploaded video.json) into the form."""
        source = _path(upload) or (str(Path(video).with_suffix(".json")) if video else None)
        if not source:
            raise gr.Error("Pick a video in the Gallery, or upload a video.json.", title="No settings to load")
        try:
            v, notes = form_values(source, self.presets, self.default_preset)
        except InputError as e:
            raise gr.Error(f"{e.field}: {e.message}", title="Can't load these settings") from None
        for note in notes:
            gr.Info(note)
        p = load_preset(v["preset"])  # the preset's own choices, as preset_defaults would set them
        rates = [p.model.encoder_rate] if p.model.encoder else p.model.encoder_rates
        frames = start_frame_update(p.model.backbone)
        if v["start_frame"]:
            frames["value"] = v["start_frame"]
        return (v["prompt"], v["seconds"], v["seed"], v["preset"], v["steps"], v["guidance"], v["shift"],
                gr.update(choices=rates, value=v["encoder_rate"] if v["encoder_rate"] in rates else p.model.encoder_rate,
                          visible=len(rates) > 1),
                v["history"], v["window"], v["history_guidance"], frames, v["max_tokens"], v["merge"], v["cache"],
                *end_image_updates(p, 1.0 if v["end_frame_strength"] is None else v["end_frame_strength"]),
                *keyframe_updates(p, v["keyframes"]), v["memory"], v["borrow"])
