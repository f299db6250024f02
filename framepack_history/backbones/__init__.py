"""Video backbones (a VAE, text/image encoders and a DiT) behind one contract, and how the DiT runs.

* :mod:`.base` — the contract every backbone fulfils (:class:`~.base.Backbone`, :class:`~.base.Context`, geometry);
* :mod:`.toy` — the embedded default's small DiT, VAE and tokenizer; :mod:`.toyworld` — the procedural world it learns;
* :mod:`.hunyuan_framepack` — FramePack-F1 on HunyuanVideo; :mod:`.framepack_transformer` — its DiT with history tokens;
* :mod:`.attention`, :mod:`.precision`, :mod:`.speed` — the attention kernel, weight storage (float8) and compilation.
* :mod:`.finishing` — the learned finishing models (RRDBNet, SRVGGNetCompact, RIFE's IFNet), one file each.

Below everything that generates: imports only config, hub and the foundation modules.
"""
