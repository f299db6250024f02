"""Launch the page: ``python app.py`` in a checkout, ``framepack-history-page`` installed (toy-cpu on http://127.0.0.1:7860).

Flags are checked before anything heavy happens; a bad one exits with status
2 and one line. Models are not loaded here: the worker loads them when the
first job needs them.
"""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from framepack_history.cli.main import report
from framepack_history.config.paths import PACKAGE, ROOT, WORKDIR, resolve_path
from framepack_history.config.presets import available_presets, load_preset
from framepack_history.errors import InputError, UsageError
from framepack_history.jobs.studio import Studio
from framepack_history.jobs.worker import Worker
from framepack_history.ui.file_guard import FileGuard
from framepack_history.ui.layout import CSS, build_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the page on this machine."""
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit status 2 (not argparse's usage dump)
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python app.py", description="The FramePack History page: generate long videos in the browser.")
    p.add_argument("--preset", default="toy-cpu", help=f"preset name or .toml path ({', '.join(available_presets())})")
    p.add_argument("--server-name", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the page to your network)")
    p.add_argument("--port", type=int, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    p.add_argument("--auth", help="USER:PASS, or a file with one USER:PASS per line; each user sees only their own jobs")
    p.add_argument("--admin", action="append", metavar="USER",
                   help="with --auth: a user who sees, cancels and resumes every user's jobs (repeatable)")
    p.add_argument("--devices", help="one worker per device, all taking jobs from one queue, e.g. cuda:0,cuda:1 "
                                     "(default: one worker on the preset's device)")
    p.add_argument("--inbrowser", action="store_true", help="open the page in the default browser")
    # WORKDIR/outputs, as the CLI writes: one folder whichever folder the page was started from
    p.add_argument("--outputs", default=str(WORKDIR / "outputs"),
                   help="where videos are written and served from (default: outputs/ beside app.py)")
    p.add_argument("--jobs-dir", help="job folders with per-section checkpoints, never served (default: jobs/ beside --outputs)")
    p.add_argument("--max-queue", type=int, default=16, help="jobs that may wait at once (default 16)")
    p.add_argument("--unload-after", type=float, default=0, metavar="MINUTES",
                   help="unload the models and free the device after this many minutes with an empty queue; "
                        "the next job loads them again (default 0: never)")
    p.add_argument("--max-file-size", default="200mb", help="upload limit, e.g. 200mb or 1gb (default 200mb)")
    return p


def read_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``user:pass`` or a file of such lines (blank lines and # comments skipped)."""
    if not value:
        return None
    path = Path(value)
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else [value]
    pairs = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            where = f"{path.name} line {n}" if path.is_file() else repr(value)
            raise InputError("--auth", f"expected USER:PASS (got {where}); or give a file of USER:PASS lines")
        pairs.append((user, password))
    if not pairs:
        raise InputError("--auth", f"{path.name} has no USER:PASS lines")
    return pairs


def check_admins(admins: list[str] | None, auth: list[tuple[str, str]] | None) -> list[str]:
    """``--admin`` names: each must be one of the ``--auth`` users."""
    if not admins:
        return []
    if not auth:
        raise InputError("--admin", "needs --auth: without it there is one local user, who sees everything")
    users = {u for u, _ in auth}
    unknown = [a for a in admins if a not in users]
    if unknown:
        raise InputError("--admin", f"{', '.join(map(repr, unknown))} is not a user of --auth")
    return list(admins)


def parse_devices(text: str | None) -> list[str] | None:
    """``cuda:0,cuda:1`` -> the devices, each present here; a device other than the CPU at most once."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",")]
    if not names or any(not n for n in names):
        raise InputError("--devices", f"expected a comma-separated list such as cuda:0,cuda:1 (got {text!r})")
    from framepack_history.generation.loading import check_device  # torch: only when asked for

    devices = [str(check_device(n, "--devices")) for n in names]
    devices = ["cuda:0" if d == "cuda" else d for d in devices]  # so that cuda and cuda:0 count as one
    twice = sorted({d for d in devices if devices.count(d) > 1 and not d.startswith("cpu")})
    if twice:  # each worker plans the whole device's memory for itself
        raise InputError("--devices", f"{', '.join(twice)} is listed more than once; give each device once")
    return devices


def check_args(args: argparse.Namespace) -> None:
    if args.port is not None and not 1 <= args.port <= 65535:
        raise InputError("--port", f"must be in 1..65535 (got {args.port})")
    if args.max_queue < 1:
        raise InputError("--max-queue", f"must be at least 1 (got {args.max_queue})")
    if not args.unload_after >= 0:  # also refuses nan
        raise InputError("--unload-after", f"must be minutes, 0 or more (got {args.unload_after:g}); 0 never unloads")
    args.max_file_size = parse_size(args.max_file_size)


def parse_size(text: str) -> int:
    """``200mb`` -> bytes (b, kb, mb, gb; 1 kb = 1024 b)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise InputError("--max-file-size", f"expected a size such as 200mb or 1gb (got {text!r})")
    unit = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}[(m.group(2) or "b").lower()]
    return int(float(m.group(1)) * unit)


