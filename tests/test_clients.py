"""The client packages people already use, from PyPI and unchanged, against a real ``capserve
serve`` over TLS (a test CA from trustme) with API keys on: only the host differs."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys

import pytest

from capserve.model_registry.registry import Registry
from tests.conftest import DEMO_EXAMPLE, REPO
from tests.servers import start_server

ApiException = pytest.importorskip("twocaptcha.api").ApiException  # what its API calls raise

twocaptcha = pytest.importorskip("twocaptcha")
python_anticaptcha = pytest.importorskip("python_anticaptcha")
capsolver = pytest.importorskip("capsolver")
trustme = pytest.importorskip("trustme")

KEYS = """keys:
  - name: plain
    key: key-plain
  - name: var
    key: key-var
    default_site: demo-var
"""
B64 = base64.b64encode(DEMO_EXAMPLE.read_bytes()).decode()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A test CA and a certificate for localhost; the CA file the clients trust."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.private_key_pem.write_to_path(paths["key"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(paths["cert"], append=True)
    (folder / "keys.yaml").write_text(KEYS)
    return paths, folder / "keys.yaml"


@pytest.fixture(scope="module")
def server(tls):
    paths, keys = tls
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REQUESTS_CA_BUNDLE", str(paths["ca"]))
        mp.setenv("SSL_CERT_FILE", str(paths["ca"]))
        with start_server(None, "--workers", "2", "--default-site", "demo",
                          "--ssl-certfile", str(paths["cert"]), "--ssl-keyfile", str(paths["key"]),
                          env={"CAPSERVE_API_KEYS_FILE": str(keys)}, verify=str(paths["ca"])) as base:
            yield base


@pytest.fixture(scope="module")
def demo_var_text() -> str:
    registry = Registry()
    registry.refresh()
    text = registry.get("demo-var").recognize(DEMO_EXAMPLE.read_bytes()).text
    assert text != "7kp3"  # the two bundled models read the example differently
    return text


def host(base: str) -> str:
    return base.removeprefix("https://")


def test_2captcha_python(server, demo_var_text):
    solver = twocaptcha.TwoCaptcha("key-plain", server=host(server))
    assert solver.normal(str(DEMO_EXAMPLE))["code"] == "7kp3"                 # a file: method=post
    assert solver.normal(B64)["code"] == "7kp3"                               # base64
    assert solver.normal(B64, site="demo-var")["code"] == demo_var_text        # the explicit field
    assert twocaptcha.TwoCaptcha("key-var", server=host(server)).normal(B64)["code"] == demo_var_text  # key default
    assert solver.balance() > 0
    with pytest.raises(ApiException, match="^ERROR_KEY_DOES_NOT_EXIST$"):
        twocaptcha.TwoCaptcha("wrong-key", server=host(server)).normal(B64)
    with pytest.raises(ApiException, match="^ERROR_BAD_PARAMETERS$"):
        solver.normal(B64, site="no-such-site")


def test_python_anticaptcha(server, demo_var_text):
    from python_anticaptcha import AnticaptchaClient, AnticaptchaException, ImageToTextTask

    class SiteTask(ImageToTextTask):
        def serialize(self, **result):
            return super().serialize(site=self.site, **result)

    client = AnticaptchaClient("key-plain", host=host(server))
    job = client.createTask(ImageToTextTask(str(DEMO_EXAMPLE)))
    job.join()
    assert job.get_captcha_text() == "7kp3"
    assert job.report_incorrect_image()
    var = AnticaptchaClient("key-var", host=host(server)).createTask(ImageToTextTask(DEMO_EXAMPLE.read_bytes()))
    var.join()
    assert var.get_captcha_text() == demo_var_text
    missing = SiteTask(str(DEMO_EXAMPLE))
    missing.site = "no-such-site"
    with pytest.raises(AnticaptchaException) as error:
        client.createTask(missing)
    assert error.value.error_code == "ERROR_TASK_NOT_SUPPORTED"
    with pytest.raises(AnticaptchaException) as error:
        AnticaptchaClient("wrong-key", host=host(server)).createTask(ImageToTextTask(str(DEMO_EXAMPLE)))
    assert error.value.error_code == "ERROR_KEY_DOES_NOT_EXIST"


def test_capsolver(server, monkeypatch, demo_var_text):
    monkeypatch.setattr(capsolver, "api_base", server)
    monkeypatch.setattr(capsolver, "api_key", "key-plain")
    assert capsolver.solve({"type": "ImageToTextTask", "body": B64})["text"] == "7kp3"
    assert capsolver.solve({"type": "ImageToTextTask", "body": B64, "site": "demo-var"})["text"] == demo_var_text
    with pytest.raises(capsolver.error.CapsolverError) as error:
        capsolver.solve({"type": "ImageToTextTask", "body": B64, "site": "no-such-site"})
    assert error.value.json_body["errorCode"] == "ERROR_TASK_NOT_SUPPORTED"
    monkeypatch.setattr(capsolver, "api_key", "wrong-key")
    with pytest.raises(capsolver.error.CapsolverError) as error:
        capsolver.solve({"type": "ImageToTextTask", "body": B64})
    assert error.value.json_body["errorCode"] == "ERROR_KEY_DOES_NOT_EXIST"


@pytest.mark.slow
def test_200_submit_then_poll_pairs_over_two_workers(server):
    """Each pair is an in.php and a res.php on new connections, which the two workers share: an
    id from one worker resolves on the other."""
    solver = twocaptcha.TwoCaptcha("key-plain", server=host(server), pollingInterval=1)
    answers = [solver.normal(B64)["code"] for _ in range(200)]
    assert answers == ["7kp3"] * 200


CLIENTS_DOC = (REPO / "docs" / "clients.md").read_text()


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", CLIENTS_DOC, re.S)


def as_here(text: str, base: str) -> str:
    return text.replace("capserve.lan:8443", host(base)).replace("my-key", "key-plain").replace(
        "captcha.png", str(DEMO_EXAMPLE))


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("curl") is None, reason="needs openssl and curl")
def test_the_docs_certificate_commands_and_snippets_work(tmp_path, tls):
    """docs/clients.md: its openssl commands make a certificate the clients trust, and each
    Python snippet and the curl pair answer the demo example's text."""
    make_certificates = next(block for block in doc_blocks("sh") if "openssl req -x509" in block)
    subprocess.run(["bash", "-euc", make_certificates], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    ca = str(tmp_path / "ca.pem")
    env = {**os.environ, "REQUESTS_CA_BUNDLE": ca}
    with start_server(None, "--default-site", "demo", "--ssl-certfile", str(tmp_path / "server.pem"),
                      "--ssl-keyfile", str(tmp_path / "server.key"), env={"CAPSERVE_API_KEYS_FILE": str(tls[1])},
                      verify=ca) as base:
        snippets = doc_blocks("python")
        assert len(snippets) == 3
        for snippet in snippets:
            run = subprocess.run([sys.executable, "-c", as_here(snippet, base)], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
            assert run.stdout.split() and set(run.stdout.split()) == {"7kp3"}, snippet
        submit, poll = [line for block in doc_blocks("sh") for line in block.splitlines() if line.startswith("curl")]
        submitted = subprocess.run(["bash", "-c", as_here(submit, base)], cwd=tmp_path, capture_output=True,
                                   text=True, timeout=60, check=True).stdout
        assert submitted.startswith("OK|")
        polled = subprocess.run(["bash", "-c", as_here(poll, base).replace("<id>", submitted[3:])], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, check=True).stdout
        assert polled == "OK|7kp3"


@pytest.mark.parametrize("files", [("nope.pem", "nope.pem"), ("cert", None), ("cert", "cert")],
                         ids=["missing", "no-key", "not-a-key"])
def test_a_certificate_that_cannot_serve_stops_the_server_at_once(tls, files):
    paths, _ = tls
    argv = []
    for flag, name in zip(("--ssl-certfile", "--ssl-keyfile"), files):
        if name is not None:
            argv += [flag, str(paths.get(name, name))]
    run = subprocess.run([sys.executable, "-m", "capserve.server.cli", "serve", "--port", "0", *argv],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 3
    assert run.stderr.startswith("capserve: cannot start: ") and "Traceback" not in run.stderr
