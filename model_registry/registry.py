"""Find, load, version and hot-reload registry entries.

A registry is one or more folders. An entry is a folder holding ``model.yaml`` (and the
``.tflite`` file it names), one or two levels below a registry folder:
``<root>/<name>/model.yaml`` or ``<root>/<site>/<version>/model.yaml``. For each site the
highest version that loaded serves.

``refresh()`` rescans the folders and (re)loads only what changed. A changed entry replaces
the old one only after it loaded and warmed up; if it fails, the last good copy keeps serving
and the entry is reported FAILED with the error. Requests hold a reference to the ``Model``
they started with, so swapping never disturbs one in flight.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
from pathlib import Path
from typing import Iterable

from capserve.core.errors import ModelUnavailable, UnknownSite
from capserve.core.model import Model, read_model
from capserve.core.runtime import RuntimeLoadError
from capserve.core.settings import Settings, current
from capserve.core.spec import ENTRY_FILE, SITE_PATTERN, ModelSpec, SpecError, load_spec
from capserve.core.images import DEFAULT_LIMITS, ImageLimits
from capserve.model_registry import proof
from capserve.plugins import manager

log = logging.getLogger("capserve.registry")

BUNDLED = Path(__file__).parent / "bundled"
_PACKAGED = BUNDLED.resolve()

AVAILABLE, LOADING, FAILED = "AVAILABLE", "LOADING", "FAILED"
UNLOADED = "UNLOADED"  # lazy mode: the YAML is valid, the model loads on the site's first request


def default_roots(settings: Settings | None = None) -> list[Path]:
    """The settings' folders (``$CAPSERVE_REGISTRY``, ``os.pathsep``-separated), else the bundled entries."""
    return list((settings or current()).registry) or [BUNDLED]


@dataclasses.dataclass
class Entry:
    """What the registry knows of one ``model.yaml``."""

    path: Path
    signature: tuple
    state: str = LOADING
    error: str | None = None
    site: str | None = None
    version: int | None = None
    model: Model | None = None  # the last copy that loaded; serves even while state is FAILED
    shadowed_by: Path | None = None  # FAILED only because this entry serves the same site and version

    def describe(self) -> dict:
        out = {"path": str(self.path), "state": self.state, "site": self.site, "version": self.version}
        if self.error:
            out["error"] = self.error
        if self.model is not None:
            out["serving_version"] = self.model.spec.version
        return out


def _fail(entry: Entry, error: str, *, trace: bool = False) -> None:
    entry.state, entry.error = FAILED, error
    (log.exception if trace else log.error)("entry %s failed to load: %s", entry.path, error)


def _rank(entry: Entry, roots: list[Path]) -> tuple:
    """Which of several entries defining one site and version serves: the one in a folder
    ``<site>/<version>``, then ``<site>``, then any other; then the first registry folder;
    then path order."""
    spec, folder = entry.model.spec, entry.path.parent
    if (folder.parent.name, folder.name) == (spec.site, str(spec.version)):
        named = 0
    else:
        named = 1 if folder.name == spec.site else 2
    root = next((i for i, r in enumerate(roots) if entry.path.is_relative_to(r)), len(roots))
    return named, root, str(entry.path)


def _signature(yaml_path: Path) -> tuple:
    """Changes whenever the YAML or any file beside it changes (mtime and size)."""
    parts = []
    for path in sorted(yaml_path.parent.iterdir()):
        if path.is_file():
            stat = path.stat()
            parts.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(parts)


def discover(roots: Iterable[Path]) -> list[Path]:
    """Every ``model.yaml`` one or two levels below the roots, never outside them."""
    found = []
    for root in roots:
        root = root.resolve()
        if not root.is_dir():
            log.warning("registry folder %s does not exist", root)
            continue
        for pattern in (f"*/{ENTRY_FILE}", f"*/*/{ENTRY_FILE}"):
            for path in sorted(root.glob(pattern)):
                # An entry reached through a link that leads outside the registry is skipped.
                if path.resolve().is_relative_to(root) and path.is_file():
                    found.append(path)
    return found