def network_ok(host: str = "api.gradio.app", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a share link can possibly be made (checked once, before launching)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def prepare(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check every flag; raises :class:`UsageError` / :class:`InputError`."""
    args = build_parser().parse_args(argv)
    if args.preset.endswith(".toml"):  # a path: resolve now, the page may run from anywhere
        args.preset = str(Path(args.preset).resolve())
    args.preset_name = load_preset(args.preset).name
    args.auth = read_auth(args.auth)
    args.admin = check_admins(args.admin, args.auth)
    args.devices = parse_devices(args.devices)
    check_args(args)
    if not args.auth and (args.share or not is_loopback(args.server_name)):
        # Anyone who reaches the page can run jobs on this machine's GPU and read every video in outputs/.
        how = "--share makes a public link" if args.share else f"--server-name {args.server_name} exposes the page to the network"
        raise InputError("--auth", f"{how}; give --auth USER:PASS (or a file of such lines) so that only you can use it")
    if args.port is not None and not port_free(args.server_name, args.port):
        raise InputError("--port", f"{args.port} is already in use on {args.server_name}")
    return args


def blocked_paths(jobs_dir: Path) -> list[str]:
    """What the page must never serve: job state, weights (local folders and the hub cache), the package."""
    paths = {jobs_dir, PACKAGE, ROOT / ".git"}
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    paths.add(Path(hub))
    for name in available_presets():
        try:
            model = load_preset(name).model
        except InputError:
            continue
        for value in (model.weights, model.encoder, *model.components.values()):
            local = Path(resolve_path(value)) if value else None
            if local is not None and local.exists():
                paths.add(local)
    return sorted(str(p.resolve()) for p in paths)


def start(args: argparse.Namespace):
    """Start the worker and launch the page without blocking; returns (demo, worker, local URL, share URL)."""
    outputs = Path(args.outputs).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    jobs_dir = Path(args.jobs_dir).resolve() if getattr(args, "jobs_dir", None) else outputs.parent / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    # The page's uploads and stream chunks live in a folder this process owns and removes.
    temp = tempfile.mkdtemp(prefix="framepack-gradio-")
    atexit.register(shutil.rmtree, temp, True)
    os.environ["GRADIO_TEMP_DIR"] = temp
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    import gradio as gr  # gradio: only when the page starts (the CLI never loads it)

    studio = Studio.from_auth(args.auth, getattr(args, "admin", None))
    worker = Worker(outputs, max_queue=args.max_queue, jobs_dir=jobs_dir, devices=getattr(args, "devices", None),
                    unload_after_s=60 * getattr(args, "unload_after", 0)).start()
    demo = build_app(worker, args.preset, studio)
    app_kwargs = {}
    if studio.shared:  # a user fetches only their own files by URL
        from starlette.middleware import Middleware  # starlette: only when the page serves files

        app_kwargs["middleware"] = [Middleware(FileGuard, studio=studio, outputs=outputs, owner_of_file=worker.owner_of_file)]
    demo.queue(max_size=max(64, 4 * args.max_queue), default_concurrency_limit=8)
    share = args.share
    if share and not network_ok():
        print("--share: no network connection, so no public link; the page stays available locally.", file=sys.stderr)
        share = False
    _, local_url, share_url = demo.launch(
        server_name=args.server_name, server_port=args.port, share=share, auth=args.auth, inbrowser=args.inbrowser,
        allowed_paths=[str(outputs)], blocked_paths=blocked_paths(jobs_dir), max_file_size=args.max_file_size,
        show_error=True, prevent_thread_lock=True, app_kwargs=app_kwargs,
        quiet=True, theme=gr.themes.Soft(primary_hue="indigo"), css=CSS,
    )
    return demo, worker, local_url, share_url


def main(argv: list[str] | None = None) -> int:
    try:
        args = prepare(argv)
    except (UsageError, InputError, OSError) as e:  # OSError: an unreadable --auth file
        return report(e)
    demo, worker, local_url, share_url = start(args)
    print(f"FramePack History ({args.preset_name}) on {local_url}" + (f" · public link {share_url}" if share_url else ""), flush=True)
    left = worker.interrupted()
    if left:
        print(f"{len(left)} interrupted job(s); resume them in the page (Queue tab) or with "
              f"`python -m framepack_history resume {worker.jobs_dir}/ID`:", flush=True)
        for row in left:
            print(f"  {row['id']}  {row['sections_done']}/{row['sections_total'] or '?'} sections  {row['prompt'][:60]!r}", flush=True)
    try:
        demo.block_thread()
    finally:
        worker.stop(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
