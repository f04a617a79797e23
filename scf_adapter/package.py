"""Build the SCF deploy zip: serving code, chosen registry entries, dependencies, entry files.

What goes in, at the zip's root (SCF unpacks it to ``/var/user``, which is on ``PYTHONPATH``):

- the serving packages ``server``, ``model_registry``, ``plugins``, ``scf_adapter`` (never
  ``training``), with ``model_registry/bundled/`` holding only the chosen entries;
- the serving dependencies (``SERVING_REQUIREMENTS``, the ``dependencies`` of pyproject.toml,
  and theirs) installed from manylinux wheels for the target Python, never TensorFlow;
- ``index.py`` (event mode: handler ``index.main_handler``) or ``scf_bootstrap`` (web mode);
- ``__pycache__`` bytecode, when an interpreter of the target version is at hand: SCF sets
  ``PYTHONDONTWRITEBYTECODE`` and the code folder is read-only, so without it every cold start
  compiles every module again. The ``.pyc`` files are "unchecked-hash" ones, valid whatever
  the file times the unzip gives.

Target: SCF's standard Python runtimes run on CentOS 7.6, glibc 2.17, x86_64, so the wheels
are ``manylinux_2_17`` (``manylinux2014``) ones (``--glibc`` changes that). For glibc 2.17 the
newest ``ai-edge-litert`` is 1.4.0 (2.x wheels need glibc 2.27).

Dependencies are resolved and installed by uv for the target, whatever Python runs the
builder: ``uv pip install --target --python-version 3.10 --python-platform
x86_64-manylinux_2_17 --only-binary :all:`` evaluates every marker for Python 3.10 on Linux
(``exceptiongroup`` for anyio, the newest starlette that supports 3.10). uv keeps its wheels in
its own cache; ``--offline`` uses only that cache and ``--wheelhouse``.

Before it says done, the builder imports the package under an interpreter of the target version
(``-I -S``: only the package and the standard library) and reads one captcha through
``main_handler``; the answer must be the builder's own for the same image. Without such an
interpreter the package is neither compiled nor tried, and the builder says so.
"""

from __future__ import annotations

import base64
import compileall
import dataclasses
import io
import json
import os
import py_compile
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from capserve.core import settings

SCF_LIMIT_BYTES = 500 * 1024 * 1024  # SCF: code package at most 500 MB unzipped
SIZE_GOAL_BYTES = 150 * 1024 * 1024
SERVING_PACKAGES = ("core", "plugins", "model_registry", "server", "scf_adapter")
SERVING_REQUIREMENTS = (
    "ai-edge-litert>=1.2",
    "numpy>=1.26",
    "pillow>=10.1",
    "starlette>=0.40",
    "granian>=2.8,<2.9",
    "pluggy>=1.5",
    "pyyaml>=6.0",
    "python-multipart>=0.0.9",
    "prometheus-client>=0.20",
    "orjson>=3.9",
    "pydantic>=2.7",
    "pydantic-settings>=2.7",
    "redis>=5.0",  # limits shared by every container (CAPSERVE_REDIS_URL)
)
# Dependencies of capserve that the package leaves out: the event loop's speed-up under sustained
# load on a long-lived server. An event function never runs granian, and the web bootstrap's granian
# falls back to asyncio without it; a cold start stays smaller and faster.
LEFT_OUT_REQUIREMENTS = ("uvloop",)
# The HTTP server, which only a web function runs (its scf_bootstrap starts capserve serve): an
# event function's handler calls the app itself, so its package is 22 MB smaller without it.
WEB_ONLY_REQUIREMENTS = ("granian",)
# Top-level names that must never ship (TensorFlow alone is ~1.3 GB and does not fit SCF).
FORBIDDEN = ("tensorflow", "tensorflow_cpu", "tf_keras", "keras", "jax", "jaxlib", "torch", "training")
# SCF runtime name and the interpreter's absolute path in the standard environment.
SCF_RUNTIMES = {
    "3.10": ("Python3.10", "/var/lang/python310/bin/python3.10"),
}
# Versions that build (for local tests, or runtimes SCF may add) but are no documented SCF runtime.
OTHER_PYTHONS = ("3.11", "3.12", "3.13")
TRY_TIMEOUT_S = 120

