"""``capserve scf package``: build the SCF deploy zip and its serverless.yml."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parsers(subparsers) -> None:
    scf = subparsers.add_parser("scf", help="Tencent SCF: build the deploy package")
    scf_sub = scf.add_subparsers(dest="scf_command", required=True)
    package = scf_sub.add_parser(
        "package", help="build the deploy zip (code, registry entries, manylinux wheels) and serverless.yml",
        description="Build the SCF deploy zip. See docs/deploy-scf.md.",
    )
    package.add_argument("--out", required=True, type=Path, help="the zip to write, e.g. dist/capserve-scf.zip")
    package.add_argument("--site", action="append", default=[], metavar="SITE",
                         help="site to include (repeatable); default: every site that loads")
    package.add_argument("--mode", choices=("event", "web"), default="event",
                         help="event function (index.main_handler) or web function (scf_bootstrap); default event")
    package.add_argument("--registry", action="append", type=Path, default=[], metavar="DIR",
                         help="registry folder to take entries from (repeatable); default: $CAPSERVE_REGISTRY or bundled")
    package.add_argument("--python", default="3.10", metavar="X.Y",
                         help="target Python: 3.10 (SCF runtime Python3.10, the default); 3.11+ build for local tests")
    package.add_argument("--trigger", choices=("http", "apigw"), default="http",
                         help="serverless.yml trigger: http (function URL, default) or apigw (API Gateway, legacy)")
    package.add_argument("--glibc", default="2.17", help="target glibc for manylinux wheels (SCF: CentOS 7.6, 2.17)")
    package.add_argument("--wheelhouse", type=Path, help="a folder of extra wheels for uv (--find-links; default "
                         "$CAPSERVE_WHEELHOUSE)")
    package.add_argument("--offline", action="store_true", help="no network: only uv's cache and --wheelhouse")
    package.add_argument("--no-compile", action="store_true", help="ship no bytecode (smaller, slower cold start)")
    package.add_argument("--no-check", action="store_true",
                         help="do not read a captcha through the built package under the target interpreter")
    package.add_argument("--target-python", "--compile-with", dest="target_python", metavar="PYTHON",
                         help="interpreter of the target version, to write bytecode and try the package with "
                         "(default: this one when it matches, else the first pythonX.Y on PATH that runs, else "
                         "pyenv's; without one the package ships no bytecode and is not tried)")
    package.add_argument("--no-dir", action="store_true", help="do not keep the unpacked folder beside the zip")
    package.add_argument("--name", default="capserve", help="function name in serverless.yml")
    package.add_argument("--region", default="ap-guangzhou")
    package.add_argument("--memory", type=int, default=512, help="memorySize in MB for serverless.yml (default 512)")
    package.add_argument("--timeout", type=int, default=10, help="timeout in seconds for serverless.yml (default 10)")
    package.set_defaults(func=cmd_package)


def cmd_package(args: argparse.Namespace) -> int:
    from capserve.scf_adapter import package

    options = package.Options(
        out=args.out, sites=args.site, mode=args.mode, registry=args.registry, python=args.python,
        trigger=args.trigger, glibc=args.glibc, wheelhouse=args.wheelhouse, offline=args.offline,
        compile=not args.no_compile, check=not args.no_check, target_python=args.target_python,
        keep_dir=not args.no_dir, name=args.name, region=args.region, memory=args.memory, timeout=args.timeout,
    )
    try:
        result = package.build(options)
    except package.PackageError as exc:
        print(f"capserve scf package: {exc}", file=sys.stderr)
        return 2
    sites = ", ".join(f"{site} v{version}" for site, version in result.entries)
    print(f"{result.zip_path}\t{result.unzipped_bytes} bytes unzipped\t{result.zip_bytes} bytes zipped\t{sites}")
    return 0
