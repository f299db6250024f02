"""Streaming to the page: time to the first playable section, and bytes encoded per section.

Runs jobs through the real :class:`~framepack_history.jobs.worker.Worker` on a
preset (default toy-cpu; random weights are fine) and feeds every finished
segment through the same code the page uses for its growing player
(``gr.Video(streaming=True).stream_output``: a remux into an MPEG-TS chunk).

Prints, measured in one run:
  * seconds from Generate to the first playable chunk, cold (models loaded
    on first use) and warm, against the 5 s goal;
  * per section: bytes the encoder wrote while the section was finished,
    and bytes sent to the player, each over the section's own segment size
    (1.0 = only the new section was encoded / sent);
  * the final video's size over the sum of its segments (1.0 = assembled
    without re-encoding), next to what re-encoding the whole video after
    every section (measured here with ffmpeg) would have cost.

    python benchmarks/streaming.py [--preset toy-cpu] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from framepack_history.config.request import GenerationRequest
from framepack_history.jobs.store import JobSpec
from framepack_history.jobs.worker import Worker

GOAL_FIRST_S = 5.0


def folder_bytes(folder: Path, until: float = float("inf")) -> int:
    """Bytes of the mp4 files in ``folder`` last written no later than ``until`` (an mtime).

    A fast model finishes later sections while this loop still handles an
    earlier one; they must not count against it.
    """
    if not folder.exists():
        return 0
    return sum(st.st_size for p in folder.rglob("*.mp4") if p.is_file() and (st := p.stat()).st_mtime <= until)


def reencode(segments: list[Path], out: Path) -> int:
    """Bytes of the whole video so far encoded again (what a naive player feed would cost)."""
    lst = out.with_suffix(".txt")
    lst.write_text("".join(f"file '{p.resolve().as_posix()}'\n" for p in segments))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(lst), "-c:v", "libx264",
                    "-crf", "18", "-pix_fmt", "yuv420p", str(out)], check=True)
    return out.stat().st_size


def run_job(worker: Worker, preset: str, seconds: float, seed: int, tmp: Path, naive: bool) -> dict:
    """One job, followed section by section as the page would."""
    import gradio as gr

    player = gr.Video(streaming=True)
    stream_id = f"bench-{seed}"
    t0 = time.perf_counter()
    job = worker.submit(JobSpec(GenerationRequest(prompt="camera pans right", seconds=seconds, seed=seed), preset))
    rows, sent, version = [], 0, -1
    first_playable = None
    while True:
        job = worker.store.wait(job.id, version, 1.0)
        version = job.version
        segs = list(job.segments)
        for seg in segs[sent:]:
            own = seg.stat().st_size
            encoded = folder_bytes(job.folder / "segments", seg.stat().st_mtime) - sum(r["own"] for r in rows)
            chunk, _ = asyncio.run(player.stream_output(str(seg), stream_id, first_chunk=sent == 0))
            if first_playable is None:
                first_playable = time.perf_counter() - t0
            naive_bytes = reencode(segs[: sent + 1], tmp / f"naive-{seed}-{sent}.mp4") if naive else 0
            rows.append({"own": own, "encoded": encoded, "sent": len(chunk["data"]) if chunk else 0, "naive": naive_bytes})
            sent += 1
        if job.terminal and sent >= len(job.segments):
            break
    player.end_stream_output(stream_id)
    if job.status != "done":
        raise SystemExit(f"job {job.status}: {job.message}")
    return {"job": job, "first_playable_s": first_playable, "rows": rows, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="toy-cpu")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fph-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp / "gradio"))
        import gradio  # noqa: F401  (as the app has, before anyone presses Generate)

        from framepack_history.config.presets import load_preset

        load_preset(args.preset)  # the page reads the preset when it is built, which imports torch
        worker = Worker(tmp / "outputs").start()
        try:
            cold = run_job(worker, args.preset, args.seconds, 1, tmp, naive=False)
            warm = run_job(worker, args.preset, args.seconds, 2, tmp, naive=True)
        finally:
            worker.stop()
        print(f"preset {args.preset}, {args.seconds:g} s per job ({len(warm['rows'])} sections)")
        for name, res in (("cold (models load on first use)", cold), ("warm (models cached)", warm)):
            f = res["first_playable_s"]
            t = res["job"].timings
            print(f"  Generate -> first playable section, {name}: {f:.2f} s = {f / GOAL_FIRST_S:.2f} of the {GOAL_FIRST_S:g} s goal"
                  f" (model load {t['load_s']:.2f} s, first segment on disk {t['first_segment_s']:.2f} s; "
                  f"whole job {res['wall_s']:.1f} s)")
        rows = warm["rows"]
        print("  section  own bytes  encoded/own  sent-to-player/own  re-encode-everything/own")
        for i, r in enumerate(rows):
            print(f"  {i:7d}  {r['own']:9d}  {r['encoded'] / r['own']:11.2f}  {r['sent'] / r['own']:18.2f}"
                  f"  {r['naive'] / r['own']:24.2f}")
        own = sum(r["own"] for r in rows)
        final = warm["job"].video.stat().st_size
        print(f"  total: encoded/own {sum(r['encoded'] for r in rows) / own:.2f}, sent/own {sum(r['sent'] for r in rows) / own:.2f}, "
              f"final video/sum of segments {final / own:.2f}; re-encoding everything each section would write "
              f"{sum(r['naive'] for r in rows) / own:.2f}x the bytes")


if __name__ == "__main__":
    main()
