"""Encoder rates: ``"4x4x2"`` is how many latent rows, columns and frames one history token covers."""

from __future__ import annotations

import re

_RATE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$")


def parse_rate(rate: str | tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    """``"4x4x2"`` -> ``(4, 4, 2)`` as (h, w, t); raises ``ValueError`` with the bad text."""
    if isinstance(rate, str):
        m = _RATE.match(rate)
        if not m:
            raise ValueError(f"encoder rate must look like '4x4x2' (HxWxT), got {rate!r}")
        vals = tuple(int(v) for v in m.groups())
    else:
        vals = tuple(int(v) for v in rate)
    if len(vals) != 3 or any(v < 1 for v in vals):
        raise ValueError(f"encoder rate needs three positive factors HxWxT, got {rate!r}")
    return vals  # type: ignore[return-value]
