"""``capserve kaggle bundle``: the folder (or zip) a user uploads as a Kaggle dataset.

What it holds::

    wheels/        capserve's wheel and every wheel ``capserve[kaggle]`` needs on Kaggle's Python
    train.ipynb    the notebook; its install cell finds ``wheels/`` under /kaggle/input
    README.md      the step-by-step guide (training/kaggle/README.md)
    data/          a copy of the labelled images, with --data

``capserve[kaggle]`` is the ``train`` extra without TensorFlow: Kaggle preinstalls a GPU build of
TensorFlow, which nothing may replace, so the wheelhouse never holds TensorFlow (checked).

The wheels are chosen by pip run under an interpreter of the target Python version (this one
when it matches), so that dependency markers such as ``python_version < "3.11"`` are evaluated
for the target and not for this host; ``--platform`` tags give the target's manylinux wheels.
This module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KAGGLE_FOLDER = Path(__file__).resolve().parent / "kaggle"
# Kaggle's images today: CPython 3.11 on Ubuntu 22.04 (glibc 2.35), x86_64.
DEFAULT_PYTHON = "3.11"
DEFAULT_GLIBC = "2.35"
EXTRA = "kaggle"


class BundleError(Exception):
    """The bundle cannot be made as asked."""


@dataclasses.dataclass
class Options:
    out: Path
    data: Path | None = None
    zip: bool = False
    python: str = DEFAULT_PYTHON
    glibc: str = DEFAULT_GLIBC
    interpreter: str | None = None  # an interpreter of the target version (default: found)
    source: Path | None = None  # capserve's source folder (default: the one this module runs from)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def platform_tags(glibc: str) -> list[str]:
    """The manylinux tags an x86_64 system with glibc ``major.minor`` runs (down to manylinux1)."""
    try:
        major, minor = (int(x) for x in glibc.split("."))
    except ValueError:
        raise BundleError(f"--glibc is MAJOR.MINOR, e.g. 2.35, got {glibc!r}") from None
    if major != 2 or minor < 17:
        raise BundleError(f"--glibc must be 2.17 or later, got {glibc}")
    # pip adds manylinux2010 and manylinux1 to manylinux2014 by itself.
    return [f"manylinux_2_{m}_x86_64" for m in range(minor, 16, -1)] + ["manylinux2014_x86_64"]


def version_of(interpreter: str) -> str | None:
    """``"3.11"`` for a working interpreter; None when it does not run (a pyenv shim without it)."""
    try:
        done = subprocess.run([interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_interpreter(python: str, given: str | None = None) -> str:
    """An interpreter of version ``python``: ``given``, this one, ``pythonX.Y`` on PATH, or pyenv's."""
    if given is not None:
        found = version_of(given)
        if found != python:
            raise BundleError(f"--interpreter {given} is Python {found or '? (it does not run)'}, not {python}")
        return given
    if "%d.%d" % sys.version_info[:2] == python:
        return sys.executable
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{python}")]
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{python}.*", "bin", f"python{python}")))
    for candidate in filter(None, candidates):
        found = version_of(candidate)
        if found == python:
            return candidate
        log(f"skipping {candidate}: it is Python {found or '? (it does not run)'}, not {python}")
    raise BundleError(f"no Python {python} found to resolve the wheels for; install one or give --interpreter")


def source_folder(given: Path | None) -> Path:
    folder = given or Path(__file__).resolve().parents[1]
    if not (folder / "pyproject.toml").is_file() or not (folder / "training" / "bundle.py").is_file():
        raise BundleError(f"{folder} is no capserve source folder (pyproject.toml, training/); "
                          "run from a source checkout (pip install -e .) or give --source")
    return folder


def pip(args: list[str], interpreter: str | None = None) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    if interpreter is not None and interpreter != sys.executable:
        command += ["--python", interpreter]  # pip runs itself under the target interpreter
    done = subprocess.run(command + args, capture_output=True, text=True)
    if done.returncode != 0:
        raise BundleError(f"pip {args[0]} failed:\n{done.stderr.strip()}")


