"""Collected samples: images kept with what the model answered, and the labels people give them.

``CAPSERVE_SAMPLES_DIR`` (off by default) holds a folder per site. A sample is an image whose
name this module generates (``<nanoseconds>-<random>.<format>``, never a name from a request)
and a ``<name>.json`` beside it with the model's answer, the version and why it was kept
(``keep``: a request sent with ``keep=true``; ``wrong``: a reported wrong answer). Labels go
into the folder's ``labels.csv`` (``file,label``), the format ``capserve train --data`` reads.
Each site's folder is bounded by ``CAPSERVE_SAMPLES_MAX_COUNT`` samples and
``CAPSERVE_SAMPLES_MAX_BYTES`` bytes of images; past a bound the oldest samples go first,
labelled or not, until the folder is a tenth below it. ``.usage.json`` keeps the count and
bytes, so keeping a sample does not scan the folder.

``keep_sample(settings, site, image, answer, reason)`` is the one function that stores a
sample; a route that learns of a wrong answer calls it. ``Folder`` lists and labels any folder
of images (also one ``capserve label DIR`` opens).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from capserve.core.errors import UnknownSite
from capserve.core.settings import Settings
from capserve.core.spec import SITE_PATTERN
from capserve.server.errors import HTTPError

LABELS = "labels.csv"
LOCK = ".lock"
USAGE = ".usage.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
SUFFIX_OF_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_LABEL = 64
REASONS = ("keep", "wrong")


class SamplesOff(HTTPError):
    code, status = "samples_off", 404


class SampleNotFound(HTTPError):
    code, status = "unknown_sample", 404


class BadSample(HTTPError):
    code, status = "bad_sample", 422


class BadLabel(HTTPError):
    code, status = "bad_label", 400


def site_folder(settings: Settings, site: str) -> Path:
    """The samples folder of ``site``; ``SamplesOff`` when collection is off, ``UnknownSite``
    for a name that is no site's (``..`` among them)."""
    if settings.samples_dir is None:
        raise SamplesOff("collecting samples is off: set CAPSERVE_SAMPLES_DIR")
    if not SITE_PATTERN.fullmatch(site):
        raise UnknownSite(f"{site[:64]!r} is not a site name")
    return Path(settings.samples_dir) / site


def keep_sample(settings: Settings, site: str, image: bytes, answer: str, reason: str = "keep",
                version: int | None = None) -> str | None:
    """Store ``image`` with the model's ``answer`` in the site's samples folder and drop the
    oldest samples beyond the bounds; returns the generated name, or None when collection is off.
    ``BadSample`` if the bytes are not an image of an accepted format."""
    if settings.samples_dir is None:
        return None
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {REASONS}")
    suffix = _suffix(image)
    if len(image) > settings.samples_max_bytes:
        raise BadSample(f"the image is larger than the samples limit of {settings.samples_max_bytes} bytes")
    folder = site_folder(settings, site)
    folder.mkdir(parents=True, exist_ok=True)  # the site's folder only: its name was checked
    name = f"{time.time_ns():020d}-{secrets.token_hex(4)}{suffix}"
    meta = {"answer": answer[:MAX_LABEL], "reason": reason, "version": version, "time": round(time.time(), 3)}
    _write(folder / f"{name}.json", json.dumps(meta).encode())
    _write(folder / name, image)
    with _locked(folder):
        _enforce_bounds(folder, len(image), settings.samples_max_count, settings.samples_max_bytes)
    return name


