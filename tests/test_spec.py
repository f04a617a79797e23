"""model.yaml's one schema: the published JSON Schema accepts the bundled entries and rejects bad
ones on the same field the loader names; hostile YAML (aliases, odd tags, huge values) fails
alone with a clear SpecError, and nothing an entry holds can break ``GET /v1/models``."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from starlette.testclient import TestClient

from capserve.core.spec import MAX_ENTRY_BYTES, SpecError, json_schema, load_spec, parse_spec
from capserve.model_registry.registry import AVAILABLE, BUNDLED, FAILED, Registry
from capserve.server.access import load_keys
from capserve.server.app import create_app
from capserve.server.cli import main
from capserve.server.settings import Settings
from tests import model_factory

VALIDATOR = jsonschema.Draft202012Validator(json_schema())
GOOD = {
    "site": "tiny", "version": 1, "model": {"file": "model.tflite"},
    "input": {"width": 64, "height": 32, "channels": 1}, "charset": "0123456789", "decoder": "ctc",
}


def with_change(**changes) -> dict:
    doc = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = doc
        for key in parents:
            target = target[key]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return doc


def test_the_schema_is_a_valid_json_schema_and_capserve_schema_prints_it(capsys):
    jsonschema.Draft202012Validator.check_schema(json_schema())
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_bundled_entries_validate_against_the_published_schema():
    paths = sorted(BUNDLED.glob("*/*/model.yaml"))
    assert len(paths) >= 2
    for path in paths:
        VALIDATOR.validate(yaml.safe_load(path.read_text()))
        assert load_spec(path).site == path.parent.parent.name


def test_a_good_document_passes_both():
    VALIDATOR.validate(GOOD)
    spec = parse_spec(GOOD, Path("model.yaml"))
    assert (spec.decoder, spec.min_length, spec.max_length, spec.training) == ("ctc", 1, 64, {})


# (change, the field the loader names); both the schema and the loader refuse each one.
BAD = [
    (dict(site="Bad Name!"), "site"),
    (dict(site="demo\n"), "site"),
    (dict(site=5), "site"),
    (dict(site=...), "site"),
    (dict(version=0), "version"),
    (dict(version=True), "version"),
    (dict(version=10**30), "version"),
    (dict(version="1"), "version"),
    (dict(model="model.tflite"), "model"),
    (dict(model__file=...), "model.file"),
    (dict(model__sha256="ABC"), "model.sha256"),
    (dict(input__width=0), "input.width"),
    (dict(input__channels=2), "input.channels"),
    (dict(input__channels=...), "input.channels"),
    (dict(charset=""), "charset"),
    (dict(decoder=5), "decoder"),
    (dict(decoder="beam"), "decoder.type"),
    (dict(decoder={"type": "beam"}), "decoder.type"),
    (dict(length={"min": 0}), "length.min"),
    (dict(preprocess="grayscale"), "preprocess"),
    (dict(training=[1, 2]), "training"),
    (dict(description=["a", "list"]), "description"),
    (dict(description="x" * 5000), "description"),
]


@pytest.mark.parametrize("change, field", BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_entries_fail_the_schema_and_name_the_field(change, field):
    doc = with_change(**change)
    assert not VALIDATOR.is_valid(doc)
    with pytest.raises(SpecError) as caught:
        parse_spec(doc, Path("entry/model.yaml"))
    assert caught.value.field == field and caught.value.path == "entry/model.yaml"


@pytest.mark.parametrize(
    "change, field, words",
    [
        (dict(model__file="../escape.tflite"), "model.file", "not a path"),
        (dict(charset="abca"), "charset", "repeated characters ['a']"),
        (dict(length={"min": 5, "max": 4}), "length", "greater than max"),
        (dict(decoder="fixed", length={"min": 4, "max": 5}), "length", "min == max"),
        (dict(), "(document)", "must be a mapping"),
    ],
)
def test_checks_beyond_the_json_schema_name_the_field(change, field, words):
    doc = with_change(**change) if change else ["not", "a", "mapping"]
    with pytest.raises(SpecError) as caught:
        parse_spec(doc, Path("model.yaml"))
    assert caught.value.field == field and words in caught.value.reason


def test_the_repeated_character_check_is_linear():
    """A million characters with repeats: answered at once (the check once counted each character
    through the whole charset, hours of work here)."""
    charset = "".join(map(chr, range(0x20000, 0x20000 + 500_000))) * 2
    with pytest.raises(SpecError) as caught:
        parse_spec(with_change(charset=charset), Path("model.yaml"))
    assert caught.value.field == "charset" and caught.value.reason.endswith("and 499990 more")


def billion_laughs(levels: int = 8, width: int = 10) -> str:
    """``training: *a8``: 1 KB that stands for 10**8 strings, the last level a mapping."""
    lines = ['a0: &a0 "lol"']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    lines.append(f"a{levels}: &a{levels} {{{', '.join(f'k{i}: *a{levels - 1}' for i in range(width))}}}")
    return "\n".join(lines) + f"\ntraining: *a{levels}\n"


def write(entry: Path, text: str) -> Path:
    path = entry / "model.yaml"
    path.write_text(text)
    return path


@pytest.fixture()
def entry(registry_dir: Path) -> Path:
    return registry_dir / "tiny" / "1"


def test_an_alias_bomb_fails_with_a_clear_error(entry):
    original = (entry / "model.yaml").read_text()
    bomb = billion_laughs()
    assert len(bomb) < 1200
    path = write(entry, original + bomb)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.field == "(yaml)" and "aliases" in caught.value.reason


def test_deep_nesting_fails_with_a_clear_error(entry):
    path = write(entry, (entry / "model.yaml").read_text() + "training: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.field == "(yaml)" and "nests deeper" in caught.value.reason


def test_a_model_yaml_over_the_size_cap_is_refused(entry):
    text = (entry / "model.yaml").read_text() + "description: " + "x" * MAX_ENTRY_BYTES + "\n"
    with pytest.raises(SpecError) as caught:
        load_spec(write(entry, text))
    assert caught.value.field == "(file)" and f"larger than {MAX_ENTRY_BYTES} bytes" in caught.value.reason


HOSTILE_TRAINING = [
    ("binary", "training:\n  blob: !!binary aGVsbG8=\n", "training.blob"),
    ("set", "training:\n  tags: !!set {a: null, b: null}\n", "training.tags"),
    ("huge integer", f"training:\n  samples: {10**30}\n", "training.samples"),
    ("self-reference", "training: &loop\n  again: *loop\n", "training.again"),
    ("long string", "training:\n  note: " + "y" * 5000 + "\n", "training.note"),
    ("many values", "training:\n  list: [" + ", ".join(["1"] * 2000) + "]\n", "training"),
]


@pytest.mark.parametrize("name, text, field", HOSTILE_TRAINING, ids=[t[0] for t in HOSTILE_TRAINING])
def test_a_hostile_entry_fails_alone_and_the_listing_still_answers(registry_dir, tiny_model_bytes, name, text, field):
    yaml_path = model_factory.write_entry(registry_dir / "bad" / "1", tiny_model_bytes, site="bad")
    yaml_path.write_text(yaml_path.read_text().replace("training:", "old_training:") + text)
    registry = Registry([registry_dir])
    registry.refresh()
    states = {e.path.parent.parent.name: e for e in registry.entries()}
    assert states["tiny"].state == AVAILABLE
    assert states["bad"].state == FAILED and states["bad"].error.startswith(f"{yaml_path}: {field}")
    with TestClient(create_app(registry, Settings(), watch=False)) as client:
        answer = client.get("/v1/models")
    assert answer.status_code == 200 and [m["site"] for m in answer.json()["models"]] == ["tiny"]


def test_a_huge_version_fails_alone_and_the_listing_still_answers(registry_dir, tiny_model_bytes):
    model_factory.write_entry(registry_dir / "big" / "1", tiny_model_bytes, site="big", version=10**30)
    registry = Registry([registry_dir])
    registry.refresh()
    failed = [e for e in registry.entries() if e.state == FAILED]
    assert len(failed) == 1 and "version: must be at most 2147483647" in failed[0].error
    with TestClient(create_app(registry, Settings(), watch=False)) as client:
        assert client.get("/v1/models").status_code == 200


def test_dates_and_odd_numbers_in_the_training_record_become_json_values(entry):
    path = write(entry, (entry / "model.yaml").read_text().replace("training:", "old_training:")
                 + "training:\n  date: 2026-11-23\n  loss: .nan\n  1: one\n  nested: {at: 2026-11-23 10:00:00}\n")
    training = load_spec(path).training
    assert training == {"date": "2026-11-23", "loss": None, "1": "one", "nested": {"at": "2026-11-23T10:00:00"}}
    assert json.loads(json.dumps(training, allow_nan=False)) == training


def test_the_keys_file_is_read_within_the_same_limits(tmp_path):
    bomb = tmp_path / "keys.yaml"
    bomb.write_text(billion_laughs().replace("training:", "keys:"))
    with pytest.raises(ValueError, match="CAPSERVE_API_KEYS_FILE .*aliases"):
        load_keys(Settings(api_keys=None, api_keys_file=bomb))
    big = tmp_path / "big.yaml"
    big.write_text("keys:\n" + "  - {name: k, key: " + "z" * 2_000_000 + "}\n")
    with pytest.raises(ValueError, match="CAPSERVE_API_KEYS_FILE .*larger than"):
        load_keys(Settings(api_keys=None, api_keys_file=big))
