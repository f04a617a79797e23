"""The README's promises: the curl examples answer as shown, and serving never needs TensorFlow."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.conftest import REPO
from tests.servers import start_server

README = (REPO / "README.md").read_text()


def readme_curl_commands() -> list[tuple[str, str | None]]:
    """Each curl command with the text its answer shows on the next line (None if none)."""
    section = README.split("## Reading a captcha", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        lines = block.replace("\\\n", " ").splitlines()
        for command, after in zip(lines, [*lines[1:], ""]):
            if command.strip().startswith("curl"):
                shown = re.search(r'"text":"([^"]*)"', after) if after.startswith("#") else None
                commands.append((command.strip(), shown[1] if shown else None))
    return commands


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("base64") is None, reason="needs curl and base64")
def test_readme_curl_examples_answer_as_documented():
    commands = readme_curl_commands()
    assert len(commands) >= 5
    with start_server(registry=None) as base:
        for command, shown in commands:
            out = subprocess.run(
                ["bash", "-c", command.replace("http://127.0.0.1:8000", base)],
                cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
            ).stdout
            answer = json.loads(out)
            if "/recognize/nowhere" in command:
                assert answer["ok"] is False and answer["error"]["code"] == "unknown_site", (command, answer)
            else:  # a bundled site: demo, or general
                assert answer["ok"] is True and answer["text"] == (shown or "7kp3"), (command, answer)


def test_serving_dependencies_leave_tensorflow_out():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if re.match(r"(tensorflow|keras)", d)]
    code = (
        "import sys, base64; from starlette.testclient import TestClient;"
        "from capserve.server.app import create_app; import scf_adapter.handler;"
        "c = TestClient(create_app(watch=False)).__enter__();"
        "img = base64.b64encode(open('docs/examples/demo-7kp3.png','rb').read()).decode();"
        "r = c.get('/recognize/demo', params={'base64Image': img}); assert r.status_code == 200, r.text;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'training')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
