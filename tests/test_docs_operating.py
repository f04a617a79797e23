"""docs/operating.md stays true: every setting the code reads, every flag of ``capserve serve``
and every metric ``/metrics`` serves is documented, and the page documents nothing else."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from capserve.model_registry.registry import Registry
from capserve.server.cli import build_parser
from capserve.server.metrics import Metrics
from tests.conftest import REPO

DOC = (REPO / "docs" / "operating.md").read_text()
PACKAGES = ("core", "server", "model_registry", "plugins", "scf_adapter", "training")


def _section(title: str) -> str:
    return DOC.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _settings_in_code() -> set[str]:
    names: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*"):
            if path.is_file() and (path.suffix == ".py" or path.parent.name == "templates"):
                names |= set(re.findall(r"\bCAPSERVE_[A-Z_]+[A-Z]\b", path.read_text(errors="replace")))
    return names


def test_every_setting_the_code_reads_is_documented_and_no_other():
    in_code = _settings_in_code()
    in_doc = set(re.findall(r"\bCAPSERVE_[A-Z_]+[A-Z]\b", DOC))
    assert len(in_code) > 20
    assert in_code - in_doc == set(), "settings missing from docs/operating.md"
    assert in_doc - in_code == set(), "docs/operating.md names settings the code does not read"


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
