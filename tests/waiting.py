"""Waiting on progress, not on the clock.

A machine busy with other work runs the tests slower, not wrong. A wait here ends as soon as what it waits
for happens, and gives up only when nothing has moved for ``STALL_S`` seconds: a job that advances a step,
a page whose progress line changes, a process that keeps using the CPU is never cut off for taking long.
``FPH_TEST_STALL_S`` sets another stall limit (a very slow machine, or a quicker verdict on a hang).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")
STALL_S = float(os.environ.get("FPH_TEST_STALL_S", "120"))
CPU_STEP_S = 0.5  # a process that used this much more CPU time made progress


def until(check: Callable[[], T], progress: Callable[[], Hashable] | None = None, what: str | Callable[[], str] = "",
          stall_s: float | None = None, every: float = 0.2, limit_s: float | None = None) -> T:
    """Poll ``check()`` until it returns something true, and return that.

    ``progress()`` says how far the awaited thing has come (a job's status and step, a page's progress line):
    the wait fails once it has not changed for ``stall_s`` seconds, or, without ``progress``, after ``stall_s``
    seconds in all. ``limit_s`` caps the whole wait (for progress that could move forever, such as CPU time).
    """
    stall_s = STALL_S if stall_s is None else stall_s
    start = moved = time.monotonic()
    last: Any = object()
    while True:
        value = check()
        if value:
            return value
        now = time.monotonic()
        seen = progress() if progress is not None else None
        if seen != last:
            last, moved = seen, now
        stalled, over = now - moved > stall_s, limit_s is not None and now - start > limit_s
        if stalled or over:
            why = f"nothing moved for {stall_s:g} s" if stalled else f"still going after {limit_s:g} s"
            raise AssertionError(f"{what() if callable(what) else what or 'timed out'} ({why}; last progress: {seen!r})")
        time.sleep(every)


def finished(pending: futures.Future, progress: Callable[[], Hashable], what: str = "the request did not finish") -> Any:
    """``pending.result()`` (a ``gradio_client`` job is a future) once it ends, as long as ``progress()`` moves."""
    until(lambda: futures.wait([pending], timeout=0.5).done, progress, what, every=0)
    return pending.result()


def job_progress(jobs: Iterable[Any]) -> tuple:
    """Where worker jobs (``framepack_history.jobs.store.Job``) stand: status, sections and the step in the section."""
    return tuple((j.id, j.status, j.progress.sections_done, j.progress.section, j.progress.step) for j in jobs)


def cpu_progress(pid: int) -> Callable[[], int]:
    """Progress of a process as the CPU time it and its children used, in steps of ``CPU_STEP_S``.

    A process that works (imports, renders, trains) moves on; one that hangs or waits on a dead peer does not.
    """
    most = [0.0]

    def seen() -> int:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        total = 0.0
        for p in tree:
            try:
                t = p.cpu_times()  # children_*: its children that have ended
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        most[0] = max(most[0], total)  # never back, when a child ends between two reads
        return int(most[0] / CPU_STEP_S)

    return seen


def run(cmd: Sequence[str], stall_s: float | None = None, limit_s: float = 900, **kw: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kw)`` that waits as long as the process keeps using the CPU.

    It is killed (and the test fails with its stderr) once it used no CPU for ``stall_s`` seconds, or after
    ``limit_s`` seconds in all. ``capture_output``, ``text``, ``cwd``, ``env`` and ``check`` work as in
    :func:`subprocess.run`. The result's ``wall_s`` is how long it ran, and ``blocked_s`` how long its main
    thread waited on something other than a CPU (sleeps, network, disk): the wait for a CPU, which a busy
    machine makes longer, does not count (None where the system does not say).
    """
    check, text = kw.pop("check", False), kw.pop("text", False)
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        if kw.pop("capture_output", False):
            kw.update(stdout=out_f, stderr=err_f)
        start = time.monotonic()
        proc = subprocess.Popen(cmd, **kw)
        ended = _ended(proc.pid)
        try:
            until(lambda: ended.wait(0.5), cpu_progress(proc.pid), f"{' '.join(map(str, cmd))} did not end", stall_s=stall_s,
                  every=0, limit_s=limit_s)
        except AssertionError as e:
            kill_tree(proc)
            proc.wait()
            err_f.seek(0)
            raise AssertionError(f"{e}:\n{err_f.read()[-3000:].decode(errors='replace')}") from None
        except BaseException:  # an interrupted test leaves no process behind
            kill_tree(proc)
            proc.wait()
            raise
        wall = time.monotonic() - start
        blocked = _blocked(proc.pid, wall)  # read before the exit status is collected: the process is still there
        proc.wait()
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if text:
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out if kw.get("stdout") is out_f else None,
                                       err if kw.get("stderr") is err_f else None)
    done.wall_s, done.blocked_s = wall, blocked
    if check:
        done.check_returncode()
    return done


def _ended(pid: int) -> threading.Event:
    """Set as soon as child ``pid`` ends; its exit status is left for ``Popen.wait`` to collect."""
    ended = threading.Event()

    def watch() -> None:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        finally:
            ended.set()

    threading.Thread(target=watch, daemon=True).start()
    return ended


def _blocked(pid: int, wall: float) -> float | None:
    """Seconds of ``wall`` that the main thread of ended process ``pid`` neither ran nor waited for a CPU."""
    try:
        on_cpu, queued = (int(v) / 1e9 for v in Path(f"/proc/{pid}/schedstat").read_text().split()[:2])
    except (OSError, ValueError):
        return None
    return max(0.0, wall - on_cpu - queued)


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a process and every process it started."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    for p in children:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.kill()
