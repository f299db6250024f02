"""The Gradio page: layout and event wiring only; all work goes through the Worker.

* :mod:`.layout` — the page (``build_app``), composed of :mod:`.tabs`: one builder per part, each creating
  its components and wiring its events (first screen, Generate form and stage, Queue, Gallery, Memory, API);
* :mod:`.handlers` — page events -> Worker calls: queueing a job there, the rest by job in
  :mod:`.queue_actions` (cancel, resume, steer, the listing), :mod:`.gallery_actions` (pick, extend, reuse),
  :mod:`.plan` (plan, preset defaults, pickers' choices), :mod:`.api` (the HTTP API's named endpoints;
  :mod:`.tools_api` its ``/tool``: the finishing tools as worker jobs),
  all on :mod:`.context` (who sees which job); :mod:`.progress` — the progress box;
* :mod:`.follow` — the follower that streams a job to a page; :mod:`.memory_tab` — the Memory tab's events;
* :mod:`.weights` — the first screen and the Download button; :mod:`.reuse` — Reuse settings;
* :mod:`.values` — page values read as numbers, files and LoRA slots; :mod:`.file_guard` — per-user file serving.

Never imports model code (torch-free at import): only config, hub, jobs and the foundation modules.
"""
