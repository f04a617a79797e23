"""Serve a peer app exactly as ``capserve serve`` serves capserve: the same uvicorn options,
the same HTTP protocol class (TCP_NODELAY) and, with several workers, the same socket per
worker (SO_REUSEPORT) and connection balancing. Only the app differs.

    python -m benchmarks.peers.serve bare_app --port 8001 --workers 2
"""

from __future__ import annotations

import argparse

import uvicorn

from capserve.server.protocol import HTTP_PROTOCOL
from capserve.server import workers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("module", help="a module of benchmarks/peers with create_app()")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--shared-socket", action="store_true", help="uvicorn's one shared socket for all workers")
    args = parser.parse_args()
    options = dict(factory=True, host=args.host, port=args.port, workers=args.workers, log_level="warning",
                   access_log=False, http=HTTP_PROTOCOL)
    app = f"benchmarks.peers.{args.module}:create_app"
    with workers.shared_state(args.workers):  # connection balancing, as capserve serve has it
        workers.run(uvicorn.Config(app, **options), shared_socket=args.shared_socket)


if __name__ == "__main__":
    main()
