"""Soak: does a long-running app give its memory back? Mixed toy jobs through the HTTP API, RSS after each.

Starts ``python app.py`` on 127.0.0.1 (a free port, a temporary outputs folder, ``--unload-after``
a few seconds), measures the app's resident memory before any job (fresh), then sends ``--jobs``
jobs one after another through ``gradio_client``: lengths of 2 to 6 s, history modes encoder,
window and none, 10 s jobs under a history-token cap of 40, two extensions of finished jobs (``/extend``) and two jobs
cancelled while they run (``/cancel``). After each job it prints the app's RSS (psutil, else
``/proc/PID/status``) and, where ``nvidia-smi`` lists the app, its device memory (pass a CUDA preset). Then it waits
for the idle unload and prints the RSS again, and the ratios:

* growth from the 5th job to the last (goal: at most 5 %);
* after the idle unload against the freshly started app (goal: within 10 %), and against the app
  after its first job (torch and the model's code imported, the model loaded once).

    python benchmarks/soak.py [--jobs 32] [--preset toy-cpu] [--unload-after-s 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import free_port, stop_app, wait_up  # benchmarks/load.py: the same app start and stop

ROOT = Path(__file__).resolve().parent.parent
MODES = ("encoder", "window", "none")


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (psutil if installed, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no RSS for process {pid}")


def device_mib(pid: int) -> float | None:
    """Device memory ``nvidia-smi`` says process ``pid`` holds (MiB); None without a CUDA device or when it holds none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = [float(cols[1]) for cols in (line.split(",") for line in out.splitlines()) if len(cols) == 2
            and cols[0].strip() == str(pid)]
    return sum(used) if used else 0.0


def plan_jobs(n: int) -> list[dict]:
    """``n`` mixed jobs: lengths, modes and caps cycling; two extensions and two cancels spread through the run."""
    extend_at = {n // 3, (2 * n) // 3}
    cancel_at = {n // 4, (3 * n) // 4}
    jobs = []
    for i in range(n):
        mode = MODES[i % 3]
        job = {"kind": "generate", "prompt": f"soak {i}: a red ball rolls {'left' if i % 2 else 'right'} past a tree",
               "seconds": 2 + i % 5, "seed": i, "history_mode": mode}
        if mode == "encoder" and i % 2:  # a cap merges only past it: 10 s make 40 toy tokens and more (the least cap is 36)
            job.update(seconds=10, max_history_tokens=40)
        if i in extend_at and any(j["kind"] == "generate" for j in jobs):  # it extends the last finished job
            job = {"kind": "extend", "seconds": 2 + i % 3}
        elif i in cancel_at:
            job.update(kind="cancel", seconds=30)
        jobs.append(job)
    return jobs


def status(client, job_id: str = "") -> dict:
    return client.predict(job_id, api_name="/status")


def wait_terminal(client, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = status(client, job_id)
        if view["status"] in ("done", "failed", "cancelled"):
            return view
        time.sleep(0.3)
    raise SystemExit(f"job {job_id} did not end within {timeout:.0f} s")


def run_one(client, job: dict, preset: str, last_done: str | None) -> tuple[str, str]:
    """Run one planned job to its end; returns (its id, how it ended)."""
    if job["kind"] == "extend":
        view = client.predict(last_done, "", job["seconds"], api_name="/extend")
        end = wait_terminal(client, view["id"])
        return end["id"], f"extend of {last_done}: {end['status']}"
    kw = {k: v for k, v in job.items() if k != "kind"}
    pending = client.submit(preset=preset, api_name="/generate", **kw)
    job_id = None
    while job_id is None:  # its id: the job with this prompt, from /status
        if pending.done() and pending.exception() is not None and not [
                j for j in status(client)["jobs"] if j["prompt"] == job["prompt"]]:
            raise SystemExit(f"refused: {job}: {pending.exception()}")
        rows = [j for j in status(client)["jobs"] if j["prompt"] == job["prompt"]]
        job_id = rows[0]["id"] if rows else None
        time.sleep(0.2)
    if job["kind"] == "cancel":
        while status(client, job_id)["progress"]["sections_done"] < 2:
            time.sleep(0.2)
        client.predict(job_id, api_name="/cancel")
    try:
        pending.result()
    except Exception:  # a cancelled job answers with an error: its status says what happened
        pass
    end = wait_terminal(client, job_id)
    return job_id, f"{job.get('history_mode', '')} {job['seconds']} s{' cap ' + str(job['max_history_tokens']) if 'max_history_tokens' in job else ''}: {end['status']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--preset", default="toy-cpu")
    ap.add_argument("--unload-after-s", type=float, default=6.0, help="the app's --unload-after, in seconds")
    ap.add_argument("--settle-s", type=float, default=1.0, help="wait after each job before reading the RSS")
    args = ap.parse_args()
    from gradio_client import Client

    tmp = Path(tempfile.mkdtemp(prefix="fph-soak-"))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "app.py", "--preset", args.preset, "--port", str(port), "--outputs", str(tmp / "outputs"),
           "--unload-after", f"{args.unload_after_s / 60:.6f}", "--max-queue", "4"]
    log = open(tmp / "app.log", "w")  # noqa: SIM115 (the app's log, for the whole run)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    t0 = time.monotonic()
    try:
        wait_up(url, proc, 300)
        client = Client(url, verbose=False, download_files=False)
        time.sleep(2)
        fresh = rss_mib(proc.pid)
        dev = device_mib(proc.pid)
        print(f"fresh app: RSS {fresh:.1f} MiB" + (f", device {dev:.0f} MiB" if dev is not None else ""), flush=True)
        rss, last_done = [], None
        for i, job in enumerate(plan_jobs(args.jobs), 1):
            if job["kind"] == "extend" and last_done is None:
                job = {**plan_jobs(1)[0], "prompt": f"soak {i}: instead of an extension"}
            t = time.monotonic()
            job_id, how = run_one(client, job, args.preset, last_done)
            if how.endswith("done") and job["kind"] != "cancel":
                last_done = job_id
            time.sleep(args.settle_s)
            rss.append(rss_mib(proc.pid))
            dev = device_mib(proc.pid)
            print(f"job {i:2d} {job['kind']:8s} {how:40s} {time.monotonic() - t:5.1f} s  RSS {rss[-1]:7.1f} MiB"
                  + (f"  device {dev:.0f} MiB" if dev is not None else ""), flush=True)
        time.sleep(args.unload_after_s + 5)  # the idle unload fires unload_after_s after the last job ended
        idle = rss_mib(proc.pid)
        dev = device_mib(proc.pid)
        print(f"after the idle unload ({args.unload_after_s:g} s): RSS {idle:.1f} MiB"
              + (f", device {dev:.0f} MiB" if dev is not None else ""), flush=True)
        fifth = rss[min(4, len(rss) - 1)]
        print(f"growth job 5 -> job {len(rss)}: {100 * (rss[-1] / fifth - 1):+.1f} % (goal <= 5 %)")
        print(f"idle vs fresh app: {100 * (idle / fresh - 1):+.1f} % (goal within 10 %)")
        print(f"idle vs after the first job: {100 * (idle / rss[0] - 1):+.1f} %")
        print(f"peak RSS {max(rss):.1f} MiB; {len(rss)} jobs in {time.monotonic() - t0:.0f} s; app alive: {proc.poll() is None}")
    finally:
        stop_app(proc, 15)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
