"""A shared studio: who may see which job, and what a client may be told.

With ``--auth`` several people use one server. Each job records its owner
(the logged-in user who queued it) in its job folder and its ``job.json``, so
ownership survives restarts; a user sees, cancels, resumes and downloads only
their own jobs, and an admin sees all. Without ``--auth`` there is one local
user and everything is visible, as before.

What leaves the server is also kept free of the server's layout: client views
of a job name files relative to ``outputs/``, and messages lose their folders.

No torch and no gradio here: the worker, the page and the file guard share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: an absolute path inside a message: POSIX (/a/b) or Windows (C:\\a\\b); its last part is kept
_PATH = re.compile(r"(?<![^\s'\"`(\[{=])(?:[A-Za-z]:)?[/\\](?:[^\s'\"`()\[\]{}<>,;:/\\]+[/\\])+(?=[^\s'\"`/\\]*)")


@dataclass(frozen=True)
class Studio:
    """The access policy of one server: its users (empty = no ``--auth``) and its admins."""

    users: frozenset[str] = field(default_factory=frozenset)
    admins: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_auth(cls, auth: list[tuple[str, str]] | None, admins: list[str] | None = None) -> Studio:
        """The policy of ``--auth`` pairs and ``--admin`` names.

        With a single user and no ``--admin``, that user is the admin: there is nobody to hide
        anything from, and videos made before ``--auth`` (which have no owner) stay visible.
        """
        users = frozenset(u for u, _ in auth or ())
        named = frozenset(admins or ())
        if not named and len(users) == 1:
            named = users
        return cls(users, named)

    @property
    def shared(self) -> bool:
        """Several accounts may exist: ownership is enforced and clients get scrubbed messages."""
        return bool(self.users)

    def sees_all(self, user: str | None) -> bool:
        return not self.shared or user in self.admins

    def may_see(self, user: str | None, owner: str | None) -> bool:
        """Whether ``user`` may see (and act on) something owned by ``owner`` (``None``: made without ``--auth``)."""
        return self.sees_all(user) or (user is not None and owner == user)

    def say(self, text: str) -> str:
        """``text`` as a client may read it: without folders when the studio is shared."""
        return scrub(text) if self.shared else text


def scrub(text: str) -> str:
    """Drop the folders of absolute paths in ``text``: ``/srv/jobs/x/request.json`` -> ``request.json``."""
    return _PATH.sub("", str(text))


def relative_to(path: str | Path | None, root: Path) -> str | None:
    """``path`` relative to ``root`` (POSIX form), or only its name when it lies elsewhere."""
    if not path:
        return None
    p = Path(path)
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return p.name


def client_view(snapshot: dict[str, Any], outputs: Path, studio: Studio) -> dict[str, Any]:
    """A job snapshot as a client may see it: files relative to ``outputs/``, no absolute folders."""
    view = dict(snapshot)
    for key in ("video", "sidecar", "folder"):
        view[key] = relative_to(view.get(key), outputs)
    view["segments"] = [relative_to(p, outputs) for p in view.get("segments") or ()]
    view["message"] = studio.say(view.get("message") or "")
    return view
