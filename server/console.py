"""The web console and the JSON routes only it needs: training reports and collected samples.

``GET /`` and ``GET /console/{name}`` serve the files of ``server/static/`` (HTML, CSS, one
script; nothing from elsewhere) under a Content-Security-Policy that allows this origin only.
These two are the only routes the OpenAPI document leaves out (``STATIC_ROUTES``); every JSON
route here is documented there. The console's script uses relative URLs, so it works under a
path prefix (an SCF trigger's) too.

The sample routes need a key valid for the site when keys are on, and collection to be on
(``CAPSERVE_SAMPLES_DIR``), or the app to be labelling one folder (``capserve label``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shlex
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from capserve.core.errors import CapserveError, UnknownSite
from capserve.model_registry.registry import Registry
from capserve.server.access import refuse_status
from capserve.server.errors import BadJSON, HTTPError
from capserve.server.parsing import image_bytes, read_body
from capserve.server.responses import FastJSONResponse, error_response
from capserve.server.samples import NAME, Folder, SampleNotFound, keep_sample, site_folder

log = logging.getLogger("capserve.console")

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
FILE_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
REPORT_DIR = "report"
REPORT_TYPES = {".png": "image/png", ".json": "application/json", ".md": "text/markdown; charset=utf-8",
                ".txt": "text/plain; charset=utf-8", ".csv": "text/csv; charset=utf-8"}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp"}


class NotFound(HTTPError):
    code, status = "not_found", 404


# -- static files -------------------------------------------------------------------------


def _static(name: str) -> Response:
    path = STATIC / name
    kind = STATIC_TYPES.get(path.suffix)
    if kind is None or not NAME.fullmatch(name) or not path.is_file():
        return error_response(NotFound(f"the console has no file {name[:64]!r}"))
    return Response(path.read_bytes(), media_type=kind, headers={**FILE_HEADERS, "cache-control": "no-cache"})


async def index(request: Request) -> Response:
    return _static("index.html")


async def static_file(request: Request) -> Response:
    return _static(request.path_params["name"])


async def console_state(request: Request) -> Response:
    """What the console needs to know first: whether to ask for a key, whether collection is on,
    and the site of a ``capserve label`` server. Open to all: it tells no secret."""
    state = request.app.state
    label_site = getattr(state, "label_site", None)
    return FastJSONResponse({
        "keys": bool(state.access.keys),
        "samples": state.settings.samples_dir is not None and label_site is None,
        "label_site": label_site,
    })


# -- training reports ---------------------------------------------------------------------


def report_files(entry_path: Path) -> list[str]:
    """The files of an entry's ``report/`` folder the console may show."""
    folder = entry_path.parent / REPORT_DIR
    if not folder.is_dir() or folder.is_symlink():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.suffix in REPORT_TYPES and NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink())


async def report_file(request: Request) -> Response:
    """One file of an entry's report folder: a plain name inside that folder, nothing else."""
    if (denied := refuse_status(request)) is not None:
        return denied
    registry: Registry = request.app.state.registry
    site, version, name = (request.path_params[k] for k in ("site", "version", "name"))
    entry = next((e for e in registry.site_entries(site) if e.version == version), None)
    if entry is None:
        return error_response(UnknownSite(f"site {site[:64]!r} has no version {version}"))
    if name not in report_files(entry.path):
        return error_response(NotFound(f"the report of {site} v{version} has no file {name[:64]!r}"))
    path = entry.path.parent / REPORT_DIR / name
    try:
        content = path.read_bytes()
    except OSError:  # removed since it was listed
        return error_response(NotFound(f"the report of {site} v{version} has no file {name[:64]!r}"))
    return Response(content, media_type=REPORT_TYPES[path.suffix],
                    headers={**FILE_HEADERS, "content-security-policy": "default-src 'none'"})


# -- samples ------------------------------------------------------------------------------


def _folder(request: Request, site: str) -> Folder:
    """The site's samples folder, the caller's key checked for the site."""
    state = request.app.state
    if state.access.keys:
        state.access.check_key(request.headers, site)
    label_site = getattr(state, "label_site", None)
    if label_site is not None:
        if site != label_site:
            raise UnknownSite(f"this server labels the folder of site {label_site!r} only")
        return Folder(state.label_folder)
    return Folder(site_folder(state.settings, site))


