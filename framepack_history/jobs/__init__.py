"""Jobs: requests admitted, queued and run on the worker that alone owns the device.

* :mod:`.admission` — one admission of a request for the page, the API and the CLI (checks, inputs, cap, LoRAs);
* :mod:`.worker` — :class:`~.worker.Worker`, the worker threads, the device they own, the job API the page calls;
* :mod:`.lanes` — a worker lane (one thread, its device, models and runner) and when it takes a job or frees its device (idle, paused);
* :mod:`.queue`, :mod:`.store` — the FIFO of job ids, and the server-side job records;
* :mod:`.runner` — one job run: pipeline, render, progress, previews, final status;
* :mod:`.render` — a pipeline run to files (segments, the final mp4, the JSON sidecar);
* :mod:`.checkpoint` — job folders: a checkpoint after every section, resume;
* :mod:`.model_cache` — backbones loaded on first need, kept LRU;
* :mod:`.steering`, :mod:`.extend`, :mod:`.recall` — storyboard edits, extending a finished job, the memory inspector;
* :mod:`.tools` — finishing tools (loop, join, export, upscale, interpolate) as jobs that load no model;
* :mod:`.studio` — a shared studio: who may see which job;
* :mod:`.gallery`, :mod:`.plan_summary` — for the page: the finished videos with captions, and what the device will hold for a request.

Never imported by :mod:`framepack_history.training`; imported by :mod:`framepack_history.cli` and the page.
"""