INDEX_PY = '''"""SCF event-function entry: handler ``index.main_handler`` (written by capserve scf package)."""
from capserve.scf_adapter.handler import main_handler  # noqa: F401  (loads the registry at import)
'''


class PackageError(Exception):
    """The package cannot be built as asked."""


@dataclasses.dataclass
class Options:
    out: Path
    sites: list[str] = dataclasses.field(default_factory=list)  # empty: every site that loads
    mode: str = "event"  # event | web
    registry: list[Path] = dataclasses.field(default_factory=list)  # empty: $CAPSERVE_REGISTRY or bundled
    python: str = "3.10"
    trigger: str = "http"  # http (function URL) | apigw
    glibc: str = "2.17"
    wheelhouse: Path | None = dataclasses.field(default_factory=lambda: settings.current().wheelhouse)  # extra wheels
    offline: bool = False
    compile: bool = True
    check: bool = True  # import the package under the target interpreter and read one captcha
    target_python: str | None = None  # an interpreter of the target version (default: found, see find_python)
    keep_dir: bool = True  # leave the unpacked folder beside the zip (serverless.yml deploys it)
    name: str = "capserve"
    region: str = "ap-guangzhou"
    memory: int = 512
    timeout: int = 10


@dataclasses.dataclass
class Result:
    zip_path: Path
    folder: Path | None
    serverless_yml: Path
    unzipped_bytes: int
    zip_bytes: int
    entries: list[tuple[str, int]]
    compiled: bool
    wheels: list[str]
    checked_with: str | None = None  # the interpreter that read a captcha through the package


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- sources and entries ------------------------------------------------------------------------


def package_folder(package: str) -> Path:
    """Where ``capserve.<package>`` is installed (the repository folder in an editable install)."""
    import importlib

    return Path(importlib.import_module(f"capserve.{package}").__file__).resolve().parent


def copy_sources(stage: Path) -> None:
    """The serving packages as ``capserve/<package>/`` (``capserve`` a namespace package)."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        here = Path(folder)
        skipped = []
        for name in names:
            path = here / name
            if path.is_dir():
                if name in ("__pycache__", "tests") or (here.name == "model_registry" and name == "bundled"):
                    skipped.append(name)
            elif not (name.endswith(".py") or here.name == "templates" or name == "py.typed"):
                skipped.append(name)
        return skipped

    for package in SERVING_PACKAGES:
        shutil.copytree(package_folder(package), stage / "capserve" / package, ignore=ignore)
    (stage / "capserve" / "model_registry" / "bundled").mkdir(exist_ok=True)


@dataclasses.dataclass
class Probe:
    """One captcha and the builder's own answer for it, to ask the built package."""

    site: str
    image: bytes
    text: str


def probe_images(width: int, height: int, text: str):
    """Captcha-sized PNGs: ``text`` drawn large, then seeded noise (for a model that reads no text
    in the drawing: the probe wants an image the builder reads as some text)."""
    import numpy as np
    from PIL import Image, ImageDraw

    drawn = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(drawn).text((width // 20, height // 10), text, fill="black", font_size=max(height * 3 // 5, 8))
    images = [drawn] + [Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))
                        for seed in range(4)]
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        yield buffer.getvalue()


def select_entries(roots: list[Path], sites: list[str]) -> tuple[list[tuple[str, int, Path]], Probe]:
    """(site, version, folder) of the serving entry of each site (every entry must load), and a
    probe of the first one."""
    from capserve.model_registry.registry import Registry

    registry = Registry(roots or None)
    registry.refresh()
    wanted = sites or registry.sites()
    if not wanted:
        problems = "; ".join(e.error or e.state for e in registry.entries()) or "no entries found"
        raise PackageError(f"no site loads from {', '.join(map(str, registry.roots))}: {problems}")
    chosen = []
    for site in wanted:
        model = registry.serving(site)
        if model is None:
            errors = [e.error for e in registry.site_entries(site) if e.error]
            raise PackageError(f"site {site!r} does not load from the registry" + (f": {errors[0]}" if errors else ""))
        entry = next(e for e in registry.site_entries(site) if e.model is model)
        chosen.append((site, model.spec.version, entry.path.parent))
    model = registry.serving(chosen[0][0])
    spec = model.spec
    for image in probe_images(spec.width, spec.height, spec.charset[: max(spec.min_length, 1)]):
        probe = Probe(spec.site, image, model.recognize(image).text)
        if probe.text:
            break
    registry.close()
    return chosen, probe


