"""The Starlette app: routes over the registry and the recognition core.

Recognition runs inline on the event loop: it takes well under a millisecond for captcha
models, less than a hop to a thread pool would cost. Scale with worker processes. Each
endpoint is a plain function that finds what it needs on ``request.app.state``: the
registry, the settings, the access rules and the metrics. Only an image whose decoding could
take more than a few ms goes to a small thread pool (``server/offload.py``). Every recognize
answer carries ``X-Request-ID`` (``server/request_id.py``, the app's one middleware); an
unexpected error is logged with it and answered with it, never with its text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from capserve.core.errors import CapserveError, RecognitionFailed, UnknownSite
from capserve.model_registry.registry import Registry, default_roots
from capserve.plugins import manager
from capserve.server import console, offload, request_id, restriction
from capserve.server.access import Access, refuse_status as refused
from capserve.server.errors import HTTPError
from capserve.server.metrics import Metrics
from capserve.server.openapi import openapi_schema
from capserve.server.parsing import image_bytes, read_body, wants_details, wants_keep
from capserve.server.samples import keep_sample
from capserve.server.responses import FastJSONResponse, error_response
from capserve.server.settings import Settings, current

from capserve.server.solving import secret_of, serving_model
from capserve.server import createtask, twocaptcha

log = logging.getLogger("capserve.server")


async def recognize(request: Request) -> Response:
    started = time.perf_counter()
    state = request.app.state
    access: Access = state.access
    settings: Settings = state.settings
    site = request.path_params["site"]
    rid = request_id.of(request)
    served = None
    try:
        if access.enabled:
            access.check_key(request.headers, site)
        body = await read_body(request, settings.max_body_bytes) if request.method == "POST" else b""
        if access.hmac_secret is not None:
            access.check_signature(request.headers, request.method, request.url.path, request.url.query, body)
        details = wants_details(request)
        keep = wants_keep(request)
        model = await serving_model(state.registry, site)
        served = site
        restrict = restriction.requested(request, model)
        data = await image_bytes(request, body, settings.max_body_bytes)
        result = await offload.recognize(model, data, restrict)
        preview = console.preview_uri(model.preview(data)) if details == "preview" else None
    except RecognitionFailed as exc:  # a plugin or the interpreter raised: logged, never shown
        log.error("request %s: %s", rid, exc.message, exc_info=exc.__cause__ or exc)
        response = error_response(RecognitionFailed(f"{exc.message} (request id {rid})"))
    except CapserveError as exc:
        response = error_response(exc)
    except Exception:  # never let one request take the worker down, nor show its internals
        response = error_response(request_id.failure(log, rid, "recognize"))
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
            if preview is not None:
                answer["preview"] = preview
        if keep:
            answer["sample"] = await _keep(settings, site, data, result.text, model.spec.version)
        response = FastJSONResponse(answer)
    state.metrics.observe(served, response.status_code, time.perf_counter() - started)
    return response


async def _keep(settings: Settings, site: str, data: bytes, text: str, version: int) -> str | None:
    """``keep=true``: store the sample, in a thread (past a bound it scans the folder); a failure
    to write is logged, and the answer still goes out."""
    try:
        return await asyncio.to_thread(keep_sample, settings, site, data, text, "keep", version)
    except (OSError, CapserveError):
        log.exception("could not keep a sample of site %s", site)
        return None


async def list_models(request: Request) -> Response:
    registry = request.app.state.registry
    return refused(request) or FastJSONResponse({"models": [site_status(registry, s) for s in all_sites(registry)]})


async def model_status(request: Request) -> Response:
    registry, site = request.app.state.registry, request.path_params["site"]
    if (denied := refused(request)) is not None:
        return denied
    if site not in all_sites(registry):
        return error_response(UnknownSite(f"no model is registered for site {site[:64]!r}"))
    return FastJSONResponse(site_status(registry, site))


async def list_plugins(request: Request) -> Response:
    return refused(request) or FastJSONResponse({"plugins": manager.list_plugins()})


async def prometheus(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return refused(request) or Response(metrics.render(), media_type=metrics.content_type)


async def healthz(request: Request) -> Response:
    return FastJSONResponse({"ok": True})


async def readyz(request: Request) -> Response:
    registry = request.app.state.registry
    ready = is_ready(registry)
    return FastJSONResponse({"ok": ready, "sites": registry.sites()}, status_code=200 if ready else 503)


def is_ready(registry: Registry) -> bool:
    """What ``/readyz`` reports (and a Ray Serve replica's health check): the registry has
    loaded and at least one site serves."""
    return registry.ready and bool(registry.sites())


async def openapi(request: Request) -> Response:
    return FastJSONResponse(openapi_schema())


async def http_error(request: Request, exc: HTTPException) -> Response:
    codes = {404: "not_found", 405: "method_not_allowed"}
    response = error_response(HTTPError(exc.detail, code=codes.get(exc.status_code, "http_error"), status=exc.status_code))
    response.headers.update(exc.headers or {})  # Allow, on a 405
    return response


ROUTES = [
    Route("/recognize/{site}", recognize, methods=["GET", "POST"]),
    Route("/v1/models", list_models),
    Route("/v1/models/{site}", model_status),
    Route("/v1/plugins", list_plugins),
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/metrics", prometheus),
    Route("/openapi.json", openapi),
    *console.ROUTES,
    *console.STATIC_ROUTES,
]
PROTOCOL_ROUTES = [*twocaptcha.ROUTES, *createtask.ROUTES]
"""The 2captcha and createTask protocols (docs/clients.md): defined by those services and
answered in their own forms, so kept out of the OpenAPI document. The app matches them right
after /recognize: routes are tried in order, and each miss costs a regex match per request."""


def create_app(
    registry: Registry | None = None,
    settings: Settings | None = None,
    *,
    access: Access | None = None,
    watch: bool = True,
    label: tuple[str, Path] | None = None,
    echo_request_id: bool = True,
) -> Starlette:
    """Build the app. Without ``registry`` one is made from ``settings`` and loaded at start-up;
    without ``access`` keys and signing are read from the environment (off when unset). With
    ``label`` (a site and a folder) the sample routes label that folder (``capserve label``)."""
    settings = settings or current()
    registry = registry if registry is not None else registry_from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if not registry.ready:
            registry.refresh()
        if watch:
            registry.watch(settings.watch_interval)
        yield
        registry.close()
        app.state.metrics.close()

    app = Starlette(routes=[ROUTES[0], *PROTOCOL_ROUTES, *ROUTES[1:]], exception_handlers={HTTPException: http_error},
                    middleware=[Middleware(request_id.RequestId, echo=echo_request_id)], lifespan=lifespan)
    app.state.registry = registry
    app.state.settings = settings
    app.state.access = access if access is not None else Access.from_settings(settings)
    app.state.metrics = Metrics(registry)
    app.state.label_site, app.state.label_folder = label if label is not None else (None, None)
    app.state.protocol_secret = secret_of(settings)
    return app


def registry_from_settings(settings: Settings) -> Registry:
    """The registry ``settings`` describe (folders, image limits, lazy loading), not yet loaded."""
    return Registry(default_roots(settings), limits=settings.image_limits, lazy=settings.lazy)


def all_sites(registry: Registry) -> list[str]:
    return sorted({e.site for e in registry.entries() if e.site} | set(registry.sites()))


def site_status(registry: Registry, site: str) -> dict[str, Any]:
    """TF-Serving-like status: the serving version's metadata and every version's state."""
    serving = registry.serving(site)
    versions = [{**entry.describe(), "report": console.report_files(entry.path)} for entry in registry.site_entries(site)]
    if serving is not None:
        state = "AVAILABLE"
    elif any(v["state"] in ("LOADING", "UNLOADED") for v in versions):
        state = "LOADING" if any(v["state"] == "LOADING" for v in versions) else "UNLOADED"
    else:
        state = "FAILED"
    out: dict[str, Any] = {"site": site, "state": state, "versions": versions}
    if serving is not None:
        out.update(serving.describe())
        out["state"] = state
    return out
