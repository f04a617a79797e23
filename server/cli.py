"""``capserve``: serve, predict, list models and plugins; train, eval, scf and ray come from their packages."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import secrets
import ssl
import sys
from pathlib import Path

from capserve.core import settings
from capserve.core.errors import CapserveError
from capserve.server.workers import LOG_LEVELS, Limits

# Packages that add subcommands: each has ``add_parsers(subparsers)``. A missing optional
# dependency (TensorFlow for training) only removes its commands from the help. They are found
# by name, so this layer imports none of the packages above it (docs/ARCHITECTURE.md).
SUBCOMMAND_MODULES = ("capserve.training.cli", "capserve.scf_adapter.cli", "capserve.ray_serve.cli")


def _registry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", action="append", type=Path, metavar="DIR",
        help="registry folder (repeatable); default: $CAPSERVE_REGISTRY or the bundled entries",
    )


def _load_registry(args: argparse.Namespace):
    from capserve.model_registry.registry import Registry

    registry = Registry(args.registry or None)
    registry.refresh()
    return registry


def cmd_serve(args: argparse.Namespace) -> int:
    from capserve.server import workers

    # Worker processes build their own app, so the options travel by environment.
    if args.registry:
        os.environ["CAPSERVE_REGISTRY"] = os.pathsep.join(str(p.resolve()) for p in args.registry)
    if args.lazy:
        os.environ["CAPSERVE_LAZY"] = "1"
    if args.default_site:
        os.environ["CAPSERVE_DEFAULT_SITE"] = args.default_site
    problem = _settings_problem() or _tls_problem(args.ssl_certfile, args.ssl_keyfile)
    if problem is not None:
        print(f"capserve: cannot start: {problem}", file=sys.stderr)
        return workers.STARTUP_FAILURE
    # One protocol secret for every worker, so that any of them resolves another's captcha ids.
    if not settings.current().protocol_secret:
        os.environ["CAPSERVE_PROTOCOL_SECRET"] = secrets.token_hex(32)
    limits = workers.Limits(max_header_bytes=args.max_header_bytes, header_timeout=args.header_timeout,
                            max_connections=args.max_connections, backlog=args.backlog)
    return workers.run("capserve.server.workers:worker_app", host=args.host, port=args.port, workers=args.workers,
                       limits=limits, log_level=args.log_level, access_log=args.access_log,
                       ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)


def _settings_problem() -> str | None:
    """What is wrong with the environment's settings, found before any worker starts (a worker
    that fails on them would be restarted over and over)."""
    from capserve.server.access import Access

    try:
        Access.from_settings(settings.current())  # an unreadable or invalid keys file is a ValueError naming it
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def _tls_problem(certfile: str | None, keyfile: str | None) -> str | None:
    """Why the certificate and key cannot serve TLS, found before any worker starts."""
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        return "--ssl-certfile and --ssl-keyfile go together"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot serve TLS with {certfile} and {keyfile}: {exc.strerror or exc}"
    return None


def cmd_predict(args: argparse.Namespace) -> int:
    registry = _load_registry(args)
    from capserve.server.restriction import restriction

    model = registry.get(args.site)
    restrict = restriction(model, args.charset, args.length)
    failures = 0
    for path in args.images:
        try:
            result = model.recognize(Path(path).read_bytes(), restrict=restrict)
        except (CapserveError, OSError) as exc:
            cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
            print(f"{path}: error: {exc}{cause}", file=sys.stderr)  # the operator may see the cause
            failures += 1
            continue
        if args.json or args.details:
            answer = {"image": str(path), "text": result.text, "confidence": round(result.confidence, 4)}
            print(json.dumps({**answer, **result.details()} if args.details else answer))
        else:
            print(result.text if len(args.images) == 1 else f"{path}\t{result.text}")
    return 1 if failures else 0


def cmd_models(args: argparse.Namespace) -> int:
    registry = _load_registry(args)
    rows = [("SITE", "VERSION", "STATE", "SERVING", "PATH")]
    for entry in registry.entries():
        is_serving = entry.model is not None and registry.serving(entry.site) is entry.model
        rows.append((entry.site or "?", str(entry.version or "?"), entry.state, "yes" if is_serving else "",
                     str(entry.path.parent)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for entry in registry.entries():
        if entry.error:
            print(f"\n{entry.path}: {entry.error}", file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from capserve.plugins import manager

    plugins = manager.list_plugins()
    if args.json:
        print(json.dumps(plugins, indent=2))
        return 0
    for plugin in plugins:
        print(f"{plugin['name']}  ({plugin['origin']} {plugin['version'] or ''})".rstrip())
        for kind in ("preprocess", "postprocess", "generators"):
            if plugin.get(kind):
                print(f"  {kind}: {', '.join(plugin[kind])}")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings.markdown_table())
        return 0
    values = settings.current()
    for name in type(values).model_fields:
        value = getattr(values, name)
        if name in settings.SECRETS and value:
            value = "(set)"
        elif isinstance(value, bool):
            value = int(value)
        elif isinstance(value, tuple):
            value = (os.pathsep if name == "registry" else ",").join(map(str, value))
        print(f"{settings.env_name(name)}={'' if value is None else value}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    import asyncio
    import webbrowser

    from granian.constants import Interfaces
    from granian.server.embed import Server

    from capserve.server.app import create_app

    from capserve.core.spec import SITE_PATTERN

    if not SITE_PATTERN.fullmatch(args.site):
        print(f"capserve: --site {args.site!r} is not a site name (lowercase letters, digits, - and _)", file=sys.stderr)
        return 2
    folder = args.folder.resolve()
    if not folder.is_dir():
        print(f"capserve: {args.folder} is not a folder", file=sys.stderr)
        return 2
    registry = _load_registry(args)
    app = create_app(registry, access=None, watch=False, label=(args.site, folder))
    url = f"http://{args.host}:{args.port}/#label/{args.site}"
    print(f"labelling {folder} at {url}  (Ctrl+C to stop)", flush=True)
    if args.open:
        webbrowser.open(url)
    server = Server(app, address=args.host, port=args.port, interface=Interfaces.ASGI, websockets=False,
                    log_level="warning")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from capserve.core.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capserve", description="Train, register and serve text-captcha recognition models.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve every registered site over HTTP")
    _registry_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (one per core is a good start)")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--lazy", action="store_true", help="load each model on its site's first request")
    limits = Limits()
    serve.add_argument("--max-header-bytes", type=int, default=limits.max_header_bytes, metavar="N",
                       help="largest request line and headers; larger ones get 431 (default %(default)s)")
    serve.add_argument("--header-timeout", type=float, default=limits.header_timeout, metavar="SECONDS",
                       help="close a connection whose next request's headers have not arrived in time, "
                            "idle kept-alive ones included (default %(default)s)")
    serve.add_argument("--max-connections", type=int, default=limits.max_connections, metavar="N",
                       help="open connections per worker; more wait in the listen backlog (default %(default)s)")
    serve.add_argument("--backlog", type=int, default=limits.backlog, metavar="N",
                       help="connections the kernel queues for the workers (default %(default)s)")
    serve.add_argument("--default-site", metavar="SITE",
                       help="the site the 2captcha and createTask routes use when a request and its key name none")
    serve.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (chain)")
    serve.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")
    serve.set_defaults(func=cmd_serve)

    predict = sub.add_parser("predict", help="recognize image files with a registered site's model")
    _registry_args(predict)
    predict.add_argument("--site", required=True)
    predict.add_argument("--json", action="store_true", help="one JSON object per image")
    predict.add_argument("--details", action="store_true",
                         help="JSON with each character's probability, the raw decoder text and timings")
    predict.add_argument("--charset", metavar="CHARS",
                         help="the best reading that uses only these characters (as ?charset= does)")
    predict.add_argument("--length", metavar="N|A-B", help="the best reading of that length (as ?length= does)")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.set_defaults(func=cmd_predict)

    models = sub.add_parser("models", help="list registry entries with their version and state")
    _registry_args(models)
    models.set_defaults(func=cmd_models)

    plugins = sub.add_parser("plugins", help="list loaded plugins and their steps")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)

    settings_parser = sub.add_parser("settings", help="print every CAPSERVE_* setting as this environment sets it")
    settings_parser.add_argument("--markdown", action="store_true", help="the settings table of docs/operating.md")
    settings_parser.set_defaults(func=cmd_settings)

    label = sub.add_parser("label", help="label a folder of images in the browser (labels.csv, for train --data)")
    _registry_args(label)
    label.add_argument("folder", type=Path, metavar="DIR", help="the folder of images; labels go into DIR/labels.csv")
    label.add_argument("--site", default="folder",
                       help="the site whose model pre-fills each guess and whose train command is shown")
    label.add_argument("--host", default="127.0.0.1")
    label.add_argument("--port", type=int, default=8001)
    label.add_argument("--no-open", dest="open", action="store_false", help="do not open a browser")
    label.set_defaults(func=cmd_label)

    schema = sub.add_parser("schema", help="print the JSON Schema of model.yaml (for editors)")
    schema.set_defaults(func=cmd_schema)

    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CapserveError as exc:
        print(f"capserve: {exc.message}", file=sys.stderr)
        return 2
    except settings.SettingsError as exc:
        print(f"capserve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
