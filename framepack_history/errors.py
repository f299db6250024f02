"""The one error users see: a bad named input (CLI exit status 2, a message in the page). No imports."""

from __future__ import annotations


class InputError(ValueError):
    """A user-facing error about one named input (CLI exit status 2, a message in the page)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
