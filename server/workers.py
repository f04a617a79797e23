"""How ``capserve serve`` runs an app: granian's worker processes and HTTP/1 server.

granian (a Rust HTTP server, hyper and tokio, with an ASGI interface) starts ``workers``
processes that each build the app, run its start-up (the registry loads) and only then listen,
on a socket of their own on the same port (SO_REUSEPORT); it restarts a worker that dies and
passes SIGTERM and SIGINT on (and a worker stops when the supervisor dies: ``worker_app``).
It sets TCP_NODELAY on every connection and accepts connections and parses HTTP in Rust, off
the Python event loop that runs the app. The comparison that chose it over uvicorn, with and without capserve's own socket handling, is
in BENCHMARKS.md.

What capserve adds: the HTTP limits as one object (``Limits``), a port in use reported in one
line (granian itself panics with a Rust backtrace), the folder Prometheus' multiprocess files
and the workers' table of rate limits and used signatures live in while several workers run
(``shared_state``), and exit code 3 when the workers could not be kept running (one failed to
start, or failed again within seconds of its restart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

STARTUP_FAILURE = 3
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when first imported; not imported here
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one client may hold of a worker. Each is granian's, as is what happens over it."""

    max_header_bytes: int = 64 * 1024  # request line and headers; over it: 431 and the connection closed
    header_timeout: float = 10.0  # seconds to wait for a request's headers, the next one on a kept-alive connection too
    max_connections: int = 512  # per worker; more wait in the listen backlog until one closes
    backlog: int = 1024  # connections the kernel queues for the workers; beyond it new ones are refused

    def problem(self) -> str | None:
        """Why these limits cannot be served, or None."""
        if self.max_header_bytes < 8192:
            return "--max-header-bytes must be at least 8192"
        if not 0.001 <= self.header_timeout <= 60:
            return "--header-timeout must be between 0.001 and 60 seconds"
        if self.max_connections < 1:
            return "--max-connections must be at least 1"
        if self.backlog < 128:
            return "--backlog must be at least 128"
        return None


def worker_app():
    """The app of one worker process (granian's factory). On Linux the worker asks the kernel
    for SIGTERM when its supervisor dies, so a supervisor killed outright (SIGKILL, the OOM
    killer) leaves no worker behind holding the port."""
    if sys.platform == "linux":
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    from capserve.server.app import create_app

    return create_app()


def address_problem(host: str, port: int) -> str | None:
    """Why ``(host, port)`` cannot be bound now (in use, no such address), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as granian binds it
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot bind {host}:{port}: {exc.strerror or exc}"
    return None


def run(
    factory: str, *, host: str, port: int, workers: int, limits: Limits = Limits(), log_level: str = "info",
    access_log: bool = False, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
) -> int:
    """Serve the ASGI app built by ``factory`` ("module:function") until a signal stops it;
    returns the exit code: 0, or ``STARTUP_FAILURE``."""
    import multiprocessing

    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    problem = limits.problem() or address_problem(host, port)
    if problem is not None:
        print(f"capserve: cannot start: {problem}", file=sys.stderr)
        return STARTUP_FAILURE
    server = Granian(
        factory, factory=True, interface=Interfaces.ASGI, address=host, port=port, workers=workers,
        http=HTTPModes.http1, websockets=False, backlog=limits.backlog, backpressure=limits.max_connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(limits.header_timeout * 1000)), max_buffer_size=limits.max_header_bytes,
        ),
        respawn_failed_workers=True, log_level=log_level, log_access=access_log,
        ssl_cert=Path(ssl_certfile) if ssl_certfile else None, ssl_key=Path(ssl_keyfile) if ssl_keyfile else None,
    )
    # Forked workers start in a fraction of the time of spawned ones and share the pages of what
    # this process imported. prometheus_client picks its single- or multi-process mode when it is
    # first imported, so a worker may be forked only if it imports it after shared_state.
    multiprocessing.set_start_method("spawn" if "prometheus_client" in sys.modules else "fork", force=True)
    with shared_state(workers):
        try:
            server.serve()
        except SystemExit as exc:  # granian exits 1 when a worker keeps failing
            return STARTUP_FAILURE if exc.code else 0
    return 0


@contextlib.contextmanager
def shared_state(workers: int):
    """With several workers, a temporary folder they share, removed when the server stops:
    Prometheus' multiprocess files, so /metrics adds up all workers (a PROMETHEUS_MULTIPROC_DIR
    given by the operator is used as is), and the link to the table of rate limits and used
    signatures that this process holds for them (server/limits_shared.py)."""
    from capserve.server import limits_shared

    if workers < 2:
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="capserve-workers-"))
    added = {"CAPSERVE_LIMITS_DIR": folder / "limits"}
    if not os.environ.get(MULTIPROCESS_ENV):
        added[MULTIPROCESS_ENV] = folder / "metrics"
    for name, path in added.items():
        path.mkdir()
        os.environ[name] = str(path)
    limits = limits_shared.create(added["CAPSERVE_LIMITS_DIR"])
    try:
        yield
    finally:
        if limits is not None:
            os.close(limits)
        for name in added:
            del os.environ[name]
        shutil.rmtree(folder, ignore_errors=True)
