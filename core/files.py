"""Read the files of a registry entry, which whoever can write the folder controls.

Only regular files are read (a FIFO would block the reader forever, ``/dev/zero`` would never
end), after the path is resolved and found inside the folder it must stay in, and never more
than a size cap. The file is opened without following links and without blocking, and
checked again once open, so a file swapped in between the checks is refused too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_MODEL_BYTES = 64 << 20


class FileRefused(ValueError):
    """A file the registry will not read, and why."""


def read_regular(path: Path, *, max_bytes: int, inside: Path | None = None) -> bytes:
    """The bytes of ``path``, a regular file (after links) inside the folder ``inside``.

    Raises ``FileNotFoundError`` if it does not exist, ``FileRefused`` if it is refused and
    ``OSError`` if it cannot be read."""
    real = path.resolve()
    if inside is not None and not real.is_relative_to(inside.resolve()):
        raise FileRefused(f"{path.name} leads outside the entry's folder")
    _check(os.stat(real), path, max_bytes)
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        _check(os.fstat(fd), path, max_bytes)
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileRefused(f"{path.name} is larger than {max_bytes} bytes")
    return data


def _check(info: os.stat_result, path: Path, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(f"{path.name} is not a regular file")
    if info.st_size > max_bytes:
        raise FileRefused(f"{path.name} is {info.st_size} bytes, larger than {max_bytes} bytes")
