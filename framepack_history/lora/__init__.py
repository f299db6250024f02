"""LoRAs for the DiT: files and references (:mod:`.files`, no torch), key layouts (:mod:`.convert`),
and adapters on a live transformer (:mod:`.adapters`).

A request names LoRAs as ``{"name": ..., "weight": ...}`` entries; resolving one adds the file's
``path`` and ``sha256``, which the request (and so its job folder, checkpoint and sidecar) keeps.
"""
