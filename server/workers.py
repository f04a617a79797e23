"""How ``capserve serve`` runs uvicorn: on sockets it binds itself, so that each worker can
drain its accept queue at once (``server/accept.py``); with several workers, a socket each on
the same port (SO_REUSEPORT). The sockets are bound but not listening: the event loop listens
when uvicorn starts serving, after the app's start-up (models loaded), so connections are never
queued on a worker that cannot answer them yet. A port in use fails at once, with exit code 3.

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
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import uvicorn

from capserve.server import accept


def reuse_port_available() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int, *, reuse_port: bool, listen: bool = True, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to ``(host, port)``, with SO_REUSEPORT if ``reuse_port`` (listening
    unless ``listen`` is False)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
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
    # Bound, not listening: the loop listens once the app has started (models loaded), so a
    # worker that is starting or restarting takes no connections it cannot answer yet.
    return accept.listening(bind(host, port, reuse_port=True, listen=False, backlog=backlog))


def run(config: uvicorn.Config, *, shared_socket: bool = False) -> None:
    """Serve ``config``: one worker on a listening socket bound here; several on a SO_REUSEPORT
    socket each, or with ``shared_socket`` (or no SO_REUSEPORT) on uvicorn's one shared socket,
    which is not drained."""
    if config.workers < 2:
        _run_one(config)
    elif shared_socket or not reuse_port_available():
        _supervise(config, [config.bind_socket()])
    else:
        _run_workers(config)


def _run_one(config: uvicorn.Config) -> None:
    from uvicorn.config import STARTUP_FAILURE

    sock = _bind_or_exit(config, reuse_port=False)
    host, port = sock.getsockname()[:2]
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C to quit)", _url(host, port))
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[accept.listening(sock)])
    except KeyboardInterrupt:  # uvicorn re-raises the signal it stopped on
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bind_or_exit(config: uvicorn.Config, *, reuse_port: bool) -> socket.socket:
    """The socket bound but not listening: the event loop listens once the app has started."""
    from uvicorn.config import STARTUP_FAILURE

    try:
        return bind(config.host, config.port, reuse_port=reuse_port, listen=False, backlog=config.backlog)
    except OSError as exc:
        logging.getLogger("uvicorn.error").error("cannot bind %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)


def _run_workers(config: uvicorn.Config) -> None:
    """Run ``config.workers`` uvicorn workers, each on its own SO_REUSEPORT socket."""
    reserved = _bind_or_exit(config, reuse_port=True)
    port = reserved.getsockname()[1]
    try:
        config.port = port
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running on %s with %d workers, a socket each (SO_REUSEPORT)", _url(config.host, port), config.workers
        )
        _supervise(config, [WorkerSocket(config.host, port, config.backlog)])  # type: ignore[list-item]
    finally:
        reserved.close()


def _supervise(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """uvicorn's supervisor over ``config.workers`` workers; exits 3 (as one worker does) when
    a worker failed to start, where the supervisor alone would return normally."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors.multiprocess import Multiprocess

    supervisor = Multiprocess(config, sockets=sockets)
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


@contextlib.contextmanager
def shared_state(workers: int):
    """With several workers, a temporary folder they share, removed when the server stops:
    Prometheus' multiprocess files, so /metrics adds up all workers (a PROMETHEUS_MULTIPROC_DIR
    given by the operator is used as is), the connection counts of server/balance.py and the
    rate limits and used signatures of server/limits.py."""
    from capserve.server import limits_shared
    from capserve.server.balance import BALANCE_DIR_ENV, create_folder
    from capserve.server.metrics import MULTIPROCESS_ENV, multiprocess_dir

    if workers < 2:
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="capserve-workers-"))
    added = {BALANCE_DIR_ENV: folder / "balance", "CAPSERVE_LIMITS_DIR": folder / "limits"}  # server/limits.py
    if multiprocess_dir() is None:
        added[MULTIPROCESS_ENV] = folder / "metrics"
    for name, path in added.items():
        path.mkdir()
        os.environ[name] = str(path)
    create_folder(added[BALANCE_DIR_ENV])
    limits = limits_shared.create(added["CAPSERVE_LIMITS_DIR"])
    try:
        yield
    finally:
        if limits is not None:
            os.close(limits)
        for name in added:
            del os.environ[name]
        shutil.rmtree(folder, ignore_errors=True)
