"""Weight files: which ones a preset needs, whether they are here, and fetching them.

* :mod:`.files` — the files a preset reads, by hub id or local folder, and what is missing (no network, no torch);
* :mod:`.download` — sizes first, a disk check, progress and resume (``python -m framepack_history download``);
* :mod:`.hunyuan_weights` — where HunyuanVideo-FramePack's components load from (safetensors only);
* :mod:`.finishing_weights` — the finishing models' files: known names, where each is, what a file holds (no torch).

Jobs never download: a missing file is an error naming the command that fetches it.
"""
