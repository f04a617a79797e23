"""Several uvicorn workers, each with its own listening socket on the same port (SO_REUSEPORT).

uvicorn's ``--workers`` shares one listening socket between the workers. When connections
arrive together (a client pool opening, a load balancer reconnecting), whichever worker wakes
first accepts every pending one: in two runs of 20 bursts of 64 wrk connections to 2 workers,
11 bursts each put all 64 on one worker (BENCHMARKS.md). That worker's requests queue behind
each other while the other worker's core has spare time, and tail latency follows the busy one.
With a socket per worker the largest share in 20 bursts was 33 to 40 of 64.

With ``SO_REUSEPORT`` every worker listens on a socket of its own and the kernel spreads
new connections over them by a hash of the client address and port. uvicorn's supervisor is
kept as is (restarts, health checks, signals); only the socket each worker receives differs:
the object handed to it is rebuilt in the worker, when the worker unpickles its arguments, as
a new socket bound to the same address. The supervisor itself binds the address once (without
listening) so that a port in use fails at once with a clear error.

``shared_state`` makes the folder the workers share (Prometheus multiprocess files,
connection balancing counts) for as long as the server runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

import uvicorn


def reuse_port_available() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def bind_reuse_port(host: str, port: int, *, listen: bool = True, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` with SO_REUSEPORT (listening unless ``listen`` is False)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class WorkerSocket:
    """Stands in for a socket in the supervisor; becomes a fresh SO_REUSEPORT socket in each worker."""

    def __init__(self, host: str, port: int, backlog: int) -> None:
        self.host, self.port, self.backlog = host, port, backlog

    def __reduce__(self):
        return (_listening_socket, (self.host, self.port, self.backlog))


def _listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    return bind_reuse_port(host, port, listen=True, backlog=backlog)


def run_workers(config: uvicorn.Config) -> None:
    """Run ``config.workers`` uvicorn workers, each on its own SO_REUSEPORT socket."""
    from uvicorn.supervisors.multiprocess import Multiprocess

    import logging
    import sys

    from uvicorn.config import STARTUP_FAILURE

    try:
        reserved = bind_reuse_port(config.host, config.port, listen=False)
    except OSError as exc:
        logging.getLogger("uvicorn.error").error("cannot bind %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    port = reserved.getsockname()[1]
    try:
        config.port = port
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running on http://%s:%d with %d workers, a socket each (SO_REUSEPORT)",
            config.host, port, config.workers,
        )
        sockets = [WorkerSocket(config.host, port, config.backlog)]
        Multiprocess(config, sockets=sockets).run()  # type: ignore[arg-type]
    finally:
        reserved.close()


@contextlib.contextmanager
def shared_state(workers: int):
    """With several workers, a temporary folder they share, removed when the server stops:
    Prometheus' multiprocess files, so /metrics adds up all workers (a PROMETHEUS_MULTIPROC_DIR
    given by the operator is used as is), and the connection counts of server/balance.py."""
    from server.balance import BALANCE_DIR_ENV, create_folder
    from server.metrics import MULTIPROCESS_ENV, multiprocess_dir

    if workers < 2:
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="capserve-workers-"))
    added = {BALANCE_DIR_ENV: folder / "balance"}
    if multiprocess_dir() is None:
        added[MULTIPROCESS_ENV] = folder / "metrics"
    for name, path in added.items():
        path.mkdir()
        os.environ[name] = str(path)
    create_folder(added[BALANCE_DIR_ENV])
    try:
        yield
    finally:
        for name in added:
            del os.environ[name]
        shutil.rmtree(folder, ignore_errors=True)
