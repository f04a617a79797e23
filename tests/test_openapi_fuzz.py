"""Schemathesis drives the app from its own OpenAPI schema: no request may cause a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from capserve.model_registry.registry import Registry  # noqa: E402
from capserve.server.app import create_app  # noqa: E402
from capserve.server.settings import Settings  # noqa: E402


def _app(tmp_path_factory):
    from tests import model_factory

    root = tmp_path_factory.mktemp("fuzz-registry")
    model_factory.write_entry(root / "tiny" / "1", model_factory.tiny_tflite())
    registry = Registry([root])
    registry.refresh()
    return create_app(registry, Settings(max_body_bytes=64 * 1024), watch=False)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return _app(tmp_path_factory)


def test_no_server_errors(app):
    # Driven by hand rather than through schemathesis' pytest plugin, which lags pytest releases.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(checks=[not_a_server_error])

        check()
