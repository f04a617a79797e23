"""Prove model files in a child process before the server adopts them.

A ``.tflite`` file is untrusted input to LiteRT's C++ code: a corrupt one can crash the
process (SIGFPE in ``allocate_tensors`` is one seen in practice) or allocate without bound.
``prove`` hands the files to ``python -m capserve.model_registry.proof``, which loads each one,
allocates its tensors and runs it on all-zero and all-one inputs under an address-space limit
(``RLIMIT_AS``), and answers one line per file. A file whose child dies, runs out of memory or
runs past the time limit is refused with the reason; the rest are proven in a fresh child.

Verdicts are cached by the file's SHA-256 (and the memory limit), so a rescan never proves an
unchanged file again.
"""

from __future__ import annotations

import hashlib
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time

TIMEOUT_S = 30.0  # per file, from the child's start
MEMORY_BYTES = 1 << 30  # the child's address space
_CACHE_SIZE = 1024
_EXITED = "the runtime exited with status"

_verdicts: dict[str, str | None] = {}  # "sha256:memory limit" -> None (proven) or why it was refused


def prove(contents: list[bytes], *, timeout: float = TIMEOUT_S, memory: int = MEMORY_BYTES) -> list[str | None]:
    """For each file: None if it loads, allocates and runs in a child process, else why not."""
    digests = [f"{hashlib.sha256(c).hexdigest()}:{memory}" for c in contents]
    results = {d: _verdicts[d] for d in digests if d in _verdicts}
    by_digest = dict(zip(digests, contents))
    pending = [d for d in by_digest if d not in results]
    while pending:
        answers, timed_out = _run_child([by_digest[d] for d in pending], timeout, memory)
        for digest, verdict in zip(pending, answers):
            results[digest] = verdict
            if not (verdict or "").startswith(_EXITED):  # the child itself failed, not the file
                _remember(digest, verdict)
        if timed_out:  # a slow machine may finish next time: not cached
            results[pending[len(answers)]] = f"the runtime did not finish within {timeout:g} s"
            answers.append(None)
        pending = pending[len(answers):]
    return [results[d] for d in digests]


def _remember(digest: str, verdict: str | None) -> None:
    if len(_verdicts) >= _CACHE_SIZE:
        del _verdicts[next(iter(_verdicts))]
    _verdicts[digest] = verdict


def _run_child(contents: list[bytes], timeout: float, memory: int) -> tuple[list[str | None], bool]:
    """Answers for a prefix of ``contents`` and whether the child then hung: a child that dies
    on file k answers the files before k and then why it died."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the parent's imports
    proc = subprocess.Popen(
        [sys.executable, "-m", "capserve.model_registry.proof", str(memory)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    answers: list[str | None] = []
    # The child reads everything before it loads anything; a thread feeds it, so that a child
    # that stops reading cannot block this one past the deadline.
    threading.Thread(target=_feed, args=(proc.stdin, contents), daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while len(answers) < len(contents):
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else None
            if line is None:
                return answers, True
            if not line:
                answers.append(_death(proc))
                break
            text = line.decode("utf-8", "replace").rstrip("\n")
            answers.append(None if text == "ok" else text)
            deadline = time.monotonic() + timeout
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    return answers, False


def _feed(stdin, contents: list[bytes]) -> None:
    try:
        for content in contents:
            stdin.write(struct.pack(">Q", len(content)) + content)
        stdin.close()
    except (BrokenPipeError, ValueError):  # the child is gone (or was killed)
        pass


def _death(proc: subprocess.Popen) -> str:
    code = proc.wait()
    if code < 0:
        try:
            return f"the runtime crashed: {signal.Signals(-code).name}"
        except ValueError:
            return f"the runtime crashed: signal {-code}"
    return f"{_EXITED} {code}"


# -- the child ----------------------------------------------------------------------------


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _child(memory: int) -> None:
    contents = []
    stdin = sys.stdin.buffer
    while header := stdin.read(8):
        contents.append(_read_exact(stdin, struct.unpack(">Q", header)[0]))
    import numpy as np

    from capserve.core.runtime import Runtime, RuntimeLoadError

    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    out = os.fdopen(os.dup(1), "wb")  # answers only: whatever the runtime prints goes to stderr
    os.dup2(2, 1)
    while contents:
        content = contents.pop(0)  # each file is freed once proven
        try:
            runtime = Runtime(content, max_interpreters=1)
            shape = runtime.input_shape[1:]
            for fill in (0.0, 1.0):
                runtime.run(np.full(shape, fill, np.float32))
            answer = "ok"
        except RuntimeLoadError as exc:
            answer = str(exc)
        except MemoryError:
            answer = f"the runtime ran out of its memory limit ({memory >> 20} MiB)"
        except Exception as exc:  # the file is refused, whatever LiteRT raised
            answer = f"the runtime failed: {type(exc).__name__}: {exc}"
        out.write(" ".join(answer.split())[:1000].encode() + b"\n")  # one write under PIPE_BUF
        out.flush()


if __name__ == "__main__":
    _child(int(sys.argv[1]))
