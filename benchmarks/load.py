"""Load: many API clients submit and cancel toy jobs against one app on loopback.

Starts ``python app.py`` on 127.0.0.1 (a free port, a temporary outputs
folder), then 20 ``gradio_client`` clients each submit one job, and every
second client a second, longer one that it cancels a moment later through
``/cancel``. Everything is bounded: at most two jobs per client and a global
deadline (default 110 s), after which unanswered calls count as failed and the
script stops the server by itself. It prints:

* answered / failed calls (an answer is a result, or a clear refusal or
  "cancelled" error; a failure is a timeout, a dropped connection or an
  unexpected error);
* queue-order violations: pairs of jobs that started in another order than
  they were queued, and jobs whose runs overlapped (the worker runs one at a time);
* latency from submit to answer, and whether the server is still alive.

    python benchmarks/load.py [--clients 20] [--preset tests/presets/tiny-toy.toml] [--deadline-s 110]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("the app did not start in time")


def stop_app(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate the app, and kill it if it has not exited after ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


class Tally:
    """Thread-safe counts of what the clients saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answered: dict[str, int] = {"done": 0, "cancelled": 0, "refused": 0}
        self.failed: list[str] = []
        self.latency: list[float] = []
        self.submitted = 0

    def answer(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.answered[kind] += 1
            self.latency.append(seconds)

    def fail(self, why: str) -> None:
        with self.lock:
            self.failed.append(why)


def client_run(i: int, url: str, preset: str, deadline: float, tally: Tally, start: threading.Barrier) -> None:
    """One client: a short job; every second client also a longer one that it cancels."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    rng = random.Random(i)
    try:
        client = Client(url, verbose=False, download_files=False)
    except Exception as e:  # noqa: BLE001 - any failure to connect is a failed call
        tally.fail(f"client {i}: connect: {type(e).__name__}: {e}")
        start.abort()
        return
    try:
        start.wait(timeout=60)  # everyone submits at once
    except threading.BrokenBarrierError:
        pass
    calls = [("short", f"camera pans left client {i}", 0.5 + 0.5 * (i % 3), 2)]
    if i % 2 == 0:
        calls.append(("cancel", f"camera pans right client {i} long", 4.0, 6))
    pending = []
    for kind, prompt, seconds, steps in calls:
        t0 = time.perf_counter()
        job = client.submit(prompt=prompt, seconds=seconds, seed=i, preset=preset, steps=steps, api_name="/generate")
        with tally.lock:
            tally.submitted += 1
        pending.append((kind, prompt, job, t0))
    for kind, prompt, job, t0 in pending:
        if kind != "cancel":
            continue
        time.sleep(rng.uniform(0.2, 2.0))
        try:  # find the job by its prompt, then cancel it whether it is queued or running
            for _ in range(50):
                rows = [j for j in client.predict("", api_name="/status")["jobs"] if j["prompt"] == prompt]
                if rows:
                    client.predict(rows[0]["id"], api_name="/cancel")
                    break
                time.sleep(0.1)
        except Exception as e:  # noqa: BLE001
            tally.fail(f"client {i}: cancel: {type(e).__name__}: {e}")
    for kind, prompt, job, t0 in pending:
        try:
            job.result(timeout=max(1.0, deadline - time.time()))
            tally.answer("done", time.perf_counter() - t0)
        except AppError as e:
            msg = str(e)
            tally.answer("cancelled" if "cancelled" in msg else "refused", time.perf_counter() - t0)
            if "cancelled" not in msg and "queue" not in msg:
                tally.fail(f"client {i}: {kind}: unexpected error: {msg[:200]}")
        except Exception as e:  # noqa: BLE001 - a timeout or a dropped connection
            tally.fail(f"client {i}: {kind}: {type(e).__name__}: {str(e)[:200]}")


def order_violations(jobs: list[dict]) -> tuple[int, int]:
    """(pairs started out of queue order, pairs of runs that overlapped)."""
    started = sorted((j for j in jobs if j.get("started")), key=lambda j: j["created"])
    out_of_order = sum(1 for a, b in itertools.combinations(started, 2) if a["started"] > b["started"])
    by_start = sorted(started, key=lambda j: j["started"])
    overlaps = sum(1 for a, b in itertools.pairwise(by_start) if a.get("finished") and a["finished"] > b["started"] + 1e-3)
    return out_of_order, overlaps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--preset", default=str(ROOT / "tests" / "presets" / "tiny-toy.toml"))
    ap.add_argument("--deadline-s", type=float, default=110.0, help="stop waiting after this long (default 110)")
    args = ap.parse_args()
    if not 1 <= args.clients <= 64:
        raise SystemExit("--clients must be in 1..64")

    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="fph-load-") as tmp:
        log = Path(tmp) / "app.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        cmd = [sys.executable, str(ROOT / "app.py"), "--preset", args.preset, "--server-name", "127.0.0.1", "--port", str(port),
               "--outputs", str(Path(tmp) / "outputs"), "--max-queue", str(2 * args.clients + 8)]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_up(url, proc, 120)
            t0 = time.time()
            deadline = t0 + args.deadline_s
            tally = Tally()
            start = threading.Barrier(args.clients)
            threads = [threading.Thread(target=client_run, args=(i, url, args.preset, deadline, tally, start), daemon=True)
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(max(0.0, deadline + 5 - time.time()))
            wall = time.time() - t0
            hung = sum(t.is_alive() for t in threads)
            alive = proc.poll() is None
            jobs: list[dict] = []
            if alive:
                try:
                    status = Client(url, verbose=False, download_files=False).predict("", api_name="/status")
                    jobs = status["jobs"]
                except Exception as e:  # noqa: BLE001
                    alive = False
                    tally.fail(f"final /status: {type(e).__name__}: {e}")
        finally:
            stop_app(proc)
        out_of_order, overlaps = order_violations(jobs)
        answered = sum(tally.answered.values())
        states = {s: sum(j["status"] == s for j in jobs) for s in ("done", "cancelled", "failed", "queued", "running")}
        print(f"load: {args.clients} clients, {tally.submitted} jobs submitted, {wall:.1f} s (deadline {args.deadline_s:g} s)")
        print(f"answered {answered}/{tally.submitted} (done {tally.answered['done']}, cancelled {tally.answered['cancelled']}, "
              f"refused {tally.answered['refused']}), failed {len(tally.failed)}" + (f", clients still waiting {hung}" if hung else ""))
        print(f"server jobs: {states}")
        print(f"queue-order violations: {out_of_order} started out of order, {overlaps} overlapping runs")
        if tally.latency:
            lat = sorted(tally.latency)
            print(f"submit-to-answer: median {statistics.median(lat):.1f} s, p95 {lat[int(0.95 * (len(lat) - 1))]:.1f} s, max {lat[-1]:.1f} s")
        print(f"server alive at the end: {'yes' if alive else 'no'}")
        for why in tally.failed[:10]:
            print(f"  failed: {why}")
        if not alive:
            print(log.read_text()[-3000:])
        ok = alive and not tally.failed and answered == tally.submitted and out_of_order == overlaps == 0
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
