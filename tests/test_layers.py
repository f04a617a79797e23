"""The layers of docs/ARCHITECTURE.md hold: no module imports a package above its own, and
nothing imports the repository folders by their bare names (they install as ``capserve.*``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# What each package may import of capserve, bottom up: the core, then plugins and the
# registry, then the transports and training.
ALLOWED = {
    "core": {"core"},
    "plugins": {"core", "plugins"},
    "model_registry": {"core", "plugins", "model_registry"},
    "server": {"core", "plugins", "model_registry", "server"},
    "scf_adapter": {"core", "plugins", "model_registry", "server", "scf_adapter"},
    "ray_serve": {"core", "plugins", "model_registry", "server", "ray_serve"},
    "training": {"core", "plugins", "model_registry", "training"},
}
BARE = set(ALLOWED)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, root: Path = REPO) -> list[str]:
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] in BARE:
                out.append(f"{path.relative_to(root)}:{line} imports {module} (use capserve.{module})")
            elif parts[0] == "capserve" and len(parts) > 1 and parts[1] not in ALLOWED[package]:
                out.append(f"{path.relative_to(root)}:{line} imports {module}, a layer above {package}")
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_a_layer_above_it(package):
    assert violations(package) == []


def test_the_check_sees_an_upward_import(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text("def f():\n    from capserve.server import app\n")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "bare.py").write_text("import model_registry.registry\n")
    assert violations("core", tmp_path) == ["core/bad.py:2 imports capserve.server, a layer above core"]
    assert violations("plugins", tmp_path) == [
        "plugins/bare.py:1 imports model_registry.registry (use capserve.model_registry.registry)"
    ]


@pytest.mark.slow
def test_the_wheel_installs_only_the_capserve_namespace(tmp_path):
    """``pip install capserve`` puts one name in site-packages: capserve (and its dist-info)."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("capserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"capserve", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    packages = {name.split("/")[1] for name in names if name.startswith("capserve/") and name.endswith("/__init__.py")}
    assert packages == set(ALLOWED)
    assert "capserve/__init__.py" not in names  # a namespace package, so plugins may live beside it
    assert any(name.startswith("capserve/model_registry/bundled/demo/") for name in names)
