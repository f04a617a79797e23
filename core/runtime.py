"""The LiteRT interpreter of one model, safe to call from many threads at once.

An interpreter is not thread-safe, so each call borrows one from a pool; the pool grows on
demand up to ``max_interpreters`` and a caller beyond that waits. In the usual case (one
uvicorn worker running each request on its event loop) one interpreter serves every call.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from capserve.core import settings


class RuntimeLoadError(ValueError):
    """A model file the interpreter refuses (corrupt, or needing ops LiteRT lacks)."""


class _Session:
    """One interpreter with its tensors allocated and its input/output indices looked up."""

    def __init__(self, content: bytes, num_threads: int) -> None:
        self.interpreter = Interpreter(model_content=content, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        (inp,) = self.interpreter.get_input_details()
        out = self.interpreter.get_output_details()[0]
        self.input_index, self.output_index = inp["index"], out["index"]
        self.input_shape, self.input_dtype = tuple(int(d) for d in inp["shape"]), inp["dtype"]
        self.output_shape = tuple(int(d) for d in out["shape"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)


class Runtime:
    """A pool of interpreters over one ``.tflite`` file."""

    def __init__(self, content: bytes, *, num_threads: int | None = None, max_interpreters: int = 8) -> None:
        """``num_threads``: LiteRT threads per interpreter (default: ``CAPSERVE_INTERPRETER_THREADS``)."""
        num_threads = num_threads or settings.current().interpreter_threads
        self._content = content
        self._num_threads = num_threads
        self._max = max_interpreters
        self._idle: queue.LifoQueue[_Session] = queue.LifoQueue()
        self._created = 0
        self._lock = threading.Lock()
        try:
            first = _Session(content, num_threads)
        except (ValueError, RuntimeError) as exc:
            raise RuntimeLoadError(f"LiteRT cannot load the model: {exc}") from None
        self._created = 1
        self._idle.put(first)
        self.input_shape = first.input_shape
        self.input_dtype = first.input_dtype
        self.output_shape = first.output_shape

    @property
    def size(self) -> int:
        return len(self._content)

    def _borrow(self) -> _Session:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._created < self._max
            if grow:
                self._created += 1
        if grow:
            return _Session(self._content, self._num_threads)
        return self._idle.get()

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Run one input ``(H, W, C)``; returns the output without its batch axis."""
        session = self._borrow()
        try:
            return session.run(tensor[None].astype(self.input_dtype, copy=False))[0]
        finally:
            self._idle.put(session)
