"""``capserve ray serve`` and the application builder without a cluster: bad options stop the
command with one line and exit code 2, limits that could not hold across replicas are refused,
what every replica's environment gets, and docs/ray.md's commands and example config build the
app as written. The deployment itself runs on a real cluster in tests/test_ray_serve.py."""

from __future__ import annotations

import importlib
import re
import shlex
import sys

import pytest
import yaml

pytest.importorskip("ray")
from ray.serve import Application  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from capserve.core.settings import Settings  # noqa: E402
from capserve.ray_serve.app import Options, build, replica_env  # noqa: E402
from capserve.server.cli import build_parser, main  # noqa: E402
from tests.conftest import REPO  # noqa: E402

DOC = (REPO / "docs" / "ray.md").read_text()
BUNDLED = REPO / "model_registry" / "bundled"


@pytest.fixture(autouse=True)
def no_settings(monkeypatch):
    for name in ("CAPSERVE_HMAC_SECRET", "CAPSERVE_API_KEYS", "CAPSERVE_API_KEYS_FILE", "CAPSERVE_REDIS_URL",
                 "CAPSERVE_REGISTRY", "CAPSERVE_PROTOCOL_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("flags", "message"), [
    (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas (3) must not be above --max-replicas (2)"),
    (["--num-replicas", "2", "--max-replicas", "4"], "--num-replicas and --min-replicas/--max-replicas/"),
    (["--num-replicas", "0"], "--num-replicas must be at least 1"),
    (["--min-replicas", "2"], "autoscaling needs --max-replicas"),
    (["--max-replicas", "2", "--target-ongoing-requests", "0"], "--target-ongoing-requests must be above 0"),
    (["--replica-cpus", "0"], "--replica-cpus must be above 0"),
    (["--registry", "/no/such/folder"], "--registry /no/such/folder is not a folder"),
])
def test_bad_options_stop_with_one_line_and_exit_2(flags, message, capsys):
    assert main(["ray", "serve", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("capserve ray serve: ") and message in err and err.count("\n") == 1, err


def test_several_replicas_with_signing_or_rate_limits_need_redis(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CAPSERVE_HMAC_SECRET", "s")
    assert main(["ray", "serve", "--num-replicas", "2"]) == 2
    assert "signed requests (CAPSERVE_HMAC_SECRET) need CAPSERVE_REDIS_URL with 2 replicas" in capsys.readouterr().err
    monkeypatch.delenv("CAPSERVE_HMAC_SECRET")
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {name: bot, key: k, rate: 2}\n")
    monkeypatch.setenv("CAPSERVE_API_KEYS_FILE", str(keys))
    with pytest.raises(ValueError, match=r"rate-limited keys \(bot\) need CAPSERVE_REDIS_URL with 8 replicas"):
        build({"max_replicas": "8"})
    assert isinstance(build({"num_replicas": "1"}), Application)  # one replica: its memory is the whole store
    monkeypatch.setenv("CAPSERVE_REDIS_URL", "redis://10.0.0.5:6379/1")
    assert isinstance(build({"max_replicas": "8"}), Application)


def test_every_replica_gets_the_settings_with_absolute_paths_and_one_protocol_secret(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reg").mkdir()
    (tmp_path / "keys.yaml").write_text("keys: []\n")
    environ = {"CAPSERVE_API_KEYS_FILE": "keys.yaml", "CAPSERVE_LAZY": "1", "CAPSERVE_LIMITS_DIR": "/tmp/x",
               "HOME": "/root"}
    settings = Settings(api_keys_file="keys.yaml", lazy=True)
    env = replica_env(Options(registry=(tmp_path / "reg",)), environ, settings)
    assert env.pop("CAPSERVE_PROTOCOL_SECRET") and len(env) == 3
    assert env == {"CAPSERVE_API_KEYS_FILE": str(tmp_path / "keys.yaml"), "CAPSERVE_LAZY": "1",
                   "CAPSERVE_REGISTRY": str(tmp_path / "reg")}
    kept = replica_env(Options(), {"CAPSERVE_PROTOCOL_SECRET": "abc"}, Settings(protocol_secret="abc"))
    assert kept == {"CAPSERVE_PROTOCOL_SECRET": "abc"}


def test_replica_counts_become_serve_options():
    assert Options().scaling() == {"num_replicas": 1}
    assert Options(num_replicas=3).scaling() == {"num_replicas": 3}
    assert Options(max_replicas=4).scaling() == {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.0}}
    assert Options(min_replicas=2, max_replicas=8, target_ongoing_requests=4).most_replicas == 8


def test_the_builder_names_a_bad_argument():
    with pytest.raises(ValueError, match="unknown argument 'replicas'"):
        build({"replicas": "2"})
    with pytest.raises(ValueError, match="max_replicas must be an integer, not 'many'"):
        build({"max_replicas": "many"})


def test_the_docs_serve_run_command_and_example_config_build_the_app():
    (command,) = [line for line in DOC.splitlines() if line.startswith("serve run capserve.")]
    target, *pairs = shlex.split(command)[2:]
    args = dict(pair.split("=", 1) for pair in pairs)
    assert set(args) == {"registry", "num_replicas"}
    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "examples" / "ray" / "serve.yaml").read_text()))
    (app,) = config.applications
    assert app.import_path == target == "capserve.ray_serve.app:build"
    module, name = target.split(":")
    builder = getattr(importlib.import_module(module), name)
    for given in (args, app.args):  # the registry as it would be mounted on every node
        assert isinstance(builder({**given, "registry": str(BUNDLED)}), Application)


def test_every_flag_of_ray_serve_is_in_the_docs_table():
    ray_parser = build_parser()._subparsers._group_actions[0].choices["ray"]
    serve = ray_parser._subparsers._group_actions[0].choices["serve"]
    flags = {opt for action in serve._actions for opt in action.option_strings if opt.startswith("--") and opt != "--help"}
    table = DOC.split("| flag | default | what |", 1)[1].split("\n\n", 1)[0]
    assert flags == set(re.findall(r"`(--[a-z-]+)", table))


def test_without_ray_the_command_says_which_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    assert main(["ray", "serve"]) == 2
    assert capsys.readouterr().err == "capserve ray serve: needs Ray Serve (ray is missing): pip install 'capserve[ray]'\n"
