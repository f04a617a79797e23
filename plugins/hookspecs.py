"""The hooks a capserve plugin can implement.

A plugin is a module (or any object) with functions decorated by ``hookimpl``. Built-in
plugins under ``plugins/builtin/`` are registered exactly like third-party ones, which are
found through the ``capserve`` entry-point group (see docs/plugins.md).

Every hook here is a *registration* hook: it is called once, when the plugin manager is
built, and returns descriptions of the things the plugin provides. Nothing is called through
pluggy on the request path; the chains a registry entry names are compiled once into plain
function calls, so a plugin costs nothing per request beyond its own work.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("capserve")
hookimpl = pluggy.HookimplMarker("capserve")


@hookspec
def register_preprocess_steps():
    """Return a list of ``core.steps.Step`` objects for preprocess chains.

    A preprocess step's function is called as ``func(image, **params)`` where ``image`` is a
    numpy array of shape ``(H, W, C)`` (uint8 or float32; ``C`` is 1, 3 or 4) and returns an
    array of the same convention. A step created with ``frames=True`` must come first in a
    chain and receives every frame of an animated image as ``(F, H, W, C)``; it returns one
    ``(H, W, C)`` image. A step created with ``uses_input=True`` also receives the model's input
    size as ``input_width``, ``input_height`` and ``input_channels`` keyword arguments.
    """


@hookspec
def register_postprocess_steps():
    """Return a list of ``core.steps.Step`` objects for postprocess chains.

    A postprocess step's function is called as ``func(text, confidences, **params)`` where
    ``text`` is the decoded string and ``confidences`` a tuple of per-character probabilities
    of the decoded text (before any postprocessing). It returns the new text.
    """


@hookspec
def register_generators():
    """Return a list of ``core.steps.Generator`` objects for synthetic training data.

    A generator's function is called as ``func(rng, **params)`` with a ``random.Random`` and
    returns ``(image, label)``: a ``PIL.Image.Image`` and the text drawn in it. The training
    CLI names a generator with ``--generator NAME[:key=value,...]``.
    """
