"""Making a video: the section loop and what it needs, with no jobs, files or pages.

* :mod:`.pipeline` — :class:`~.pipeline.Pipeline`, the section loop (conditioning -> history -> denoise -> decode) as typed events;
* :mod:`.events`, :mod:`.state`, :mod:`.noise` — the events a run yields, a request's state between sections (:class:`~.state.Generation`), each section's noise;
* :mod:`.memory_controls` — a request's pins, forgets, cuts and borrowed history at work on its history;
* :mod:`.keyframes` — a request's keyframes read and encoded once, and the next one a section reads;
* :mod:`.context` — the DiT's context for a section (F1's own, or the sliding window, plus history tokens), shared with training;
* :mod:`.loading` — a backbone and its history encoder built from a preset, with the memory manager attached;
* :mod:`.step_cache` — skipping most of the DiT on steps whose input barely changed;
* :mod:`.overlap` — FramePack-F1's overlapped decode, streamed append-only;
* :mod:`.buckets` — the size a start image or a continued video is generated at;
* :mod:`.continuation` — a video to continue, encoded chunk by chunk and only as much as the history mode reads;
* :mod:`.video` — reading user media, writing segments, assembling the mp4;
* :mod:`.finishing` — loop, join, export, upscale and interpolate a finished video (CPU-cheap, no torch);
* :mod:`.learned` — the learned finishing methods at work: an ESRGAN-family upscaler in tiles, RIFE by timestep;
* :mod:`.frame_query` — a past frame recalled from the embedding, and its scores (PSNR, SSIM).

The samplers are :mod:`framepack_history.sampling` (pure functions, below every wing).
"""
