"""The capserve app as a Ray Serve deployment: every replica runs the very Starlette app that
``capserve serve`` runs (``capserve.server.app.create_app``), so the routes, the JSON, the
errors and ``/metrics`` are the same.

A replica builds its app from its own environment, as a ``capserve serve`` worker does: the
``CAPSERVE_*`` variables of the process that deploys (and the registry folders it was given)
travel to every replica, on every node, in the deployment's ``runtime_env``. Ray Serve runs
the app's lifespan in each replica, so each one loads the registry and watches it (hot reload)
on its own. A replica is healthy while ``/readyz`` would answer 200 (``check_health``); Ray
replaces one that is not.

Rate limits and used signatures hold across replicas only through Redis
(``CAPSERVE_REDIS_URL``): ``limits_problem`` refuses a deployment of several replicas with
rate-limited keys or signing and no Redis, whose replicas would each keep their own.

    serve run capserve.ray_serve.app:build registry=/srv/captcha-models max_replicas=4
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from capserve.core.settings import PREFIX, Settings, current
from capserve.server.access import load_keys
from capserve.server.app import create_app, is_ready

DEFAULT_TARGET_ONGOING = 2.0  # Ray Serve's own default
MAX_ONGOING = 64
"""Requests a replica holds at once. A request takes well under a millisecond of the replica's
event loop, so Serve's default of 5 left it idle while the proxy backed off (BENCHMARKS.md)."""


def replica_app():
    """One replica's app. Serve's proxy answers with the ``X-Request-ID`` it passed on (the
    client's, else its own), so the app logs by that id and does not add it a second time."""
    return create_app(echo_request_id=False)


@serve.deployment(name="capserve", max_ongoing_requests=MAX_ONGOING, health_check_period_s=2,
                  health_check_timeout_s=10, logging_config={"enable_access_log": False})
@serve.ingress(replica_app)  # a builder: each replica calls it, with its own environment
class Capserve:
    """One replica: ``create_app()`` from the replica's ``CAPSERVE_*`` environment."""

    def check_health(self) -> None:
        if not is_ready(self.app.state.registry):
            raise RuntimeError("not ready: the registry has loaded no site")

    def replica(self) -> dict[str, Any]:
        """Which replica this is, what it serves and how many recognition requests it answered
        (``handle.broadcast("replica")`` asks every replica)."""
        counted = self.app.state.metrics.requests.collect()
        runtime = ray.get_runtime_context()
        return {"replica": serve.get_replica_context().replica_id.unique_id, "actor": runtime.get_actor_name(),
                "pid": os.getpid(), "node": runtime.get_node_id(), "sites": self.app.state.registry.sites(),
                "answered": int(sum(s.value for m in counted for s in m.samples if s.name.endswith("_total")))}


@dataclasses.dataclass(frozen=True)
class Options:
    """What a deployment is given: registry folders and how many replicas."""

    registry: tuple[Path, ...] = ()
    num_replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    replica_cpus: float = 1.0

    @property
    def autoscaling(self) -> bool:
        return (self.min_replicas, self.max_replicas, self.target_ongoing_requests) != (None, None, None)

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.autoscaling else self.num_replicas or 1

    def problem(self) -> str | None:
        """Why these options cannot be deployed, in one line, or None."""
        if self.autoscaling and self.num_replicas is not None:
            return "--num-replicas and --min-replicas/--max-replicas/--target-ongoing-requests do not go together"
        if self.num_replicas is not None and self.num_replicas < 1:
            return "--num-replicas must be at least 1"
        if self.autoscaling and self.max_replicas is None:
            return "autoscaling needs --max-replicas"
        if self.max_replicas is not None and self.max_replicas < 1:
            return "--max-replicas must be at least 1"
        if self.min_replicas is not None and self.min_replicas < 0:
            return "--min-replicas must be at least 0"
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            return f"--min-replicas ({self.min_replicas}) must not be above --max-replicas ({self.max_replicas})"
        if self.target_ongoing_requests is not None and not self.target_ongoing_requests > 0:
            return "--target-ongoing-requests must be above 0"
        if not self.replica_cpus > 0:
            return "--replica-cpus must be above 0"
        missing = [str(p) for p in self.registry if not p.is_dir()]
        if missing:
            return f"--registry {missing[0]} is not a folder"
        return None

    def scaling(self) -> dict[str, Any]:
        """The deployment's options for its replica count."""
        if not self.autoscaling:
            return {"num_replicas": self.num_replicas or 1}
        return {"autoscaling_config": {
            "min_replicas": 1 if self.min_replicas is None else self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests or DEFAULT_TARGET_ONGOING,
        }}


