from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests import model_factory

REPO = Path(__file__).resolve().parent.parent
DEMO_EXAMPLE = REPO / "docs" / "examples" / "demo-7kp3.png"  # the bundled demo model reads "7kp3"


@pytest.fixture(scope="session")
def tiny_model_bytes() -> bytes:
    return model_factory.tiny_tflite()


@pytest.fixture()
def registry_dir(tmp_path: Path, tiny_model_bytes: bytes) -> Path:
    """A registry folder with one healthy entry, ``tiny`` v1."""
    root = tmp_path / "registry"
    model_factory.write_entry(root / "tiny" / "1", tiny_model_bytes)
    return root


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server process the test started: SIGTERM, then SIGKILL if it is still there."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def png_bytes(text: str = "1234", size: tuple[int, int] = (100, 50), mode: str = "RGB") -> bytes:
    image = Image.new(mode, size, "white")
    ImageDraw.Draw(image).text((10, 15), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture()
def png() -> bytes:
    return png_bytes()
