"""The Starlette app: routes over the registry and the recognition core.

Recognition runs inline on the event loop: it takes well under a millisecond for captcha
models, less than a hop to a thread pool would cost. Scale with worker processes. Only an
image whose decoding could take more than a few ms goes to a small thread pool
(``server/offload.py``). Every recognize answer carries ``X-Request-ID``; an unexpected error is
logged with it and answered with it, never with its text.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from capserve.core.errors import CapserveError, RecognitionFailed, UnknownSite
from capserve.model_registry.registry import Registry
from capserve.plugins import manager
from capserve.server.metrics import Metrics
from capserve.server.openapi import openapi_schema
from capserve.server.access import Access
from capserve.server import offload, request_id
from capserve.server.errors import HTTPError
from capserve.server.parsing import image_bytes, read_body, wants_details
from capserve.server.responses import FastJSONResponse, error_response
from capserve.server.settings import Settings

log = logging.getLogger("capserve.server")


def create_app(
    registry: Registry | None = None,
    settings: Settings | None = None,
    *,
    access: Access | None = None,
    watch: bool = True,
) -> Starlette:
    """Build the app. Without ``registry`` one is made from ``settings`` and loaded at start-up;
    without ``access`` keys and signing are read from the environment (off when unset)."""
    settings = settings or Settings()
    access = access if access is not None else Access.from_env()
    if registry is None:
        registry = registry_from_settings(settings)
    metrics = Metrics(registry)

    async def recognize(request: Request) -> Response:
        started = time.perf_counter()
        site = request.path_params["site"]
        rid = request_id.request_id(request.headers)
        served = None
        try:
            if access.enabled:
                access.check_key(request.headers, site)
            body = await read_body(request, settings.max_body_bytes) if request.method == "POST" else b""
            if access.hmac_secret is not None:
                access.check_signature(
                    request.headers, request.method, request.url.path, request.url.query, body
                )
            details = wants_details(request)
            model = registry.get(site)
            served = site
            data = await image_bytes(request, body, settings.max_body_bytes)
            result = await offload.recognize(model, data)
        except RecognitionFailed as exc:  # a plugin or the interpreter raised: logged, never shown
            log.error("request %s: %s", rid, exc.message, exc_info=exc.__cause__ or exc)
            response = error_response(RecognitionFailed(f"{exc.message} (request id {rid})"))
        except CapserveError as exc:
            response = error_response(exc)
        except Exception:  # never let one request take the worker down, nor show its internals
            log.exception("request %s failed", rid)
            response = error_response(CapserveError(f"internal error (request id {rid})"))
        else:
            answer = {
                "ok": True,
                "site": site,
                "version": model.spec.version,
                "text": result.text,
                "confidence": round(result.confidence, 4),
                "elapsed_ms": round((time.perf_counter() - started) * 1e3, 3),
            }
            if details:
                answer.update(result.details())
            response = FastJSONResponse(answer)
        metrics.observe(served, response.status_code, time.perf_counter() - started)
        response.headers[request_id.HEADER] = rid
        return response

    def protected(handler):
        """Status endpoints need a key when keys are on (unless CAPSERVE_PUBLIC_STATUS=1)."""

        async def guarded(request: Request) -> Response:
            if access.keys and access.protect_status:
                try:
                    access.check_key(request.headers, None)
                except CapserveError as exc:
                    return error_response(exc)
            return await handler(request)

        return guarded

    async def list_models(request: Request) -> Response:
        return FastJSONResponse({"models": [_site_status(registry, site) for site in _all_sites(registry)]})

    async def model_status(request: Request) -> Response:
        site = request.path_params["site"]
        if site not in _all_sites(registry):
            return error_response(UnknownSite(f"no model is registered for site {site[:64]!r}"))
        return FastJSONResponse(_site_status(registry, site))

    async def list_plugins(request: Request) -> Response:
        return FastJSONResponse({"plugins": manager.list_plugins()})

    async def healthz(request: Request) -> Response:
        return FastJSONResponse({"ok": True})

    async def readyz(request: Request) -> Response:
        ready = registry.ready and bool(registry.sites())
        return FastJSONResponse({"ok": ready, "sites": registry.sites()}, status_code=200 if ready else 503)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def openapi(request: Request) -> Response:
        return FastJSONResponse(openapi_schema())

    async def http_error(request: Request, exc: HTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        error = HTTPError(exc.detail, code=codes.get(exc.status_code, "http_error"), status=exc.status_code)
        return error_response(error)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if not registry.ready:
            registry.refresh()
        if watch:
            registry.watch(settings.watch_interval)
        yield
        registry.close()
        metrics.close()

    app = Starlette(
        routes=[
            Route("/recognize/{site}", recognize, methods=["GET", "POST"]),
            Route("/v1/models", protected(list_models)),
            Route("/v1/models/{site}", protected(model_status)),
            Route("/v1/plugins", protected(list_plugins)),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", protected(prometheus)),
            Route("/openapi.json", openapi),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.settings = settings
    return app


def registry_from_settings(settings: Settings) -> Registry:
    """The registry ``settings`` describe (folders, image limits, lazy loading), not yet loaded."""
    return Registry(settings.registry or None, limits=settings.image_limits, lazy=settings.lazy)


def _all_sites(registry: Registry) -> list[str]:
    return sorted({e.site for e in registry.entries() if e.site} | set(registry.sites()))


def _site_status(registry: Registry, site: str) -> dict[str, Any]:
    """TF-Serving-like status: the serving version's metadata and every version's state."""
    try:
        serving = registry.get(site)
    except CapserveError:
        serving = None
    versions = [entry.describe() for entry in registry.site_entries(site)]
    if serving is not None:
        state = "AVAILABLE"
    else:
        state = "LOADING" if any(v["state"] == "LOADING" for v in versions) else "FAILED"
    out: dict[str, Any] = {"site": site, "state": state, "versions": versions}
    if serving is not None:
        out.update(serving.describe())
        out["state"] = state
    return out