def train_command(registry: Registry, site: str, folder: Path) -> str:
    """The ``capserve train`` command that fine-tunes the site's model on the labelled folder."""
    argv = ["capserve", "train", "--site", site, "--data", str(folder)]
    model = registry.serving(site)
    if model is None:
        return shlex.join([*argv, "--out", "REGISTRY_DIR"])
    spec, training = model.spec, model.spec.training or {}
    root = next((r for r in registry.roots if spec.path.resolve().is_relative_to(Path(r).resolve())), None)
    argv += ["--out", str(root) if root is not None else "REGISTRY_DIR",
             "--width", str(spec.width), "--height", str(spec.height), "--channels", str(spec.channels),
             "--charset", spec.charset, "--decoder", spec.decoder]
    arch = training.get("model") if isinstance(training.get("model"), dict) else {}
    if arch.get("arch"):
        argv += ["--arch", str(arch["arch"])]
    if arch.get("filters"):
        argv += ["--filters", ",".join(str(f) for f in arch["filters"])]
    if arch.get("units"):
        argv += ["--units", str(arch["units"])]
    if arch.get("batch_norm") is False:
        argv.append("--no-batch-norm")
    return shlex.join([*argv, "--warm-start", _checkpoint_dir(training) or "CHECKPOINT_DIR"])


def _checkpoint_dir(training: dict[str, Any]) -> str | None:
    """The ``--checkpoint-dir`` of the run that made the entry, as its recorded command says."""
    try:
        words = shlex.split(str(training.get("command") or ""))
    except ValueError:
        return None
    for i, word in enumerate(words[:-1]):
        if word == "--checkpoint-dir":
            return words[i + 1]
    return None


async def list_samples(request: Request) -> Response:
    site = request.path_params["site"]
    try:
        folder = _folder(request, site)
    except CapserveError as exc:
        return error_response(exc)
    listing = await asyncio.to_thread(folder.listing)  # a file per sample: off the event loop
    listing["command"] = train_command(request.app.state.registry, site, folder.path)
    return FastJSONResponse({"ok": True, "site": site, **listing})


async def sample_image(request: Request) -> Response:
    site, name = request.path_params["site"], request.path_params["name"]
    try:
        path = _folder(request, site).image(name)
        content = path.read_bytes()
    except CapserveError as exc:
        return error_response(exc)
    except OSError:  # dropped since it was listed
        return error_response(SampleNotFound("no such sample"))
    return Response(content, media_type=IMAGE_TYPES[path.suffix.lower()],
                    headers={**FILE_HEADERS, "content-security-policy": "default-src 'none'"})


async def label_sample(request: Request) -> Response:
    site, name = request.path_params["site"], request.path_params["name"]
    try:
        folder = _folder(request, site)
        body = await read_body(request, 4096)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadJSON('send {"label": "<text>"}') from None
        label = doc.get("label") if isinstance(doc, dict) else None
        if not isinstance(label, str):
            raise BadJSON('send {"label": "<text>"}')
        await asyncio.to_thread(folder.label, name, label)  # rewrites labels.csv
    except CapserveError as exc:
        return error_response(exc)
    return FastJSONResponse({"ok": True, "name": name, "label": label.strip()})


async def report_wrong(request: Request) -> Response:
    """A client's report that the model answered ``?answer=`` wrongly for the image sent."""
    state, site = request.app.state, request.path_params["site"]
    try:
        _folder(request, site)  # checks the key and that collection is on
        if getattr(state, "label_site", None) is not None:
            raise NotFound("a labelling server does not collect samples")
        body = await read_body(request, state.settings.max_body_bytes)
        data = await image_bytes(request, body, state.settings.max_body_bytes)
        answer = request.query_params.get("answer", "")
        model = state.registry.serving(site)
        version = model.spec.version if model else None
        name = await asyncio.to_thread(keep_sample, state.settings, site, data, answer, "wrong", version)
    except CapserveError as exc:
        return error_response(exc)
    except OSError:
        log.exception("could not keep a sample of site %s", site)
        return error_response(HTTPError("the sample could not be stored", code="samples_unwritable", status=500))
    return FastJSONResponse({"ok": True, "site": site, "sample": name}, status_code=201)


def preview_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


STATIC_ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/console/{name}", static_file, methods=["GET"]),
]
ROUTES = [
    Route("/v1/console", console_state, methods=["GET"]),
    Route("/v1/models/{site}/{version:int}/report/{name}", report_file, methods=["GET"]),
    Route("/v1/samples/{site}", list_samples, methods=["GET"]),
    Route("/v1/samples/{site}", report_wrong, methods=["POST"]),
    Route("/v1/samples/{site}/{name}", sample_image, methods=["GET"]),
    Route("/v1/samples/{site}/{name}", label_sample, methods=["PUT"]),
]