def _suffix(image: bytes) -> str:
    try:
        with Image.open(io.BytesIO(image)) as opened:
            found = opened.format
    except (UnidentifiedImageError, OSError, ValueError):
        found = None
    suffix = SUFFIX_OF_FORMAT.get(found or "")
    if suffix is None:
        raise BadSample("the sample is not a PNG, JPEG, GIF, WebP or BMP image")
    return suffix


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer at a time across worker processes."""
    with open(folder / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _enforce_bounds(folder: Path, added: int, max_count: int, max_bytes: int) -> None:
    """Count the sample just written (``added`` bytes) in the folder's usage; past a bound, drop
    the oldest samples until a tenth below it, so that a full folder is scanned once per tenth
    of its samples rather than on every one."""
    usage = _read_usage(folder)
    usage = _scan(folder)[1] if usage is None else (usage[0] + 1, usage[1] + added)
    if usage[0] > max_count or usage[1] > max_bytes:
        usage = _drop_oldest(folder, max_count * 9 // 10, max_bytes * 9 // 10)
    _write(folder / USAGE, json.dumps({"count": usage[0], "bytes": usage[1]}).encode())


def _read_usage(folder: Path) -> tuple[int, int] | None:
    try:
        doc = json.loads((folder / USAGE).read_text())
        return int(doc["count"]), int(doc["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _scan(folder: Path) -> tuple[list[tuple[str, int]], tuple[int, int]]:
    """The collected samples oldest first, with their sizes, and their count and bytes."""
    with os.scandir(folder) as entries:
        files = {e.name: e for e in entries if e.is_file(follow_symlinks=False)}
    samples = sorted((name, files[name].stat().st_size) for name in files
                     if f"{name}.json" in files and Path(name).suffix in SUFFIX_OF_FORMAT.values())
    return samples, (len(samples), sum(size for _, size in samples))


def _drop_oldest(folder: Path, keep_count: int, keep_bytes: int) -> tuple[int, int]:
    samples, (count, total) = _scan(folder)
    drop = []
    for name, size in samples:
        if count <= keep_count and total <= keep_bytes:
            break
        drop.append(name)
        count, total = count - 1, total - size
    for name in drop:
        for path in (folder / name, folder / f"{name}.json"):
            path.unlink(missing_ok=True)
    labels = read_labels(folder)
    if any(name in labels for name in drop):
        _write_labels(folder, {k: v for k, v in labels.items() if k not in set(drop)})
    return count, total


def read_labels(folder: Path) -> dict[str, str]:
    path = folder / LABELS
    if not path.is_file():
        return {}
    rows = csv.reader(path.read_text(encoding="utf-8").splitlines())
    return {row[0]: row[1] for row in rows if len(row) >= 2 and row[:2] != ["file", "label"]}


def _write_labels(folder: Path, labels: dict[str, str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label"])
    writer.writerows(sorted(labels.items()))
    _write(folder / LABELS, buffer.getvalue().encode())


@dataclasses.dataclass(frozen=True)
class Folder:
    """A folder of images to label: collected samples, or any folder (``capserve label``)."""

    path: Path

    def images(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if p.suffix.lower() in IMAGE_SUFFIXES and NAME.fullmatch(p.name) and p.is_file())

    def image(self, name: str) -> Path:
        """The image called ``name``, directly inside the folder; ``SampleNotFound`` otherwise."""
        if not NAME.fullmatch(name) or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise SampleNotFound("no such sample")
        path = self.path / name
        if path.is_symlink() or not path.is_file() or path.resolve().parent != self.path.resolve():
            raise SampleNotFound("no such sample")
        return path

    def answer(self, name: str) -> str | None:
        """What the model answered when the sample was kept, if it was collected."""
        try:
            return json.loads((self.path / f"{name}.json").read_text()).get("answer")
        except (OSError, ValueError, AttributeError):
            return None

    def listing(self) -> dict:
        labels = read_labels(self.path)
        images = self.images()
        return {
            "labelled": sum(1 for name in images if name in labels),
            "samples": [{"name": n, "answer": self.answer(n)} for n in images if n not in labels],
        }

    def label(self, name: str, label: str) -> None:
        self.image(name)
        label = label.strip()
        if not label or len(label) > MAX_LABEL or any(c in label for c in ",\"\r\n\t") or not label.isprintable():
            raise BadLabel(f"a label is 1 to {MAX_LABEL} printable characters without commas, quotes or tabs")
        self.path.mkdir(parents=True, exist_ok=True)
        with _locked(self.path):
            labels = read_labels(self.path)
            labels[name] = label
            _write_labels(self.path, labels)
