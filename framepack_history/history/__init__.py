"""The memory: everything generated so far, compressed into history tokens the DiT reads.

* :mod:`.encoder` — the history encoder (the whole history -> a short token sequence);
* :mod:`.state` — :class:`~.state.HistoryState`, the latents, tokens and frame context of one video, appended per section;
* :mod:`.layout` — :class:`~.layout.CappedLayout`, the groups a history-token cap keeps (generation and training);
* :mod:`.merge` — how a history-token cap merges groups (``similar``, ``oldest``) and one step of that layout;
* :mod:`.budget` — history-token budgets from configs alone (no weights).

No generation loop here; :mod:`framepack_history.generation` drives it.
"""
