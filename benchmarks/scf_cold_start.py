"""SCF deploy package: cold start to the first answer, and size, against a TensorFlow handler.

Builds the package with ``capserve scf package`` for the target Python (default 3.10, SCF's
runtime; the builder resolves its wheels for manylinux_2_17 whatever Python runs it), unzips
it, and times fresh processes of an interpreter of that version (``find_python``: PATH, then
pyenv's versions) from spawn to the first answer on stdout:

- ``capserve package``: ``python3.10 -I -S``, sys.path = the unzipped folder + stdlib, shipped
  bytecode, ``main_handler`` on a function-URL event (``?base64Image=``);
- ``capserve package, no bytecode``: the same folder without ``__pycache__``, run with ``-B``:
  what every SCF cold start pays if the package ships no bytecode (SCF's code folder is
  read-only and the runtime sets PYTHONDONTWRITEBYTECODE);
- ``TensorFlow handler``: the dev virtualenv's Python; a handler that imports TensorFlow and
  reads the same captcha with ``tf.lite.Interpreter`` and the same ``.tflite`` file.

"first run" is the first process after the unzip (the files were just written, so they sit
in the page cache; SCF's own fetching and unpacking of the code is not measured); the median
is over the following runs. Sizes: the target package, and TensorFlow as installed.

    python benchmarks/scf_cold_start.py [--site demo] [--registry DIR] [--runs 7] [--python 3.10] [--skip-tf]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COLD_START_GOAL_S = 0.5
SIZE_GOAL_MB = 150

PACKAGE_RUNNER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from index import main_handler
answer = main_handler(json.loads(sys.stdin.readline()), None)
print(json.dumps(answer), flush=True)
"""

TF_RUNNER = r"""
import io, json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
from PIL import Image

model_path, charset = sys.argv[1], sys.argv[2]
interpreter = tf.lite.Interpreter(model_path=model_path)
interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]


def main_handler(event, context):
    import base64
    data = base64.b64decode(event["queryString"]["base64Image"])
    _, height, width, channels = inp["shape"]
    image = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB").resize((width, height))
    x = np.asarray(image, dtype=np.float32).reshape(1, height, width, channels) / 255.0
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    best = interpreter.get_tensor(out["index"])[0].argmax(-1)
    text, last = [], 0
    for k in best:
        if k != last and k != 0:
            text.append(charset[k - 1])
        last = k
    body = json.dumps({"ok": True, "text": "".join(text)})
    return {"isBase64Encoded": False, "statusCode": 200, "headers": {"content-type": "application/json"}, "body": body}


answer = main_handler(json.loads(sys.stdin.readline()), None)
print(json.dumps(answer), flush=True)
"""


