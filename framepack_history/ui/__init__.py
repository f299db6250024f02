"""The Gradio page: layout and event wiring only; all work goes through the Worker.

* :mod:`.layout` — the page (``build_app``); :mod:`.handlers` — page events -> Worker calls;
* :mod:`.api` — the HTTP API's named endpoints; :mod:`.memory_tab` — the Memory tab;
* :mod:`.weights` — the first screen and the Download button; :mod:`.reuse` — Reuse settings;
* :mod:`.values` — page values read as numbers, files and LoRA slots; :mod:`.file_guard` — per-user file serving.

Never imports model code (torch-free at import): only config, hub, jobs and the foundation modules.
"""
