"""The one plugin manager: built-in plugins, then those installed under the entry-point group.

Set ``CAPSERVE_TRACE_PLUGINS=1`` to print every hook call, and ``CAPSERVE_LOAD_PLUGINS=0`` to
load only the built-in plugins (third-party entry points are skipped).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from typing import Any

import pluggy

from capserve.core import chain, settings
from capserve.core.chain import InputShape, Postprocessor, Preprocessor
from capserve.core.steps import Catalog
from capserve.plugins import hookspecs

ENTRY_POINT_GROUP = "capserve"

BUILTIN_PLUGINS = (
    "capserve.plugins.builtin.colour",
    "capserve.plugins.builtin.frames",
    "capserve.plugins.builtin.geometry",
    "capserve.plugins.builtin.cleaning",
    "capserve.plugins.builtin.text",
    "capserve.plugins.builtin.generators",
    "capserve.plugins.builtin.mixture",
)

pm = pluggy.PluginManager("capserve")
pm.add_hookspecs(hookspecs)

_settings = settings.current()
if _settings.trace_plugins:
    pm.trace.root.setwriter(lambda message: print(message, end="", file=sys.stderr))
    pm.enable_tracing()

if _settings.load_plugins:
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)

for _name in BUILTIN_PLUGINS:
    _module = importlib.import_module(_name)
    if pm.get_name(_module) is None:
        pm.register(_module, _name)


HOOKS = {
    "register_preprocess_steps": "preprocess",
    "register_postprocess_steps": "postprocess",
    "register_generators": "generators",
}

_cache: tuple[frozenset[int], Catalog, dict[str, dict[str, list[str]]]] | None = None


def _build() -> tuple[frozenset[int], Catalog, dict[str, dict[str, list[str]]]]:
    """Call every registration hook through pluggy, one plugin at a time (a subset caller), so
    that each step is known with the plugin that gave it and a name given twice is refused."""
    plugins = pm.get_plugins()
    found: dict[str, dict[str, Any]] = {kind: {} for kind in HOOKS.values()}
    provided: dict[str, dict[str, list[str]]] = {}
    for plugin in plugins:
        name = pm.get_name(plugin)
        provided[name] = {}
        others = [p for p in plugins if p is not plugin]
        implemented = {caller.name for caller in pm.get_hookcallers(plugin) or ()}
        for hook, kind in HOOKS.items():
            if hook not in implemented:
                continue
            items = [item for result in pm.subset_hook_caller(hook, remove_plugins=others)() for item in result or ()]
            for item in items:
                if item.name in found[kind]:
                    raise RuntimeError(f"{kind} {item.name!r} is registered twice (again by plugin {name!r})")
                found[kind][item.name] = item
            provided[name][kind] = [item.name for item in items]
    return frozenset(map(id, plugins)), Catalog(**found), provided


def _current() -> tuple[frozenset[int], Catalog, dict[str, dict[str, list[str]]]]:
    global _cache
    if _cache is None or _cache[0] != frozenset(map(id, pm.get_plugins())):
        _cache = _build()
    return _cache


def catalog() -> Catalog:
    """Every step and generator of the loaded plugins; built once, again only when a plugin
    is registered or unregistered."""
    return _current()[1]


def compile_preprocess(items: Any, shape: InputShape) -> Preprocessor:
    """``core.chain.compile_preprocess`` with the loaded plugins' steps."""
    return chain.compile_preprocess(items, shape, catalog().preprocess)


def compile_postprocess(items: Any) -> Postprocessor:
    """``core.chain.compile_postprocess`` with the loaded plugins' steps."""
    return chain.compile_postprocess(items, catalog().postprocess)


def _origin(plugin: Any) -> tuple[str, str | None]:
    for loaded, dist in pm.list_plugin_distinfo():
        if loaded is plugin:
            return dist.project_name, dist.version
    return "builtin", _own_version()


def _own_version() -> str | None:
    try:
        return importlib.metadata.version("capserve")
    except importlib.metadata.PackageNotFoundError:
        return None


def list_plugins() -> list[dict[str, Any]]:
    """One description per loaded plugin: its name, origin, version and what it provides."""
    provided = _current()[2]
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        origin, version = _origin(plugin)
        out.append({"name": name, "origin": origin, "version": version, **provided.get(name, {})})
    return sorted(out, key=lambda p: (p["origin"] != "builtin", p["name"]))