def time_process(command: list[str], event: dict, env: dict) -> tuple[float, dict]:
    """Seconds from spawn to the first answer line, and that answer."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, text=True)
    process.stdin.write(json.dumps(event) + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    elapsed = time.perf_counter() - started
    _, err = process.communicate(timeout=120)
    if not line:
        raise RuntimeError(f"{command[0]} gave no answer:\n{err[-3000:]}")
    return elapsed, json.loads(line)


def measure(name: str, command: list[str], event: dict, env: dict, runs: int) -> dict:
    times, answer = [], None
    for _ in range(runs):
        seconds, answer = time_process(command, event, env)
        times.append(seconds)
    body = json.loads(answer["body"])
    return {"name": name, "first": times[0], "median": statistics.median(times[1:] or times),
            "min": min(times), "text": body.get("text"), "status": answer["statusCode"]}


def build(out: Path, python: str, target: str, site: str, registry: list[str]) -> dict:
    command = [sys.executable, "-m", "capserve.server.cli", "scf", "package", "--out", str(out), "--site", site,
               "--python", python, "--target-python", target, "--no-dir"]
    for folder in registry:
        command += ["--registry", folder]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"package build for Python {python} failed:\n{done.stderr}")
    with zipfile.ZipFile(out) as archive:
        unzipped = sum(i.file_size for i in archive.infolist())
    return {"python": python, "unzipped": unzipped, "zipped": out.stat().st_size,
            "build_s": time.perf_counter() - started, "log": done.stderr}


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def pick_site(args, tmp: Path) -> tuple[str, list[str], Path, str]:
    """(site, registry args, .tflite path, charset)."""
    from capserve.model_registry.registry import Registry

    roots = [Path(r) for r in args.registry]
    if not roots and not list((REPO / "model_registry" / "bundled").glob("*/*/model.yaml")) and args.site == "demo":
        from tests import model_factory  # no bundled entry yet: a tiny untrained one (TensorFlow builds it)

        model_factory.write_entry(tmp / "registry" / "tiny" / "1", model_factory.tiny_tflite())
        roots, args.site = [tmp / "registry"], "tiny"
    registry = Registry(roots or None)
    registry.refresh()
    model = registry.serving(args.site)
    if model is None:
        raise SystemExit(f"site {args.site!r} does not load")
    spec = model.spec
    model_file = Path(spec.model_file)
    if not model_file.is_absolute():
        model_file = spec.directory / model_file
    registry.close()
    return args.site, [str(r) for r in roots], model_file, spec.charset


def sample_image(charset: str, width: int = 100, height: int = 50) -> tuple[str, bytes]:
    example = REPO / "docs" / "examples" / "demo-7kp3.png"
    if example.is_file() and set("7kp3") <= set(charset):
        return "7kp3", example.read_bytes()
    from tests.conftest import png_bytes

    return "", png_bytes("1234", (width, height))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", default="demo")
    parser.add_argument("--registry", action="append", default=[])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--python", default="3.10", help="target Python (default 3.10, the SCF runtime)")
    parser.add_argument("--skip-tf", action="store_true", help="do not time the TensorFlow handler")
    args = parser.parse_args()
    from capserve.scf_adapter.package import find_python

    target = find_python(args.python)
    if target is None:
        raise SystemExit(f"no Python {args.python} interpreter here (PATH or pyenv's versions)")

    with tempfile.TemporaryDirectory(prefix="capserve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        site, registry, model_file, charset = pick_site(args, tmp)
        label, image = sample_image(charset)
        event = {"httpMethod": "GET", "path": f"/recognize/{site}", "headers": {},
                 "queryString": {"base64Image": base64.b64encode(image).decode()}, "body": ""}

        size = build(tmp / "package.zip", args.python, target, site, registry)
        folder = tmp / "unzipped"
        with zipfile.ZipFile(tmp / "package.zip") as archive:
            archive.extractall(folder)
        plain = tmp / "unzipped-no-bytecode"
        shutil.copytree(folder, plain, ignore=shutil.ignore_patterns("__pycache__"))

        clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp_name}
        rows = [
            measure("capserve package (bytecode shipped)", [target, "-I", "-S", "-c", PACKAGE_RUNNER, str(folder)],
                    event, clean_env, args.runs),
            measure("capserve package, no bytecode (-B)", [target, "-I", "-S", "-B", "-c", PACKAGE_RUNNER,
                                                           str(plain)], event, clean_env, args.runs),
        ]
        if not args.skip_tf:
            rows.append(measure("TensorFlow handler (tf.lite)", [sys.executable, "-c", TF_RUNNER, str(model_file),
                                                                 charset], event, clean_env, args.runs))

    try:
        import tensorflow as tf_module  # noqa: F401  (only its installed size is read)

        tf_size = folder_size(Path(tf_module.__file__).parent)
    except ImportError:
        tf_size = None

    load = os.getloadavg()
    print(f"\nSCF cold start: spawn -> first answer, site {site!r} ({model_file.name}), image {label or 'synthetic'}, "
          f"Python {args.python} package under {target}, {args.runs} runs each, {os.cpu_count()} cores, "
          f"load average {load[0]:.2f}\n")
    print(f"| handler | first run (s) | median of the rest (s) | min (s) | answer | goal <= {COLD_START_GOAL_S} s |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for row in rows:
        ok = "yes" if row["median"] <= COLD_START_GOAL_S else "no"
        print(f"| {row['name']} | {row['first']:.3f} | {row['median']:.3f} | {row['min']:.3f} | "
              f"{row['status']} {row['text']!r} | {ok if 'capserve' in row['name'] else ''} |")
    print(f"\n| package | unzipped (MB) | zipped (MB) | build (s) | goal <= {SIZE_GOAL_MB} MB |")
    print("| --- | ---: | ---: | ---: | --- |")
    ok = "yes" if size["unzipped"] / 2**20 <= SIZE_GOAL_MB else "no"
    print(f"| Python {size['python']}, bytecode | {size['unzipped'] / 2**20:.1f} | {size['zipped'] / 2**20:.1f} | "
          f"{size['build_s']:.1f} | {ok} |")
    if tf_size is not None:
        print(f"| TensorFlow package alone (installed, dev venv) | {tf_size / 2**20:.1f} | | | no |")


if __name__ == "__main__":
    main()
