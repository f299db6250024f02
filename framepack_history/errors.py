"""Every exception a caller can catch, in one place. No imports.

* :class:`InputError` — a bad named input: CLI exit status 2, a message in the page, HTTP 4xx in the API.
* :class:`UsageError` — a command line that does not parse (exit status 2).
* :class:`WeightsNotFoundError` — a preset's weights are not on this machine (``download`` gets them).
* :class:`DownloadError` — a download that cannot go on; the message says what to do.
* :class:`Cancelled` — raised by a sampler callback to stop a job.
* :class:`OutOfMemoryFailure` — out of memory again after the more conservative retry.
* :class:`OffDeviceError` — strict residency: a module ran while its weights were off the device.
"""

from __future__ import annotations


class InputError(ValueError):
    """A user-facing error about one named input (CLI exit status 2, a message in the page)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Cancelled(Exception):
    """Raised by a callback to stop sampling; carries no partial result."""


class WeightsNotFoundError(FileNotFoundError):
    """Model weights are neither in a local folder nor in the local hub cache."""


class OutOfMemoryFailure(RuntimeError):
    """Out of memory again after the more conservative retry; the message names budget and peak."""


class DownloadError(Exception):
    """A download that cannot go on (no network, no room, a missing repo); the message says what to do."""


class OffDeviceError(RuntimeError):
    """Strict mode: a module ran while the ledger says some of its weights were off the device."""


class UsageError(Exception):
    """Raised instead of argparse's multi-line usage dump."""
