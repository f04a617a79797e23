"""The one plugin manager: built-in plugins, then those installed under the entry-point group.

Set ``CAPSERVE_TRACE_PLUGINS=1`` to print every hook call, and ``CAPSERVE_LOAD_PLUGINS=0`` to
load only the built-in plugins (third-party entry points are skipped).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from typing import Any

import pluggy

from plugins import hookspecs
from plugins.steps import Generator, Step

ENTRY_POINT_GROUP = "capserve"

BUILTIN_PLUGINS = (
    "plugins.builtin.colour",
    "plugins.builtin.frames",
    "plugins.builtin.geometry",
    "plugins.builtin.cleaning",
    "plugins.builtin.text",
    "plugins.builtin.generators",
)

pm = pluggy.PluginManager("capserve")
pm.add_hookspecs(hookspecs)

if os.environ.get("CAPSERVE_TRACE_PLUGINS", "") not in ("", "0"):
    pm.trace.root.setwriter(lambda message: print(message, end="", file=sys.stderr))
    pm.enable_tracing()

if os.environ.get("CAPSERVE_LOAD_PLUGINS", "1") != "0":
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)

for _name in BUILTIN_PLUGINS:
    _module = importlib.import_module(_name)
    if pm.get_name(_module) is None:
        pm.register(_module, _name)


_hooktrace = pm.trace.root.get("hook")


def _call(hook_name: str, plugin_name: str | None, func: Any) -> list[Any]:
    """Call one plugin's hook implementation, tracing it like pluggy does.

    Implementations are called one at a time (to know which plugin gave what), which bypasses
    pluggy's hook-call monitoring, so the trace of ``CAPSERVE_TRACE_PLUGINS`` is written here.
    """
    _hooktrace.root.indent += 1
    _hooktrace(hook_name, {"plugin": plugin_name})
    items = list(func() or ())
    _hooktrace("finish", hook_name, "-->", [item.name for item in items])
    _hooktrace.root.indent -= 1
    return items


def _collect(hook: Any, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for impl in hook.get_hookimpls():
        for item in _call(hook.name, impl.plugin_name, impl.function):
            if item.name in found:
                raise RuntimeError(
                    f"{kind} {item.name!r} is registered twice (again by plugin {impl.plugin_name!r})"
                )
            found[item.name] = item
    return found


def preprocess_steps() -> dict[str, Step]:
    """Every preprocess step of every loaded plugin, by name."""
    return _collect(pm.hook.register_preprocess_steps, "preprocess step")


def postprocess_steps() -> dict[str, Step]:
    """Every postprocess step of every loaded plugin, by name."""
    return _collect(pm.hook.register_postprocess_steps, "postprocess step")


def generators() -> dict[str, Generator]:
    """Every training-data generator of every loaded plugin, by name."""
    return _collect(pm.hook.register_generators, "generator")


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
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        origin, version = _origin(plugin)
        provided: dict[str, list[str]] = {}
        for hook, key in (
            ("register_preprocess_steps", "preprocess"),
            ("register_postprocess_steps", "postprocess"),
            ("register_generators", "generators"),
        ):
            func = getattr(plugin, hook, None)
            if func is not None:
                provided[key] = [item.name for item in _call(hook, name, func)]
        out.append({"name": name, "origin": origin, "version": version, **provided})
    return sorted(out, key=lambda p: (p["origin"] != "builtin", p["name"]))