def limits_problem(options: Options, settings: Settings) -> str | None:
    """Why the limits would not hold: several replicas, rate-limited keys or signing, no Redis
    (each replica's memory would grant its own burst and accept each signature once more)."""
    if options.most_replicas < 2 or settings.redis_url:
        return None
    limited = [key.name for key in load_keys(settings) if key.rate]  # ValueError: a bad keys file, named
    if settings.hmac_secret:
        what = "signed requests (CAPSERVE_HMAC_SECRET)"
    elif limited:
        what = f"rate-limited keys ({', '.join(limited[:3])})"
    else:
        return None
    return (f"{what} need CAPSERVE_REDIS_URL with {options.most_replicas} replicas: "
            "without Redis each replica keeps its own limits (docs/ray.md)")


def replica_env(options: Options, environ: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """The ``CAPSERVE_*`` variables every replica gets: the deploying process's, with the
    registry and the files it names as absolute paths (the same path on every node), and one
    protocol secret for all replicas so that any of them resolves another's captcha ids. The
    workers' table of ``capserve serve`` (``CAPSERVE_LIMITS_DIR``) stays behind."""
    env = {name: value for name, value in environ.items() if name.startswith(PREFIX)}
    env.pop(PREFIX + "LIMITS_DIR", None)
    registry = options.registry or settings.registry
    if registry:
        env[PREFIX + "REGISTRY"] = os.pathsep.join(str(p.resolve()) for p in registry)
    for name in ("api_keys_file", "samples_dir"):
        if getattr(settings, name) is not None:
            env[PREFIX + name.upper()] = str(getattr(settings, name).resolve())
    if not settings.protocol_secret:
        env[PREFIX + "PROTOCOL_SECRET"] = secrets.token_hex(32)
    return env


def application(options: Options) -> Application:
    """The Serve application for ``options`` and this process's settings; ValueError (one line)
    when it cannot be deployed, ``SettingsError`` for a bad ``CAPSERVE_*`` value."""
    settings = current()
    problem = options.problem() or limits_problem(options, settings)
    if problem is not None:
        raise ValueError(problem)
    deployment = Capserve.options(
        **options.scaling(),
        ray_actor_options={"num_cpus": options.replica_cpus,
                           "runtime_env": {"env_vars": replica_env(options, os.environ, settings)}},
    )
    return deployment.bind()


def build(args: dict[str, str]) -> Application:
    """The application builder of ``serve run capserve.ray_serve.app:build key=value...`` and of
    a Serve config's ``import_path``; ``args``: ``registry`` (folders separated by ``:``),
    ``num_replicas``, ``min_replicas``, ``max_replicas``, ``target_ongoing_requests``,
    ``replica_cpus``."""
    known = {field.name for field in dataclasses.fields(Options)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r}; known: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for name, value in args.items():
        text = str(value)
        number = float if name in ("target_ongoing_requests", "replica_cpus") else int
        try:
            if name == "registry":
                values[name] = tuple(Path(p) for p in text.split(os.pathsep) if p)
            else:
                values[name] = number(text)
        except ValueError:
            raise ValueError(f"{name} must be {'a number' if number is float else 'an integer'}, not {text!r}") from None
    return application(Options(**values))