def copy_entries(stage: Path, chosen: list[tuple[str, int, Path]]) -> None:
    bundled = stage / "capserve" / "model_registry" / "bundled"
    for site, version, folder in chosen:
        target = bundled / site / str(version)
        target.mkdir(parents=True)
        for path in sorted(folder.iterdir()):
            if path.is_file():
                shutil.copy2(path, target / path.name)


# -- dependencies -------------------------------------------------------------------------------


def python_platform(glibc: str) -> str:
    """uv's name for x86_64 Linux with glibc ``major.minor``: ``x86_64-manylinux_2_17``."""
    parts = glibc.split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise PackageError(f"--glibc is major.minor, such as 2.17, not {glibc!r}")
    return f"x86_64-manylinux_{parts[0]}_{parts[1]}"


def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
    if found is None:
        raise PackageError("the package's dependencies are resolved for the target by uv, which is not installed: "
                           "pip install 'capserve[scf]' (or pip install uv)")
    return found


def requirements(mode: str) -> list[str]:
    """What a package of ``mode`` (event | web) installs: the serving requirements, the HTTP
    server only for a web function."""
    return [r for r in SERVING_REQUIREMENTS if mode == "web" or not r.startswith(WEB_ONLY_REQUIREMENTS)]


def install_dependencies(stage: Path, options: Options) -> list[str]:
    """Install the serving requirements into ``stage``, resolved for the target Python and platform."""
    command = [uv_binary(), "pip", "install", "--target", str(stage), "--python", sys.executable,
               "--python-version", options.python, "--python-platform", python_platform(options.glibc),
               "--only-binary", ":all:", "--quiet"]
    if options.wheelhouse:
        wheelhouse = Path(options.wheelhouse).expanduser()
        wheelhouse.mkdir(parents=True, exist_ok=True)  # a new one is empty: uv refuses a missing folder
        command += ["--find-links", str(wheelhouse)]
    if options.offline:
        command.append("--offline")
    log(f"resolving the dependencies for Python {options.python}, {python_platform(options.glibc)} (uv)")
    done = subprocess.run([*command, *requirements(options.mode)], capture_output=True, text=True)
    if done.returncode != 0:
        raise PackageError(f"uv could not install the dependencies for Python {options.python}:\n{done.stderr.strip()}")
    shutil.rmtree(stage / "bin", ignore_errors=True)  # console scripts: nothing runs them
    return sorted(p.name for p in stage.glob("*.dist-info"))


def check_forbidden(stage: Path) -> None:
    found = []
    for path in stage.iterdir():
        top = path.name.split("-")[0].split(".")[0].lower()
        if top in FORBIDDEN:
            found.append(path.name)
    if (stage / "capserve" / "training").exists():
        found.append("capserve/training")
    if found:
        raise PackageError(f"the package must not contain {', '.join(sorted(found))}")


def trim(stage: Path) -> None:
    """Drop what serving never loads: test suites of dependencies, type stubs, caches."""
    for pattern in ("numpy/**/tests", "**/__pycache__"):
        for path in sorted(stage.glob(pattern), reverse=True):
            if path.is_dir():
                shutil.rmtree(path)
    for path in stage.rglob("*.pyi"):
        path.unlink()


# -- entry files, bytecode, serverless.yml ------------------------------------------------------


def write_entry_files(stage: Path, options: Options) -> None:
    if options.mode == "event":
        (stage / "index.py").write_text(INDEX_PY)
        return
    template = (Path(__file__).parent / "templates" / "scf_bootstrap").read_text()
    python_path = SCF_RUNTIMES.get(options.python, (None, f"/var/lang/python{options.python.replace('.', '')}"
                                                     f"/bin/python{options.python}"))[1]
    bootstrap = stage / "scf_bootstrap"
    bootstrap.write_text(template.replace("@PYTHON@", python_path), newline="\n")
    bootstrap.chmod(0o755)