def copy_source(source: Path, dest: Path) -> None:
    """What the wheel is built from: pyproject.toml, README.md and the package folders, no build output.

    A copy, because setuptools builds through the source's ``build/`` folder, where a stale
    module would end up in the wheel; and only these, because a checkout may hold data and bundles.
    """

    def ignore(folder: str, names: list[str]) -> list[str]:
        here = Path(folder)
        if here == source:
            return [n for n in names if n not in ("pyproject.toml", "README.md") and not (here / n / "__init__.py").is_file()]
        return [n for n in names if n == "__pycache__" or n.endswith(".egg-info")]

    shutil.copytree(source, dest, ignore=ignore)


def build_wheel(source: Path, dest: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="capserve-wheel-") as tmp:
        copy = Path(tmp) / "source"
        copy_source(source, copy)
        pip(["wheel", "--no-deps", "--quiet", "--wheel-dir", tmp, str(copy)])
        wheels = list(Path(tmp).glob("capserve-*.whl"))
        if len(wheels) != 1:
            raise BundleError(f"pip wheel wrote {[p.name for p in Path(tmp).glob('*.whl')]}, not one capserve wheel")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], dest))


def distribution(wheel: str) -> str:
    """The normalized project name of a wheel file: ``tensorflow_cpu-2.18...whl`` -> ``tensorflow-cpu``."""
    return wheel.split("-", 1)[0].lower().replace("_", "-").replace(".", "-")


def is_tensorflow(name: str) -> bool:
    return name.startswith("tensorflow") or name in ("tf-nightly", "tf-keras", "keras")


def download_wheelhouse(wheel: Path, dest: Path, options: Options) -> list[str]:
    """Every wheel ``capserve[kaggle]`` needs on the target, into ``dest`` (beside capserve's own)."""
    interpreter = find_interpreter(options.python, options.interpreter)
    target = ["--only-binary=:all:", "--implementation", "cp", "--python-version", options.python]
    for tag in platform_tags(options.glibc):
        target += ["--platform", tag]
    log(f"downloading wheels for Python {options.python} (glibc {options.glibc}, x86_64) with {interpreter}")
    pip(["download", "--quiet", "--dest", str(dest), *target, f"capserve[{EXTRA}] @ {wheel.resolve().as_uri()}"],
        interpreter)
    names = sorted(p.name for p in dest.glob("*.whl"))
    forbidden = [n for n in names if is_tensorflow(distribution(n))]
    if forbidden:
        raise BundleError(f"the wheelhouse must not hold TensorFlow (Kaggle's own would be replaced): {forbidden}")
    return names


def copy_data(data: Path, dest: Path) -> int:
    """Copy a labelled folder after checking it is one; returns how many labelled images it has."""
    from capserve.training.datasets import DatasetError, scan_folder

    try:
        count = len(scan_folder(data))
    except DatasetError as exc:
        raise BundleError(f"--data: {exc}") from None
    shutil.copytree(data, dest)
    return count


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bundle(options: Options) -> Path:
    """Write the bundle folder (and ``<out>.zip`` with ``zip``); returns what to upload."""
    out = options.out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty folder: remove it or choose another --out")
    if options.data is not None and not options.data.is_dir():
        raise BundleError(f"--data {options.data}: is not a folder")
    source = source_folder(options.source)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if options.data is not None:
            log(f"data/: {copy_data(options.data, out / 'data')} labelled images from {options.data}")
        wheel = build_wheel(source, out / "wheels")
        names = download_wheelhouse(wheel, out / "wheels", options)
        shutil.copy2(KAGGLE_FOLDER / "train.ipynb", out / "train.ipynb")
        shutil.copy2(KAGGLE_FOLDER / "README.md", out / "README.md")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    log(f"wheels/: {len(names)} wheels; {out}: {tree_bytes(out) / 1e6:.1f} MB")
    if not options.zip:
        return out
    archive = Path(shutil.make_archive(str(out), "zip", root_dir=out))
    log(f"{archive}: {archive.stat().st_size / 1e6:.1f} MB")
    return archive
