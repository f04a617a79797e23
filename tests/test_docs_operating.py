"""docs/operating.md stays true: every setting the code reads, every flag of ``capserve serve``
and every metric ``/metrics`` serves is documented, and the page documents nothing else."""

from __future__ import annotations

import re

import pytest

from prometheus_client.parser import text_string_to_metric_families

from capserve.core.settings import Settings, SettingsError, markdown_table
from capserve.model_registry.registry import Registry
from capserve.server.cli import build_parser
from capserve.server.metrics import Metrics
from tests.conftest import REPO

DOC = (REPO / "docs" / "operating.md").read_text()
PACKAGES = ("core", "server", "model_registry", "plugins", "scf_adapter", "ray_serve", "training")


def _section(title: str) -> str:
    return DOC.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _settings_in_code() -> set[str]:
    names: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*"):
            if path.is_file() and (path.suffix == ".py" or path.parent.name == "templates"):
                names |= set(re.findall(r"\bCAPSERVE_[A-Z_]+[A-Z]\b", path.read_text(errors="replace")))
    return names


FIELDS = {"CAPSERVE_" + name.upper() for name in Settings.model_fields}
SHELL_ONLY = {"CAPSERVE_PYTHON", "CAPSERVE_HOST", "CAPSERVE_PORT", "CAPSERVE_WORKERS", "CAPSERVE_LOG_LEVEL"}  # the web bootstrap


def test_every_setting_is_documented_and_no_other():
    in_doc = set(re.findall(r"\bCAPSERVE_[A-Z_]+[A-Z]\b", DOC))
    assert len(FIELDS) > 15  # the settings were found at all
    assert in_doc == FIELDS | SHELL_ONLY


def test_the_settings_table_is_the_generated_one():
    lines = _section("Settings").splitlines()
    first = lines.index("| variable | default | what |")
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    assert "\n".join(lines[first:end]) == markdown_table()


def test_the_code_names_no_setting_outside_the_settings_object():
    """Only the web bootstrap (a shell script) reads CAPSERVE_* variables outside the object."""
    assert _settings_in_code() - FIELDS == SHELL_ONLY


def test_no_module_reads_a_setting_from_the_environment_itself():
    read = re.compile(r"(environ\.get|getenv)\(\s*[\"']CAPSERVE_|environ\[[\"']CAPSERVE_[A-Z_]+[\"']\](?!\s*=)")
    readers = [
        str(path.relative_to(REPO))
        for package in PACKAGES for path in (REPO / package).rglob("*.py")
        if read.search(path.read_text())
    ]
    assert readers == []


def test_a_bad_value_names_the_variable_and_why(monkeypatch):
    monkeypatch.setenv("CAPSERVE_MAX_BODY_BYTES", "1MB")
    monkeypatch.setenv("CAPSERVE_LAZY", "perhaps")
    monkeypatch.setenv("CAPSERVE_INTERPRETER_THREADS", "0")
    with pytest.raises(SettingsError) as caught:
        Settings()
    message = str(caught.value)
    assert "CAPSERVE_MAX_BODY_BYTES must be an integer, not '1MB'" in message
    assert "CAPSERVE_LAZY must be 0 or 1, not 'perhaps'" in message
    assert "CAPSERVE_INTERPRETER_THREADS must be at least 1, not '0'" in message


def test_lists_are_split_and_empty_values_mean_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSERVE_REGISTRY", f"{tmp_path / 'a'}:{tmp_path / 'b'}:")
    monkeypatch.setenv("CAPSERVE_FORMATS", " png,gif ,")
    monkeypatch.setenv("CAPSERVE_WATCH_INTERVAL", "")
    values = Settings()
    assert values.registry == (tmp_path / "a", tmp_path / "b")
    assert values.formats == ("PNG", "GIF")
    assert values.watch_interval == Settings.model_fields["watch_interval"].default


def test_every_serve_flag_is_in_the_flag_table():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {opt for action in serve._actions for opt in action.option_strings if opt.startswith("--") and opt != "--help"}
    table = _section("Starting and stopping")
    documented = set(re.findall(r"`(--[a-z-]+)", table))
    assert flags == documented


def test_the_metrics_table_lists_what_metrics_serves(tmp_path):
    registry = Registry([tmp_path])
    registry.refresh()
    metrics = Metrics(registry)
    metrics.observe("demo", 200, 0.001)
    served = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name.endswith("_created"):  # prometheus_client's creation timestamps, per series
            continue
        served.add(family.name + "_total" if family.type == "counter" else family.name)
    table = _section("What to watch").split("```", 1)[0]
    documented = set(re.findall(r"^\| `(capserve_[a-z_]+)`", table, re.M))
    assert served == documented


def test_capserve_settings_prints_the_values_and_hides_secrets(monkeypatch, capsys):
    from capserve.server.cli import main

    monkeypatch.setenv("CAPSERVE_API_KEYS", "very-secret-key")
    monkeypatch.setenv("CAPSERVE_LAZY", "1")
    monkeypatch.setenv("CAPSERVE_FORMATS", "png")
    assert main(["settings"]) == 0
    lines = set(capsys.readouterr().out.splitlines())
    assert {"CAPSERVE_API_KEYS=(set)", "CAPSERVE_LAZY=1", "CAPSERVE_FORMATS=PNG", "CAPSERVE_HMAC_SECRET="} <= lines
    assert len(lines) == len(Settings.model_fields)
    monkeypatch.setenv("CAPSERVE_MAX_FRAMES", "many")
    assert main(["settings"]) == 2
    assert "CAPSERVE_MAX_FRAMES must be an integer, not 'many'" in capsys.readouterr().err
