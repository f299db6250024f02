"""Per-user file serving for a shared studio: a user fetches only their own videos by URL.

Gradio serves every file under ``allowed_paths`` (here ``outputs/``) to anyone
logged in who knows its path. Files the page and the API hand out are copies
in gradio's cache under a secret hash, so nothing of ours needs those direct
URLs; this ASGI middleware checks them against the job's owner, in front of
gradio's ``/file=`` route. It answers another user's file as gradio answers
a missing one (403), so paths cannot be probed.

It reads the logged-in user from gradio's session cookie, as gradio's own
``/user`` route does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framepack_history.jobs.studio import Studio

#: gradio's file routes: /gradio_api/file=PATH and the older /gradio_api/file/PATH
_FILE_ROUTE = re.compile(r"/file[=/](.+)$")


class FileGuard:
    """ASGI middleware: under ``--auth``, a file under ``outputs`` is served only to its owner and the admins."""

    def __init__(self, app: Any, studio: Studio, outputs: str | Path, owner_of_file: Callable[[Path], str | None]) -> None:
        self.app = app
        self.studio = studio
        self.outputs = Path(outputs).resolve()
        self.owner_of_file = owner_of_file

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") == "http" and self.studio.shared:
            target = self.guarded(scope.get("path", ""))
            if target is not None and not self.studio.may_see(user_of(scope), self.owner_of_file(target)):
                from starlette.responses import JSONResponse  # starlette: only when the page serves files

                response = JSONResponse({"detail": "File not allowed."}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def guarded(self, path: str) -> Path | None:
        """The file a request path asks gradio for, if it lies under ``outputs`` (as gradio resolves it)."""
        m = _FILE_ROUTE.search(path)
        if m is None or "://" in m.group(1):
            return None
        target = Path(m.group(1)).absolute()  # as gradio's abspath: relative to the working folder
        for candidate in (target, target.resolve()):  # by its name, and behind any link
            try:
                candidate.relative_to(self.outputs)
                return target.resolve()
            except ValueError:
                continue
        return None


def user_of(scope: dict) -> str | None:
    """The user logged in to the gradio app serving ``scope`` (its session cookie), or ``None``."""
    from starlette.requests import Request  # starlette: only when the page serves files

    app = scope.get("app")
    tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
    if not isinstance(tokens, dict) or cookie_id is None:
        return None
    cookies = Request(scope).cookies
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None
