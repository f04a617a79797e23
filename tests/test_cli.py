"""``capserve predict``, ``models`` and ``plugins``: output and exit status."""

from __future__ import annotations

import json

import pytest

from capserve.model_registry.registry import Registry
from capserve.server.cli import main
from tests import model_factory
from tests.conftest import png_bytes


@pytest.fixture()
def images(tmp_path):
    paths = []
    for text in ("1234", "5678"):
        path = tmp_path / f"{text}.png"
        path.write_bytes(png_bytes(text))
        paths.append(path)
    return paths


def _expected(registry_dir, path) -> str:
    registry = Registry([registry_dir])
    registry.refresh()
    return registry.get("tiny").recognize(path.read_bytes()).text


def test_predict_prints_the_text_of_one_image(registry_dir, images, capsys):
    assert main(["predict", "--registry", str(registry_dir), "--site", "tiny", str(images[0])]) == 0
    assert capsys.readouterr().out == _expected(registry_dir, images[0]) + "\n"


def test_predict_prints_path_and_text_for_several(registry_dir, images, capsys):
    assert main(["predict", "--registry", str(registry_dir), "--site", "tiny", *map(str, images)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{p}\t{_expected(registry_dir, p)}" for p in images]


def test_predict_json_and_details(registry_dir, images, capsys):
    assert main(["predict", "--registry", str(registry_dir), "--site", "tiny", "--json", str(images[0])]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert set(plain) == {"image", "text", "confidence"} and plain["image"] == str(images[0])
    assert main(["predict", "--registry", str(registry_dir), "--site", "tiny", "--details", str(images[0])]) == 0
    detailed = json.loads(capsys.readouterr().out)
    assert detailed["text"] == plain["text"]
    assert "".join(c["char"] for c in detailed["characters"]) == detailed["raw_text"]
    assert set(detailed["timings_ms"]) == {"decode", "preprocess", "invoke", "postprocess"}


def test_predict_reports_a_bad_image_and_goes_on(registry_dir, images, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    code = main(["predict", "--registry", str(registry_dir), "--site", "tiny", str(bad), str(missing), str(images[0])])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{bad}: error:" in err and f"{missing}: error:" in err
    assert out.splitlines() == [f"{images[0]}\t{_expected(registry_dir, images[0])}"]


def test_predict_restricts_the_answer_as_the_query_parameters_do(capsys):
    from tests.conftest import DEMO_EXAMPLE

    assert main(["predict", "--site", "demo", "--length", "5", "--charset", "23456789abcdefghjmpqrstuvwxy",
                 "--json", str(DEMO_EXAMPLE)]) == 0
    text = json.loads(capsys.readouterr().out)["text"]
    assert len(text) == 5 and "k" not in text  # unrestricted: 7kp3
    assert main(["predict", "--site", "demo", "--length", "0", str(DEMO_EXAMPLE)]) == 2
    assert "length must be N or A-B" in capsys.readouterr().err


def test_predict_for_an_unknown_site_exits_2(registry_dir, images, capsys):
    assert main(["predict", "--registry", str(registry_dir), "--site", "nowhere", str(images[0])]) == 2
    assert "no model is registered for site 'nowhere'" in capsys.readouterr().err


def test_models_lists_every_entry_and_why_one_failed(registry_dir, tiny_model_bytes, capsys):
    model_factory.write_entry(registry_dir / "tiny" / "2", tiny_model_bytes, version=2)
    (registry_dir / "broken" / "1").mkdir(parents=True)
    (registry_dir / "broken" / "1" / "model.yaml").write_text("site: broken\nversion: [")
    assert main(["models", "--registry", str(registry_dir)]) == 0
    out, err = capsys.readouterr()
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:4] == ["SITE", "VERSION", "STATE", "SERVING"]
    assert ["tiny", "2", "AVAILABLE", "yes"] == rows[[r[:2] for r in rows].index(["tiny", "2"])][:4]
    assert ["tiny", "1", "AVAILABLE"] == rows[[r[:2] for r in rows].index(["tiny", "1"])][:3]
    assert any(r[2] == "FAILED" for r in rows[1:])
    assert "broken" in err


def test_plugins_json_lists_the_built_in_steps(capsys):
    assert main(["plugins", "--json"]) == 0
    plugins = json.loads(capsys.readouterr().out)
    steps = {step for plugin in plugins for step in plugin.get("preprocess", [])}
    assert {"grayscale", "resize", "normalize"} <= steps
