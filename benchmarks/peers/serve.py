"""Serve a peer app exactly as ``capserve serve`` serves capserve: the same server, worker
processes and HTTP settings (``server/workers.py``). Only the app differs.

    python -m benchmarks.peers.serve bare_app --port 8001 --workers 2
"""

from __future__ import annotations

import argparse
import sys

from capserve.server import workers


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("module", help="a module of benchmarks/peers with create_app()")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    return workers.run(f"benchmarks.peers.{args.module}:create_app", host=args.host, port=args.port,
                       workers=args.workers, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
