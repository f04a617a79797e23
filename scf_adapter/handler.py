"""Tencent SCF event-function entry point: ``main_handler(event, context)``.

Every API Gateway, function URL (Tencent or AWS API Gateway v1/v2) event becomes one ASGI
call of the same Starlette app that ``capserve serve`` runs, so the statuses, JSON and
errors are the HTTP server's. The registry and its models load once per container, when
this module is imported (SCF imports the handler module before the first invocation), not
per invocation.

Environment:
``CAPSERVE_REGISTRY``
    registry folders (``os.pathsep``-separated); default: the entries bundled in the package.
``CAPSERVE_BASE_PATH``
    a path prefix the trigger adds, stripped before routing (see ``capserve.scf_adapter.events``).
``CAPSERVE_SCF_REFRESH_INTERVAL``
    seconds; when set, an invocation rescans the registry if the last scan is older (for a
    registry on a mounted file system, CFS). Default 0: load once per container.
Plus every ``capserve serve`` setting (``CAPSERVE_MAX_BODY_BYTES``, API keys...);
``CAPSERVE_LAZY=1`` defers each model to its site's first request (many sites, one function).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from capserve.scf_adapter import adapter
from capserve.server.app import create_app, registry_from_settings
from capserve.server.settings import current

log = logging.getLogger("capserve.scf")

settings = current()
registry = registry_from_settings(settings)
registry.refresh()
app = create_app(registry, settings, watch=False)

_refresh_interval = settings.scf_refresh_interval
_last_refresh = time.monotonic()


def _maybe_refresh() -> None:
    global _last_refresh
    if _refresh_interval > 0 and time.monotonic() - _last_refresh >= _refresh_interval:
        _last_refresh = time.monotonic()
        try:
            registry.refresh()
        except Exception:  # the models already loaded keep serving
            log.exception("registry refresh failed")


def main_handler(event: Any, context: Any = None) -> dict:
    """Answer one SCF invocation in the API Gateway integrated-response format."""
    _maybe_refresh()
    return adapter.handle(app, event)
