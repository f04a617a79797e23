"""The OpenAPI document cannot drift from the app: every route is in it and nothing else, and
schemathesis sends generated requests to the app (keys off, and keys on with and without a
key) and checks every real answer against the document: no 5xx, and the status, content type,
headers and body each as documented."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

schemathesis = pytest.importorskip("schemathesis")

from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from capserve.model_registry.registry import Registry  # noqa: E402
from capserve.server.access import Access, ApiKey, digest  # noqa: E402
from capserve.server.app import PROTOCOL_ROUTES, ROUTES, create_app  # noqa: E402
from capserve.server.console import STATIC_ROUTES  # noqa: E402
from capserve.server.openapi import openapi_schema  # noqa: E402
from capserve.server.settings import Settings  # noqa: E402
from tests import model_factory  # noqa: E402

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
KEY = "openapi-test-key"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi-registry")
    model_factory.write_entry(root / "tiny" / "1", model_factory.tiny_tflite())
    model_factory.write_entry(root / "broken" / "1", b"not a model", site="broken")
    registry = Registry([root])
    registry.refresh()
    return registry


def test_every_route_is_documented_and_nothing_else():
    """Every route but the console's static files (``console.STATIC_ROUTES``, HTML, CSS and
    script for a browser, no API) and the client protocols' routes (``PROTOCOL_ROUTES``: 2captcha,
    createTask, defined by those services, docs/clients.md) is in the document, and the document
    has nothing else."""
    documented = {(path, method.upper()) for path, item in openapi_schema()["paths"].items() for method in item}
    static = set(map(id, STATIC_ROUTES))
    served = {(re.sub(r":\w+}", "}", r.path), m) for r in ROUTES if isinstance(r, Route) and id(r) not in static
              for m in r.methods if m != "HEAD"}
    assert documented == served
    assert not documented & {(r.path, "GET") for r in STATIC_ROUTES}
    assert not {r.path for r in PROTOCOL_ROUTES} & {path for path, _ in documented}


def test_the_static_routes_serve_only_console_files(registry):
    from starlette.testclient import TestClient

    app = create_app(registry, Settings(), access=Access(), watch=False)
    with TestClient(app) as client:
        for path in ("/", "/console/console.js", "/console/console.css"):
            answer = client.get(path)
            assert answer.status_code == 200 and "json" not in answer.headers["content-type"]
            assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert client.get("/console/index.py").json()["error"]["code"] == "not_found"
        assert client.post("/").status_code == 405


SITES = ("tiny", "broken", None)  # a served site, a FAILED one, and whatever is generated


def _run(app, headers: dict[str, str] | None = None, examples: int = 25) -> set[str]:
    """Valid and invalid requests (schemathesis' positive and negative data) to every operation,
    the site path parameter also set to sites of the registry; returns the operations' labels."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        takes_input = bool(operation.definition.raw.get("parameters")) or "requestBody" in operation.definition.raw
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,):

            @given(case=operation.as_strategy(generation_mode=mode), site=st.sampled_from(SITES))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case, site):
                if site and case.path_parameters and "site" in case.path_parameters:
                    case.path_parameters["site"] = site
                case.call_and_validate(headers=headers, checks=CHECKS)

            check()
    return {operation.label for operation in operations}


def test_answers_conform_with_keys_off(registry, tmp_path):
    # Driven by hand rather than through schemathesis' pytest plugin, which lags pytest releases.
    app = create_app(registry, Settings(max_body_bytes=64 * 1024, samples_dir=tmp_path), access=Access(), watch=False)
    documented = {f"{m.upper()} {p}" for p, item in openapi_schema()["paths"].items() for m in item}
    assert _run(app) == documented - {"GET /openapi.json"}  # schemathesis leaves out the schema itself


@pytest.mark.parametrize("headers", [None, {"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}],
                         ids=["no-key", "api-key", "bearer"])
def test_answers_conform_with_keys_on(registry, headers):
    access = Access([ApiKey("openapi", digest(KEY), sites=frozenset({"tiny"}), rate=1000)])
    app = create_app(registry, Settings(max_body_bytes=64 * 1024), access=access, watch=False)
    assert "GET /v1/models" in _run(app, headers, examples=10)


def test_the_checks_see_a_status_the_document_lacks(monkeypatch, tmp_path):
    """The conformance checks used above fail on an answer the document does not describe."""
    import copy

    from schemathesis.core.failures import FailureGroup
    from schemathesis.openapi.checks import UndefinedStatusCode

    from capserve.server import app as app_module

    lacking = copy.deepcopy(openapi_schema())
    del lacking["paths"]["/readyz"]["get"]["responses"]["503"]  # an empty registry is not ready: 503
    monkeypatch.setattr(app_module, "openapi_schema", lambda: lacking)
    app = create_app(Registry([tmp_path]), Settings(), access=Access(), watch=False)
    operation = schemathesis.openapi.from_asgi("/openapi.json", app)["/readyz"]["GET"]
    with pytest.raises(FailureGroup) as failed:
        operation.Case().call_and_validate(checks=[status_code_conformance])
    assert any(isinstance(e, UndefinedStatusCode) for e in failed.value.exceptions)
