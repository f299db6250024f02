"""The progress box: one job's status, section, step, ETA and message, as the page shows them."""

from __future__ import annotations

import html

from framepack_history.jobs.store import Job
from framepack_history.jobs.studio import scrub as _scrub
from framepack_history.ui.values import _fmt_time


def progress_html(job: Job | None, scrub: bool = False) -> str:
    """The box's HTML for ``job`` (the idle hint without one); ``scrub`` drops server folders from its message."""
    if job is None:
        return "<div class='fph-progress idle'>No job yet. Type a prompt and press Generate.</div>"
    p = job.progress
    total = max(1, p.sections_total * max(1, p.steps))
    done = p.sections_done * max(1, p.steps) + (p.step if p.section >= p.sections_done else 0)
    pct = 100.0 if job.status == "done" else min(100.0, 100.0 * done / total) if p.sections_total else 0.0
    status = {"queued": "queued", "running": "running", "done": "done", "cancelled": "cancelled", "failed": "failed"}[job.status]
    parts = [f"<b class='fph-status {status}'>{status}</b>", f"job <code>{html.escape(job.id)}</code>"]
    if p.sections_total:
        parts.append(f"section {min(p.sections_done + (job.status == 'running'), p.sections_total)}/{p.sections_total}")
    if job.status == "running" and p.steps:
        parts.append(f"step {p.step}/{p.steps}")
    if job.status == "running":
        parts.append(f"ETA {_fmt_time(p.eta_s)}")
    if p.s_per_frame is not None:
        parts.append(f"{p.s_per_frame:.3f} s/frame")
    message = _scrub(job.message) if scrub else job.message
    msg = f"<div class='fph-msg'>{html.escape(message)}</div>" if message else ""
    return (f"<div class='fph-progress {status}'><div class='fph-line'>{' · '.join(parts)}</div>"
            f"<div class='fph-bar'><div style='width:{pct:.1f}%'></div></div>{msg}</div>")
