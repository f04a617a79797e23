"""``capserve ray serve``: deploy the capserve app on a Ray cluster with Ray Serve and keep it
running until Ctrl+C or SIGTERM (docs/ray.md).

``capserve.server.cli`` finds this module by name (``SUBCOMMAND_MODULES``), as it finds the
training and SCF commands: the server layer never imports this one. Importing it imports no
Ray, so ``capserve --help`` stays fast and lists the command where Ray is not installed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from capserve.core.settings import SettingsError


def add_parsers(subparsers) -> None:
    ray = subparsers.add_parser("ray", help="Ray Serve: serve every registered site from a Ray cluster's replicas")
    ray_sub = ray.add_subparsers(dest="ray_command", required=True)
    serve = ray_sub.add_parser(
        "serve", help="deploy the capserve app on Ray Serve (the same API as capserve serve) until stopped",
        description="Deploy the capserve app on Ray Serve and keep it running until Ctrl+C. See docs/ray.md.",
    )
    serve.add_argument("--registry", action="append", type=Path, metavar="DIR",
                       help="registry folder (repeatable), at the same path on every node; "
                            "default: $CAPSERVE_REGISTRY or the bundled entries")
    serve.add_argument("--address", metavar="ADDR",
                       help="the Ray cluster to join (HEAD:6379, or auto); default: start a Ray on this machine")
    serve.add_argument("--host", default="127.0.0.1", help="where Serve's HTTP proxies listen (default %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="(default %(default)s)")
    serve.add_argument("--num-replicas", type=int, metavar="N", help="a fixed number of replicas (default 1)")
    serve.add_argument("--min-replicas", type=int, metavar="N", help="autoscaling: fewest replicas (default 1)")
    serve.add_argument("--max-replicas", type=int, metavar="N", help="autoscaling: most replicas")
    serve.add_argument("--target-ongoing-requests", type=float, metavar="X",
                       help="autoscaling: requests in flight per replica to scale at (default 2)")
    serve.add_argument("--replica-cpus", type=float, default=1.0, metavar="X",
                       help="CPUs Ray reserves for each replica (default %(default)s)")
    serve.add_argument("--name", default="capserve", help="the Serve application's name (default %(default)s)")
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve

        from capserve.ray_serve.app import Options, application
    except ImportError as exc:
        return _fail(f"needs Ray Serve ({exc.name} is missing): pip install 'capserve[ray]'")
    options = Options(registry=tuple(args.registry or ()), num_replicas=args.num_replicas,
                      min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                      target_ongoing_requests=args.target_ongoing_requests, replica_cpus=args.replica_cpus)
    try:
        app = application(options)
    except (ValueError, SettingsError) as exc:
        return _fail(str(exc))
    ray.init(address=args.address, include_dashboard=False if args.address is None else None)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name=args.name, route_prefix="/")
        print(f"capserve ray serve: {args.name} answers at http://{args.host}:{args.port} "
              f"({_replicas(options)}); Ctrl+C stops it", flush=True)
        stop.wait()
    finally:
        if args.address is not None:  # on a cluster the application would outlive this command
            serve.delete(args.name)
        ray.shutdown()  # a Ray this command started goes with it, replicas and all
    return 0


def _replicas(options) -> str:
    if options.autoscaling:
        return f"{options.scaling()['autoscaling_config']['min_replicas']}-{options.max_replicas} replicas"
    return f"{options.num_replicas or 1} replicas"


def _fail(message: str) -> int:
    print(f"capserve ray serve: {message}", file=sys.stderr)
    return 2