class Registry:
    def __init__(
        self,
        roots: Iterable[Path | str] | None = None,
        *,
        limits: ImageLimits = DEFAULT_LIMITS,
        max_interpreters: int = 8,
        lazy: bool = False,
    ) -> None:
        self.roots = [Path(r) for r in roots] if roots else default_roots()
        self.lazy = lazy
        self.limits = limits
        self.max_interpreters = max_interpreters
        self._entries: dict[Path, Entry] = {}
        self._serving: dict[str, Model] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._pending_lock = threading.Lock()
        self._loader: concurrent.futures.ThreadPoolExecutor | None = None
        self.ready = False

    # -- serving ----------------------------------------------------------------------------

    def get(self, site: str, *, wait: float = 0.0) -> Model:
        """The model serving ``site``: ``UnknownSite`` if there is none, ``ModelUnavailable``
        while it loads. In lazy mode the first call for a site starts loading it in a
        background thread (``loading`` gives the future to wait on); a caller that may block
        (a thread, the CLI) can pass ``wait`` seconds to wait for it instead."""
        model = self._serving.get(site)
        if model is not None:
            return model
        if not SITE_PATTERN.match(site):
            raise UnknownSite(f"no model is registered for site {site[:64]!r}")
        entries = [e for e in list(self._entries.values()) if e.site == site]
        future = self._pending.get(site)
        if future is None and self.lazy and any(e.state in (UNLOADED, LOADING) for e in entries):
            future = self._load_later(site)  # the one under way (it may have started, not yet listed), or a new one
        if future is not None:
            if wait > 0:
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    future.result(timeout=wait)
            if not future.done():
                raise ModelUnavailable(f"the model for site {site!r} is loading")
        if site in self._serving:  # published while we looked, or by the load just done
            return self._serving[site]
        if any(e.state in (LOADING, UNLOADED) for e in list(self._entries.values()) if e.site == site):
            raise ModelUnavailable(f"the model for site {site!r} is still loading")
        raise UnknownSite(f"no model is registered for site {site!r}")

    def loading(self, site: str) -> concurrent.futures.Future | None:
        """The lazy load of ``site`` under way, if any."""
        return self._pending.get(site)

    def _load_later(self, site: str) -> concurrent.futures.Future:
        with self._pending_lock:
            future = self._pending.get(site)
            if future is None:
                if self._loader is None:
                    self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="capserve-lazy-load")
                future = self._pending[site] = self._loader.submit(self._load_site, site)
                future.add_done_callback(lambda _: self._pending.pop(site, None))
        return future

    def serving(self, site: str) -> Model | None:
        """The model serving ``site`` now, or None."""
        return self._serving.get(site)

    def sites(self) -> list[str]:
        """Sites that serve now, or (lazy mode) will on their first request."""
        unloaded = {e.site for e in list(self._entries.values()) if e.state == UNLOADED}
        return sorted(set(self._serving) | unloaded)

    def entries(self) -> list[Entry]:
        return sorted(self._entries.values(), key=lambda e: (e.site or "", -(e.version or 0), str(e.path)))

    def site_entries(self, site: str) -> list[Entry]:
        return [e for e in self.entries() if e.site == site]

    # -- loading ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan the registry folders and load what is new or changed."""
        with self._refresh_lock:
            seen = set()
            changed = []
            for path in discover(self.roots):
                seen.add(path)
                try:
                    signature = _signature(path)
                except OSError:
                    continue  # removed while we looked; the next scan settles it
                entry = self._entries.get(path)
                if entry is not None and entry.signature == signature:
                    continue
                if entry is None:
                    entry = self._entries[path] = Entry(path=path, signature=signature)
                entry.signature = signature
                # Lazy mode defers the model to the first request, unless one is already serving.
                changed.append((entry, self.lazy and entry.model is None))
            self._load(changed)
            for path in set(self._entries) - seen:
                log.info("entry %s was removed", path)
                del self._entries[path]
            self._publish()
            self.ready = True

    def _load_site(self, site: str) -> bool:
        """Lazy mode: load the site's entries now; True if the site then serves."""
        with self._refresh_lock:
            pending = [e for e in self._entries.values() if e.site == site and e.state == UNLOADED]
            self._load([(entry, False) for entry in pending])
            if pending:
                self._publish()
        return site in self._serving

    def _load(self, entries: list[tuple[Entry, bool]]) -> None:
        """Check each entry and read its model file, prove the files in one child process
        (``proof.prove``), then load the proven ones here. ``True`` beside an entry: its YAML only.
        The bundled entries are part of the installed package, as trusted as its code: not proven."""
        staged = [s for s in (self._stage(entry, spec_only) for entry, spec_only in entries) if s is not None]
        untrusted = [i for i, (entry, _, _) in enumerate(staged) if not entry.path.is_relative_to(_PACKAGED)]
        verdicts: list[str | None] = [None] * len(staged)
        for i, verdict in zip(untrusted, proof.prove([staged[i][2] for i in untrusted])):
            verdicts[i] = verdict
        for (entry, spec, content), verdict in zip(staged, verdicts):
            if verdict is not None:
                _fail(entry, f"{entry.path}: model.file: {verdict}")
                continue
            try:
                model = Model(
                    spec, manager.catalog(), content=content, limits=self.limits, max_interpreters=self.max_interpreters
                )
                model.warm_up()
            except (SpecError, RuntimeLoadError) as exc:
                _fail(entry, str(exc))
                continue
            except Exception as exc:  # a broken entry must never take the others down
                _fail(entry, f"{entry.path}: {type(exc).__name__}: {exc}", trace=True)
                continue
            entry.model, entry.state = model, AVAILABLE
            log.info("loaded %s v%s from %s", spec.site, spec.version, entry.path)

    def _stage(self, entry: Entry, spec_only: bool) -> tuple[Entry, ModelSpec, bytes] | None:
        """The entry's spec and model file, or None (FAILED, or lazy mode's UNLOADED)."""
        entry.state, entry.error, entry.shadowed_by = LOADING, None, None
        try:
            spec = load_spec(entry.path)
            entry.site, entry.version = spec.site, spec.version
            if spec_only:
                entry.state = UNLOADED
                return None
            return entry, spec, read_model(spec)
        except SpecError as exc:
            _fail(entry, str(exc))
        except Exception as exc:
            _fail(entry, f"{entry.path}: {type(exc).__name__}: {exc}", trace=True)
        return None

    def _publish(self) -> None:
        """Swap in the new site -> model map: highest loaded version per site."""
        serving: dict[str, Model] = {}
        claimed: dict[tuple[str, int], Path] = {}
        roots = [root.resolve() for root in self.roots]
        loaded = [e for e in self._entries.values() if e.model is not None]
        for entry in sorted(loaded, key=lambda e: _rank(e, roots)):
            model = entry.model
            key = (model.spec.site, model.spec.version)
            if key in claimed:
                if entry.shadowed_by != claimed[key]:
                    log.warning("entry %s: site %r version %s is served by %s", entry.path, *key, claimed[key])
                entry.state, entry.shadowed_by = FAILED, claimed[key]
                entry.error = (
                    f"{entry.path}: site {key[0]!r} version {key[1]} is also defined by {claimed[key]}, "
                    "which serves (an entry in a <site>/<version> folder wins, then the first registry folder)"
                )
                continue
            if entry.shadowed_by is not None:  # the entry it lost to is gone
                entry.state, entry.error, entry.shadowed_by = AVAILABLE, None, None
            claimed[key] = entry.path
            current = serving.get(model.spec.site)
            if current is None or model.spec.version > current.spec.version:
                serving[model.spec.site] = model
        self._serving = serving

    # -- hot reload -------------------------------------------------------------------------

    def watch(self, interval: float = 1.0) -> None:
        """Refresh every ``interval`` seconds in a background thread until ``close()``."""
        if self._watcher is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # keep watching whatever one scan ran into
                    log.exception("registry refresh failed")

        self._watcher = threading.Thread(target=loop, name="capserve-registry-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)
            self._loader = None