def python_version(python: str) -> tuple[str | None, str]:
    """(``X.Y`` or None, why not) of an interpreter, by running it."""
    try:
        done = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or [""])[0][:200]
        return None, f"it does not run (exit {done.returncode}: {first})"
    return done.stdout.strip(), ""


def find_python(version: str, explicit: str | None = None) -> str | None:
    """An interpreter of ``version`` that runs: ``explicit``, else this one, else the first
    ``pythonX.Y`` on PATH that runs, else pyenv's (``$PYENV_ROOT`` or ``~/.pyenv``,
    ``versions/X.Y*/bin``). Each one passed over is named on stderr."""
    if explicit:
        found, why = python_version(explicit)
        if found != version:
            raise PackageError(f"{explicit} is not Python {version}: {why or 'it is Python ' + str(found)}")
        return explicit
    if "%d.%d" % sys.version_info[:2] == version:
        return sys.executable
    name = f"python{version}"
    candidates = [os.path.join(folder, name) for folder in os.environ.get("PATH", "").split(os.pathsep) if folder]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += [str(path) for path in sorted(pyenv.glob(f"versions/{version}*/bin/{name}"))]
    seen = set()
    for candidate in candidates:
        if candidate in seen or not os.access(candidate, os.X_OK) or os.path.isdir(candidate):
            continue
        seen.add(candidate)
        found, why = python_version(candidate)
        if found == version:
            return candidate
        log(f"skipping {candidate}: {why or 'it is Python ' + str(found)}")
    return None


def compile_bytecode(stage: Path, python: str) -> bool:
    """Write unchecked-hash ``.pyc`` files with ``python``, an interpreter of the target version."""
    if python == sys.executable:
        ok = compileall.compile_dir(
            str(stage), quiet=1, workers=0, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
        )
        return bool(ok)
    done = subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                           str(stage)], capture_output=True, text=True)
    return done.returncode == 0


