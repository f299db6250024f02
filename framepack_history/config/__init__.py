"""What a job is asked to do, as typed values: no torch, no files beyond the preset's TOML.

* :mod:`.presets` — a preset (model, video, sampling, history, hardware), loaded from TOML and checked field by field;
* :mod:`.request` — a request (prompt or storyboard, length, seed, inputs, the settings it overrides);
* :mod:`.fields` — the request's fields in one table (CLI flag, page label, API parameter, preset key) and
  ``resolve``: the settings a job runs with, each the request's else the preset's;
* :mod:`.storyboard` — the ``TIME: text`` storyboard syntax and the prompt in force at a time;
* :mod:`.loras` — how LoRAs are named (``FILE[:WEIGHT]``, ``{"name", "weight"}``);
* :mod:`.rates` — encoder rates (``"4x4x2"``);
* :mod:`.paths` — where presets, toy weights, outputs and LoRAs are.

Imports only :mod:`framepack_history.errors` and :mod:`framepack_history.device` below it.
"""