# Run by the target interpreter in isolation: sys.path is the package and the standard library.
TRY_RUNNER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from capserve.scf_adapter.handler import main_handler
print(json.dumps(main_handler(json.loads(sys.stdin.read()), None)))
"""


def try_package(stage: Path, python: str, probe: Probe) -> None:
    """Read the probe's captcha through ``main_handler`` of the package in ``stage``, under
    ``python -I -S -B``, as a function URL POST; the answer must be the builder's own."""
    event = {"httpMethod": "POST", "path": f"/recognize/{probe.site}", "headers": {"content-type": "application/json"},
             "queryString": {}, "body": json.dumps({"image": base64.b64encode(probe.image).decode()})}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(stage)}
    try:
        done = subprocess.run([python, "-I", "-S", "-B", "-c", TRY_RUNNER, str(stage)], input=json.dumps(event),
                              capture_output=True, text=True, timeout=TRY_TIMEOUT_S, env=env, cwd=stage)
    except subprocess.TimeoutExpired:
        raise PackageError(f"the package did not answer within {TRY_TIMEOUT_S} s under {python}") from None
    if done.returncode != 0:
        raise PackageError(f"the package does not run under {python} -I -S:\n{done.stderr.strip()[-3000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    doc = json.loads(answer["body"])
    if answer["statusCode"] != 200 or doc.get("text") != probe.text:
        raise PackageError(f"under {python} the package answered {answer['statusCode']} {answer['body'][:300]}, "
                           f"not the text {probe.text!r}")


def serverless_yml(options: Options, folder_name: str) -> str:
    runtime = SCF_RUNTIMES.get(options.python, (f"Python{options.python}", None))[0]
    inputs: dict = {
        "name": options.name,
        "src": {"src": f"./{folder_name}", "exclude": ["serverless.yml"]},
        "type": options.mode,
        "runtime": runtime,
        "region": options.region,
        "memorySize": options.memory,
        "timeout": options.timeout,
    }
    if options.mode == "event":
        inputs["handler"] = "index.main_handler"
        inputs["initTimeout"] = 20  # the first import loads every model
    inputs["environment"] = {"variables": {"CAPSERVE_MAX_BODY_BYTES": "2097152"}}
    if options.trigger == "http":
        trigger = {"http": {"parameters": {"authType": "NONE",
                                            "netConfig": {"enableIntranet": False, "enableExtranet": True}}}}
    else:
        endpoint: dict = {"path": "/", "method": "ANY"}
        if options.mode == "event":
            endpoint["function"] = {"isIntegratedResponse": True}
        trigger = {"apigw": {"parameters": {"protocols": ["http", "https"], "environment": "release",
                                             "endpoints": [endpoint]}}}
    inputs["events"] = [trigger]
    doc = {"component": "scf", "name": options.name, "inputs": inputs}
    header = (
        "# Serverless Framework (Tencent `scf` component). Written by `capserve scf package`.\n"
        f"# Deploy: cd {options.out.parent} && sls deploy   (see docs/deploy-scf.md)\n"
        "# Trigger: a function URL (`http`), for an event function or a web function (--mode web);\n"
        "# --trigger apigw writes an API Gateway trigger instead (legacy: Tencent is retiring it).\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)


# -- size and zip -------------------------------------------------------------------------------


def tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def write_zip(stage: Path, out: Path) -> None:
    tmp = out.with_suffix(out.suffix + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(stage.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            name = path.relative_to(stage).as_posix()
            info = zipfile.ZipInfo.from_file(path, name)
            mode = path.stat().st_mode
            info.external_attr = ((stat.S_IFREG | (0o755 if mode & 0o111 else 0o644)) & 0xFFFF) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, 1 << 20)
    os.replace(tmp, out)


def human(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def build(options: Options) -> Result:
    if options.mode not in ("event", "web"):
        raise PackageError("--mode is event or web")
    if options.trigger not in ("http", "apigw"):
        raise PackageError("--trigger is http (function URL) or apigw (API Gateway)")
    if options.python not in SCF_RUNTIMES and options.python not in OTHER_PYTHONS:
        raise PackageError(
            f"Python {options.python} is not a target: capserve needs Python >= 3.10; SCF runtimes: "
            + ", ".join(SCF_RUNTIMES)
        )
    if options.python not in SCF_RUNTIMES:
        log(f"note: Python {options.python} is no documented SCF runtime; this package is for local tests")
    out = options.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    chosen, probe = select_entries(options.registry, options.sites)
    target = find_python(options.python, options.target_python) if options.compile or options.check else None
    if target is None and (options.compile or options.check):
        log(f"no Python {options.python} here: the package ships without bytecode (slower cold start) and is not "
            "tried before it is written (see --target-python)")

    with tempfile.TemporaryDirectory(prefix="capserve-scf-") as tmp:
        stage = Path(tmp) / "package"
        stage.mkdir()
        copy_sources(stage)
        copy_entries(stage, chosen)
        wheels = install_dependencies(stage, options)
        check_forbidden(stage)
        trim(stage)
        write_entry_files(stage, options)
        compiled = compile_bytecode(stage, target) if options.compile and target else False
        size = tree_size(stage)
        log(f"unzipped size: {human(size)} ({size} bytes); SCF limit {human(SCF_LIMIT_BYTES)}")
        if size > SCF_LIMIT_BYTES:
            raise PackageError(f"the package is {human(size)} unzipped, over SCF's {human(SCF_LIMIT_BYTES)} limit")
        if size > SIZE_GOAL_BYTES:
            log(f"warning: over the {human(SIZE_GOAL_BYTES)} goal")
        checked_with = None
        if options.check and target:
            try_package(stage, target, probe)
            checked_with = target
            log(f"checked: under {target} -I -S the package read a {probe.site!r} captcha as {probe.text!r}")
        write_zip(stage, out)
        folder = None
        if options.keep_dir:
            folder = out.parent / out.name.removesuffix(".zip")
            if folder == out:
                folder = out.parent / (out.name + "-src")
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(stage, folder, symlinks=True)
    yml = out.parent / "serverless.yml"
    yml.write_text(serverless_yml(options, (folder or out).name))
    zip_bytes = out.stat().st_size
    log(f"wrote {out} ({human(zip_bytes)} zipped), {yml}")
    return Result(out, folder, yml, size, zip_bytes, [(s, v) for s, v, _ in chosen], compiled, wheels, checked_with)
